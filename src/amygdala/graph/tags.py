"""Emotion tag lines: `warmth:9 clarity:10` at the end of a memory node.

Background agents append tag lines to a node; they are the node's labels, so they must
be read (scores) and removed (text) before anything reaches a model. The grammar
(docs/architecture.md, "Emotion tag lines"):

* Only **trailing** lines are tag lines: walking up from the end, blank lines are skipped
  and every line that looks like a tag line is consumed; the first other line ends the
  walk. Several trailing tag lines merge; a repeated name keeps its maximum.
* A token is `name:score`; tokens are separated by spaces or commas. `name: 9` (space
  after the colon, before a number) is read as `name:9`.
* Names are case-insensitive words starting with a letter, normalized by the package's one
  name rule (`amygdala._names`: lowercase, `-` → `_`, `On-Edge` → `on_edge`); the
  normalized name must be an ASCII word of `[a-z0-9_]`.
* Scores are plain decimal numbers in [0, 10] (`9`, `7.5`, `.5`). Anything else
  (`warmth:eleven`, `fear:14`, `:5`, `joy:NaN`, `joy:inf`, `joy:-1`, `joy:1e1`) is a bad
  token: counted and reported, never used.

"Looks like a tag line" is decided per line by counting tokens: *tag-shaped* tokens
(`word:value`, or `:number`), *labels* (`word:` with nothing after the colon, such as
`Emotions:`) and *other* tokens (prose words, times like `10:30`, URLs, `:)`). A line is a
tag line when it has a tag-shaped token and either no other token, or at least two
tag-shaped tokens outnumbering the others. So `warmth:9 fear:14` and
`- warmth:9` are tag lines (stripped either way, bad tokens reported; tokens without a
letter or digit, such as a list bullet, are layout and ignored), while
`Note: today was good`, `Mood: good`, `Time: 10:30` and `See: https://x.org` are prose.

A line made only of tag-shaped tokens and labels, with at least one valid tag, is a label
even when it is not trailing (a daily digest that pastes several tagged entries
together): it is removed from the text too, so no label ever reaches the model, but its
scores are not used — only trailing tag lines score a node. Such lines are counted in
`interior_tag_lines`.

Example:
    >>> parsed = parse_tags("Walked to the lake.\\nwarmth:9 Clarity:7.5, on-edge:2\\n")
    >>> parsed.text, parsed.scores
    ('Walked to the lake.', {'clarity': 7.5, 'on_edge': 2.0, 'warmth': 9.0})
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal

from amygdala._names import NAME_RE, normalize_name

MAX_SCORE = 10.0

_SCORE_RE = re.compile(r"^(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)$")  # plain decimal, no sign/exponent
_WORD_NAME_RE = re.compile(r"^[^\W\d][\w-]*$")  # word starting with a letter (any script) or _
_NUMERIC_START_RE = re.compile(r"^[-+.]?[0-9]")
_SPLIT_RE = re.compile(r"[\s,]+")
_JOIN_SPACE_RE = re.compile(r"(?<=\w:)[ \t]+(?=[-+.]?[0-9])")  # `name: 9` -> `name:9`

TokenKind = Literal["tag", "label", "other"]


@dataclass(frozen=True)
class BadToken:
    """A token of a tag line that was not used, and why (for the summary)."""

    token: str
    reason: str
    name: str | None = None  # normalized name when the name part is a valid word


@dataclass(frozen=True)
class ParsedTags:
    """A node's content split into model text and its labels.

    `scores` holds only valid tokens from trailing tag lines. `bad_names` are the names
    of bad tokens (`warmth:eleven` → `warmth`): the agent meant to score them, so a node
    is not a negative for them. `had_tag_line` is true when at least one trailing line
    was taken as a tag line, even if none of its tokens were valid.
    """

    text: str
    scores: dict[str, float] = field(default_factory=dict)
    bad_tokens: tuple[BadToken, ...] = ()
    had_tag_line: bool = False
    interior_tag_lines: int = 0

    @property
    def bad_names(self) -> frozenset[str]:
        return frozenset(b.name for b in self.bad_tokens if b.name is not None)


def _tokens(line: str) -> list[str]:
    """Tokens of a line; tokens without a letter or digit (`-`, `|`, `:)`) are layout."""
    return [
        t for t in _SPLIT_RE.split(_JOIN_SPACE_RE.sub("", line)) if any(ch.isalnum() for ch in t)
    ]


def classify_token(token: str) -> TokenKind:
    """`tag` for `word:value` / `:number`, `label` for `word:`, `other` for prose."""
    if token.count(":") != 1:
        return "other"
    name, value = token.split(":")
    if not value:
        return "label" if _WORD_NAME_RE.match(name) else "other"
    if value.startswith("//"):  # a URL, not a score
        return "other"
    if not name:
        return "tag" if _NUMERIC_START_RE.match(value) else "other"  # `:5` yes, `:)` `:D` no
    return "tag" if _WORD_NAME_RE.match(name) else "other"


def parse_token(token: str) -> tuple[str, float] | BadToken:
    """One token of a tag line → `(name, score)`, or a `BadToken` saying why not."""
    if classify_token(token) != "tag":
        kind = classify_token(token)
        name = normalize_name(token[:-1]) if kind == "label" else None
        if name is not None and not NAME_RE.match(name):
            name = None
        return BadToken(token, "no score" if kind == "label" else "not name:score", name)
    raw_name, value = token.split(":")
    name = normalize_name(raw_name)
    if not raw_name:
        return BadToken(token, "no name")
    if not NAME_RE.match(name):
        return BadToken(token, "name is not an ASCII word starting with a letter")
    if not _SCORE_RE.match(value):
        try:
            number = float(value)
        except ValueError:
            return BadToken(token, "score is not a number", name)
        if not math.isfinite(number):
            return BadToken(token, "score is not a finite number", name)
        if number < 0 or number > MAX_SCORE:
            return BadToken(token, "score out of range 0-10", name)
        return BadToken(token, "score is not a plain decimal number", name)
    score = float(value)
    if score > MAX_SCORE:
        return BadToken(token, "score out of range 0-10", name)
    return name, score


def is_tag_line(line: str) -> bool:
    """Does this (trailing) line look like a tag line? See the module docstring."""
    if ":" not in line:  # fast path: prose lines
        return False
    kinds = [classify_token(t) for t in _tokens(line)]
    n_tag, n_other = kinds.count("tag"), kinds.count("other")
    return n_tag >= 1 and (n_other == 0 or (n_tag >= 2 and n_tag > n_other))


def _is_interior_label_line(line: str) -> bool:
    if ":" not in line:
        return False
    tokens = _tokens(line)
    if not tokens or any(classify_token(t) == "other" for t in tokens):
        return False
    return any(isinstance(parse_token(t), tuple) for t in tokens)


def _merge(line: str, scores: dict[str, float], bad: list[BadToken]) -> None:
    for token in _tokens(line):
        parsed = parse_token(token)
        if isinstance(parsed, BadToken):
            bad.append(parsed)
        else:
            name, score = parsed
            scores[name] = max(score, scores.get(name, score))


def parse_tags(content: str) -> ParsedTags:
    """Split a node's content into text (tag lines removed) and its tag scores.

    Line endings are normalized to `\\n` and the text is stripped of surrounding
    whitespace. Bad tokens are listed in order of appearance, bottom line first.
    """
    lines = content.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    scores: dict[str, float] = {}
    bad: list[BadToken] = []
    had_tag_line = False
    end = len(lines)
    while end > 0:
        line = lines[end - 1]
        if line.strip() and not is_tag_line(line):
            break
        if line.strip():
            had_tag_line = True
            _merge(line, scores, bad)
        end -= 1
    body = [line for line in lines[:end] if not _is_interior_label_line(line)]
    return ParsedTags(
        text="\n".join(body).strip(),
        scores=dict(sorted(scores.items())),
        bad_tokens=tuple(bad),
        had_tag_line=had_tag_line,
        interior_tag_lines=end - len(body),
    )
