"""End-to-end training against an independent reference, plus invariances and errors."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from amygdala.artifact import load_artifact
from amygdala.cli import main
from amygdala.models import load_model
from amygdala.train import TrainConfig, train

EMOTIONS = {
    "joy": [
        "We laughed all afternoon at the fair.",
        "The puppy wagged its tail at me!",
        "Sunlight and music filled the kitchen.",
        "She won the race and cheered.",
        "A surprise party, balloons everywhere.",
        "He danced in the rain, grinning.",
    ],
    "fear": [
        "Footsteps behind me in the dark alley.",
        "The plane dropped suddenly.",
        "A scream from the basement at night.",
        "My heart pounded as the door creaked.",
        "The ice cracked under my boots.",
        "Something moved under the bed.",
    ],
    "calm": [
        "The lake was still at dawn.",
        "She breathed slowly, eyes closed.",
        "Tea steamed quietly on the table.",
        "Snow fell softly over the field.",
        "The cat slept in a patch of sun.",
        "Waves rolled in, slow and even.",
    ],
}


def write_training_dir(root: Path, *, reverse: bool = False, heldout_every: int = 3) -> Path:
    """Each emotion's texts are its positives and the other emotions' negatives."""
    root.mkdir(parents=True, exist_ok=True)
    for emotion in EMOTIONS:
        rows = []
        for other, texts in EMOTIONS.items():
            for i, text in enumerate(texts):
                split = "heldout" if i % heldout_every == heldout_every - 1 else "train"
                rows.append(
                    {
                        "emotion": emotion,
                        "key": f"{other}-{i}",
                        "text": text,
                        "polarity": "positive" if other == emotion else "negative",
                        "split": split,
                    }
                )
        if reverse:
            rows.reverse()
        (root / f"{emotion}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def reference_hidden(model_dir: Path, layers: list[int]) -> dict[str, np.ndarray]:
    """`output_hidden_states` of each text's real (non-special) tokens, `[L, T, H]` each."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    hidden: dict[str, np.ndarray] = {}
    for texts in EMOTIONS.values():
        for text in texts:
            enc = tok(text, return_tensors="pt", return_special_tokens_mask=True)
            keep = enc.pop("special_tokens_mask")[0] == 0
            with torch.no_grad():
                hs = model(**enc, output_hidden_states=True).hidden_states
            hidden[text] = np.stack([hs[i + 1][0][keep].numpy() for i in layers])
    return hidden


def reference_pooled(model_dir: Path, layers: list[int]) -> dict[str, np.ndarray]:
    """Mean-pooled `output_hidden_states` per text, `[n_layers, hidden]` each."""
    return {t: h.mean(axis=1) for t, h in reference_hidden(model_dir, layers).items()}


def sampled_tokens(hidden: np.ndarray, k: int = 4) -> np.ndarray:
    """The k single tokens calibration samples: the floor((2j+1)n/2k)-th of n real tokens."""
    n = hidden.shape[1]
    picks = [(2 * j + 1) * n // (2 * k) for j in range(k)] if n >= k else list(range(n))
    return hidden[:, picks]  # [L, k', H]


def reference_vectors(model_dir: Path, layers: list[int]) -> dict[str, np.ndarray]:
    """numpy difference of means of `reference_pooled` over the train split."""
    pooled = reference_pooled(model_dir, layers)
    out = {}
    for emotion, texts in EMOTIONS.items():
        train_idx = [i for i in range(len(texts)) if i % 3 != 2]
        pos = [pooled[texts[i]] for i in train_idx]
        neg = [pooled[t[i]] for o, t in EMOTIONS.items() if o != emotion for i in train_idx]
        d = np.mean(pos, 0) - np.mean(neg, 0)
        out[emotion] = d / np.linalg.norm(d, axis=-1, keepdims=True)
    return out


def test_cli_vectors_equal_numpy_difference_of_means(
    tmp_path: Path, tiny_model_dirs: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model_dir = tiny_model_dirs("llama")
    data = write_training_dir(tmp_path / "data")
    out = tmp_path / "out" / "readout.safetensors"
    code = main(
        [
            "train",
            "--model",
            str(model_dir),
            "--training-data-dir",
            str(data),
            "--target-layers",
            "0,2",
            "--output",
            str(out),
            "--dtype",
            "fp32",
            "--method",
            "mean_diff",
            "--vectors-dtype",
            "float32",
            "--batch-size",
            "5",
            "--min-examples",
            "3",
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    assert code == 0
    art = load_artifact(out)
    m = art.manifest
    assert m["concepts"] == ["calm", "fear", "joy"] and m["layers"] == [0, 2]
    assert (m["hidden_size"], m["dtype"], m["pooling"], m["method"]) == (
        64,
        "float32",
        "mean",
        "mean_diff",
    )
    assert m["counts"]["joy"] == {"positive": 4, "negative": 8}
    assert m["format"] == "amygdala-readout/1" and m["model"] == str(model_dir)
    ref = reference_vectors(model_dir, [0, 2])
    for c, concept in enumerate(m["concepts"]):
        for j, layer in enumerate(m["layers"]):
            np.testing.assert_allclose(art.vectors[layer][c].numpy(), ref[concept][j], atol=2e-5)
    err = capsys.readouterr().err
    assert "trained 3 concepts x 2 layers" in err and "wrote" in err

    # calibration: mean/std of each concept's per-token projection over the sampled tokens
    # of its train negatives
    hidden = reference_hidden(model_dir, [0, 2])
    cal = m["calibration"]
    assert (cal["reference"], cal["unit"], cal["tokens_per_text"]) == ("negatives", "token", 4)
    for c, concept in enumerate(m["concepts"]):
        negs = [
            sampled_tokens(hidden[t[i]])
            for o, t in EMOTIONS.items()
            if o != concept
            for i in range(len(t))
            if i % 3 != 2
        ]
        for j, layer in enumerate(m["layers"]):
            proj = np.concatenate([n[j] @ art.vectors[layer][c].numpy() for n in negs])
            assert cal["mean"][j][c] == pytest.approx(proj.mean(), abs=2e-3)
            assert cal["std"][j][c] == pytest.approx(proj.std(ddof=1), abs=2e-3)


@pytest.fixture(scope="module")
def llama(tiny_model_dirs: Callable[[str], Path]) -> object:
    return load_model(str(tiny_model_dirs("llama")), device="cpu", dtype="fp32")


def run_train(
    lm: object, data: Path, out: Path, **kw: object
) -> tuple[dict[int, torch.Tensor], dict[str, object]]:
    settings: dict[str, object] = {
        "target_layers": "1,3",
        "min_examples": 3,
        "vectors_dtype": "float32",
        "progress": False,
        "no_cache": True,  # every run really captures unless told otherwise
        **kw,
    }
    cfg = TrainConfig(model="tiny-llama", training_data_dir=data, output=out, **settings)  # type: ignore[arg-type]
    train(cfg, lm=lm)  # type: ignore[arg-type]
    art = load_artifact(out)
    return art.vectors, art.manifest


def test_one_forward_pass_per_unique_text(tmp_path: Path, llama: object) -> None:
    data = write_training_dir(tmp_path / "data")
    rows: list[int] = []
    handle = llama.blocks[0].register_forward_pre_hook(  # type: ignore[attr-defined]
        lambda _m, args: rows.append(args[0].shape[0])
    )
    cache = tmp_path / "cache"
    try:
        run_train(
            llama, data, tmp_path / "r.safetensors", batch_size=4, cache_dir=cache, no_cache=False
        )
        first = list(rows)
        run_train(
            llama,
            data,
            tmp_path / "r2.safetensors",
            batch_size=4,
            cache_dir=cache,
            no_cache=False,
            min_examples=2,
        )
    finally:
        handle.remove()
    n_texts = sum(len(texts) for texts in EMOTIONS.values())
    assert sum(first) == n_texts == 18  # 3 concepts share every text (train and held-out)
    assert max(first) <= 4
    assert rows == first  # the rerun with other settings found every text in the cache


@pytest.mark.parametrize(
    "knob",
    [
        {"batch_size": 1},
        {"batch_size": 7},
        {"padding_side": "left"},
        {"padding_side": "right"},
        "shuffled",
    ],
)
def test_invariances(tmp_path: Path, llama: object, knob: object) -> None:
    data = write_training_dir(tmp_path / "data")
    base_v, base_m = run_train(llama, data, tmp_path / "a.safetensors", batch_size=3)
    if knob == "shuffled":
        write_training_dir(tmp_path / "data", reverse=True)
        v, m = run_train(llama, data, tmp_path / "b.safetensors", batch_size=3)
    else:
        v, m = run_train(llama, data, tmp_path / "b.safetensors", **knob)  # type: ignore[arg-type]
    assert m == base_m
    for layer in base_v:
        torch.testing.assert_close(v[layer], base_v[layer], atol=1e-6, rtol=0)


def test_min_examples_leaves_out_and_reports(tmp_path: Path, llama: object) -> None:
    data = write_training_dir(tmp_path / "data")
    rows = [
        {"emotion": "awe", "polarity": "positive", "text": "The stars! So many."},
        {"emotion": "awe", "polarity": "negative", "text": "The bus was late."},
    ]
    (data / "awe.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _, m = run_train(llama, data, tmp_path / "r.safetensors")
    assert "awe" not in m["concepts"]  # type: ignore[operator]
    assert "fewer than --min-examples 3" in m["skipped_concepts"]["awe"]  # type: ignore[index]


def test_entry_point_module(tmp_path: Path, tiny_model_dirs: Callable[[str], Path]) -> None:
    data = write_training_dir(tmp_path / "data")
    out = tmp_path / "readout.safetensors"
    help_text = subprocess.run(
        [sys.executable, "-m", "amygdala.train_steering_vectors", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for flag in (
        "--model",
        "--training-data-dir",
        "--target-layers",
        "--output",
        "--dtype",
        "--batch-size",
        "--pooling",
        "--method",
        "--manifest",
        "--vectors-dtype",
        "--device",
        "--max-length",
        "--min-examples",
    ):
        assert flag in help_text
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "amygdala.train_steering_vectors",
            "--model",
            str(tiny_model_dirs("gpt2")),
            "--training-data-dir",
            str(data),
            "--target-layers",
            "-1",
            "--output",
            str(out),
            "--manifest",
            str(tmp_path / "m.json"),
            "--pooling",
            "last",
            "--min-examples",
            "3",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    art = load_artifact(out, tmp_path / "m.json")
    assert art.layers == [3] and art.manifest["pooling"] == "last"
    assert art.vectors[3].dtype == torch.float16
    assert main(["validate", str(out), "--manifest", str(tmp_path / "m.json")]) == 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--target-layers", "9"], "layer 9 is out of range; this model has 4 blocks"),
        (["--method", "magic"], "--method 'magic': choose one of"),
        (["--min-examples", "50"], "no concept in"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
    ],
)
def test_clear_errors(
    tmp_path: Path,
    tiny_model_dirs: Callable[[str], Path],
    extra: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = write_training_dir(tmp_path / "data")
    out = tmp_path / "readout.safetensors"
    code = main(
        [
            "train",
            "--model",
            str(tiny_model_dirs("qwen2")),
            "--training-data-dir",
            str(data),
            "--output",
            str(out),
            "--min-examples",
            "3",
            "--no-progress",
            *extra,
        ]
    )
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_missing_model_dir_is_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_training_dir(tmp_path / "data")
    (tmp_path / "model").mkdir()
    code = main(
        [
            "train",
            "--model",
            str(tmp_path / "model"),
            "--training-data-dir",
            str(data),
            "--output",
            str(tmp_path / "r.safetensors"),
            "--min-examples",
            "3",
        ]
    )
    assert code == 2
    assert "has no config.json" in capsys.readouterr().err
