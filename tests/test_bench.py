"""Smoke test of the benchmark harness: `python -m bench --quick` runs end to end.

Tiny data and models, no peer installs (the peers' venv folder points at an empty
directory, so their rows must say "not available" instead of crashing). No timing is
asserted — the numbers of a quick run mean nothing — but the harness's own correctness
checks are: the original-algorithm baseline (an independent implementation) must give
the same vectors as `amygdala train`, and the report must hold every section.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GOEMOTIONS = Path(
    os.environ.get("AMYGDALA_GOEMOTIONS", ROOT.parent / "shared" / "data" / "goemotions")
)
SECTIONS = ("original", "peers", "capture", "memory", "scaling")


@pytest.mark.slow
@pytest.mark.skipif(
    not (GOEMOTIONS / "dev.tsv").exists(),
    reason=f"the benchmarks read GoEmotions from {GOEMOTIONS} (never copied into the repo); "
    "set AMYGDALA_GOEMOTIONS to run this test elsewhere",
)
def test_quick_run_writes_every_section(tmp_path: Path) -> None:
    report = tmp_path / "BENCHMARKS.md"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "AMYGDALA_BENCH_VENVS": str(tmp_path / "none"),
        "AMYGDALA_BENCH_NO_INSTALL": "1",
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--only",
            ",".join(SECTIONS),
            "--workdir",
            str(tmp_path / "work"),
            "--output",
            str(report),
            "--threads",
            "1",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = report.read_text(encoding="utf-8")
    for title in (
        "1. Against the original algorithm",
        "2. Against the peers",
        "3. Capture overhead",
        "4. Memory",
        "5. Scaling on paper",
    ):
        assert f"## {title}" in text
    assert "python -m bench --quick" in text
    assert "failed" not in text.lower()
    results = tmp_path / "work" / "results"
    original = json.loads((results / "original.json").read_text())
    assert [r["job"] for r in original["rows"]] == ["goemotions", "production"]
    for row in original["rows"]:  # the baseline and amygdala agree on every vector
        assert row["min_cosine"] >= 0.999, row
        assert row["unique_texts"] < row["selections"]  # shared texts ran once
    peers = json.loads((results / "peers.json").read_text())["rows"]
    assert {r["tool"] for r in peers} == {"amygdala", "repeng", "steering-vectors"}
    assert all(r["status"].startswith("not available") for r in peers if r["tool"] != "amygdala")
    memory = json.loads((results / "memory.json").read_text())["rows"]
    assert len(memory) >= 2
    assert [r["texts"] for r in memory] == sorted(r["texts"] for r in memory)
    assert all(r["peak_rss_mb"] > 0 for r in memory)


def test_only_rejects_unknown_sections() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "nope"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "unknown section" in proc.stderr
