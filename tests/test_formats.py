"""Listings and render answers as memory servers write them, parsed by `amygdala.graph.formats`.

Every expectation is written out by hand from the format rules in the issue (a key per
line, optionally with a score; a trailing links section stripped), never computed with
the code under test.
"""

from __future__ import annotations

import re

import pytest

from amygdala.graph.formats import (
    FooterRule,
    FormatError,
    Rendered,
    is_link_header,
    is_link_line,
    listing_items,
    parse_listing,
    parse_render,
)
from amygdala.graph.tags import parse_tags

# -- listings -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "keys", "skipped"),
    [
        ("journal#j-2026-04-02-kitchen  0.83\ndaily-2026-04-02 0.41\n",
         ("journal#j-2026-04-02-kitchen", "daily-2026-04-02"), 0),
        ("journal#a\t0.83\ndaily-1\t1\n", ("journal#a", "daily-1"), 0),
        ("journal#a (0.83)\ndaily-1 ( .5 )\nnote#b(1e-3)\n", ("journal#a", "daily-1", "note#b"), 0),
        ("journal#a\ndaily-1", ("journal#a", "daily-1"), 0),
        ("# memory_query: all\n\njournal#a  0.83\n\n(1 nodes)\n", ("journal#a",), 4),
        ("Results:\n- journal#a 0.9\n* daily-1\n1. note#b (0.2)\n2) weekly-w14\n",
         ("journal#a", "daily-1", "note#b", "weekly-w14"), 1),
        ("Found 2 nodes:\n----\n=====\nKEY  SCORE\nTotal: 2\njournal#a -0.5\nnote#ünï 3%\n",
         ("journal#a", "note#ünï"), 5),
        ("journal#a  0.83\r\ndaily-1  0.41\r\n", ("journal#a", "daily-1"), 0),
        ("", (), 0),
        ("  \n\n", (), 0),
    ],
)  # fmt: skip
def test_text_listings(text: str, keys: tuple[str, ...], skipped: int) -> None:
    listing = parse_listing(text)
    assert listing.format == "text"
    assert listing.keys == keys
    assert listing.skipped_lines == skipped
    assert all(set(e) == {"key"} for e in listing.entries)


def test_header_looking_lines_are_never_keys() -> None:
    headers = [
        "# Results", "## memory_query", "Results:", "Nodes (3):", "Found 3 nodes", "3 results",
        "----", "| key | score |", "(3 nodes)", "KEY SCORE", "query: all", "#", "", "   ",
        "journal#a 0.8 episodic",
    ]  # fmt: skip
    with pytest.raises(FormatError, match=f"none of its {len(headers)} lines is a key"):
        parse_listing("\n".join(headers))
    listing = parse_listing("\n".join([*headers, "journal#a 0.8"]))
    assert listing.keys == ("journal#a",)
    assert listing.skipped_lines == len(headers)


def test_duplicate_keys_are_fetched_once_and_reported() -> None:
    listing = parse_listing("a 0.9\nb 0.8\na 0.1\n")
    assert listing.keys == ("a", "b")
    assert listing.problems == ("listing entry 3: key 'a' listed again, fetched once",)


@pytest.mark.parametrize(
    ("text", "keys"),
    [
        ('{"nodes": [{"key": "a", "node_type": "semantic"}, {"key": "b"}]}', ("a", "b")),
        ('[{"key": "a"}, {"key": "b", "type": "semantic"}]', ("a", "b")),
        ('["a", "b"]', ("a", "b")),
        ('{"keys": ["a"]}', ("a",)),
        ('{"results": [{"key": "a", "score": 0.9}]}', ("a",)),
        ('  \n{"result": ["a"]}', ("a",)),
    ],
)
def test_json_listings(text: str, keys: tuple[str, ...]) -> None:
    listing = parse_listing(text)
    assert (listing.format, listing.keys, listing.skipped_lines) == ("json", keys, 0)


def test_json_listing_keeps_node_metadata() -> None:
    listing = parse_listing('{"nodes": [{"key": "a", "node_type": "semantic", "weight": 0.5}]}')
    assert listing.entries == ({"key": "a", "node_type": "semantic", "weight": 0.5},)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('{"nodes": [', "starts like JSON but is not valid JSON"),
        ('{"answer": "a, b"}', "JSON dict without a list of nodes"),
        ('[{"key": "a"}, {"name": "b"}]', "entry 2 has no string 'key'"),
        ("Spent the evening at the harbour.\nwarmth:9 fear:2\n", "none of its 2 lines is a key"),
    ],
)
def test_what_is_not_a_listing(text: str, why: str) -> None:
    with pytest.raises(FormatError, match=re.escape(why)):
        parse_listing(text)


def test_listing_items_shapes() -> None:
    assert listing_items({"result": ["a"]}) == ["a"]
    assert listing_items({"answer": "a, b"}) is None
    assert listing_items("a b") is None


# -- rendered nodes -------------------------------------------------------------------

ISSUE_EXAMPLE = """\
Spent the evening helping Mara rewrite her eulogy.

warmth:9 tenderness:8

Links:
  → journal#j-2026-04-01-call (0.82)
  → daily-2026-04-02 (0.41)
"""
BODY = "Spent the evening helping Mara rewrite her eulogy.\n\nwarmth:9 tenderness:8\n"


@pytest.mark.parametrize(
    "answer",
    [
        ISSUE_EXAMPLE,
        BODY + "\n## Links\n\n- [[journal#j-2026-04-01-call]] (0.82)\n- [[daily-2026-04-02]]\n",
        BODY + "\nNEIGHBORS:\n- journal#j-2026-04-01-call 0.82\n- daily-2026-04-02 (0.41)\n",
        BODY + "\n→ journal#j-2026-04-01-call (0.82)\n-> daily-2026-04-02 (0.41)\n",
        BODY + "\n[[journal#j-2026-04-01-call]] [[daily-2026-04-02]]\n",
        BODY + "\n**Neighbours (by strength):**\nsome free text about them\n",
        BODY + "\nLinks:\n→ a (0.8)\n\nBacklinks (2):\n← b (0.3)\n← c (0.1)\n\n\n",
        BODY + "Links:\n  → journal#j-2026-04-01-call (0.82)\n",  # no blank line above Links:
        BODY + "Related:\n",  # an empty links section
    ],
)
def test_links_sections_are_stripped(answer: str) -> None:
    rendered = parse_render(answer)
    assert rendered == Rendered(BODY, "text", True)
    parsed = parse_tags(rendered.content)
    assert parsed.scores == {"tenderness": 8.0, "warmth": 9.0}
    assert parsed.text == "Spent the evening helping Mara rewrite her eulogy."


def test_without_stripping_the_tags_are_not_trailing() -> None:
    """Why the footer must go: the tag parser alone finds no labels in the example."""
    assert parse_tags(ISSUE_EXAMPLE).scores == {}
    assert parse_render(ISSUE_EXAMPLE, FooterRule("")) == Rendered(ISSUE_EXAMPLE, "text", False)


@pytest.mark.parametrize(
    "content",
    [
        BODY,
        "Just prose, no tags.\n",
        "Prose.\n\nLinks are how we remember: a list of them follows tomorrow.\nwarmth:7\n",
        "Shopping.\n\n- eggs\n- milk\n\nwarmth:3\n",
        "Plan:\n→ call Mara\n→ book the train\nwarmth:6 calm:4\n",  # tags end the block
        "Notes.\n\nwarmth: 9\n- joy: 3\n",  # tag lines are never link lines
        "Looked up [[rust lifetimes]] today.\ncuriosity:8\n",
        "CRLF body\r\n\r\nwarmth:9\r\n",
        "",
    ],
)
def test_content_without_a_links_section_is_untouched(content: str) -> None:
    assert parse_render(content) == Rendered(content, "text", False)


def test_crlf_answer_keeps_its_line_endings_above_the_cut() -> None:
    answer = "Body.\r\n\r\nwarmth:9\r\n\r\n## Links\r\n\r\n- [[a]] (0.8)\r\n"
    assert parse_render(answer).content == "Body.\r\n\r\nwarmth:9\r\n"


def test_a_whole_answer_of_links_leaves_nothing() -> None:
    assert parse_render("Links:\n→ a (0.8)\n").content == ""


def test_json_render_uses_its_content_field() -> None:
    answer = '{"key": "a", "content": "Body.\\nwarmth:9\\n", "links": [{"key": "b"}]}'
    assert parse_render(answer) == Rendered("Body.\nwarmth:9\n", "json", False)
    with_footer = '{"content": "Body.\\nwarmth:9\\n\\nLinks:\\n→ b (0.5)\\n"}'
    rendered = parse_render(with_footer)
    assert (rendered.content, rendered.format, rendered.footer_stripped) == (
        "Body.\nwarmth:9\n", "json", True,
    )  # fmt: skip


@pytest.mark.parametrize(
    "answer",
    ['{"text": "Body."}', '{"content": 5}', "{not json at all", '["content"]'],
)
def test_json_without_a_content_string_is_taken_as_text(answer: str) -> None:
    assert parse_render(answer) == Rendered(answer, "text", False)


def test_footer_regex_overrides_the_default_rule() -> None:
    answer = "Body.\nwarmth:9\n\n-- links --\nsee: journal#a\n"
    assert parse_render(answer).content == answer  # the default rule does not know it
    rule = FooterRule("^-- links --$")
    assert parse_render(answer, rule).content == "Body.\nwarmth:9\n"
    # the last match starts the footer: an earlier mention in the body stays
    twice = "Body.\n-- links --\nmore body\nwarmth:9\n-- links --\n→ a\n"
    assert parse_render(twice, rule).content == "Body.\n-- links --\nmore body\nwarmth:9\n"
    # with a regex, a section the default rule would strip is left alone
    assert parse_render(ISSUE_EXAMPLE, rule).content == ISSUE_EXAMPLE
    assert FooterRule("").strip(ISSUE_EXAMPLE) == (ISSUE_EXAMPLE, False)
    assert [FooterRule(p).describe() for p in (None, "", "^x")] == [
        "default", "off", "regex '^x'",
    ]  # fmt: skip


def test_bad_footer_regex_fails_when_the_rule_is_built() -> None:
    with pytest.raises(re.error):
        FooterRule("(unclosed")


@pytest.mark.parametrize(
    ("line", "header", "link"),
    [
        ("Links:", True, False), ("## Links", True, False), ("neighbors:", True, False),
        ("**Related**", True, False), ("Backlinks (3):", True, False),
        ("Links are good.", False, False), ("Links: see below", False, False),
        ("  → journal#j-1 (0.82)", False, True), ("- key 0.83", False, True),
        ("* key (0.83)", False, True), ("[[key]]", False, True), ("- [[a]], [[b]] 0.5", False, True),
        ("- eggs", False, False), ("warmth:9 calm:2", False, False), ("- warmth: 9", False, False),
        ("key 0.83", False, False),
    ],
)  # fmt: skip
def test_line_kinds(line: str, header: bool, link: bool) -> None:
    assert (is_link_header(line), is_link_line(line)) == (header, link)
