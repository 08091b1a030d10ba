"""The readout API, `amygdala readout`, and its HTML heatmap (checked in headless Chromium).

References: the trainer's own pooled activations (`amygdala.capture.capture_texts`),
Hugging Face `output_hidden_states`, and z-scores recomputed in numpy.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from _serving import random_artifact
from amygdala.artifact import load_artifact, save_artifact
from amygdala.capture import capture_texts
from amygdala.cli import main
from amygdala.errors import ArtifactError, ConfigError
from amygdala.models import load_model
from amygdala.readout import Projector, readout, readout_ids
from amygdala.train import TrainConfig, train

CONCEPTS = ["warmth", "fear", "joy", "calm"]
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Fear crept in as the lights went out in the old house.",
    "I was so happy to see my friend again!",
]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
HOSTILE = 'She wrote "</script><script>alert(1)</script>" & left <b>quietly</b>.'


def _load(directory: Path) -> Any:
    return load_model(str(directory), device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def llama(tiny_model_dirs: Callable[[str], Path]) -> Any:
    return _load(tiny_model_dirs("llama"))


@pytest.fixture(scope="module")
def llama_artifact(
    tiny_model_dirs: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Any:
    out = tmp_path_factory.mktemp("ro") / "readout.safetensors"
    return load_artifact(random_artifact(tiny_model_dirs("llama"), out, [1, 3], CONCEPTS))


def _hooks(lm: Any) -> int:
    return sum(len(m._forward_hooks) for m in lm.model.modules())


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "gpt2", "qwen3_5", "bert", "minilm"])
def test_token_mean_equals_trainer_pooled_projection(
    arch: str, tiny_model_dirs: Callable[[str], Path], minilm_dir: Path, tmp_path: Path
) -> None:
    """Mean of per-token projections over the pooled tokens == vectors · pooled activation."""
    directory = minilm_dir if arch == "minilm" else tiny_model_dirs(arch)
    lm = _load(directory)
    hidden, layers = lm.hidden_size, [1, lm.n_layers - 1]
    art = load_artifact(
        random_artifact(directory, tmp_path / "r.safetensors", layers, CONCEPTS, hidden=hidden)
    )
    pooled = torch.empty(len(TEXTS), len(layers), hidden)
    for batch in capture_texts(lm, TEXTS, layers, pooling="mean", batch_size=2, progress=False):
        pooled[batch.index] = batch.acts.cpu()
    trainer = torch.einsum("tlh,lch->tlc", pooled, art.stacked())
    for i, text in enumerate(TEXTS):
        ro = readout(lm, art, text)
        assert ro.raw.shape == (len(ro.tokens), len(layers), len(CONCEPTS))
        special = set(lm.tokenizer.all_special_ids)  # read, but never pooled
        assert ro.keep == tuple(i not in special for i in ro.token_ids)
        torch.testing.assert_close(ro.pooled(), trainer[i], rtol=1e-4, atol=1e-5)
    assert _hooks(lm) == 0


@pytest.mark.parametrize("arch", ["llama", "gpt2", "minilm"])
def test_per_token_values_equal_output_hidden_states(
    arch: str, tiny_model_dirs: Callable[[str], Path], minilm_dir: Path, tmp_path: Path
) -> None:
    """raw[t, l] == hidden_states[layer + 1][t] · vectorsᵀ (blocks before the final norm)."""
    directory = minilm_dir if arch == "minilm" else tiny_model_dirs(arch)
    lm = _load(directory)
    layers = [0, 2]
    art = load_artifact(
        random_artifact(
            directory, tmp_path / "r.safetensors", layers, CONCEPTS, hidden=lm.hidden_size
        )
    )
    ro = readout(lm, art, TEXTS[1])
    with torch.inference_mode():
        out = lm.model(input_ids=torch.tensor([list(ro.token_ids)]), output_hidden_states=True)
    for i, layer in enumerate(layers):
        hs = out.hidden_states[layer + 1][0].numpy().astype(np.float64)
        ref = hs @ art.vectors[layer].double().numpy().T
        np.testing.assert_allclose(ro.raw[:, i].numpy(), ref, rtol=1e-4, atol=1e-5)


def test_z_scores_follow_the_trained_calibration(
    llama: Any, tiny_model_dirs: Callable[[str], Path], tmp_path: Path
) -> None:
    """A real trained manifest: z == (raw - mean) / std, pooled z == z of the pooled raw."""
    result = train(
        TrainConfig(
            model=str(tiny_model_dirs("llama")),
            training_data_dir=Path(__file__).parent / "data" / "stories",
            output=tmp_path / "readout.safetensors",
            target_layers="1,3",
            progress=False,
            no_cache=True,
            min_examples=2,
        ),
        lm=llama,
    )
    art = load_artifact(result.vectors_path)
    cal = result.manifest["calibration"]
    mean, std = np.array(cal["mean"]), np.array(cal["std"])
    ro = readout(llama, art, TEXTS[2])
    assert ro.z is not None
    np.testing.assert_allclose(ro.z.numpy(), (ro.raw.numpy() - mean) / std, rtol=1e-4, atol=1e-4)
    pooled_z = ro.pooled_z()
    assert pooled_z is not None
    np.testing.assert_allclose(
        pooled_z.numpy(), (ro.pooled().numpy() - mean) / std, rtol=1e-4, atol=1e-4
    )
    # the trainer wrote a combined score: Σ weights · raw, z from its own mean and std
    comb = result.manifest["combined"]
    weights = np.array(comb["weights"])
    assert ro.combined is not None and ro.combined_z is not None
    want = np.einsum("tlc,lc->tc", ro.raw.numpy().astype(np.float64), weights)
    np.testing.assert_allclose(ro.combined.numpy(), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        ro.combined_z.numpy(), (want - comb["mean"]) / np.array(comb["std"]), rtol=1e-4, atol=1e-4
    )
    assert ro.default_layer == "combined"


def test_no_calibration_means_no_z(
    llama: Any, tiny_model_dirs: Callable[[str], Path], tmp_path: Path
) -> None:
    art = load_artifact(
        random_artifact(
            tiny_model_dirs("llama"), tmp_path / "r.safetensors", [3], CONCEPTS, calibrated=False
        )
    )
    ro = readout(llama, art, TEXTS[0])
    assert ro.z is None and ro.pooled_z() is None
    assert ro.top(3, 2, use_z=True) == ro.top(3, 2, use_z=False)
    assert all("z" not in rec for rec in ro.records())


@pytest.fixture(scope="module")
def combined_artifact(
    tiny_model_dirs: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Any:
    out = tmp_path_factory.mktemp("rc") / "readout.safetensors"
    return load_artifact(
        random_artifact(tiny_model_dirs("llama"), out, [1, 3], CONCEPTS, combined=True)
    )


def test_combined_is_the_weighted_sum_of_layers(llama: Any, combined_artifact: Any) -> None:
    """combined == Σ_l weights[l] · raw[l] per token; pooled, top and records follow it."""
    comb = combined_artifact.manifest["combined"]
    weights, mean, std = (np.array(comb[k], dtype=np.float64) for k in ("weights", "mean", "std"))
    ro = readout(llama, combined_artifact, TEXTS[1])
    assert ro.combined is not None and ro.combined_z is not None
    raw = ro.raw.numpy().astype(np.float64)
    want = np.einsum("tlc,lc->tc", raw, weights)
    np.testing.assert_allclose(ro.combined.numpy(), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ro.combined_z.numpy(), (want - mean) / std, rtol=1e-5, atol=1e-5)
    keep = np.array(ro.keep)
    pooled = ro.pooled(layer="combined").numpy()
    np.testing.assert_allclose(pooled, want[keep].mean(0), rtol=1e-5, atol=1e-5)
    # mean pooling is linear: the pooled combined score is Σ weights · the pooled layers
    np.testing.assert_allclose(pooled, (ro.pooled().numpy() * weights).sum(0), rtol=1e-5, atol=1e-5)
    pooled_z = ro.pooled_z(layer="combined")
    assert pooled_z is not None
    np.testing.assert_allclose(pooled_z.numpy(), (pooled - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ro.pooled(layer=3).numpy(), ro.pooled().numpy()[1])
    # the default view is the combined score, z first
    assert ro.default_layer == "combined"
    order = np.argsort(-pooled_z.numpy())[:2]
    assert ro.top(k=2) == ro.top("combined", 2)
    assert [name for name, _ in ro.top(k=2)] == [CONCEPTS[c] for c in order]
    assert [name for name, _ in ro.top("combined", 2, use_z=False)] == [
        CONCEPTS[c] for c in np.argsort(-pooled)[:2]
    ]
    for t, rec in enumerate(ro.records()):
        assert rec["combined"] == pytest.approx(dict(zip(CONCEPTS, want[t])), rel=1e-5, abs=1e-5)
        assert set(rec["combined_z"]) == set(CONCEPTS)


def test_without_a_combined_entry_layers_stay_the_default(llama: Any, llama_artifact: Any) -> None:
    ro = readout(llama, llama_artifact, TEXTS[0])
    assert ro.combined is None and ro.combined_z is None and ro.pooled_z(layer="combined") is None
    assert ro.default_layer == 3 and ro.top(k=2) == ro.top(3, 2)
    assert all("combined" not in rec for rec in ro.records())
    with pytest.raises(ConfigError, match=r"no 'combined' entry .* retrain, or pick a layer"):
        ro.top("combined")


def test_hooks_removed_after_an_error(llama: Any, llama_artifact: Any) -> None:
    with pytest.raises(IndexError):  # an id outside the embedding table fails inside forward
        readout_ids(llama, llama_artifact, [1, 5, 10_000])
    assert _hooks(llama) == 0
    readout_ids(llama, llama_artifact, [1, 5, 7])
    assert _hooks(llama) == 0


def test_readout_errors_are_clear(llama: Any, llama_artifact: Any, tmp_path: Path) -> None:
    wide = load_artifact(
        random_artifact(Path("x"), tmp_path / "w.safetensors", [1], CONCEPTS, hidden=32)
    )
    with pytest.raises(ConfigError, match=r"hidden size 32.*has 64"):
        readout(llama, wide, "hi")
    deep = load_artifact(random_artifact(Path("x"), tmp_path / "d.safetensors", [7], CONCEPTS))
    with pytest.raises(ConfigError, match=r"layers \[7\] do not exist"):
        readout(llama, deep, "hi")
    with pytest.raises(ConfigError, match="layer 2 is not in the artifact"):
        readout(llama, llama_artifact, "hi").top(2)
    bad = dict(llama_artifact.manifest, calibration={"mean": [[0.0]], "std": [[1.0]]})
    with pytest.raises(ArtifactError, match=r"calibration mean is \(1, 1\), expected"):
        save_artifact(llama_artifact.vectors, bad, tmp_path / "b.safetensors")
    with pytest.raises(ArtifactError, match=r"calibration mean is \(1, 1\), expected"):
        Projector(dataclasses.replace(llama_artifact, manifest=bad))


def test_truncation_is_reported(llama: Any, llama_artifact: Any) -> None:
    ro = readout(llama, llama_artifact, " ".join(["fox"] * 50), max_length=8)
    assert ro.truncated and len(ro.token_ids) == 8


# ---- the command line ----------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_outputs(
    tiny_model_dirs: Callable[[str], Path],
    llama_artifact: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("cli")
    vectors = out / "readout.safetensors"
    save_artifact(llama_artifact.vectors, llama_artifact.manifest, vectors)
    model = str(tiny_model_dirs("llama"))
    code = main(
        [
            "readout",
            "--model",
            model,
            "--vectors",
            str(vectors),
            "--device",
            "cpu",
            "--layer",
            "1",
            "--html",
            str(out / "heat.html"),
            "--jsonl",
            str(out / "tokens.jsonl"),
            HOSTILE,
        ]
    )
    return {"code": code, "dir": out, "model": model, "vectors": vectors}


def test_cli_tables_and_jsonl(
    cli_outputs: dict[str, Any], llama: Any, llama_artifact: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_outputs["code"] == 0
    ro = readout(llama, llama_artifact, HOSTILE)
    lines = (cli_outputs["dir"] / "tokens.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["token_id"] for r in records] == list(ro.token_ids)
    assert [r["pooled"] for r in records] == list(ro.keep)
    for t, rec in enumerate(records):
        for i, layer in enumerate(ro.layers):
            assert rec["raw"][str(layer)] == pytest.approx(
                dict(zip(CONCEPTS, ro.raw[t, i].tolist()))
            )
            assert rec["z"][str(layer)] == pytest.approx(dict(zip(CONCEPTS, ro.z[t, i].tolist())))
    main(
        [
            "readout",
            "--model",
            cli_outputs["model"],
            "--vectors",
            str(cli_outputs["vectors"]),
            "--device",
            "cpu",
            "--top",
            "2",
            "Tears ran down her face.",
        ]
    )
    shown = capsys.readouterr().out
    top = readout(llama, llama_artifact, "Tears ran down her face.").top(3, 2)
    assert "top concepts at layer 3" in shown and "top concept" in shown
    assert all(name in shown for name, _ in top)


@pytest.fixture(scope="module")
def combined_cli(
    tiny_model_dirs: Callable[[str], Path],
    combined_artifact: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    """`amygdala readout` on an artifact with a combined score, with no --layer."""
    out = tmp_path_factory.mktemp("cli-combined")
    vectors = out / "readout.safetensors"
    save_artifact(combined_artifact.vectors, combined_artifact.manifest, vectors)
    model = str(tiny_model_dirs("llama"))
    args = ["readout", "--model", model, "--vectors", str(vectors), "--device", "cpu"]
    code = main([*args, "--html", str(out / "heat.html"), "--jsonl", str(out / "t.jsonl"), HOSTILE])
    return {"code": code, "dir": out, "args": args}


def test_cli_combined_by_default_in_tables_jsonl_and_page(
    combined_cli: dict[str, Any],
    llama: Any,
    combined_artifact: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from amygdala._heatmap import page_data

    assert combined_cli["code"] == 0
    ro = readout(llama, combined_artifact, HOSTILE)
    weights = np.array(combined_artifact.manifest["combined"]["weights"])
    records = [json.loads(x) for x in (combined_cli["dir"] / "t.jsonl").read_text().splitlines()]
    for rec in records:
        raw = np.array([[rec["raw"][str(layer)][c] for c in CONCEPTS] for layer in ro.layers])
        want = (raw * weights).sum(0)
        assert [rec["combined"][c] for c in CONCEPTS] == pytest.approx(want, rel=1e-5, abs=1e-5)
    assert main([*combined_cli["args"], "--top", "2", "Tears ran down her face."]) == 0
    shown = capsys.readouterr().out
    assert "top concepts at the combined score (all layers)" in shown
    top = readout(llama, combined_artifact, "Tears ran down her face.").top("combined", 2)
    assert all(name in shown for name, _ in top)
    assert main([*combined_cli["args"], "--layer", "1", "Tears ran down her face."]) == 0
    assert "top concepts at layer 1" in capsys.readouterr().out
    # the page's data: combined is the default layer and equals Σ weights · raw
    data = page_data(ro)
    assert data["layer"] == "combined"
    want = np.einsum("tlc,lc->tc", np.array(data["raw"]), weights)
    np.testing.assert_allclose(np.array(data["combined"]), want, atol=1e-3)
    page = (combined_cli["dir"] / "heat.html").read_text()
    assert '"layer":"combined"' in page


def test_cli_errors(cli_outputs: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    args = ["readout", "--model", cli_outputs["model"], "--vectors", str(cli_outputs["vectors"])]
    assert main([*args, "--layer", "2", "hi"]) == 2
    assert "--layer 2 is not in the artifact; it has layers [1, 3]" in capsys.readouterr().err
    assert main([*args, "--layer", "combined", "hi"]) == 2
    assert "--layer combined: the manifest has no combined score" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--layer", "deepest", "hi"])
    assert "pass a layer index of the artifact or `combined`" in capsys.readouterr().err
    assert main([*args, "   "]) == 2
    assert "the text is empty" in capsys.readouterr().err


def test_html_is_self_contained(cli_outputs: dict[str, Any]) -> None:
    page = (cli_outputs["dir"] / "heat.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<script>alert(1)</script>" not in page  # the text cannot close the data tag
    assert page.count("</script>") == 2


def _render(page: Path, fragment: str, tmp_path: Path) -> str:
    """The DOM after the page's script ran, from headless Chromium."""
    assert CHROMIUM is not None
    out = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            "--disable-extensions",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            f"{page.as_uri()}#{fragment}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium on PATH (Debian: apt-get install "
    "chromium); the heatmap page is not rendered",
)
@pytest.mark.parametrize(("concept", "layer", "mode"), [("fear", 1, "raw"), ("calm", 3, "z")])
def test_html_heatmap_renders_in_chromium(
    cli_outputs: dict[str, Any],
    llama: Any,
    llama_artifact: Any,
    tmp_path: Path,
    concept: str,
    layer: int,
    mode: str,
) -> None:
    """The page's script colors every token with the chosen concept, layer and mode."""
    dom = _render(
        cli_outputs["dir"] / "heat.html", f"concept={concept}&layer={layer}&mode={mode}", tmp_path
    )
    body = re.search(r"<body([^>]*)>", dom)
    assert body is not None and 'data-ready="1"' in body.group(1)
    assert f'data-concept="{concept}"' in body.group(1)
    assert f'data-layer="{layer}"' in body.group(1) and f'data-mode="{mode}"' in body.group(1)
    spans = re.findall(r'<span class="tok[^"]*"[^>]*>', dom)
    ro = readout(llama, llama_artifact, HOSTILE)
    assert len(spans) == len(ro.tokens)
    values = ro.z if mode == "z" else ro.raw
    assert values is not None
    expected = values[:, ro.layers.index(layer), CONCEPTS.index(concept)].tolist()
    got = [float(re.search(r'data-value="([^"]+)"', span).group(1)) for span in spans]  # type: ignore[union-attr]
    np.testing.assert_allclose(got, expected, atol=1e-4)
    colored = ["background-color: rgba(" in span for span in spans]
    assert colored == list(ro.keep), "real tokens are colored, special tokens are not"


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH; the page is not rendered")
@pytest.mark.parametrize(
    ("fragment", "mode"), [("concept=fear", "z"), ("concept=joy&mode=raw", "raw")]
)
def test_html_heatmap_shows_the_combined_score_first(
    combined_cli: dict[str, Any],
    llama: Any,
    combined_artifact: Any,
    tmp_path: Path,
    fragment: str,
    mode: str,
) -> None:
    """Without a layer in the URL the page shows the combined score: Σ weights · raw."""
    dom = _render(combined_cli["dir"] / "heat.html", fragment, tmp_path)
    body = re.search(r"<body([^>]*)>", dom)
    assert body is not None and 'data-layer="combined"' in body.group(1)
    assert f'data-mode="{mode}"' in body.group(1)
    assert '<option value="combined">combined (all layers)</option>' in dom
    concept = re.search(r'data-concept="([^"]+)"', body.group(1)).group(1)  # type: ignore[union-attr]
    ro = readout(llama, combined_artifact, HOSTILE)
    values = ro.combined_z if mode == "z" else ro.combined
    assert values is not None
    spans = re.findall(r'<span class="tok[^"]*"[^>]*>', dom)
    got = [float(re.search(r'data-value="([^"]+)"', span).group(1)) for span in spans]  # type: ignore[union-attr]
    np.testing.assert_allclose(got, values[:, CONCEPTS.index(concept)].tolist(), atol=1e-3)
