"""What memory servers answer: node listings and rendered nodes, parsed into what we need.

Real memory servers differ from our reference server (`amygdala.graph.server`): their
query tool may answer with plain text, and their render tool may return "the full
content with neighbor links sorted by strength". This module reads those answers; it
knows nothing about MCP, so every rule here is tested on strings.

**Listings** (`parse_listing`). An answer starting with `{` or `[` is JSON: a list of
entries, or an object holding one in `nodes`, `keys`, `results`, `items` or `result`;
an entry is a key string or an object with a string `key` (its other fields are node
metadata). Anything else is plain text, one node per line: a key, optionally followed by
whitespace and a number (`journal#j-2026-04-02-kitchen  0.83`, tab-separated, or
`key (0.83)`), optionally after a list bullet (`- `, `* `, `1. `). A key is one
whitespace-free token that starts with a letter, digit or `_` and does not end in `:`.
Every other line (blank, `# Results`, `Found 12 nodes:`, `----`) is counted as skipped,
never taken as a key. A `WORD NUMBER` line cannot be told from `key score`: it is a key.

**Rendered nodes** (`parse_render`). A JSON object with a string `content` field is
taken as the node's content. Then a trailing links section is stripped, so the tag
lines above it are trailing again. By default (`FooterRule()`), blocks are runs of
non-blank lines and, while the last block is a links section, it is removed:

* it starts with a links header: `Links:`, `## Links`, `**Neighbors**`, `Backlinks (3):`
  (link, links, neighbor(s), neighbour(s), backlinks, related, connections; any case;
  optional `#` marks, emphasis, a parenthesis and a colon); or
* it is made only of link lines: `→ key (0.83)` (any arrow, then anything), a bulleted
  `- key 0.83` / `* key (0.83)`, or wiki links `[[key]]` (several per line allowed,
  a bullet and a number after them too); a tag line is never a link line; or
* a links header inside it is followed only by link lines, or by nothing (tags written
  right above `Links:` without a blank line between them).

`FooterRule(pattern)` replaces the default: the answer is cut at the start of the last
match of the regex (multiline: `^` and `$` match at each line), e.g. `^-- links --$`;
`FooterRule("")` strips nothing. After a cut, the blank lines left above the footer go
too, so a server that renders `content + "\\n\\nLinks:…"` gives back `content`.

Example:
    >>> parse_listing("# results\\njournal#a  0.83\\ndaily-1 (0.41)\\n").keys
    ('journal#a', 'daily-1')
    >>> parse_render("Rain.\\nwarmth:9\\n\\nLinks:\\n  → daily-1 (0.41)\\n").content
    'Rain.\\nwarmth:9\\n'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from amygdala._text import JSONError, parse_json
from amygdala.graph.tags import is_tag_line

ListingFormat = Literal["json", "text"]
RenderFormat = Literal["text", "json"]

LIST_FIELDS = ("nodes", "keys", "results", "items", "result")  # where a JSON listing's list is

_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?%?"
_BULLET = r"(?:[-*•+]|\d{1,4}[.)])"
_KEY = r"\w\S*?(?<!:)"  # lazy: `key(0.83)` is key `key`
_LISTING_LINE = re.compile(
    rf"^\s*(?:{_BULLET}\s+)?(?P<key>{_KEY})(?:\s+\(?\s*{_NUM}\s*\)?|\s*\(\s*{_NUM}\s*\))?\s*$"
)
_HEADER_WORDS = r"links?|neighbou?rs?|backlinks?|related|connections?"
_LINK_HEADER = re.compile(
    rf"^\s*(?:#{{1,6}}\s*)?[*_]{{0,2}}\s*(?:{_HEADER_WORDS})\s*(?:\([^()\n]*\))?\s*[*_]{{0,2}}"
    r"\s*:?\s*[*_]{0,2}\s*$",
    re.IGNORECASE,
)
_ARROW = r"(?:→|⟶|➜|➔|⇒|↔|⇄|←|->|=>|<-|<->)"
_LINK_LINES = (
    re.compile(rf"^\s*(?:{_BULLET}\s+)?{_ARROW}\s*\S.*$"),  # → key (0.83) …
    re.compile(rf"^\s*[-*•+]\s+\S+\s+\(?\s*{_NUM}\s*\)?\s*$"),  # - key 0.83
    re.compile(rf"^\s*(?:{_BULLET}\s+)?(?:\[\[[^\[\]\n]+\]\][\s,;]*)+(?:\(?\s*{_NUM}\s*\)?)?\s*$"),
)
_NEWLINE = re.compile(r"\r\n|\r|\n")


class FormatError(ValueError):
    """An answer that cannot be read as what was asked for; the message says why."""


@dataclass(frozen=True)
class Listing:
    """A listing's entries (each with a unique string `key`) and how it was read."""

    entries: tuple[dict[str, Any], ...]
    format: ListingFormat
    skipped_lines: int = 0  # text: blank and header-looking lines
    problems: tuple[str, ...] = ()  # keys listed twice (fetched once)

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(e["key"] for e in self.entries)


@dataclass(frozen=True)
class Rendered:
    """One render answer: the node's content, its format, and whether a footer went."""

    content: str
    format: RenderFormat
    footer_stripped: bool


def listing_items(value: object) -> list[Any] | None:
    """The list of entries in a JSON listing: the value itself or one well-known field."""
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        for name in LIST_FIELDS:
            inner = value.get(name)
            if isinstance(inner, list):
                return inner
    return None


def parse_listing(text: str) -> Listing:
    """A query tool's answer → its entries; `FormatError` when it is not a listing."""
    if text.lstrip("\ufeff \t\r\n").startswith(("{", "[")):
        return _json_listing(text)
    return _text_listing(text)


def _json_listing(text: str) -> Listing:
    try:
        value = parse_json(text.lstrip("\ufeff"))
    except JSONError as exc:
        raise FormatError(f"it starts like JSON but is not valid JSON: {exc}") from None
    items = listing_items(value)
    if items is None:
        raise FormatError(f"JSON {type(value).__name__} without a list of nodes")
    entries = []
    for index, item in enumerate(items, start=1):
        entry = {"key": item} if isinstance(item, str) else item
        key = entry.get("key") if isinstance(entry, dict) else None
        if not isinstance(key, str) or not key:
            raise FormatError(f"entry {index} has no string 'key'")
        entries.append(entry)
    return _unique(entries, "json", 0)


def _text_listing(text: str) -> Listing:
    entries: list[dict[str, Any]] = []
    skipped = 0
    for _, line in _lines(text):
        match = _LISTING_LINE.match(line)
        if match is None:
            skipped += 1
        else:
            entries.append({"key": match["key"]})
    if not entries and text.strip():
        raise FormatError(
            f"neither JSON nor lines of node keys: none of its {skipped} lines is a key"
        )
    if not text.strip():
        skipped = 0  # an empty answer is an empty listing, not a skipped line
    return _unique(entries, "text", skipped)


def _unique(entries: list[dict[str, Any]], fmt: ListingFormat, skipped: int) -> Listing:
    kept: list[dict[str, Any]] = []
    seen: set[str] = set()
    problems: list[str] = []
    for index, entry in enumerate(entries, start=1):
        if entry["key"] in seen:
            problems.append(
                f"listing entry {index}: key {entry['key']!r} listed again, fetched once"
            )
            continue
        seen.add(entry["key"])
        kept.append(entry)
    return Listing(tuple(kept), fmt, skipped, tuple(problems))


# -- rendered nodes -------------------------------------------------------------------


@dataclass(frozen=True)
class FooterRule:
    """How a trailing links section is found: the default rule, a regex, or none.

    `pattern=None` is the default rule (module docstring); `""` strips nothing; any
    other string is a regex whose last match starts the footer. A bad regex raises
    `re.error` here, when the rule is built, not at the first node.
    """

    pattern: str | None = None

    def __post_init__(self) -> None:
        if self.pattern:
            re.compile(self.pattern, re.MULTILINE)

    def describe(self) -> str:
        if self.pattern is None:
            return "default"
        return f"regex {self.pattern!r}" if self.pattern else "off"

    def strip(self, text: str) -> tuple[str, bool]:
        """`(text without its footer, whether one was found)`."""
        if self.pattern is None:
            cut = _default_footer_start(text)
        elif self.pattern:
            matches = list(re.finditer(self.pattern, text, re.MULTILINE))
            cut = matches[-1].start() if matches and matches[-1].start() < len(text) else None
        else:
            cut = None
        if cut is None:
            return text, False
        return _drop_trailing_blank_lines(text[:cut]), True


def parse_render(text: str, rule: FooterRule | None = None) -> Rendered:
    """A render tool's answer → the node's content (JSON `content` field, footer cut)."""
    fmt: RenderFormat = "text"
    if text.lstrip("\ufeff \t\r\n").startswith("{"):
        try:
            value = parse_json(text.lstrip("\ufeff"))
        except JSONError:  # not JSON after all (or nested too deeply): plain text
            value = None
        if isinstance(value, dict) and isinstance(value.get("content"), str):
            text, fmt = value["content"], "json"
    content, stripped = (rule or FooterRule()).strip(text)
    return Rendered(content, fmt, stripped)


def _lines(text: str) -> list[tuple[int, str]]:
    """`(offset, line without its newline)` for each line, newlines as the tag parser sees them."""
    out, start = [], 0
    for match in _NEWLINE.finditer(text):
        out.append((start, text[start : match.start()]))
        start = match.end()
    if start < len(text):
        out.append((start, text[start:]))
    return out


def is_link_line(line: str) -> bool:
    """`→ key (0.83)`, `- key 0.83`, `[[key]]`; never a tag line."""
    return any(p.match(line) for p in _LINK_LINES) and not is_tag_line(line)


def is_link_header(line: str) -> bool:
    """`Links:`, `## Links`, `Neighbors:` … (any case)."""
    return _LINK_HEADER.match(line) is not None


def _default_footer_start(text: str) -> int | None:
    """Offset where the trailing links section(s) start, or None when there is none."""
    lines = _lines(text)
    end = len(lines)
    cut: int | None = None
    while True:
        while end > 0 and not lines[end - 1][1].strip():
            end -= 1
        begin = end
        while begin > 0 and lines[begin - 1][1].strip():
            begin -= 1
        block = [line for _, line in lines[begin:end]]
        if not block:
            return cut
        start = _footer_in_block(block)
        if start is None:
            return cut
        cut, end = lines[begin + start][0], begin + start


def _footer_in_block(block: list[str]) -> int | None:
    """Index in the block where a links section starts, or None."""
    if is_link_header(block[0]) or all(is_link_line(line) for line in block):
        return 0
    tail = len(block)
    while tail > 0 and is_link_line(block[tail - 1]):
        tail -= 1
    if tail > 0 and is_link_header(block[tail - 1]):  # header below the tags, links (if any)
        return tail - 1
    return None


def _drop_trailing_blank_lines(text: str) -> str:
    """Remove whitespace-only lines at the end, keeping the last real line's newline."""
    lines = _lines(text)
    end = len(lines)
    while end > 0 and not lines[end - 1][1].strip():
        end -= 1
    if end == 0:
        return ""
    offset, line = lines[end - 1]
    newline = _NEWLINE.match(text, offset + len(line))
    return text[: offset + len(line) + (len(newline.group()) if newline else 0)]
