"""Both input layouts load into one Corpus with the documented label rules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from amygdala.corpus import NEGATIVE, POSITIVE, load_corpus, load_stories, read_paragraphs
from amygdala.errors import CorpusError


def write_jsonl(path: Path, rows: list[object]) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def label(corpus: object, text: str, concept: str, split: str = "train") -> int:
    c = corpus  # type: ignore[assignment]
    labels = c.train if split == "train" else c.heldout  # type: ignore[attr-defined]
    return int(labels[c.texts.index(text), c.concepts.index(concept)])  # type: ignore[attr-defined]


def test_training_dir_dedupes_texts_and_splits(tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "joy.jsonl",
        [
            {"emotion": "joy", "polarity": "positive", "text": "A", "split": "train"},
            {"emotion": "joy", "polarity": "negative", "text": "B", "split": "train"},
            {"emotion": "joy", "polarity": "positive", "text": "H", "split": "heldout"},
        ],
    )
    write_jsonl(
        tmp_path / "fear.jsonl",
        [
            {"emotion": "fear", "polarity": "positive", "text": "B", "split": "train"},
            {"emotion": "fear", "polarity": "negative", "text": "A", "split": "train"},
        ],
    )
    (tmp_path / "manifest.json").write_text("{}")
    corpus = load_corpus(tmp_path)
    assert corpus.concepts == ("fear", "joy")
    assert sorted(corpus.texts) == ["A", "B", "H"]  # each text once
    assert label(corpus, "A", "joy") == POSITIVE and label(corpus, "A", "fear") == NEGATIVE
    assert label(corpus, "B", "fear") == POSITIVE and label(corpus, "B", "joy") == NEGATIVE
    assert label(corpus, "H", "joy") == 0 and label(corpus, "H", "joy", "heldout") == POSITIVE
    assert corpus.counts() == {"fear": (1, 1), "joy": (1, 1)}


def test_rows_without_split_all_train(tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "calm.jsonl",
        [
            {"emotion": "calm", "polarity": "positive", "text": "x"},
            {"emotion": "calm", "polarity": "negative", "text": "y"},
        ],
    )
    assert load_corpus(tmp_path).counts() == {"calm": (1, 1)}


def test_bad_rows_are_counted_with_location(tmp_path: Path) -> None:
    (tmp_path / "joy.jsonl").write_bytes(
        b'{"emotion": "joy", "polarity": "positive", "text": "fine"}\n'
        b"{not json\n"
        b"\xff\xfe\n"
        b"[1, 2]\n"
        b'{"emotion": "joy", "polarity": "maybe", "text": "t"}\n'
        b'{"emotion": "joy", "polarity": "negative", "text": "   "}\n'
        b'{"emotion": "joy", "polarity": "negative", "text": "ok", "split": "dev"}\n'
        b'{"emotion": "joy", "polarity": "negative", "text": "ok2"}\n'
    )
    corpus = load_corpus(tmp_path)
    assert corpus.counts() == {"joy": (1, 1)}
    where = [p.split(":")[1] for p in corpus.problems]
    assert where == ["2", "3", "4", "5", "6", "7"]
    assert "not valid JSON" in corpus.problems[0] and "UTF-8" in corpus.problems[1]


def test_stories_negative_rule(tmp_path: Path) -> None:
    (tmp_path / "stories").mkdir()
    (tmp_path / "stories" / "joy.txt").write_text("Joy one.\n\nJoy two\ncontinued.\n")
    (tmp_path / "stories" / "fear.txt").write_text("Fear one.\n")
    (tmp_path / "direct").mkdir()
    (tmp_path / "direct" / "joy.txt").write_text("I feel great.\n")
    (tmp_path / "paired" / "kitchen").mkdir(parents=True)
    (tmp_path / "paired" / "kitchen" / "baseline.txt").write_text("He made tea.\n")
    (tmp_path / "paired" / "kitchen" / "fear.txt").write_text("He made tea, hands shaking.\n")
    (tmp_path / "_neutral.txt").write_text("The bus leaves at nine.\n\nRain is water.\n")
    corpus = load_stories(tmp_path)
    assert corpus.concepts == ("fear", "joy")
    joy_pos = {"Joy one.", "Joy two continued.", "I feel great."}
    fear_pos = {"Fear one.", "He made tea, hands shaking."}
    shared = {"He made tea.", "The bus leaves at nine.", "Rain is water."}
    for concept, pos, other in (("joy", joy_pos, fear_pos), ("fear", fear_pos, joy_pos)):
        col = corpus.train[:, corpus.concepts.index(concept)]
        got_pos = {t for t, v in zip(corpus.texts, col) if v == POSITIVE}
        got_neg = {t for t, v in zip(corpus.texts, col) if v == NEGATIVE}
        assert got_pos == pos
        assert got_neg == other | shared  # other concepts' positives + baselines + neutral
    assert not (corpus.heldout != 0).any()
    assert len(corpus.texts) == len(set(corpus.texts)) == 8


def test_paragraphs_handle_crlf_and_whitespace(tmp_path: Path) -> None:
    p = tmp_path / "x.txt"
    p.write_bytes(b"one\r\nline\r\n\r\n  \r\ntwo  \r\n")
    assert read_paragraphs(p) == ["one line", "two"]


@pytest.mark.parametrize("layout", ["missing", "empty", "no-rows"])
def test_unusable_directory_errors(tmp_path: Path, layout: str) -> None:
    target = tmp_path / "data"
    if layout != "missing":
        target.mkdir()
    if layout == "no-rows":
        (target / "joy.jsonl").write_text("{bad\n")
    with pytest.raises(CorpusError):
        load_corpus(target)


def test_labels_are_int8(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", [{"emotion": "a", "polarity": "positive", "text": "t"}])
    assert load_corpus(tmp_path).train.dtype == np.int8
