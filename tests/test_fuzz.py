"""Property-based fuzzing of everything that reads user bytes (issue 12).

The contract: a reader either returns data or raises its own `AmygdalaError` subclass
(`GraphError`, `CorpusError`, `ArtifactError`), and a parser of text that cannot fail
(the tag-line parser) always returns. Anything else escaping (`RecursionError`,
`UnicodeEncodeError`, `TypeError`, a bare `ValueError`) is a traceback for the user, and
hypothesis shrinks it to the smallest input that does it.

Inputs are arbitrary bytes, plus structured ones that get past the first check: JSON
records with the right field names and values of every JSON type, lone surrogates
(`"\\ud800"`), deep nesting, numbers too long for Python, byte order marks, CR line ends.
The returned data is checked too: what a reader hands on is plain, encodable text.
"""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amygdala._text import MAX_JSON_DEPTH, JSONError, parse_json, text_argument
from amygdala.artifact import check_pair
from amygdala.corpus import NEGATIVE, POSITIVE, load_corpus
from amygdala.errors import CorpusError, GraphError
from amygdala.graph.filesource import FileSource
from amygdala.graph.formats import FormatError, parse_listing, parse_render
from amygdala.graph.tags import MAX_SCORE, NAME_RE, parse_tags

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# every code point, lone surrogates included (st.text() leaves category Cs out)
ANY_CHAR = st.characters(codec=None, exclude_categories=())
ANY_TEXT = st.text(ANY_CHAR, max_size=60)
SURROGATE = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | ANY_TEXT
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=12,
)


def encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def dumps(value: object) -> str:
    """JSON text of `value`: lone surrogates become `\\udXXX` escapes, NaN stays `NaN`."""
    return json.dumps(value, ensure_ascii=True)


@st.composite
def hostile_lines(draw: st.DrawFn, record: st.SearchStrategy[object]) -> bytes:
    """JSONL bytes: records, arbitrary bytes, deep nesting, huge numbers, BOMs, CRLF."""
    parts = draw(
        st.lists(
            st.one_of(
                record.map(lambda r: dumps(r).encode()),
                st.binary(max_size=40),
                st.integers(1, 3 * MAX_JSON_DEPTH).map(lambda n: b"[" * n + b"]" * n),
                st.integers(1, 3 * MAX_JSON_DEPTH).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
                st.just(b"1" * 5000),
                st.just(b"\xef\xbb\xbf{}"),
                st.just(b""),
            ),
            max_size=8,
        )
    )
    return draw(st.sampled_from([b"\n", b"\r\n"])).join(parts)


# -- graph-file reader -------------------------------------------------------------------

NODE_FIELDS = ("key", "content", "deleted", "weight", "timestamp", "node_type", "provenance")
NODE_RECORDS = st.dictionaries(
    st.sampled_from(NODE_FIELDS),
    JSON_VALUES | st.text(ANY_CHAR, max_size=200) | SURROGATE,
    max_size=len(NODE_FIELDS),
)


@st.composite
def graph_files(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["bytes", "jsonl", "array"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "jsonl":
        return draw(hostile_lines(NODE_RECORDS))
    items = draw(st.lists(NODE_RECORDS | JSON_VALUES, max_size=6))
    return draw(st.sampled_from([b"", b"\xef\xbb\xbf", b"  "])) + dumps(items).encode()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(data=graph_files())
def test_graph_reader_returns_nodes_or_raises_graph_error(scratch: Path, data: bytes) -> None:
    path = scratch / "graph.jsonl"
    path.write_bytes(data)
    try:
        read = FileSource(path).read()
    except GraphError as exc:
        assert str(exc).startswith(f"--graph {path}")
        return
    assert read.records_seen >= len(read.nodes) + len(read.problems) - read.superseded
    assert len({n.key for n in read.nodes}) == len(read.nodes)
    for node in read.nodes:
        assert isinstance(node.key, str) and node.key.strip()
        assert isinstance(node.content, str)
        assert encodable(node.key) and encodable(node.content)
        assert node.weight is None or math.isfinite(node.weight)
    assert all(
        isinstance(p, str) and p.endswith(("skipped", "stays in use")) for p in read.problems
    )


# -- tag-line parser ---------------------------------------------------------------------

TAG_TOKENS = st.sampled_from(
    [
        "warmth:9",
        "Clarity:7.5",
        "on-edge:2",
        "joy:NaN",
        "joy:inf",
        "fear:14",
        "joy:-1",
        "joy:1e1",
        ":5",
        ":)",
        "Mood:",
        "10:30",
        "https://x.org",
        "x:y:z",
        "é:3",
        "ζωή:4",
        "a:.5",
        "b:5.",
        "-",
        "|",
        "warmth:١٢",
        "warmth:1_0",
    ]
    + ["joy: 9", "calm:" + "9" * 400]
)
TAG_SEPARATORS = st.sampled_from([" ", ",", ", ", "\t", "\u00a0", "\u2028", "\x0b"])


@st.composite
def tagged_content(draw: st.DrawFn) -> str:
    """Prose lines and tag-like lines in any order, with any line ends."""
    lines = []
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.booleans()):
            tokens = draw(st.lists(TAG_TOKENS | ANY_TEXT, min_size=1, max_size=6))
            lines.append(draw(TAG_SEPARATORS).join(tokens))
        else:
            lines.append(draw(ANY_TEXT))
    return draw(st.sampled_from(["\n", "\r\n", "\r"])).join(lines)


@FUZZ
@given(content=tagged_content() | st.text(ANY_CHAR, max_size=300))
def test_tag_parser_always_returns_valid_scores(content: str) -> None:
    parsed = parse_tags(content)
    for name, score in parsed.scores.items():
        assert NAME_RE.match(name), name
        assert 0.0 <= score <= MAX_SCORE
    assert all(b.name is None or NAME_RE.match(b.name) for b in parsed.bad_tokens)
    assert parsed.text == parsed.text.strip()
    if parsed.scores or parsed.bad_tokens:
        assert parsed.had_tag_line
    # what is left is text: parsing it again finds no trailing tag line to strip
    again = parse_tags(parsed.text)
    assert again.scores == {} and not again.had_tag_line


# -- training-data reader ----------------------------------------------------------------

ROW_RECORDS = st.fixed_dictionaries(
    {},
    optional={
        "emotion": st.sampled_from(["joy", "fear", "On-Edge", "../x", ""]) | JSON_VALUES,
        "polarity": st.sampled_from(["positive", "negative", "pos"]) | JSON_VALUES,
        "text": st.text(ANY_CHAR, min_size=1, max_size=80) | SURROGATE | JSON_VALUES,
        "split": st.sampled_from(["train", "heldout", "dev"]) | JSON_VALUES,
        "score": JSON_VALUES,
    },
)


@FUZZ
@given(data=hostile_lines(ROW_RECORDS), other=st.binary(max_size=100))
def test_training_reader_returns_a_corpus_or_raises_corpus_error(
    scratch: Path, data: bytes, other: bytes
) -> None:
    root = scratch / "training-data"
    root.mkdir(exist_ok=True)
    (root / "joy.jsonl").write_bytes(data)
    (root / "fear.jsonl").write_bytes(other)
    try:
        corpus = load_corpus(root)
    except CorpusError as exc:
        assert str(root) in str(exc)
        return
    assert corpus.texts and all(encodable(t) and t.strip() for t in corpus.texts)
    assert len(set(corpus.texts)) == len(corpus.texts)
    assert all(re.match(r"^[a-z0-9][a-z0-9_]*$", c) for c in corpus.concepts)
    for labels in (corpus.train, corpus.heldout):
        assert set(labels.flatten().tolist()) <= {NEGATIVE, 0, POSITIVE}
    assert all(p.endswith(", skipped") for p in corpus.problems)


# -- the JSON every reader goes through, and what comes out of it ------------------------


@FUZZ
@given(
    text=st.text(ANY_CHAR, max_size=200)
    | hostile_lines(JSON_VALUES).map(lambda b: b.decode("utf-8", "surrogateescape"))
)
def test_parse_json_raises_only_json_error(text: str) -> None:
    try:
        value = parse_json(text)
    except JSONError as exc:
        assert str(exc)
        return
    json.dumps(value)  # whatever it returns can be handled without recursion trouble


@FUZZ
@given(text=st.text(ANY_CHAR, max_size=200) | JSON_VALUES.map(dumps))
def test_listing_and_render_parsers_raise_only_format_error(text: str) -> None:
    try:
        listing = parse_listing(text)
        assert all(isinstance(k, str) and k for k in listing.keys)
    except FormatError:
        pass
    assert isinstance(parse_render(text).content, str)


MANIFEST_VALUES = st.fixed_dictionaries(
    {
        "concepts": st.just(["joy", "fear"]) | JSON_VALUES,
        "layers": st.just([1, 3]) | st.just([True, 3]) | JSON_VALUES,
        "hidden_size": st.just(4) | JSON_VALUES,
        "dtype": st.just("float32") | JSON_VALUES,
    },
    optional={
        "calibration": st.fixed_dictionaries({}, optional={"mean": JSON_VALUES, "std": JSON_VALUES})
        | JSON_VALUES,
        "combined": st.fixed_dictionaries(
            {},
            optional={
                "weights": JSON_VALUES,
                "mean": JSON_VALUES,
                "std": JSON_VALUES,
                "unit": JSON_VALUES,
            },
        )
        | JSON_VALUES,
    },
)


@FUZZ
@given(manifest=MANIFEST_VALUES)
def test_manifest_checks_list_problems_and_never_raise(manifest: dict[str, object]) -> None:
    import torch

    vectors = {
        1: torch.nn.functional.normalize(torch.randn(2, 4), dim=-1),
        3: torch.nn.functional.normalize(torch.randn(2, 4), dim=-1),
    }
    problems = check_pair(vectors, manifest)
    assert all(isinstance(p, str) and p for p in problems)
    layers = manifest["layers"]
    if isinstance(layers, list) and any(isinstance(x, bool) for x in layers):
        assert any("'layers' must be a list of non-negative integers" in p for p in problems)


@FUZZ
@given(argument=st.text(ANY_CHAR, max_size=100), piped=st.binary(max_size=100))
def test_text_arguments_and_stdin_become_encodable_text(argument: str, piped: bytes) -> None:
    """What the CLI hands a tokenizer: U+FFFD wherever the input was not Unicode text."""
    if argument != "-":
        got = text_argument(argument)
        want = "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in argument)
        assert got == want
    from_stdin = text_argument("-", io.BytesIO(piped))
    assert from_stdin == piped.removeprefix(b"\xef\xbb\xbf").decode("utf-8", "replace")
    assert encodable(from_stdin)
