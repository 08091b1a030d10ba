"""Selection rules, one test per rule at least, on small graphs built here."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from amygdala.errors import ConfigError
from amygdala.graph.nodes import Node
from amygdala.graph.select import (
    Selection,
    SelectionOptions,
    count_mentions,
    select,
    split_of,
)

LOOSE = SelectionOptions(min_positives=1, heldout_fraction=0.0)


def _body(key: str) -> str:
    return f"Entry {key}: the river was wide and the boats moved slowly past the old pier."


def _node(key: str, tags: str | None, body: str | None = None) -> Node:
    text = body if body is not None else _body(key)
    return Node(key, text if tags is None else f"{text}\n{tags}")


def _rows(sel: Selection, emotion: str, polarity: str) -> list[str]:
    return [e.key for e in sel.examples.get(emotion, ()) if e.polarity == polarity]


def test_score_threshold_makes_positives() -> None:
    nodes = [
        _node("a", "joy:7.9"),
        _node("b", "joy:8"),
        _node("c", "joy:9.5"),
        _node("d", "joy:10"),
        _node("e", "joy:5"),
        _node("f", "joy:3"),
        _node("g", "calm:9"),
    ]
    sel = select(nodes, LOOSE)
    assert _rows(sel, "joy", "positive") == ["b", "c", "d"]
    assert [e.score for e in sel.examples["joy"] if e.polarity == "positive"] == [8, 9.5, 10]
    stricter = select(nodes, replace(LOOSE, min_positive_score=9.5))
    assert _rows(stricter, "joy", "positive") == ["c", "d"]


def test_negatives_are_absent_or_low_and_the_middle_is_neither() -> None:
    nodes = [
        _node("hi", "joy:9"),
        _node("mid", "joy:5"),
        _node("edge", "joy:3"),
        _node("above", "joy:3.1"),
        _node("zero", "joy:0"),
        _node("absent", "calm:9"),
    ]
    sel = select(nodes, LOOSE)
    assert _rows(sel, "joy", "negative") == ["absent", "edge", "zero"]  # <= 3, inclusive
    neg = {e.key: e.score for e in sel.examples["joy"] if e.polarity == "negative"}
    assert neg == {"absent": None, "edge": 3, "zero": 0}
    wider = select(nodes, replace(LOOSE, max_negative_score=5))
    assert _rows(wider, "joy", "negative") == ["above", "absent", "edge", "mid", "zero"]


def test_an_untagged_node_is_unknown_not_negative() -> None:
    nodes = [_node("pos", "joy:9"), _node("tagged", "calm:8"), _node("untagged", None)]
    sel = select(nodes, LOOSE)
    assert _rows(sel, "joy", "negative") == ["tagged"]
    assert all(e.key != "untagged" for rows in sel.examples.values() for e in rows)
    assert sel.summary.skipped == {"untagged": 1}


def test_only_malformed_tags_is_unknown_and_a_bad_token_blocks_that_negative() -> None:
    nodes = [
        _node("pos", "joy:9 calm:9"),
        _node("bad-only", "joy:eleven calm:14"),
        _node("bad-joy", "joy:eleven calm:2"),
        _node("ok", "calm:1"),
    ]
    sel = select(nodes, LOOSE)
    assert sel.summary.skipped == {"malformed_tags_only": 1}
    assert _rows(sel, "joy", "negative") == ["ok"]  # bad-joy meant to score joy
    assert _rows(sel, "calm", "negative") == ["bad-joy", "ok"]
    assert sel.summary.malformed_tags == 3
    assert sel.summary.nodes_with_malformed_tags == 2
    assert sel.summary.malformed_tag_examples == (
        "bad-joy: joy:eleven (score is not a number)",
        "bad-only: joy:eleven (score is not a number)",
        "bad-only: calm:14 (score out of range 0-10)",
    )


def test_mention_rule_keeps_texts_naming_the_emotion_out_of_its_negatives() -> None:
    nodes = [
        _node("pos", "joy:9"),
        _node("once", "calm:8", "There was no joy in the meeting, only long slides and tea."),
        _node("twice", "calm:8", "Joy? JOY was absent from the meeting, only slides and tea."),
        _node("joyful", "calm:8", "A joyful crowd, then a long quiet walk along the canal."),
        _node("plain", "calm:8"),
    ]
    sel = select(nodes, LOOSE)
    assert _rows(sel, "joy", "negative") == ["joyful", "plain"]  # "joyful" is another word
    one = select(nodes, replace(LOOSE, max_negative_mentions=1))
    assert _rows(one, "joy", "negative") == ["joyful", "once", "plain"]


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("I was on edge all day; on-edge, On_Edge, ON  EDGE.", 4),
        ("Nothing like it: one edge, no onedge, edgeon.", 0),
        ("on\nedge", 1),
    ],
)
def test_mentions_of_multiword_names(text: str, count: int) -> None:
    assert count_mentions("on_edge", text) == count


def test_mentions_are_whole_words_any_case() -> None:
    assert count_mentions("fear", "Fear, fear's grip; FEAR. fearful fears afear") == 3


def test_cap_applies_to_positives_and_negatives_each() -> None:
    nodes = [_node(f"p{i:02d}", "joy:9") for i in range(30)]
    nodes += [_node(f"n{i:02d}", "calm:9") for i in range(50)]
    sel = select(nodes, replace(LOOSE, max_examples_per_emotion=10))
    counts = sel.summary.emotions["joy"]
    assert (counts.positive, counts.negative) == (10, 10)
    assert (counts.available_positive, counts.available_negative) == (30, 50)
    # negatives are not cut down to the positives' count
    wide = select(nodes, replace(LOOSE, max_examples_per_emotion=40))
    assert (wide.summary.emotions["joy"].positive, wide.summary.emotions["joy"].negative) == (
        30,
        40,
    )
    unlimited = select(nodes, replace(LOOSE, max_examples_per_emotion=0))
    assert unlimited.summary.emotions["joy"].negative == 50


def test_capped_sample_depends_on_the_seed_not_on_order() -> None:
    nodes = [_node(f"p{i:03d}", "joy:9") for i in range(100)] + [_node("n", "calm:1")]
    opts = replace(LOOSE, max_examples_per_emotion=10)
    base = _rows(select(nodes, opts), "joy", "positive")
    assert base == sorted(base)  # rows are written in key order
    shuffled = nodes[:]
    random.Random(3).shuffle(shuffled)
    assert _rows(select(shuffled, opts), "joy", "positive") == base
    assert _rows(select(nodes, replace(opts, seed=1)), "joy", "positive") != base


def _mixed_graph() -> list[Node]:
    rng = random.Random(7)
    nodes = []
    for i in range(200):
        tags = " ".join(
            f"{e}:{rng.choice([0, 2, 5, 8, 9, 10])}"
            for e in rng.sample(["joy", "calm", "fear", "on_edge"], 2)
        )
        kind = rng.random()
        if kind < 0.1:
            nodes.append(_node(f"k{i:03d}", None))
        elif kind < 0.15:
            nodes.append(_node(f"k{i:03d}", tags + " fear:eleven"))
        elif kind < 0.2:
            nodes.append(_node(f"k{i:03d}", tags, body="Too short."))
        else:
            nodes.append(_node(f"k{i:03d}", tags))
    nodes.append(_node("dup-a", "joy:9", body=_body("same")))
    nodes.append(_node("dup-b", "joy:1", body=_body("same")))
    return nodes


def test_selection_is_invariant_to_input_order() -> None:
    nodes = _mixed_graph()
    opts = SelectionOptions(min_positives=3, max_examples_per_emotion=15, heldout_fraction=0.3)
    expected = select(nodes, opts)
    for seed in range(3):
        shuffled = nodes[:]
        random.Random(seed).shuffle(shuffled)
        assert select(shuffled, opts) == expected


def test_heldout_split_is_stable_by_key() -> None:
    keys = [f"journal#{i}" for i in range(2000)]
    splits = {k: split_of(k, 0, 0.25) for k in keys}
    share = sum(s == "heldout" for s in splits.values()) / len(keys)
    assert 0.22 < share < 0.28
    assert all(split_of(k, 0, 0.0) == "train" for k in keys)
    # a node keeps its split when others come and go, and in every emotion
    nodes = [
        _node(k, "joy:9 calm:1" if i % 2 else "calm:9 joy:0") for i, k in enumerate(keys[:300])
    ]
    opts = SelectionOptions(min_positives=1, heldout_fraction=0.25)
    full = select(nodes, opts)
    part = select(nodes[::3], opts)
    seen: dict[str, str] = {}
    for sel in (full, part):
        for rows in sel.examples.values():
            for e in rows:
                assert seen.setdefault(e.key, e.split) == e.split == splits[e.key]
    counts = full.summary.emotions["joy"]
    assert counts.heldout_positive == sum(splits[k] == "heldout" for k in keys[1:300:2])


def test_min_positives_leaves_out_and_reports() -> None:
    nodes = [_node(f"j{i}", "joy:9") for i in range(4)]
    nodes += [_node(f"c{i}", "calm:9 joy:1") for i in range(5)]
    sel = select(nodes, replace(LOOSE, min_positives=5))
    assert list(sel.examples) == ["calm"]
    assert sel.summary.left_out == {"joy": "4 positives (score >= 8), fewer than --min-positives 5"}
    assert list(select(nodes, replace(LOOSE, min_positives=4)).examples) == ["calm", "joy"]


def test_an_emotion_without_negatives_is_left_out() -> None:
    nodes = [_node(f"j{i}", "joy:9") for i in range(3)]
    sel = select(nodes, LOOSE)
    assert sel.examples == {}
    assert sel.summary.left_out["joy"].startswith("no negatives")


def test_min_content_chars_counts_the_text_without_tags() -> None:
    nodes = [
        _node("short", "joy:9", body="x" * 39),
        _node("exact", "joy:9", body="y" * 40),
        _node("neg", "calm:9"),
    ]
    sel = select(nodes, LOOSE)
    assert _rows(sel, "joy", "positive") == ["exact"]
    assert sel.summary.skipped == {"too_short": 1}
    assert select(nodes, replace(LOOSE, min_content_chars=0)).summary.skipped == {}


def test_tag_lines_never_reach_the_rows() -> None:
    nodes = [_node("a", "joy:9 calm:2\nfear:1"), _node("b", "calm:9")]
    sel = select(nodes, LOOSE)
    for rows in sel.examples.values():
        for e in rows:
            assert e.text == _body(e.key)


def test_default_emotions_are_every_valid_tag_name() -> None:
    nodes = [_node("a", "joy:9 On-Edge:2"), _node("b", "calm:1 fear:eleven")]
    sel = select(nodes, LOOSE)
    assert sorted([*sel.examples, *sel.summary.left_out]) == ["calm", "joy", "on_edge"]


def test_emotions_option_picks_and_reports_unseen_ones() -> None:
    nodes = [_node(f"n{i}", "joy:9 calm:1" if i % 2 else "calm:9 joy:0") for i in range(6)]
    opts = replace(LOOSE, emotions=("JOY", "On-Edge"))
    assert opts.emotions == ("joy", "on_edge")
    sel = select(nodes, opts)
    assert list(sel.examples) == ["joy"]
    assert sel.summary.left_out == {
        "on_edge": "0 positives (score >= 8), fewer than "
        "--min-positives 1; no node has a valid tag for it"
    }


def test_duplicate_texts_are_used_once() -> None:
    nodes = [
        _node("b", "joy:1", body=_body("x")),
        _node("a", "joy:9", body=_body("x")),
        _node("c", "calm:9"),
    ]
    sel = select(nodes, LOOSE)
    assert sel.summary.skipped == {"duplicate_text": 1}
    assert _rows(sel, "joy", "positive") == ["a"]
    assert _rows(sel, "joy", "negative") == ["c"]


def test_summary_counts_every_node_once() -> None:
    nodes = _mixed_graph()
    sel = select(nodes, SelectionOptions(min_positives=3))
    s = sel.summary
    assert s.nodes_seen == len(nodes)
    assert s.nodes_used + sum(s.skipped.values()) == len(nodes)
    assert set(s.skipped) <= {"untagged", "too_short", "duplicate_text", "malformed_tags_only"}
    assert s.skipped["duplicate_text"] == 1
    for emotion, c in s.emotions.items():
        rows = sel.examples[emotion]
        assert c.positive == sum(e.polarity == "positive" for e in rows)
        assert c.heldout_negative == sum(
            e.polarity == "negative" and e.split == "heldout" for e in rows
        )


def test_deleted_nodes_that_reach_selection_are_skipped() -> None:
    nodes = [
        _node("a", "joy:9"),
        Node("b", _body("b") + "\ncalm:9", deleted=True),
        _node("c", "calm:9"),
    ]
    sel = select(nodes, LOOSE)
    assert sel.summary.skipped == {"deleted": 1}
    assert _rows(sel, "joy", "negative") == ["c"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_positive_score": 11}, "--min-positive-score must be a number from 0 to 10"),
        ({"min_positive_score": float("nan")}, "--min-positive-score"),
        ({"max_negative_score": 8}, "--max-negative-score (8) must be below --min-positive-score"),
        ({"max_negative_mentions": -1}, "--max-negative-mentions must be a whole number >= 0"),
        ({"min_content_chars": -5}, "--min-content-chars"),
        ({"max_examples_per_emotion": -1}, "--max-examples-per-emotion"),
        ({"max_examples_per_emotion": 5}, "is below --min-positives 10"),
        ({"min_positives": 0}, "--min-positives must be a whole number >= 1"),
        ({"heldout_fraction": 1.0}, "--heldout-fraction must be in [0, 1)"),
        ({"heldout_fraction": -0.1}, "--heldout-fraction"),
        ({"emotions": ("joy", "no way")}, "'no way' is not an emotion name"),
        ({"emotions": ()}, "--emotions names no emotion"),
    ],
)
def test_options_that_cannot_work_are_config_errors(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        SelectionOptions(**kwargs)  # type: ignore[arg-type]
    assert message in str(info.value)


def test_options_json_records_every_flag() -> None:
    assert SelectionOptions(emotions=("b", "a")).to_json() == {
        "min_positive_score": 8,
        "max_negative_score": 3,
        "max_negative_mentions": 0,
        "min_content_chars": 40,
        "max_examples_per_emotion": 500,
        "emotions": ["a", "b"],
        "min_positives": 10,
        "heldout_fraction": 0.2,
        "seed": 0,
    }
