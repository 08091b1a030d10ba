"""Surviving SIGKILL, reusing cached activations, and multi-process training."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from amygdala.artifact import load_artifact

CONCEPTS = ["amber", "birch", "cedar", "dune"]
WORDS = [
    "quiet",
    "river",
    "stone",
    "light",
    "morning",
    "window",
    "bread",
    "letter",
    "garden",
    "road",
    "music",
    "winter",
    "market",
    "engine",
    "paper",
    "candle",
    "harbor",
    "meadow",
    "signal",
    "thread",
]


def write_data(root: Path, n_per_concept: int) -> Path:
    """Synthetic texts: each concept's positives are the others' negatives."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    texts = {
        c: [
            f"{c} " + " ".join(rng.choice(WORDS, size=int(rng.integers(3, 12)))) + f" number {i}."
            for i in range(n_per_concept)
        ]
        for c in CONCEPTS
    }
    for concept in CONCEPTS:
        rows = [
            {
                "emotion": concept,
                "text": t,
                "split": "heldout" if i % 5 == 4 else "train",
                "polarity": "positive" if other == concept else "negative",
            }
            for other, ts in texts.items()
            for i, t in enumerate(ts)
        ]
        (root / f"{concept}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def train_cmd(model: Path, data: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "amygdala",
        "train",
        "--model",
        str(model),
        "--training-data-dir",
        str(data),
        "--output",
        str(out),
        "--target-layers",
        "1,3",
        "--cache-dir",
        str(cache),
        "--min-examples",
        "3",
        "--no-progress",
        "--device",
        "cpu",
        *extra,
    ]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def shards(cache: Path) -> int:
    return len(list(cache.glob("*/shards/*.safetensors")))


def test_sigkill_then_resume_is_byte_identical(
    tmp_path: Path, tiny_model_dirs: Callable[[str], Path]
) -> None:
    model = tiny_model_dirs("llama")
    data = write_data(tmp_path / "data", 100)  # 400 texts, batch size 1: 400 shards
    killed_out, clean_out = tmp_path / "a" / "readout.safetensors", tmp_path / "b" / "r.safetensors"
    cache = tmp_path / "cache"
    proc = subprocess.Popen(
        train_cmd(model, data, killed_out, cache, "--batch-size", "1"),
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while shards(cache) < 40 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = shards(cache)
    assert 40 <= done_before < 400, f"not killed mid-capture ({done_before} shards)"
    assert not killed_out.exists() and not killed_out.with_suffix(".json").exists()

    resumed = subprocess.run(
        train_cmd(model, data, killed_out, cache, "--batch-size", "1"),
        env=env(),
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"captured {400 - done_before} texts" in resumed.stderr
    clean = subprocess.run(
        train_cmd(model, data, clean_out, tmp_path / "cache2", "--batch-size", "1"),
        env=env(),
        capture_output=True,
        text=True,
    )
    assert clean.returncode == 0, clean.stderr
    assert killed_out.read_bytes() == clean_out.read_bytes()
    assert (
        killed_out.with_suffix(".json").read_bytes() == clean_out.with_suffix(".json").read_bytes()
    )


def test_rerun_with_new_thresholds_skips_every_cached_text(
    tmp_path: Path, tiny_model_dirs: Callable[[str], Path]
) -> None:
    model = tiny_model_dirs("qwen3")
    data = write_data(tmp_path / "data", 12)
    cache = tmp_path / "cache"
    first = subprocess.run(
        train_cmd(model, data, tmp_path / "1.safetensors", cache),
        env=env(),
        capture_output=True,
        text=True,
    )
    assert first.returncode == 0, first.stderr
    assert "captured 48 texts" in first.stderr
    # a new selection: drop one concept's files, raise the threshold, other method name
    (data / "dune.jsonl").unlink()
    second = subprocess.run(
        train_cmd(
            model,
            data,
            tmp_path / "2.safetensors",
            cache,
            "--min-examples",
            "5",
            "--vectors-dtype",
            "float32",
        ),
        env=env(),
        capture_output=True,
        text=True,
    )
    assert second.returncode == 0, second.stderr
    assert (
        "captured 0 texts" in second.stderr and "48 found in the activation cache" in second.stderr
    )
    assert load_artifact(tmp_path / "2.safetensors").concepts == ["amber", "birch", "cedar"]
    # other capture settings are another fingerprint: nothing is reused wrongly
    third = subprocess.run(
        train_cmd(model, data, tmp_path / "3.safetensors", cache, "--pooling", "last"),
        env=env(),
        capture_output=True,
        text=True,
    )
    assert "captured 48 texts" in third.stderr


def test_corrupt_shard_is_reported_and_recaptured(
    tmp_path: Path, tiny_model_dirs: Callable[[str], Path]
) -> None:
    model = tiny_model_dirs("qwen2")
    data = write_data(tmp_path / "data", 6)
    cache = tmp_path / "cache"
    args = train_cmd(model, data, tmp_path / "r.safetensors", cache, "--batch-size", "4")
    assert subprocess.run(args, env=env(), capture_output=True).returncode == 0
    victim = sorted(cache.glob("*/shards/*.safetensors"))[0]
    victim.write_bytes(victim.read_bytes()[:50])
    again = subprocess.run(args, env=env(), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert f"{victim.name}: unreadable" in again.stderr
    assert "captured 4 texts" in again.stderr


@pytest.mark.skipif(
    shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
    reason="torchrun is not installed",
)
def test_torchrun_two_processes_match_one(
    tmp_path: Path, tiny_model_dirs: Callable[[str], Path]
) -> None:
    model = tiny_model_dirs("gpt2")
    data = write_data(tmp_path / "data", 10)
    single = tmp_path / "single.safetensors"
    base = train_cmd(model, data, single, tmp_path / "c1", "--vectors-dtype", "float32")
    assert subprocess.run(base, env=env(), capture_output=True).returncode == 0
    multi = tmp_path / "multi.safetensors"
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(_free_port()),
        "-m",
        "amygdala.train_steering_vectors",
    ]
    args = train_cmd(model, data, multi, tmp_path / "c2", "--vectors-dtype", "float32")[4:]
    proc = subprocess.run(torchrun + args, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = load_artifact(single), load_artifact(multi)
    assert a.manifest["counts"] == b.manifest["counts"]
    for layer in a.layers:
        torch.testing.assert_close(a.vectors[layer], b.vectors[layer], atol=1e-5, rtol=0)
    np.testing.assert_allclose(
        a.manifest["calibration"]["std"], b.manifest["calibration"]["std"], atol=1e-4
    )
    # the combined score: out-of-fold projections gathered from both ranks
    ca, cb = a.manifest["combined"], b.manifest["combined"]
    assert ca["fit"] == cb["fit"]
    for key in ("weights", "mean", "std"):
        np.testing.assert_allclose(ca[key], cb[key], rtol=2e-3, atol=1e-4)
    # the ranks split the texts: together they captured every text exactly once
    assert stored_hashes(tmp_path / "c2") == stored_hashes(tmp_path / "c1")
    assert len(stored_hashes(tmp_path / "c2")) == 40


def stored_hashes(cache: Path) -> list[str]:
    from safetensors import safe_open

    out: list[str] = []
    for shard in cache.glob("*/shards/*.safetensors"):
        with safe_open(str(shard), "pt") as fh:
            out += json.loads(fh.metadata()["hashes"])
    return sorted(out)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_device_map_auto_gives_the_same_vectors(
    tmp_path: Path, tiny_model_dirs: Callable[[str], Path]
) -> None:
    pytest.importorskip("accelerate")
    model = tiny_model_dirs("llama")
    data = write_data(tmp_path / "data", 6)
    outs = []
    for i, extra in enumerate(([], ["--device-map", "auto"])):
        out = tmp_path / f"{i}.safetensors"
        args = train_cmd(model, data, out, tmp_path / f"c{i}", "--vectors-dtype", "float32", *extra)
        proc = subprocess.run(args, env=env(), capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        outs.append(load_artifact(out))
    for layer in outs[0].layers:
        torch.testing.assert_close(outs[0].vectors[layer], outs[1].vectors[layer])


def test_neutral_text_is_the_calibration_reference(
    tmp_path: Path, tiny_model_dirs: Callable[[str], Path]
) -> None:
    from amygdala.models import load_model
    from amygdala.train import TrainConfig, train

    model = tiny_model_dirs("llama")
    data = write_data(tmp_path / "data", 6)
    neutral = tmp_path / "neutral.txt"
    paragraphs = [
        "The bus leaves at nine.",
        "Water boils at one hundred degrees.",
        "The library opens on Monday.",
    ]
    neutral.write_text("\n\n".join(paragraphs))
    lm = load_model(str(model), device="cpu", dtype="fp32")
    result = train(
        TrainConfig(
            model=str(model),
            training_data_dir=data,
            output=tmp_path / "r.safetensors",
            target_layers="2",
            min_examples=3,
            vectors_dtype="float32",
            neutral=neutral,
            no_cache=True,
            progress=False,
        ),
        lm=lm,
    )
    cal = result.manifest["calibration"]
    assert cal["reference"] == "neutral"
    vectors = load_artifact(tmp_path / "r.safetensors").vectors[2]
    enc = [
        lm.tokenizer(p, return_tensors="pt", return_special_tokens_mask=True) for p in paragraphs
    ]
    tokens = []  # the 4 single tokens per text calibration samples, evenly spread
    for e in enc:
        keep = e.pop("special_tokens_mask")[0] == 0
        with torch.no_grad():
            hs = lm.model(**e, output_hidden_states=True).hidden_states
        real = hs[3][0][keep]
        n = real.shape[0]
        tokens.append(real[[(2 * j + 1) * n // 8 for j in range(4)]])
    proj = torch.cat(tokens) @ vectors.T  # [12, n_concepts]
    np.testing.assert_allclose(cal["mean"][0], proj.mean(0).numpy(), atol=2e-3)
    np.testing.assert_allclose(cal["std"][0], proj.std(0).numpy(), atol=2e-3)
