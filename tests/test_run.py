"""`amygdala run`: graph → training data → vectors, with the packaged MiniLM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from amygdala.artifact import inspect_artifact
from amygdala.cli import main
from amygdala.corpus import load_training_dir

EMOTIONS = ["warmth", "fear", "curiosity"]


def _graph(path: Path) -> Path:
    """Nodes whose tags follow their words, so the vectors have something to find."""
    words = {
        "warmth": "held her hand and we laughed together over tea",
        "fear": "heard the floor creak in the dark and froze, heart pounding",
        "curiosity": "kept asking how the old clock worked and opened it up",
    }
    lines = []
    for i in range(60):
        emotion = EMOTIONS[i % 3]
        other = EMOTIONS[(i + 1) % 3]
        body = f"Day {i}: at the station I {words[emotion]}, then walked home slowly."
        lines.append(json.dumps({"key": f"j-{i:03d}", "content": f"{body}\n{emotion}:9 {other}:1"}))
    path.write_text("\n".join(lines) + "\n")
    return path


FAST = ["--target-layers", "1,3", "--no-progress", "--min-positives", "5", "--min-examples", "5"]


def test_run_writes_training_data_and_vectors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = _graph(tmp_path / "graph.jsonl")
    out = tmp_path / "out"
    assert main(["run", "--graph", str(graph), "--output-dir", str(out), *FAST]) == 0
    err = capsys.readouterr().err
    assert "wrote 3 emotions" in err and "trained 3 concepts" in err
    data = load_training_dir(out / "training-data")
    assert data.concepts == tuple(sorted(EMOTIONS))
    artifact, problems = inspect_artifact(out / "readout.safetensors", out / "readout.json")
    assert problems == []
    assert artifact is not None
    assert artifact.manifest["concepts"] == sorted(EMOTIONS)
    assert artifact.manifest["layers"] == [1, 3]
    assert artifact.manifest["hidden_size"] == 384


def test_output_flag_overrides_the_vectors_path(tmp_path: Path) -> None:
    graph = _graph(tmp_path / "graph.jsonl")
    out, vectors = tmp_path / "out", tmp_path / "elsewhere" / "v.safetensors"
    assert (
        main(
            [
                "run",
                "--graph",
                str(graph),
                "--output-dir",
                str(out),
                "--output",
                str(vectors),
                *FAST,
            ]
        )
        == 0
    )
    assert vectors.is_file() and vectors.with_suffix(".json").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["training-data"]


def test_unwritable_vectors_fail_before_extraction(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = _graph(tmp_path / "graph.jsonl")
    out = tmp_path / "out"
    (out / "readout.safetensors").mkdir(parents=True)
    assert main(["run", "--graph", str(graph), "--output-dir", str(out), *FAST]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert not (out / "training-data").exists()


@pytest.mark.slow
def test_run_with_no_arguments(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "amygdala", "run"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "amygdala-out"
    assert (out / "training-data" / "manifest.json").is_file()
    artifact, problems = inspect_artifact(out / "readout.safetensors", out / "readout.json")
    assert problems == [], problems
    assert artifact is not None and len(artifact.manifest["concepts"]) >= 12
