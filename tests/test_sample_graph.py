"""The bundled sample memory graph has the properties the demo and its README promise.

Read with the json module and a small tag-line reader written here, independently of
`amygdala.graph`, so that a bug in the project's parser cannot hide a flaw in the data
(and the data cannot quietly stop exercising a rule the parser handles).
"""

from __future__ import annotations

import importlib.resources
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

EMOTIONS = (
    "amusement",
    "anxiety",
    "awe",
    "calm",
    "clarity",
    "curiosity",
    "fear",
    "frustration",
    "gratitude",
    "guilt",
    "joy",
    "loneliness",
    "pride",
    "sadness",
    "tenderness",
    "warmth",
)
NODE_TYPES = {
    "journal#": "episodic_session",
    "daily-": "episodic_daily",
    "weekly-": "episodic_weekly",
    "monthly-": "episodic_monthly",
    "note#": "semantic",
}
FIELDS = {"key", "content", "node_type", "timestamp", "weight", "provenance"}
MIN_CHARS = 40
MAX_CHARS = 700
MIN_POSITIVES = 18  # live nodes with score >= 8 and at least MIN_CHARS of text, per emotion
TIMESTAMP_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
SCORE_RE = re.compile(r"^(?:\d+(?:\.\d*)?|\.\d+)$")


def _graph_path() -> Path:
    resource = importlib.resources.files("amygdala") / "data" / "sample_graph.jsonl"
    return Path(str(resource))


@dataclass
class Tags:
    """What this module's reader found in one node's content."""

    text: str
    lines: list[str] = field(default_factory=list)  # trailing tag lines, bottom first
    scores: dict[str, float] = field(default_factory=dict)
    bad: list[str] = field(default_factory=list)
    names_seen: list[str] = field(default_factory=list)  # every valid name, repeats kept


def _is_tag_line(line: str) -> bool:
    """Every token is `name:value` (or `:value`) with something after the colon."""
    tokens = [t for t in re.split(r"[\s,]+", line.strip()) if t]
    return bool(tokens) and all(
        t.count(":") == 1
        and t.split(":")[1]
        and (not t.split(":")[0] or NAME_RE.match(t.split(":")[0]))
        for t in tokens
    )


def read_tags(content: str) -> Tags:
    """Split trailing tag lines off `content`; valid scores merge, repeated names keep the max."""
    lines = content.split("\n")
    tags = Tags(text="")
    while lines and (not lines[-1].strip() or _is_tag_line(lines[-1])):
        line = lines.pop()
        if not line.strip():
            continue
        tags.lines.append(line)
        for token in (t for t in re.split(r"[\s,]+", line.strip()) if t):
            name, value = token.split(":")
            ok = bool(name) and bool(SCORE_RE.match(value)) and float(value) <= 10
            if not ok:
                tags.bad.append(token)
                continue
            key = name.lower().replace("-", "_")
            tags.names_seen.append(key)
            tags.scores[key] = max(float(value), tags.scores.get(key, 0.0))
    tags.text = "\n".join(lines).strip()
    return tags


@pytest.fixture(scope="module")
def records() -> list[dict]:
    path = _graph_path()
    assert path.is_file(), f"{path} is missing from the package"
    raw = path.read_bytes()
    assert raw.endswith(b"\n") and b"\r" not in raw
    return [json.loads(line) for line in raw.decode("utf-8").splitlines()]


@pytest.fixture(scope="module")
def live(records: list[dict]) -> dict[str, dict]:
    """Later lines supersede earlier ones; deleted keys are dropped (docs/architecture.md)."""
    latest: dict[str, dict] = {}
    for record in records:
        latest[record["key"]] = record
    return {k: r for k, r in latest.items() if not r.get("deleted")}


def test_every_record_has_the_node_shape(records: list[dict]) -> None:
    assert len(records) >= 320
    for record in records:
        assert FIELDS <= set(record) <= FIELDS | {"deleted"}, record["key"]
        prefix = next(p for p in NODE_TYPES if record["key"].startswith(p))
        assert record["node_type"] == NODE_TYPES[prefix], record["key"]
        assert TIMESTAMP_RE.match(record["timestamp"]), record["key"]
        assert isinstance(record["weight"], float) and 0 < record["weight"] <= 1
        assert isinstance(record["provenance"], str) and record["provenance"]
        assert isinstance(record["content"], str) and record["content"].strip()
        assert record.get("deleted", True) is True  # present only as `true`
    stamps = [r["timestamp"] for r in records]
    assert stamps == sorted(stamps), "records are written in time order"


def test_keys_repeat_only_as_later_different_versions(records: list[dict]) -> None:
    by_key: dict[str, list[dict]] = {}
    for record in records:
        by_key.setdefault(record["key"], []).append(record)
    repeated = {k: v for k, v in by_key.items() if len(v) > 1}
    superseded = [k for k, v in repeated.items() if not v[-1].get("deleted")]
    assert len(superseded) >= 4 and all(len(v) == 2 for v in repeated.values())
    for versions in repeated.values():
        first, last = versions
        assert first["timestamp"] < last["timestamp"]
        assert read_tags(first["content"]).text != read_tags(last["content"]).text
    deleted = [r for r in records if r.get("deleted")]
    assert len(deleted) >= 5
    assert any(r["key"] in repeated for r in deleted), "a deletion of an earlier live node"
    assert any(r["key"] not in repeated for r in deleted), "a node that is only ever deleted"


def test_every_emotion_has_enough_positives_and_negatives(live: dict[str, dict]) -> None:
    parsed = [read_tags(r["content"]) for r in live.values()]
    usable = [t for t in parsed if t.scores and len(t.text) >= MIN_CHARS]
    for emotion in EMOTIONS:
        positives = [t for t in usable if t.scores.get(emotion, 0) >= 8]
        absent = [t for t in usable if emotion not in t.scores]
        assert len(positives) >= MIN_POSITIVES, (emotion, len(positives))
        assert len(absent) >= 5 * len(positives), emotion
        # the label is carried by the situation, not by naming it
        named = [t for t in positives if re.search(rf"\b{emotion}\b", t.text, re.IGNORECASE)]
        assert len(named) <= len(positives) // 10, (emotion, len(named))
    assert len({e for t in usable for e, s in t.scores.items() if s >= 8}) >= 14


def test_prose_has_bounded_length_except_the_deliberate_short_nodes(live: dict[str, dict]) -> None:
    short = 0
    for key, record in live.items():
        text = read_tags(record["content"]).text
        if len(text) < MIN_CHARS:
            short += 1  # the deliberate too-short nodes
            continue
        assert len(text) <= MAX_CHARS, key
        assert "\n\n" not in text, key
    assert 3 <= short <= 10


def test_texts_are_unique(live: dict[str, dict]) -> None:
    texts = Counter(read_tags(r["content"]).text for r in live.values())
    assert texts.most_common(1)[0][1] == 1


def test_edge_cases_are_all_present(live: dict[str, dict]) -> None:
    parsed = {k: read_tags(r["content"]) for k, r in live.items()}
    lines = [line for t in parsed.values() for line in t.lines]
    bad = [b for t in parsed.values() for b in t.bad]
    untagged = [k for k, t in parsed.items() if not t.lines]
    assert len(untagged) >= 8
    for token in ("warmth:eleven", "fear:14", ":5", "joy:NaN"):
        assert token in bad, token
    assert any(t.bad and t.scores for t in parsed.values()), "bad tokens mixed with valid ones"
    assert any(t.bad and not t.scores for t in parsed.values()), "a node with only bad tokens"
    assert any("," in line for line in lines), "comma-separated tags"
    assert any(re.search(r"[A-Z][a-z]*:\d", line) for line in lines), "mixed-case names"
    assert any(re.search(r"[A-Za-z]-[A-Za-z]+:\d", line) for line in lines), "hyphenated names"
    assert any(re.search(r":\d+\.\d", line) for line in lines), "decimal scores"
    assert sum(len(t.lines) >= 2 for t in parsed.values()) >= 2, "several trailing tag lines"
    assert any(len(t.names_seen) > len(set(t.names_seen)) for t in parsed.values()), (
        "a repeated name"
    )
    colon_prose = [t for t in parsed.values() if t.lines and ":" in t.text.rsplit("\n", 1)[-1]]
    assert len(colon_prose) >= 2, "a prose line with a colon right above the tag line"
    interior = [t for t in parsed.values() if any(_is_tag_line(x) for x in t.text.split("\n"))]
    assert interior, "a tag line pasted inside a digest"


def test_scores_are_finite_and_in_range(live: dict[str, dict]) -> None:
    for record in live.values():
        for score in read_tags(record["content"]).scores.values():
            assert math.isfinite(score) and 0 <= score <= 10
