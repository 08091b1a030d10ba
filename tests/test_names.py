"""One concept-name rule wherever a name enters: tag lines, `--emotions`, training-data rows
and stories file names all accept the same names and normalize them the same way.

Reference: a table of names and what they must become, written here by hand (not derived
from `amygdala._names`), checked through each entry point's public function.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from amygdala._names import concept_name
from amygdala.corpus import corpus_from_rows, load_corpus
from amygdala.errors import ConfigError
from amygdala.graph.select import SelectionOptions
from amygdala.graph.tags import parse_tags

# name as written → the concept it names, or None when it is not a name
EXPECTED: dict[str, str | None] = {
    "joy": "joy",
    "On-Edge": "on_edge",
    " JOY ": "joy",
    "2nd_wind": "2nd_wind",  # a digit first: a name (training data accepted it before)
    "9": "9",
    "no way": None,  # a space inside: two words (`--emotions` refused it before)
    "wärme": None,  # not ASCII
    "_x": None,  # `_` first
    "a.b": None,
    "-x": None,  # `-` first is `_` first
    "": None,
}


@pytest.mark.parametrize("raw", list(EXPECTED))
def test_emotions_option(raw: str) -> None:
    expected = EXPECTED[raw]
    if expected is None:
        with pytest.raises(ConfigError, match=f"{re.escape(repr(raw))} is not an emotion name"):
            SelectionOptions(emotions=(raw,))
    else:
        assert SelectionOptions(emotions=(raw,)).emotions == (expected,)


@pytest.mark.parametrize("raw", list(EXPECTED))
def test_training_data_rows(raw: str) -> None:
    rows = [
        {"emotion": raw, "polarity": "positive", "text": "A text for it."},
        {"emotion": "calm", "polarity": "positive", "text": "Another text."},
    ]
    corpus = corpus_from_rows(rows)
    expected = EXPECTED[raw]
    if expected is None:
        assert corpus.concepts == ("calm",)
        assert corpus.problems == (f"rows[0]: bad 'emotion' {raw!r}, skipped",)
    else:
        assert set(corpus.concepts) == {"calm", expected}
        assert corpus.problems == ()


@pytest.mark.parametrize("raw", [n for n in EXPECTED if n and not n.startswith("_")])
def test_stories_file_names(raw: str, tmp_path: Path) -> None:
    """A stories file `<name>.txt` holds positives of that name (`_*.txt` are neutral
    text, never a name); a file whose name is not a name is skipped and reported."""
    stories = tmp_path / "stories"
    stories.mkdir()
    (stories / f"{raw}.txt").write_text("A story for it.\n", encoding="utf-8")
    (stories / "calm.txt").write_text("A calm story.\n", encoding="utf-8")
    corpus = load_corpus(tmp_path)
    expected = EXPECTED[raw]
    if expected is None:
        assert corpus.concepts == ("calm",)
        (problem,) = corpus.problems
        assert problem.startswith(f"{stories / raw}.txt: file name {raw!r} is not a concept")
    else:
        assert set(corpus.concepts) == {"calm", expected}
        assert corpus.problems == ()


@pytest.mark.parametrize("raw", ["joy", "On-Edge", "wärme", "_x"])
def test_tag_lines(raw: str) -> None:
    """Tag tokens are `word:score` with a word that starts with a letter or `_`; of those,
    the valid names score and the others are bad tokens."""
    parsed = parse_tags(f"Walked to the lake.\n{raw}:9")
    expected = EXPECTED[raw]
    assert parsed.text == "Walked to the lake."
    if expected is None:
        assert parsed.scores == {}
        assert [b.token for b in parsed.bad_tokens] == [f"{raw}:9"]
    else:
        assert parsed.scores == {expected: 9.0}


@given(st.text(max_size=20))
def test_a_name_is_a_lowercase_ascii_word_and_normalizing_it_again_keeps_it(raw: str) -> None:
    name = concept_name(raw)
    if name is not None:
        assert re.fullmatch(r"[a-z0-9][a-z0-9_]*", name)
        assert concept_name(name) == name
        assert name == raw.strip().lower().replace("-", "_")
