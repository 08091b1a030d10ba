"""Tag-line grammar: trailing `name:score` lines become scores and leave the text.

Unit tests pin each rule of docs/architecture.md's grammar and the prose lines that must survive;
property-based tests check it against an independent model of the grammar (tag lines
built from generated names and scores, merged with `max` in plain Python).
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amygdala.graph.tags import NAME_RE, BadToken, is_tag_line, parse_tags

# --- unit tests: the grammar ------------------------------------------------------------


def test_design_example() -> None:
    parsed = parse_tags("Sat with her in the kitchen.\nwarmth:9 clarity:10 curiosity:6")
    assert parsed.text == "Sat with her in the kitchen."
    assert parsed.scores == {"warmth": 9, "clarity": 10, "curiosity": 6}
    assert parsed.bad_tokens == ()
    assert parsed.had_tag_line


def test_names_are_normalized() -> None:
    parsed = parse_tags("body\nOn-Edge:3 IN_FLOW:7 Warmth:2")
    assert parsed.scores == {"on_edge": 3, "in_flow": 7, "warmth": 2}


def test_repeated_names_keep_the_maximum_across_lines() -> None:
    parsed = parse_tags("body\nwarmth:4 warmth:9 fear:2\n\nwarmth:6, fear:1\n")
    assert parsed.scores == {"warmth": 9, "fear": 2}


def test_several_trailing_lines_merge_with_blank_lines_between() -> None:
    parsed = parse_tags("body text\n\njoy:8\n\n\ncalm:3\n  \n")
    assert parsed.scores == {"joy": 8, "calm": 3}
    assert parsed.text == "body text"


@pytest.mark.parametrize(
    "line",
    [
        "warmth:9,clarity:7",
        "warmth:9, clarity:7",
        "warmth:9 , clarity:7",
        "warmth:9\tclarity:7",
        "  warmth:9   clarity:7  ",
    ],
)
def test_separators_are_spaces_or_commas(line: str) -> None:
    assert parse_tags(f"body\n{line}").scores == {"warmth": 9, "clarity": 7}


@pytest.mark.parametrize(
    ("token", "score"),
    [
        ("joy:0", 0),
        ("joy:10", 10),
        ("joy:7.5", 7.5),
        ("joy:.5", 0.5),
        ("joy:09", 9),
        ("joy:10.0", 10),
        ("joy:3.", 3),
    ],
)
def test_scores_are_integers_or_decimals_from_0_to_10(token: str, score: float) -> None:
    assert parse_tags(f"body\n{token}").scores == {"joy": score}


def test_space_after_colon_before_a_number_is_read() -> None:
    assert parse_tags("body\nwarmth: 9, clarity: 7.5").scores == {"warmth": 9, "clarity": 7.5}


@pytest.mark.parametrize(
    ("token", "reason", "name"),
    [
        ("warmth:eleven", "score is not a number", "warmth"),
        ("fear:14", "score out of range 0-10", "fear"),
        ("fear:10.01", "score out of range 0-10", "fear"),
        (":5", "no name", None),
        ("joy:NaN", "score is not a finite number", "joy"),
        ("joy:inf", "score is not a finite number", "joy"),
        ("joy:-1", "score out of range 0-10", "joy"),
        ("joy:1e1", "score is not a plain decimal number", "joy"),
        ("joy:+5", "score is not a plain decimal number", "joy"),
        ("joy:9/10", "score is not a number", "joy"),
        ("wärme:9", "name is not an ASCII word starting with a letter", None),
    ],
)
def test_bad_tokens_are_reported_never_used(token: str, reason: str, name: str | None) -> None:
    parsed = parse_tags(f"Some body text.\nclarity:7 {token}")
    assert parsed.text == "Some body text."  # stripped either way
    assert parsed.scores == {"clarity": 7}
    assert parsed.bad_tokens == (BadToken(token, reason, name),)


def test_a_line_of_only_bad_tokens_is_still_stripped() -> None:
    parsed = parse_tags("Some body text.\nwarmth:eleven fear:14")
    assert parsed.text == "Some body text."
    assert parsed.scores == {}
    assert parsed.had_tag_line
    assert parsed.bad_names == {"warmth", "fear"}


def test_a_label_before_the_tags_is_reported() -> None:
    parsed = parse_tags("body\nEmotions: warmth:9")
    assert parsed.scores == {"warmth": 9}
    assert parsed.bad_tokens == (BadToken("Emotions:", "no score", "emotions"),)


def test_list_bullets_and_pipes_are_layout() -> None:
    assert parse_tags("body\n- warmth:9").scores == {"warmth": 9}
    assert parse_tags("body\nwarmth:9 | fear:1").bad_tokens == ()


@pytest.mark.parametrize(
    "line",
    [
        "Note: today was good",
        "Mood: good",
        "Time: 10:30",
        "Met at 10:30, left at 11:45",
        "See: https://example.org/a",
        "Ratio 3:2 in favour",
        "Great day :)",
        ":)",
        ":D",
        "Agenda:",
        "Next: see joy:3",
        "Step 1: 10 minutes",
    ],
)
def test_prose_with_colons_is_not_a_tag_line(line: str) -> None:
    content = f"First paragraph.\n{line}"
    parsed = parse_tags(content)
    assert parsed.text == content
    assert parsed.scores == {}
    assert not parsed.had_tag_line
    assert not is_tag_line(line)


def test_prose_line_ends_the_walk_up() -> None:
    parsed = parse_tags("joy:9\nNote: this is prose\ncalm:2")
    assert parsed.scores == {"calm": 2}
    assert parsed.text == "Note: this is prose"  # the interior label line is removed
    assert parsed.interior_tag_lines == 1


def test_interior_tag_lines_are_removed_but_not_scored() -> None:
    content = "## 09:00\nKitchen talk.\nwarmth:9 clarity:8\n\n## 14:00\nA walk.\nfear:2"
    parsed = parse_tags(content)
    assert parsed.scores == {"fear": 2}
    assert "warmth" not in parsed.text and "clarity" not in parsed.text
    assert parsed.text == "## 09:00\nKitchen talk.\n\n## 14:00\nA walk."
    assert parsed.interior_tag_lines == 1


def test_interior_prose_lines_with_colons_stay() -> None:
    content = "Agenda:\nStatus:done\nTime: 10:30\nend of note here"
    assert parse_tags(content).text == content


def test_markdown_trailing_whitespace_and_crlf() -> None:
    parsed = parse_tags("Line one.  \r\nLine two.\r\nwarmth:9  \r\n\r\n")
    assert parsed.text == "Line one.  \nLine two."
    assert parsed.scores == {"warmth": 9}
    assert parse_tags("Line one.\rwarmth:9\r").scores == {"warmth": 9}  # old Mac endings


def test_tag_line_followed_by_blank_lines() -> None:
    parsed = parse_tags("The body.\nwarmth:9\n\n   \n\t\n")
    assert parsed.text == "The body."
    assert parsed.scores == {"warmth": 9}


def test_untagged_node() -> None:
    parsed = parse_tags("  Just prose, nothing else.\n\n")
    assert parsed.text == "Just prose, nothing else."
    assert (parsed.scores, parsed.bad_tokens, parsed.had_tag_line) == ({}, (), False)


def test_a_node_that_is_only_a_tag_line_has_no_text() -> None:
    parsed = parse_tags("warmth:9 joy:8")
    assert parsed.text == ""
    assert parsed.scores == {"warmth": 9, "joy": 8}


def test_empty_content() -> None:
    assert parse_tags("") == parse_tags("\n\n") == parse_tags("   ")
    assert parse_tags("").text == ""


# --- property-based tests ---------------------------------------------------------------

_names = st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True)
_int_scores = st.integers(0, 10).map(lambda v: (str(v), float(v)))
_dec_scores = st.integers(0, 1000).map(lambda v: (f"{v / 100:.2f}", round(v / 100, 2)))
_scores = st.one_of(_int_scores, _dec_scores)
_separators = st.sampled_from([" ", ", ", ",", "  ", "\t", " ,  "])


@st.composite
def _spelled(draw: st.DrawFn, name: str) -> str:
    """A spelling of a normalized name: any case, `_` written as `_` or `-`."""
    chars = []
    for ch in name:
        if ch == "_":
            chars.append(draw(st.sampled_from("_-")))
        else:
            chars.append(ch.upper() if draw(st.booleans()) else ch)
    return "".join(chars)


@st.composite
def _tag_lines(draw: st.DrawFn) -> tuple[list[str], dict[str, float], list[str]]:
    """(lines, expected scores merged with max, tokens written)."""
    n_lines = draw(st.integers(1, 3))
    lines, expected, tokens = [], {}, []
    for _ in range(n_lines):
        pairs = draw(st.lists(st.tuples(_names, _scores), min_size=1, max_size=5))
        written = []
        for name, (text, value) in pairs:
            token = f"{draw(_spelled(name))}:{text}"
            written.append(token)
            expected[name] = max(value, expected.get(name, value))
        tokens += written
        sep = draw(_separators)
        lines.append(sep.join(written))
    return lines, expected, tokens


# prose without colons: it can never look like a tag line
_body = st.text(alphabet=st.sampled_from(list("abcdefgh XYZ.,!?'-\n\t0123456789é")), max_size=200)
_tail = st.sampled_from(["", "\n", "\n\n", "\n  \n\t\n", "  "])


@settings(max_examples=300, deadline=None)
@given(body=_body, tags=_tag_lines(), tail=_tail, gaps=st.booleans(), crlf=st.booleans())
def test_generated_tag_lines_round_trip(
    body: str,
    tags: tuple[list[str], dict[str, float], list[str]],
    tail: str,
    gaps: bool,
    crlf: bool,
) -> None:
    lines, expected, tokens = tags
    content = body + "\n" + ("\n\n" if gaps else "\n").join(lines) + tail
    if crlf:
        content = content.replace("\n", "\r\n")
    parsed = parse_tags(content)
    assert parsed.scores == expected
    assert parsed.bad_tokens == ()
    assert parsed.had_tag_line
    assert parsed.text == body.strip()
    for token in tokens:
        assert token not in parsed.text


_bad_tokens = st.one_of(
    st.builds(lambda n, v: f"{n}:{v}", _names, st.integers(11, 10_000)),
    st.builds(lambda n, v: f"{n}:-{v}", _names, st.integers(1, 99)),
    st.builds(
        lambda n, v: f"{n}:{v}",
        _names,
        st.sampled_from(["NaN", "nan", "inf", "-inf", "eleven", "high", "1e1", "x9"]),
    ),
    st.builds(lambda v: f":{v}", st.integers(0, 10)),
)


@settings(max_examples=200, deadline=None)
@given(
    body=_body,
    good=st.lists(st.tuples(_names, _scores), min_size=0, max_size=4),
    bad=st.lists(_bad_tokens, min_size=1, max_size=4),
    data=st.data(),
)
def test_bad_tokens_are_counted_and_never_used(
    body: str, good: list[tuple[str, tuple[str, float]]], bad: list[str], data: st.DataObject
) -> None:
    good_tokens = [f"{n}:{t}" for n, (t, _) in good]
    line = " ".join(data.draw(st.permutations(good_tokens + bad)))
    parsed = parse_tags(f"{body}\n{line}")
    expected: dict[str, float] = {}
    for name, (_, value) in good:
        expected[name] = max(value, expected.get(name, value))
    assert parsed.scores == expected
    assert sorted(b.token for b in parsed.bad_tokens) == sorted(bad)
    assert parsed.text == body.strip()


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=300))
def test_any_text_gives_valid_scores_and_parsing_is_idempotent(content: str) -> None:
    parsed = parse_tags(content)
    for name, score in parsed.scores.items():
        assert NAME_RE.match(name)
        assert math.isfinite(score) and 0 <= score <= 10
    again = parse_tags(parsed.text)
    assert again.text == parsed.text
    assert again.scores == {} and not again.had_tag_line and again.interior_tag_lines == 0


_tagish = st.text(alphabet=st.sampled_from(list("ab:9 ,.-\n1:0x")), max_size=80)


@settings(max_examples=500, deadline=None)
@given(_tagish)
def test_no_trailing_line_that_looks_like_tags_survives(content: str) -> None:
    text = parse_tags(content).text
    lines = [line for line in text.split("\n") if line.strip()]
    assert not lines or not is_tag_line(lines[-1])
