"""Selection: tagged memory nodes → positive and negative examples per emotion.

The rules (docs/architecture.md, "Selecting examples"; flag names from the original design):

* A node's text is its content with tag lines removed (`amygdala.graph.tags`). Nodes
  whose text is shorter than `--min-content-chars` are skipped, and so are nodes with no
  valid tag (untagged, or only malformed tags): an untagged node is *unknown* for every
  emotion, never a negative. A node whose text repeats another node's text exactly is
  skipped too (the one with the smaller key stays), so one text cannot land in both
  splits or be both a positive and a negative.
* **Positive** for E: score(E) ≥ `--min-positive-score` (8).
* **Negative** for E: E is absent from the node's tags or scores low — at most
  `--max-negative-score` (3, inclusive) — and the text names E at most
  `--max-negative-mentions` (0) times. A mention is a case-insensitive whole-word match
  of the name with `_` read as a space or hyphen (`on_edge` matches "on edge",
  "On-Edge", "on_edge"; `fear` does not match "fearful"). A node with a bad token for E
  (`warmth:eleven`) is not a negative for E: its agent meant to score it.
  Scores between the two thresholds are neither.
* `--max-examples-per-emotion` (500; 0 = no cap) caps positives and negatives each.
  Negatives are not cut to the positives' count (every text runs through the model once
  anyway). The sample is deterministic: candidates are ranked by
  sha256(seed, emotion, polarity, key) and the first K are kept, so it does not depend
  on input order or machine.
* Emotions with fewer than `--min-positives` positives, or no negatives, are left out
  and reported with the reason. By default the emotions are every name that appears in a
  valid tag; `--emotions` picks them.
* `split` is "heldout" for a node when sha256(seed, "split", key) falls in the first
  `--heldout-fraction` of the hash range, else "train": a node keeps its split whatever
  other nodes are added or removed, and is in the same split for every emotion.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from amygdala._names import NAME_RULE, concept_name
from amygdala.errors import ConfigError
from amygdala.graph.nodes import Node
from amygdala.graph.tags import MAX_SCORE, ParsedTags, parse_tags

Polarity = Literal["positive", "negative"]
Split = Literal["train", "heldout"]

# Reasons a node is not used, in the order they are checked (one reason per node).
SKIP_REASONS = (
    "deleted",
    "invalid_unicode",
    "too_short",
    "untagged",
    "malformed_tags_only",
    "duplicate_key",
    "duplicate_text",
)
MALFORMED_EXAMPLES = 20  # malformed tag tokens listed by name in the summary


@dataclass(frozen=True)
class SelectionOptions:
    """The selection flags; defaults are the original design's."""

    min_positive_score: float = 8.0  # positive when score(E) >= this
    max_negative_score: float = 3.0  # negative only when score(E) <= this (or E absent)
    max_negative_mentions: int = 0  # negative only when the text names E at most this often
    min_content_chars: int = 40  # skip nodes whose tag-stripped text is shorter
    max_examples_per_emotion: int = 500  # cap on positives and on negatives, each; 0 = none
    emotions: tuple[str, ...] | None = None  # None: every emotion seen in a valid tag
    min_positives: int = 10  # emotions with fewer positives are reported and left out
    heldout_fraction: float = 0.2  # share of nodes (by key hash) written as split "heldout"
    seed: int = 0  # changes the capped sample and the split, nothing else

    def __post_init__(self) -> None:
        for flag, value in (
            ("--min-positive-score", self.min_positive_score),
            ("--max-negative-score", self.max_negative_score),
        ):
            if not (
                isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value <= MAX_SCORE
            ):
                raise ConfigError(f"{flag} must be a number from 0 to 10, got {value!r}")
        if self.max_negative_score >= self.min_positive_score:
            raise ConfigError(
                f"--max-negative-score ({self.max_negative_score:g}) must be below "
                f"--min-positive-score ({self.min_positive_score:g})"
            )
        for flag, value, least in (
            ("--max-negative-mentions", self.max_negative_mentions, 0),
            ("--min-content-chars", self.min_content_chars, 0),
            ("--max-examples-per-emotion", self.max_examples_per_emotion, 0),
            ("--min-positives", self.min_positives, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"{flag} must be a whole number >= {least}, got {value!r}")
        cap = self.max_examples_per_emotion
        if 0 < cap < self.min_positives:
            raise ConfigError(
                f"--max-examples-per-emotion {cap} is below --min-positives "
                f"{self.min_positives}: every emotion would be left out"
            )
        if not (isinstance(self.heldout_fraction, (int, float)) and 0 <= self.heldout_fraction < 1):
            raise ConfigError(
                f"--heldout-fraction must be in [0, 1), got {self.heldout_fraction!r}"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"--seed must be a whole number, got {self.seed!r}")
        if self.emotions is not None:
            object.__setattr__(self, "emotions", normalize_emotions(self.emotions))

    def to_json(self) -> dict[str, Any]:
        """The flags as written into manifest.json (integral numbers as ints)."""
        out = asdict(self)
        out["emotions"] = list(self.emotions) if self.emotions is not None else None
        return {k: _plain(v) for k, v in out.items()}


def normalize_emotions(names: Iterable[str]) -> tuple[str, ...]:
    """Normalized, deduplicated, sorted emotion names; ConfigError on a bad one."""
    out = set()
    for raw in names:
        name = concept_name(raw)
        if name is None:
            raise ConfigError(f"--emotions: {raw!r} is not an emotion name ({NAME_RULE})")
        out.add(name)
    if not out:
        raise ConfigError("--emotions names no emotion")
    return tuple(sorted(out))


def _plain(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


@dataclass(frozen=True)
class Example:
    """One row of `<emotion>.jsonl`."""

    emotion: str
    polarity: Polarity
    text: str
    key: str
    score: float | None  # the node's score for the emotion; None when absent
    split: Split

    def to_row(self) -> dict[str, Any]:
        """The row in docs/architecture.md's field order, integral scores written as ints."""
        return {
            "emotion": self.emotion,
            "polarity": self.polarity,
            "text": self.text,
            "key": self.key,
            "score": _plain(self.score),
            "split": self.split,
        }


@dataclass(frozen=True)
class EmotionCounts:
    """Rows written for one emotion, and how many were available before the cap."""

    positive: int
    negative: int
    heldout_positive: int
    heldout_negative: int
    available_positive: int
    available_negative: int

    def to_json(self) -> dict[str, Any]:
        return {
            "positive": self.positive,
            "negative": self.negative,
            "heldout": {"positive": self.heldout_positive, "negative": self.heldout_negative},
            "available": {"positive": self.available_positive, "negative": self.available_negative},
        }


@dataclass(frozen=True)
class SelectionSummary:
    """What selection did with every node, for the printed summary and manifest.json."""

    nodes_seen: int
    nodes_used: int  # tagged, long enough, unique: candidates for every emotion
    skipped: dict[str, int]  # reason (SKIP_REASONS) -> nodes
    malformed_tags: int  # bad tokens in trailing tag lines, all nodes
    nodes_with_malformed_tags: int
    malformed_tag_examples: tuple[str, ...]  # "key: token (reason)", first few by key
    interior_tag_lines: int  # label lines removed from inside a text (not scored)
    emotions: dict[str, EmotionCounts]  # emitted emotions, sorted
    left_out: dict[str, str]  # emotion -> why it was not emitted

    def to_json(self) -> dict[str, Any]:
        return {
            "nodes_seen": self.nodes_seen,
            "nodes_used": self.nodes_used,
            "skipped": dict(self.skipped),
            "malformed_tags": {
                "tokens": self.malformed_tags,
                "nodes": self.nodes_with_malformed_tags,
                "examples": list(self.malformed_tag_examples),
            },
            "interior_tag_lines": self.interior_tag_lines,
            "left_out": dict(self.left_out),
        }


@dataclass(frozen=True)
class Selection:
    """The selected rows per emotion (sorted: positives then negatives, by key)."""

    examples: dict[str, tuple[Example, ...]]
    summary: SelectionSummary
    options: SelectionOptions = field(default_factory=SelectionOptions)


@dataclass(frozen=True)
class _Candidate:
    key: str
    text: str
    scores: dict[str, float]
    blocked: frozenset[str]  # names with a bad token: never a negative for them
    split: Split
    folded: str  # casefolded text: a cheap pre-check before the mention regex


def _rank(*parts: object) -> int:
    """A stable 64-bit rank: the same parts give the same number on any machine."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def split_of(key: str, seed: int, heldout_fraction: float) -> Split:
    """The node's split: a function of its key and the seed only."""
    return "heldout" if _rank(seed, "split", key) < heldout_fraction * 2**64 else "train"


def mention_pattern(emotion: str) -> re.Pattern[str]:
    """Whole-word, case-insensitive matches of `emotion`, `_` read as space/hyphen/`_`."""
    parts = [re.escape(p) for p in emotion.split("_") if p]
    return re.compile(r"(?<![^\W_])" + r"[\s_-]+".join(parts) + r"(?![^\W_])", re.IGNORECASE)


def count_mentions(emotion: str, text: str) -> int:
    """How often `text` names `emotion` (see `mention_pattern`)."""
    return len(mention_pattern(emotion).findall(text))


def _skip_reason(node: Node, parsed: ParsedTags, min_chars: int) -> str | None:
    try:
        parsed.text.encode("utf-8")
        node.key.encode("utf-8")
    except UnicodeEncodeError:
        return "invalid_unicode"
    if len(parsed.text) < min_chars:
        return "too_short"
    if not parsed.had_tag_line:
        return "untagged"
    if not parsed.scores:
        return "malformed_tags_only"
    return None


@dataclass
class _Prepared:
    candidates: list[_Candidate]
    skipped: Counter[str]
    seen_emotions: set[str]
    bad_tokens: int = 0
    bad_nodes: int = 0
    bad_examples: list[str] = field(default_factory=list)
    interior: int = 0


def _prepare(nodes: Sequence[Node], options: SelectionOptions) -> _Prepared:
    """Parse tags, apply the per-node skip rules, and tally what was malformed."""
    by_key: dict[str, Node] = {}
    prep = _Prepared([], Counter(), set())
    for node in nodes:
        if node.deleted:  # sources drop these already; count any that reach us
            prep.skipped["deleted"] += 1
            continue
        if node.key in by_key:
            prep.skipped["duplicate_key"] += 1  # sources should not do this: last one wins
        by_key[node.key] = node
    by_text: dict[str, _Candidate] = {}
    for key in sorted(by_key):
        node = by_key[key]
        parsed = parse_tags(node.content)
        prep.seen_emotions.update(parsed.scores)
        prep.interior += parsed.interior_tag_lines
        if parsed.bad_tokens:
            prep.bad_tokens += len(parsed.bad_tokens)
            prep.bad_nodes += 1
            room = max(MALFORMED_EXAMPLES - len(prep.bad_examples), 0)  # only these are kept
            prep.bad_examples.extend(
                f"{key}: {b.token} ({b.reason})" for b in parsed.bad_tokens[:room]
            )
        reason = _skip_reason(node, parsed, options.min_content_chars)
        if reason is None and parsed.text in by_text:
            reason = "duplicate_text"
        if reason is not None:
            prep.skipped[reason] += 1
            continue
        cand = _Candidate(
            key,
            parsed.text,
            parsed.scores,
            parsed.bad_names,
            split_of(key, options.seed, options.heldout_fraction),
            parsed.text.casefold(),
        )
        by_text[parsed.text] = cand
        prep.candidates.append(cand)
    return prep


def _is_negative(
    c: _Candidate, emotion: str, pattern: re.Pattern[str], options: SelectionOptions
) -> bool:
    if emotion in c.blocked:
        return False
    score = c.scores.get(emotion)
    if score is not None and score > options.max_negative_score:
        return False
    first_word = emotion.split("_", 1)[0]
    if first_word not in c.folded:
        return True  # cannot be mentioned at all
    return len(pattern.findall(c.text)) <= options.max_negative_mentions


def _sample(
    cands: list[_Candidate], emotion: str, polarity: Polarity, options: SelectionOptions
) -> list[_Candidate]:
    cap = options.max_examples_per_emotion
    if cap == 0 or len(cands) <= cap:
        return cands
    ranked = sorted(cands, key=lambda c: (_rank(options.seed, emotion, polarity, c.key), c.key))
    return ranked[:cap]


def _emotion_rows(
    emotion: str, cands: list[_Candidate], options: SelectionOptions
) -> tuple[list[Example], list[Example], int, int]:
    """(positives, negatives, available positives, available negatives) for one emotion."""
    pattern = mention_pattern(emotion)
    pos = [c for c in cands if c.scores.get(emotion, -1.0) >= options.min_positive_score]
    neg = [c for c in cands if _is_negative(c, emotion, pattern, options)]
    rows: list[list[Example]] = []
    groups: tuple[tuple[Polarity, list[_Candidate]], ...] = (("positive", pos), ("negative", neg))
    for polarity, group in groups:
        kept = sorted(_sample(group, emotion, polarity, options), key=lambda c: c.key)
        rows.append(
            [
                Example(emotion, polarity, c.text, c.key, c.scores.get(emotion), c.split)
                for c in kept
            ]
        )
    return rows[0], rows[1], len(pos), len(neg)


def _left_out_reason(
    emotion: str, n_pos: int, n_neg: int, seen: set[str], options: SelectionOptions
) -> str | None:
    if n_pos < options.min_positives:
        where = "" if emotion in seen else "; no node has a valid tag for it"
        return (
            f"{n_pos} positives (score >= {options.min_positive_score:g}), fewer than "
            f"--min-positives {options.min_positives}{where}"
        )
    if n_neg == 0:
        return (
            f"no negatives: every scored node rates it above --max-negative-score "
            f"{options.max_negative_score:g} or names it more than "
            f"--max-negative-mentions {options.max_negative_mentions} times"
        )
    return None


def select(nodes: Sequence[Node], options: SelectionOptions | None = None) -> Selection:
    """Apply the selection rules (module docstring) to a graph's live nodes.

    The result depends only on the set of nodes and the options, not on their order.

    Example:
        >>> sel = select(read.nodes, SelectionOptions(min_positives=5))  # doctest: +SKIP
        >>> sel.summary.emotions["warmth"].positive  # doctest: +SKIP
        42
    """
    options = options or SelectionOptions()
    prep = _prepare(nodes, options)
    wanted = options.emotions if options.emotions is not None else sorted(prep.seen_emotions)
    examples: dict[str, tuple[Example, ...]] = {}
    counts: dict[str, EmotionCounts] = {}
    left_out: dict[str, str] = {}
    # one pass over every valid tag: an emotion with too few positives is left out
    # without a scan of every node for it (linear time, also for 10⁶ distinct tags)
    positives = Counter(
        e for c in prep.candidates for e, s in c.scores.items() if s >= options.min_positive_score
    )
    none: list[Example] = []
    for emotion in wanted:
        if positives[emotion] < options.min_positives:  # left out below, without a scan
            pos, neg, n_pos, n_neg = none, none, positives[emotion], 0
        else:
            pos, neg, n_pos, n_neg = _emotion_rows(emotion, prep.candidates, options)
        reason = _left_out_reason(emotion, n_pos, n_neg, prep.seen_emotions, options)
        if reason is not None:
            left_out[emotion] = reason
            continue
        examples[emotion] = tuple(pos + neg)
        counts[emotion] = EmotionCounts(
            len(pos),
            len(neg),
            sum(e.split == "heldout" for e in pos),
            sum(e.split == "heldout" for e in neg),
            n_pos,
            n_neg,
        )
    summary = SelectionSummary(
        nodes_seen=len(nodes),
        nodes_used=len(prep.candidates),
        skipped={r: prep.skipped[r] for r in SKIP_REASONS if prep.skipped[r]},
        malformed_tags=prep.bad_tokens,
        nodes_with_malformed_tags=prep.bad_nodes,
        malformed_tag_examples=tuple(prep.bad_examples[:MALFORMED_EXAMPLES]),
        interior_tag_lines=prep.interior,
        emotions=counts,
        left_out=left_out,
    )
    return Selection(examples, summary, options)
