"""`amygdala extract` end to end: graph file → training-data directory.

The directory is read back with the trainer's own loader (`amygdala.corpus`), so the
contract between the two stages is checked from the consumer's side.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

import amygdala.graph.extract as extract_mod
from amygdala.cli import main
from amygdala.corpus import load_training_dir
from amygdala.errors import GraphError
from amygdala.graph.extract import FORMAT, extract
from amygdala.graph.filesource import FileSource
from amygdala.graph.select import SelectionOptions, select
from amygdala.graph.tags import is_tag_line

EMOTIONS = ["warmth", "fear", "curiosity", "calm"]
PLACES = ["kitchen", "harbour", "library", "train platform", "garden", "office", "hill"]


def _graph_records(n: int = 90, seed: int = 0) -> list[dict[str, object]]:
    """A small graph: tagged, untagged, malformed-tag, short, superseded, deleted nodes."""
    rng = random.Random(seed)
    records: list[dict[str, object]] = []
    for i in range(n):
        place = PLACES[i % len(PLACES)]
        body = (
            f"Entry {i}. I spent the afternoon at the {place} with Mara, going over the "
            f"notes from day {i} and the questions they left."
        )
        picked = rng.sample(EMOTIONS, 2)
        tags = " ".join(f"{e}:{rng.choice([0, 1, 2, 5, 8, 9, 10])}" for e in picked)
        if i % 11 == 0:
            content = body  # untagged
        elif i % 13 == 0:
            content = f"{body}\n{tags} {picked[0]}:eleven"
        elif i % 17 == 0:
            content = f"Short. {i}\n{tags}"
        else:
            content = f"{body}\n\n{tags}\n"
        records.append(
            {"key": f"journal#j-{i:03d}", "content": content, "node_type": "episodic_session"}
        )
    edited = str(records[1]["content"]).replace("Entry 1.", "Entry 1 (edited).")
    records.append({"key": "journal#j-001", "content": edited})
    records.append({"key": "journal#j-002", "deleted": True})
    return records


def _write_jsonl(path: Path, records: list[dict[str, object]], extra: list[str] = ()) -> Path:
    lines = [json.dumps(r, ensure_ascii=False) for r in records] + list(extra)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _tree(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


ARGS = ["--min-positives", "3", "--heldout-fraction", "0.25"]


def test_cli_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    graph = _write_jsonl(tmp_path / "graph.jsonl", _graph_records(), extra=["{broken"])
    out = tmp_path / "data"
    assert main(["extract", "--graph", str(graph), "--output-dir", str(out), *ARGS]) == 0
    err = capsys.readouterr().err
    assert "1 deleted, 2 superseded, 1 malformed" in err  # the tombstone supersedes too
    assert "line 93: not valid JSON" in err
    assert "malformed tags:" in err

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == FORMAT
    assert manifest["source"] == f"file:{graph}"
    assert manifest["selection"]["min_positives"] == 3
    emotions = sorted(manifest["emotions"])
    assert emotions == sorted(EMOTIONS)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["manifest.json", *(f"{e}.jsonl" for e in emotions)]
    )
    graph_summary = manifest["summary"]["graph"]
    assert (graph_summary["deleted"], graph_summary["superseded"]) == (1, 2)
    assert graph_summary["problems"] == [
        "line 93: not valid JSON (Expecting property name "
        "enclosed in double quotes at column 2), skipped"
    ]
    assert manifest["summary"]["skipped"]["untagged"] == 9  # i % 11 == 0 for i < 90

    # the trainer's loader reads exactly the counts the manifest states
    corpus = load_training_dir(out)
    assert corpus.problems == ()
    for emotion in emotions:
        c = manifest["emotions"][emotion]
        train = (c["positive"] - c["heldout"]["positive"], c["negative"] - c["heldout"]["negative"])
        assert corpus.counts("train")[emotion] == train
        assert corpus.counts("heldout")[emotion] == (
            c["heldout"]["positive"],
            c["heldout"]["negative"],
        )
    for text in corpus.texts:  # no label reaches the model
        assert not any(is_tag_line(line) for line in text.split("\n"))
        assert ":eleven" not in text and "warmth:" not in text


def test_rows_follow_the_contract(tmp_path: Path) -> None:
    graph = _write_jsonl(tmp_path / "graph.jsonl", _graph_records())
    out = tmp_path / "data"
    assert main(["extract", "--graph", str(graph), "--output-dir", str(out), *ARGS]) == 0
    records = {r["key"]: r for r in _graph_records()}
    for path in out.glob("*.jsonl"):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert rows
        for row in rows:
            assert list(row) == ["emotion", "polarity", "text", "key", "score", "split"]
            assert row["emotion"] == path.stem
            assert row["polarity"] in ("positive", "negative")
            assert row["split"] in ("train", "heldout")
            assert row["text"] in str(records[row["key"]]["content"])
            if row["polarity"] == "positive":
                assert row["score"] >= 8
            else:
                assert row["score"] is None or row["score"] <= 3
        assert "journal#j-002" not in {r["key"] for r in rows}  # deleted


def test_output_is_byte_identical_for_the_same_graph_in_any_order_or_format(tmp_path: Path) -> None:
    records = _graph_records()
    first = _write_jsonl(tmp_path / "a.jsonl", records)
    # same graph, lines shuffled (a key's versions keep their relative order)
    live = {}
    for r in records:
        live[r["key"]] = r
    shuffled = list(live.values())
    random.Random(5).shuffle(shuffled)
    second = _write_jsonl(tmp_path / "b.jsonl", shuffled)
    third = tmp_path / "c.json"
    third.write_text(json.dumps(records, indent=1))
    trees = []
    for i, graph in enumerate([first, second, third, first]):
        out = tmp_path / f"out{i}"
        assert main(["extract", "--graph", str(graph), "--output-dir", str(out), *ARGS]) == 0
        trees.append(_tree(out))
    assert trees[0] == trees[3]  # same file twice: every byte, manifest included
    for tree in trees[1:3]:
        assert tree.keys() == trees[0].keys()
        for name in tree:
            if name != "manifest.json":
                assert tree[name] == trees[0][name], name
        a, b = json.loads(trees[0]["manifest.json"]), json.loads(tree["manifest.json"])
        for m in (a, b):
            del m["source"], m["summary"]["graph"]
        assert a == b


def test_python_m_entry_point_matches_the_subcommand(tmp_path: Path) -> None:
    graph = _write_jsonl(tmp_path / "graph.jsonl", _graph_records())
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["extract", "--graph", str(graph), "--output-dir", str(a), *ARGS]) == 0
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "amygdala.extract_training_pairs",
            "--graph",
            str(graph),
            "--output-dir",
            str(b),
            *ARGS,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONHASHSEED": "123"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "wrote 4 emotions" in proc.stderr
    assert _tree(a) == _tree(b)  # another process, another hash seed: same bytes


def test_a_failure_midway_leaves_no_output_and_an_old_one_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    graph = _write_jsonl(tmp_path / "graph.jsonl", _graph_records())
    opts = SelectionOptions(min_positives=3)
    real = extract_mod._jsonl
    calls = []

    def crash_on_third_file(rows: tuple[object, ...]) -> bytes:
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(rows)  # type: ignore[arg-type]

    monkeypatch.setattr(extract_mod, "_jsonl", crash_on_third_file)
    fresh = tmp_path / "fresh"
    with pytest.raises(OSError, match="No space left"):
        extract(FileSource(graph), opts, fresh)
    assert not fresh.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["graph.jsonl"]  # no temp dirs left

    monkeypatch.setattr(extract_mod, "_jsonl", real)
    existing = tmp_path / "existing"
    extract(FileSource(graph), opts, existing)
    before = _tree(existing)
    calls.clear()
    monkeypatch.setattr(extract_mod, "_jsonl", crash_on_third_file)
    with pytest.raises(OSError):
        extract(FileSource(graph), SelectionOptions(min_positives=3, seed=9), existing)
    assert _tree(existing) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing", "graph.jsonl"]


def test_a_graph_with_nothing_to_select_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = _write_jsonl(tmp_path / "graph.jsonl", _graph_records())
    out = tmp_path / "data"
    rc = main(
        [
            "extract",
            "--graph",
            str(graph),
            "--output-dir",
            str(out),
            "--min-positives",
            "400",
            "--max-examples-per-emotion",
            "0",
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error: file:")
    assert "no emotion has enough examples" in err and "--min-positives 400" in err
    assert not out.exists()

    untagged = _write_jsonl(
        tmp_path / "untagged.jsonl", [{"key": f"k{i}", "content": "x" * 50} for i in range(5)]
    )
    with pytest.raises(GraphError, match=r"none of its 5 live nodes can be used .*5 untagged"):
        extract(FileSource(untagged), SelectionOptions(), out)
    assert not out.exists()


def test_output_dir_guard(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    graph = _write_jsonl(tmp_path / "graph.jsonl", _graph_records())
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("do not delete")
    rc = main(["extract", "--graph", str(graph), "--output-dir", str(precious), *ARGS])
    assert rc == 2
    assert "is not a training-data directory" in capsys.readouterr().err
    assert (precious / "thesis.tex").read_text() == "do not delete"

    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert main(["extract", "--graph", str(graph), "--output-dir", str(a_file), *ARGS]) == 2
    assert "is a file" in capsys.readouterr().err

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["extract", "--graph", str(graph), "--output-dir", str(empty), *ARGS]) == 0
    # a directory we wrote is replaced as a whole by a new extraction
    (empty / "stale.jsonl").write_text("{}\n")
    assert main(["extract", "--graph", str(graph), "--output-dir", str(empty), *ARGS]) == 0
    assert not (empty / "stale.jsonl").exists()


def test_source_flag_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "out")
    assert main(["extract", "--output-dir", out]) == 2
    assert "no graph: pass --graph FILE" in capsys.readouterr().err
    graph = _write_jsonl(tmp_path / "graph.jsonl", _graph_records())
    assert (
        main(
            [
                "extract",
                "--graph",
                str(graph),
                "--memory-mcp-url",
                "http://127.0.0.1:9",
                "--output-dir",
                out,
            ]
        )
        == 2
    )
    assert "not both" in capsys.readouterr().err
    assert main(["extract", "--graph", str(tmp_path / "missing.jsonl"), "--output-dir", out]) == 2
    assert "missing.jsonl: no such file" in capsys.readouterr().err
    assert (
        main(["extract", "--graph", str(graph), "--output-dir", out, "--heldout-fraction", "1.5"])
        == 2
    )
    assert "--heldout-fraction must be in [0, 1)" in capsys.readouterr().err
    assert not Path(out).exists()


@pytest.mark.parametrize("form", ["list", "@file", "path"])
def test_emotions_flag_forms(tmp_path: Path, form: str) -> None:
    graph = _write_jsonl(tmp_path / "graph.jsonl", _graph_records())
    listing = tmp_path / "emotions.txt"
    listing.write_text("# the two I care about\nWarmth\n  fear, # trailing comment\n")
    value = {"list": "warmth,Fear", "@file": f"@{listing}", "path": str(listing)}[form]
    out = tmp_path / "data"
    assert (
        main(
            ["extract", "--graph", str(graph), "--output-dir", str(out), *ARGS, "--emotions", value]
        )
        == 0
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["selection"]["emotions"] == ["fear", "warmth"]
    assert sorted(manifest["emotions"]) == ["fear", "warmth"]


def _sample_graph() -> Path | None:
    try:
        path = importlib.resources.files("amygdala") / "data" / "sample_graph.jsonl"
    except ModuleNotFoundError:
        return None
    return Path(str(path)) if path.is_file() else None


def test_bundled_sample_graph_exercises_every_rule() -> None:
    path = _sample_graph()
    assert path is not None
    read = FileSource(path).read()
    assert len(read.nodes) >= 300
    assert read.deleted > 0 and read.superseded > 0
    sel = select(read.nodes, SelectionOptions())
    s = sel.summary
    assert s.skipped.get("untagged", 0) > 0
    assert s.malformed_tags > 0
    assert len(s.emotions) >= 12, s.left_out


def test_output_dir_dot_is_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    graph = _write_jsonl(tmp_path / "graph.jsonl", _graph_records())
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert main(["extract", "--graph", str(graph), "--output-dir", ".", *ARGS]) == 0
    assert json.loads((here / "manifest.json").read_text())["format"] == FORMAT
    assert sorted(p.name for p in tmp_path.iterdir()) == ["graph.jsonl", "here"]
