"""Training inputs in one shape: unique texts plus, per concept, who is positive or negative.

Two on-disk layouts load into `Corpus` (docs/architecture.md, "Training-data directory"):

* a training-data directory: `<emotion>.jsonl` rows `{emotion, polarity, text, split}`;
  rows with `split == "heldout"` are kept apart for evaluation, and every row trains
  when no row has a split;
* a stories corpus: `stories/<E>.txt`, `direct/<E>.txt`, `paired/<scenario>/<E>.txt`
  are positives of E; a concept's negatives are the other concepts' positives, the
  `paired/*/baseline.txt` texts and the `_*.txt` neutral prose (the original rule).

Texts are deduplicated across concepts: one text is positive for one concept and
negative for many, and it runs through the model once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from amygdala._names import NAME_RULE, concept_name
from amygdala._text import (
    JSONError,
    has_lone_surrogate,
    jsonl_values,
    read_file_bytes,
    read_text_file,
)
from amygdala.errors import CorpusError

POSITIVE, NEGATIVE, UNLABELED = 1, -1, 0


@dataclass(frozen=True)
class Corpus:
    """Unique texts and their labels for every concept.

    `train[i, c]` is +1 when text i is a training positive of concept c, -1 a training
    negative, 0 neither; `heldout` is the same for the held-out split. Row order is
    the order of `texts`; column order the order of `concepts` (sorted).
    """

    texts: tuple[str, ...]
    concepts: tuple[str, ...]
    train: np.ndarray  # int8 [n_texts, n_concepts]
    heldout: np.ndarray  # int8 [n_texts, n_concepts]
    source: str
    problems: tuple[str, ...] = ()  # rows skipped, with where and why

    def __post_init__(self) -> None:
        shape = (len(self.texts), len(self.concepts))
        for name in ("train", "heldout"):
            arr = getattr(self, name)
            if arr.shape != shape:
                raise ValueError(f"{name} labels {arr.shape} != (n_texts, n_concepts) {shape}")

    def counts(self, split: str = "train") -> dict[str, tuple[int, int]]:
        """`{concept: (positives, negatives)}` in one split."""
        labels = self.train if split == "train" else self.heldout
        pos = (labels == POSITIVE).sum(axis=0)
        neg = (labels == NEGATIVE).sum(axis=0)
        return {c: (int(p), int(n)) for c, p, n in zip(self.concepts, pos, neg)}

    def select(self, concepts: list[str]) -> Corpus:
        """The same texts restricted to `concepts` (in the given order)."""
        cols = [self.concepts.index(c) for c in concepts]
        return Corpus(
            self.texts,
            tuple(concepts),
            self.train[:, cols],
            self.heldout[:, cols],
            self.source,
            self.problems,
        )


@dataclass
class _Builder:
    """Collects (text, concept, label, split) facts; later facts never erase a positive."""

    source: str
    text_ids: dict[str, int] = field(default_factory=dict)
    facts: dict[tuple[int, str, bool], int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def add(self, text: str, concept: str, label: int, heldout: bool = False) -> None:
        tid = self.text_ids.setdefault(text, len(self.text_ids))
        key = (tid, concept, heldout)
        # A text listed as both positive and negative for one concept counts as positive.
        self.facts[key] = max(self.facts.get(key, label), label)

    def build(self) -> Corpus:
        concepts = sorted({c for (_, c, _) in self.facts})
        if not concepts:
            raise CorpusError(
                f"{self.source}: no labeled examples found" + _skipped_detail(self.problems)
            )
        col = {c: j for j, c in enumerate(concepts)}
        train = np.zeros((len(self.text_ids), len(concepts)), dtype=np.int8)
        held = np.zeros_like(train)
        for (tid, concept, heldout), label in self.facts.items():
            (held if heldout else train)[tid, col[concept]] = label
        texts = tuple(sorted(self.text_ids, key=self.text_ids.__getitem__))
        return Corpus(texts, tuple(concepts), train, held, self.source, tuple(self.problems))


def load_corpus(path: str | Path) -> Corpus:
    """Load a training-data directory or a stories corpus, detecting which one it is."""
    root = Path(path)
    if root.exists() and not root.is_dir():
        raise CorpusError(
            f"training data directory {root} is a file, not a directory; pass the folder "
            "that holds the <emotion>.jsonl files (or stories/, paired/, direct/)"
        )
    if not root.is_dir():
        raise CorpusError(f"training data directory {root} does not exist")
    if any(root.glob("*.jsonl")):
        return load_training_dir(root)
    if any((root / sub).is_dir() for sub in ("stories", "paired", "direct")):
        return load_stories(root)
    raise CorpusError(
        f"{root} holds neither <emotion>.jsonl files (a training-data directory) "
        "nor stories/, paired/ or direct/ folders (a stories corpus)"
    )


def _read_jsonl_rows(path: Path, problems: list[str]) -> list[dict[str, object]]:
    data = read_file_bytes(
        path,
        error=CorpusError,
        folder_hint="; a training-data directory holds <emotion>.jsonl files: move the rows "
        "into a file or remove the folder",
    )
    rows = []
    for lineno, row in jsonl_values(data):
        if isinstance(row, JSONError):
            problems.append(f"{path.name}:{lineno}: {row}, skipped")
            continue
        if not isinstance(row, dict):
            problems.append(f"{path.name}:{lineno}: not a JSON object, skipped")
            continue
        row["_where"] = f"{path.name}:{lineno}"
        rows.append(row)
    return rows


_Fact = tuple[str, str, int, str | None]  # (text, concept, label, split) of one usable row


def _row_fact(row: Mapping[str, object], default_concept: str | None) -> _Fact:
    """(text, concept, label, split) of one row; raises ValueError with the reason."""
    text = row.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ValueError("missing or empty 'text'")
    if has_lone_surrogate(text):
        raise ValueError("'text' holds a lone surrogate (a \\ud800-style escape), not Unicode text")
    concept = row.get("emotion", default_concept)
    name = concept_name(concept) if isinstance(concept, str) else None
    if name is None:
        raise ValueError(f"bad 'emotion' {concept!r}")
    polarity = row.get("polarity")
    if polarity not in ("positive", "negative"):
        raise ValueError(f'\'polarity\' must be "positive" or "negative", got {polarity!r}')
    split = row.get("split")
    if split is not None and split not in ("train", "heldout"):
        raise ValueError(f'\'split\' must be "train" or "heldout", got {split!r}')
    score = row.get("score")
    if isinstance(score, float) and not math.isfinite(score):
        raise ValueError(f"non-finite 'score' {score!r}")
    label = POSITIVE if polarity == "positive" else NEGATIVE
    return text, name, label, split


def load_training_dir(root: Path) -> Corpus:
    """Read every `<emotion>.jsonl` in `root` (see the module docstring)."""
    builder = _Builder(source=f"training-data:{root}")
    facts: list[_Fact] = []
    for path in sorted(root.glob("*.jsonl")):
        for row in _read_jsonl_rows(path, builder.problems):
            _check_row(row, path.stem, str(row["_where"]), facts, builder.problems)
    return _build_from_facts(builder, facts, f"{root}: no usable rows in any *.jsonl file")


def corpus_from_rows(rows: Iterable[Mapping[str, object]], source: str = "rows") -> Corpus:
    """Training-data rows held in memory → `Corpus`, checked like a `<emotion>.jsonl` file's.

    Each row is a mapping with the training-data fields `emotion`, `polarity`
    (`"positive"`/`"negative"`), `text` and optionally `split` (`"train"`/`"heldout"`);
    other fields (`key`, `score`) are allowed. A bad row is skipped and listed in
    `Corpus.problems` as `rows[i]: <why>, skipped`, with the reasons a file row gets.

    Example:
        >>> c = corpus_from_rows([{"emotion": "joy", "polarity": "positive", "text": "Yes!"},
        ...                       {"emotion": "joy", "polarity": "negative", "text": "No."}])
        >>> c.counts()
        {'joy': (1, 1)}
    """
    builder = _Builder(source=source)
    facts: list[_Fact] = []
    for i, row in enumerate(rows):
        if isinstance(row, Mapping):
            _check_row(row, None, f"rows[{i}]", facts, builder.problems)
        else:
            builder.problems.append(f"rows[{i}]: not a dict (got {type(row).__name__}), skipped")
    return _build_from_facts(builder, facts, f"{source}: no usable rows")


def _check_row(
    row: Mapping[str, object],
    default_concept: str | None,
    where: str,
    facts: list[_Fact],
    problems: list[str],
) -> None:
    """Append the row's fact to `facts`, or `where: <why>, skipped` to `problems`."""
    try:
        facts.append(_row_fact(row, default_concept))
    except ValueError as exc:
        problems.append(f"{where}: {exc}, skipped")


def _build_from_facts(builder: _Builder, facts: list[_Fact], nothing: str) -> Corpus:
    """The usable rows → Corpus; `split` counts only when some row has one."""
    if not facts:
        raise CorpusError(nothing + _skipped_detail(builder.problems))
    any_split = any(split is not None for *_, split in facts)
    for text, concept, label, split in facts:
        builder.add(text, concept, label, heldout=any_split and split == "heldout")
    return builder.build()


def _skipped_detail(problems: Sequence[str], shown: int = 3) -> str:
    """` (N rows skipped): <the commonest reasons, with where>`, or "" without problems:
    an error that only counts skipped rows leaves the user to guess why."""
    if not problems:
        return ""
    by_reason: dict[str, list[str]] = {}
    for line in problems:  # "joy.jsonl:3: <reason>, skipped"
        where, _, reason = line.removesuffix(", skipped").partition(": ")
        by_reason.setdefault(reason, []).append(where)
    ranked = sorted(by_reason.items(), key=lambda item: -len(item[1]))
    parts = [
        f"{reason} ({len(wheres)} rows, first {wheres[0]})"
        if len(wheres) > 1
        else f"{wheres[0]}: {reason}"
        for reason, wheres in ranked[:shown]
    ]
    if len(ranked) > shown:
        parts.append(f"and {len(ranked) - shown} other reasons")
    return f" ({len(problems)} rows skipped): " + "; ".join(parts)


def read_paragraphs(path: Path) -> list[str]:
    """Paragraphs of a text file (blank-line separated), whitespace-normalized per line."""
    raw = read_text_file(
        path, error=CorpusError, folder_hint="; a stories corpus holds <emotion>.txt files"
    )
    blocks = re.split(r"\n\s*\n", raw.replace("\r\n", "\n"))
    return [" ".join(line.strip() for line in b.strip().splitlines()) for b in blocks if b.strip()]


def _story_concept(path: Path, problems: list[str]) -> str | None:
    """The concept a stories file holds positives of (its normalized file name), or None
    with `<path>: <why>, skipped` in `problems` when its name is not a concept name."""
    name = concept_name(path.stem)
    if name is None:
        problems.append(
            f"{path}: file name {path.stem!r} is not a concept name ({NAME_RULE}), skipped"
        )
    return name


def load_stories(root: Path) -> Corpus:
    """Read a stories corpus with the original negative rule (module docstring)."""
    builder = _Builder(source=f"stories:{root}")
    positives: dict[str, list[str]] = {}
    shared_negatives: list[str] = []
    for sub in ("stories", "direct"):
        for path in sorted((root / sub).glob("*.txt")):
            if path.stem.startswith("_"):
                shared_negatives.extend(read_paragraphs(path))
            elif (name := _story_concept(path, builder.problems)) is not None:
                positives.setdefault(name, []).extend(read_paragraphs(path))
    for scenario in sorted(p for p in (root / "paired").glob("*") if p.is_dir()):
        for path in sorted(scenario.glob("*.txt")):
            if path.stem == "baseline" or path.stem.startswith("_"):
                shared_negatives.extend(read_paragraphs(path))
            elif (name := _story_concept(path, builder.problems)) is not None:
                positives.setdefault(name, []).extend(read_paragraphs(path))
    for path in sorted(root.glob("_*.txt")):
        shared_negatives.extend(read_paragraphs(path))
    for concept, texts in sorted(positives.items()):
        for text in texts:
            builder.add(text, concept, POSITIVE)
    for concept in sorted(positives):
        for other, texts in sorted(positives.items()):
            if other != concept:
                for text in texts:
                    builder.add(text, concept, NEGATIVE)
        for text in shared_negatives:
            builder.add(text, concept, NEGATIVE)
    return builder.build()
