"""The memory_query pipeline language: every stage, their composition, and parse errors.

Expected results are written out by hand for a small graph, or computed with plain
Python (`sorted`, `operator`, `fnmatch`) for generated graphs.
"""

from __future__ import annotations

import fnmatch
import operator
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amygdala.graph.nodes import Node
from amygdala.graph.query import QueryError, parse_query, query_nodes, timestamp_sort_key

NODES = [
    Node("journal#j-2026-04-02-kitchen", "Kitchen talk.\nwarmth:9", "episodic_session",
         "2026-04-02T21:14:00", 0.8),
    Node("daily-2026-04-02", "A long day of small fixes and one good conversation.",
         "episodic_daily", "2026-04-02T23:59:00", 0.5),
    Node("note#rust-lifetimes", "Lifetimes are promises.", "semantic", None, 1.0),
    Node("journal#j-2026-03-30-harbour", "Harbour.", "episodic_session",
         "2026-03-30T08:00:00Z", None),
    Node("weekly-2026-w14", "Week 14.", "episodic_weekly", "2026-04-05", 0.5),
    Node("episodicfoo", "Not an episodic type.", "episodicfoo", None, 0.1),
    Node("untyped", "No type at all.", None, "1775000000", 2.0),
]  # fmt: skip


def keys(query: str, nodes: list[Node] = NODES) -> list[str]:
    return [n.key for n in query_nodes(query, nodes)]


def test_all_keeps_every_node_in_graph_order() -> None:
    assert keys("all") == [n.key for n in NODES]
    assert keys("  all |all ") == [n.key for n in NODES]


def test_type_matches_exact_type_and_family_but_not_lookalikes() -> None:
    assert keys("type:episodic") == [
        "journal#j-2026-04-02-kitchen",
        "daily-2026-04-02",
        "journal#j-2026-03-30-harbour",
        "weekly-2026-w14",
    ]
    assert keys("type:episodic_daily") == ["daily-2026-04-02"]
    assert keys("type:semantic") == ["note#rust-lifetimes"]
    assert keys("type:episodicfoo") == ["episodicfoo"]
    assert keys("type:*_weekly") == ["weekly-2026-w14"]
    assert keys("type:session") == []


def test_key_glob_is_case_sensitive_and_crosses_hash() -> None:
    assert keys("key:journal#*") == ["journal#j-2026-04-02-kitchen", "journal#j-2026-03-30-harbour"]
    assert keys("key:*2026-04-0?*") == [
        "journal#j-2026-04-02-kitchen",
        "daily-2026-04-02",
    ]
    assert keys("key:JOURNAL#*") == []
    assert keys("key:untyped") == ["untyped"]


@pytest.mark.parametrize(
    ("op", "fn"),
    [(">", operator.gt), (">=", operator.ge), ("<", operator.lt), ("<=", operator.le),
     ("=", operator.eq), ("==", operator.eq), ("!=", operator.ne)],
)  # fmt: skip
@pytest.mark.parametrize("number", [0.5, 1, 0])
def test_weight_comparisons_drop_nodes_without_weight(op: str, fn: object, number: float) -> None:
    expected = [n.key for n in NODES if n.weight is not None and fn(n.weight, number)]  # type: ignore[operator]
    assert keys(f"weight:{op}{number}") == expected
    assert keys(f"weight: {op} {number}") == expected


def test_content_len_counts_raw_characters_including_tag_lines() -> None:
    assert keys("content-len:<=8") == ["journal#j-2026-03-30-harbour", "weekly-2026-w14"]
    assert keys("content-len:==22") == ["journal#j-2026-04-02-kitchen"]  # 13 + \n + 8
    long = [n.key for n in NODES if len(n.content) > 20]
    assert keys("content-len:>20") == long


def test_sort_by_each_field_with_missing_values_last() -> None:
    assert keys("sort:key") == sorted(n.key for n in NODES)
    assert keys("sort:key:desc") == sorted((n.key for n in NODES), reverse=True)
    by_len = sorted(NODES, key=lambda n: len(n.content))
    assert keys("sort:content-len") == [n.key for n in by_len]
    # weight: ties (0.5, 0.5) keep graph order; no weight goes last in both directions
    assert keys("sort:weight") == [
        "episodicfoo", "daily-2026-04-02", "weekly-2026-w14", "journal#j-2026-04-02-kitchen",
        "note#rust-lifetimes", "untyped", "journal#j-2026-03-30-harbour",
    ]  # fmt: skip
    assert keys("sort:weight:desc") == [
        "untyped", "note#rust-lifetimes", "journal#j-2026-04-02-kitchen", "daily-2026-04-02",
        "weekly-2026-w14", "episodicfoo", "journal#j-2026-03-30-harbour",
    ]  # fmt: skip


def test_sort_timestamp_reads_iso_and_epoch_as_time() -> None:
    # 1775000000 = 2026-03-31T23:33:20Z: between the harbour entry and the kitchen entry
    assert keys("sort:timestamp") == [
        "journal#j-2026-03-30-harbour", "untyped", "journal#j-2026-04-02-kitchen",
        "daily-2026-04-02", "weekly-2026-w14", "note#rust-lifetimes", "episodicfoo",
    ]  # fmt: skip
    assert keys("type:episodic | sort:timestamp:desc | limit:2") == [
        "weekly-2026-w14",
        "daily-2026-04-02",
    ]


def test_timestamp_key_orders_by_instant_not_text() -> None:
    stamps = ["2026-04-02T10:00:00+02:00", "2026-04-02T09:00:00Z", "2026-04-02T08:30:00",
              "1775120000", "not a date", "2026-04-01"]  # fmt: skip
    instants = {
        "2026-04-02T10:00:00+02:00": datetime(2026, 4, 2, 8, 0, tzinfo=timezone.utc),
        "2026-04-02T09:00:00Z": datetime(2026, 4, 2, 9, 0, tzinfo=timezone.utc),
        "2026-04-02T08:30:00": datetime(2026, 4, 2, 8, 30, tzinfo=timezone.utc),
        "1775120000": datetime.fromtimestamp(1775120000, tz=timezone.utc),
        "2026-04-01": datetime(2026, 4, 1, tzinfo=timezone.utc),
    }
    expected = sorted(instants, key=instants.__getitem__) + ["not a date"]
    assert sorted(stamps, key=timestamp_sort_key) == expected


def test_limit_and_stage_order_matter() -> None:
    assert keys("limit:0") == []
    assert keys("limit:100") == [n.key for n in NODES]
    assert keys("sort:weight:desc | limit:2") == ["untyped", "note#rust-lifetimes"]
    assert keys("limit:2 | sort:weight:desc") == [
        "journal#j-2026-04-02-kitchen",
        "daily-2026-04-02",
    ]


def test_query_does_not_modify_its_input() -> None:
    nodes = list(NODES)
    query_nodes("sort:key:desc | limit:3", nodes)
    assert nodes == NODES


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("", "empty query"),
        ("   ", "empty query"),
        ("bogus", "unknown stage 'bogus'"),
        ("all | wieght:>1", "stage 2: unknown stage 'wieght:>1'"),
        ("all || limit:1", "stage 2: empty stage"),
        ("limit:1 |", "stage 2: empty stage"),
        ("weight:>abc", "weight:<op><number>"),
        ("weight:>", "weight:<op><number>"),
        ("weight:~1", "weight:<op><number>"),
        ("weight:>nan", "weight:<op><number>"),
        ("content-len:1", "content-len:<op><number>"),
        ("limit:-1", "n a whole number >= 0"),
        ("limit:2.5", "n a whole number >= 0"),
        ("sort:color", "cannot sort by 'color'"),
        ("sort:key:up", "sort direction must be asc or desc"),
        ("type:", "type: needs a value"),
        ("key:  ", "key: needs a value"),
    ],
)
def test_parse_errors_name_the_stage_and_the_fix(query: str, fragment: str) -> None:
    with pytest.raises(QueryError) as info:
        parse_query(query)
    assert fragment in str(info.value)
    if "unknown stage" in fragment:
        assert "type:, key:, weight:, content-len:, sort:, limit:" in str(info.value)


# -- property-based: generated graphs against plain-Python references ------------------

node_types = st.sampled_from([None, "semantic", "episodic_session", "episodic_daily"])
weights = st.one_of(st.none(), st.floats(-5, 5, allow_nan=False).map(lambda x: round(x, 2)))
graph = st.lists(
    st.builds(
        Node,
        key=st.text("abc#-", min_size=1, max_size=4),
        content=st.text("xy \n", max_size=12),
        node_type=node_types,
        weight=weights,
    ),
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(graph, st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), st.integers(-3, 3))
def test_weight_filter_matches_operator(nodes: list[Node], op: str, number: int) -> None:
    fn = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
          "==": operator.eq, "!=": operator.ne}[op]  # fmt: skip
    expected = [n for n in nodes if n.weight is not None and fn(n.weight, number)]
    assert query_nodes(f"weight:{op}{number}", nodes) == expected


@settings(max_examples=150, deadline=None)
@given(graph, st.text("abc#-*?", min_size=1, max_size=4))
def test_key_filter_matches_fnmatchcase(nodes: list[Node], pattern: str) -> None:
    expected = [n for n in nodes if fnmatch.fnmatchcase(n.key, pattern)]
    assert query_nodes(f"key:{pattern}", nodes) == expected


@settings(max_examples=150, deadline=None)
@given(graph, st.booleans(), st.integers(0, 30))
def test_sort_then_limit_matches_sorted(nodes: list[Node], desc: bool, n: int) -> None:
    direction = "desc" if desc else "asc"
    with_weight = [x for x in nodes if x.weight is not None]
    expected = sorted(with_weight, key=lambda x: x.weight, reverse=desc)  # type: ignore[arg-type,return-value]
    expected += [x for x in nodes if x.weight is None]
    assert query_nodes(f"sort:weight:{direction} | limit:{n}", nodes) == expected[:n]
    by_key = sorted(nodes, key=lambda x: x.key, reverse=desc)
    assert query_nodes(f"all | sort:key:{direction}", nodes) == by_key
