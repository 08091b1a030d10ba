"""Every fitting method against an independent numpy / scikit-learn implementation."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from amygdala.errors import ConfigError
from amygdala.fit import (
    DEFAULT_METHOD,
    FIT_METHODS,
    METHOD_NEEDS,
    ConceptStats,
    Moments,
    WithinScatter,
    method_needs,
    neutral_basis,
    project_out,
    whitening_shrinkage,
)
from test_train import EMOTIONS  # the three-emotion texts test_train and test_combine use

N, LAYERS, HIDDEN, CONCEPTS = 240, 2, 12, 3


def synthetic(seed: int = 0, n: int = N) -> tuple[np.ndarray, np.ndarray]:
    """Correlated activations with a concept signal: `acts [n, L, H]`, labels in {+1,-1,0}."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(LAYERS, HIDDEN, HIDDEN)) / math.sqrt(HIDDEN)
    scale = np.linspace(3.0, 0.3, HIDDEN)  # anisotropic: whitening matters
    base = np.einsum("nlh,lhk->nlk", rng.normal(size=(n, LAYERS, HIDDEN)) * scale, mix) + 5.0
    labels = rng.choice([-1, 0, 1], size=(n, CONCEPTS), p=[0.55, 0.1, 0.35]).astype(np.int8)
    signal = rng.normal(size=(LAYERS, CONCEPTS, HIDDEN))
    acts = base + np.einsum("nc,lch->nlh", (labels == 1).astype(float), signal) * 0.8
    return acts.astype(np.float32), labels


def stats_for(method: str, acts: np.ndarray, labels: np.ndarray, chunk: int = 17) -> ConceptStats:
    """Stream in uneven batches, as the trainer does, with row passes attached."""
    stats = ConceptStats.zeros(LAYERS, labels.shape[1], HIDDEN, needs=method_needs(method))

    def passes() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for s in range(0, len(acts), chunk):
            yield torch.from_numpy(labels[s : s + chunk]), torch.from_numpy(acts[s : s + chunk])

    for lab, batch in passes():
        stats.update(lab, batch)
    stats.rows = passes
    return stats


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def np_means(acts: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = acts.astype(np.float64)
    pos = np.stack([a[labels[:, c] == 1].mean(0) for c in range(labels.shape[1])], axis=1)
    neg = np.stack([a[labels[:, c] == -1].mean(0) for c in range(labels.shape[1])], axis=1)
    return pos, neg  # [L, C, H]


def assert_same_directions(got: torch.Tensor, want: np.ndarray, atol: float = 1e-5) -> None:
    np.testing.assert_allclose(got.numpy(), want, atol=atol)
    np.testing.assert_allclose(np.linalg.norm(got.numpy(), axis=-1), 1.0, atol=1e-6)


# ---------------------------------------------------------------- streaming moments


def test_streamed_moments_equal_numpy_covariance_and_merge() -> None:
    acts, _ = synthetic()
    whole, a, b = (
        Moments.zeros(LAYERS, HIDDEN),
        Moments.zeros(LAYERS, HIDDEN),
        Moments.zeros(LAYERS, HIDDEN),
    )
    for s in range(0, N, 31):
        whole.update(torch.from_numpy(acts[s : s + 31]))
    a.update(torch.from_numpy(acts[:100]))
    b.update(torch.from_numpy(acts[100:]))
    a.merge(b)
    for m in (whole, a):
        assert float(m.count) == N
        for layer in range(LAYERS):
            x = acts[:, layer].astype(np.float64)
            np.testing.assert_allclose(m.mean()[layer].numpy(), x.mean(0), atol=1e-9)
            np.testing.assert_allclose(
                m.covariance()[layer].numpy(), np.cov(x.T, bias=True), atol=1e-9
            )


def test_weighted_moments_equal_repeated_rows() -> None:
    acts, _ = synthetic(1, 40)
    weights = np.random.default_rng(2).integers(0, 4, size=40)
    m = Moments.zeros(LAYERS, HIDDEN)
    m.update(torch.from_numpy(acts), torch.from_numpy(weights))
    repeated = np.repeat(acts, weights, axis=0).astype(np.float64)
    np.testing.assert_allclose(
        m.covariance()[0].numpy(), np.cov(repeated[:, 0].T, bias=True), atol=1e-9
    )


def test_ledoit_wolf_equals_scikit_learn() -> None:
    from sklearn.covariance import ledoit_wolf

    for seed, n in ((0, N), (3, 9)):  # many rows, and fewer rows than dimensions
        acts, _ = synthetic(seed, n)
        m = Moments.zeros(LAYERS, HIDDEN)
        for s in range(0, n, 7):
            m.update(torch.from_numpy(acts[s : s + 7]))
        cov, shrink = m.ledoit_wolf()
        for layer in range(LAYERS):
            want, want_s = ledoit_wolf(acts[:, layer].astype(np.float64))
            assert float(shrink[layer]) == pytest.approx(want_s, abs=1e-8)
            np.testing.assert_allclose(cov[layer].numpy(), want, atol=1e-8)


def test_within_scatter_equals_numpy() -> None:
    acts, labels = synthetic()
    w = WithinScatter.zeros(LAYERS, CONCEPTS, HIDDEN)
    for s in range(0, N, 50):
        w.update(torch.from_numpy(labels[s : s + 50]), torch.from_numpy(acts[s : s + 50]))
    a = acts.astype(np.float64)
    for layer in range(LAYERS):
        scatter, dof = np.zeros((HIDDEN, HIDDEN)), 0
        for c in range(CONCEPTS):
            x = a[labels[:, c] == 1, layer]
            scatter += (x - x.mean(0)).T @ (x - x.mean(0))
            dof += len(x) - 1
        np.testing.assert_allclose(w.covariance()[layer].numpy(), scatter / dof, atol=1e-9)
    assert w.dof == dof


def test_second_moments_are_only_kept_when_needed() -> None:
    plain = ConceptStats.zeros(LAYERS, CONCEPTS, HIDDEN, needs=method_needs("mean_diff"))
    assert plain.moments is None and plain.within is None and len(plain.tensors()) == 4
    whitened = ConceptStats.zeros(LAYERS, CONCEPTS, HIDDEN, needs=method_needs("whitened"))
    assert whitened.within is not None and whitened.moments is None
    lw = ConceptStats.zeros(LAYERS, CONCEPTS, HIDDEN, needs=method_needs("whitened_lw"))
    assert lw.moments is not None and lw.within is None
    assert set(METHOD_NEEDS) <= set(FIT_METHODS) and DEFAULT_METHOD in FIT_METHODS
    for name in FIT_METHODS:
        assert "means" in method_needs(name)


# ---------------------------------------------------------------- methods


def test_one_vs_mean_equals_numpy() -> None:
    acts, labels = synthetic()
    pos, _ = np_means(acts, labels)
    want = unit(pos - pos.mean(axis=1, keepdims=True))
    assert_same_directions(FIT_METHODS["one_vs_mean"](stats_for("one_vs_mean", acts, labels)), want)


def numpy_whitened(acts: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """LDA: (shrunk pooled within-concept covariance)⁻¹ (μ₊ − μ₋), shrinkage √(H/dof)."""
    a = acts.astype(np.float64)
    _, n_layers, hidden = a.shape
    n_concepts = labels.shape[1]
    pos, neg = np_means(acts, labels)
    out = np.zeros_like(pos)
    for layer in range(n_layers):
        devs = [a[labels[:, c] == 1, layer] - pos[layer, c] for c in range(n_concepts)]
        stacked = np.concatenate(devs)
        dof = len(stacked) - n_concepts
        cov = stacked.T @ stacked / dof
        s = min(0.9, math.sqrt(hidden / dof))
        shrunk = (1 - s) * cov + s * np.trace(cov) / hidden * np.eye(hidden)
        out[layer] = np.linalg.solve(shrunk, (pos[layer] - neg[layer]).T).T
    return unit(out)


def test_whitened_equals_numpy_lda() -> None:
    acts, labels = synthetic()
    got = FIT_METHODS["whitened"](stats_for("whitened", acts, labels))
    assert_same_directions(got, numpy_whitened(acts, labels))
    # and it is not just the difference of means: whitening changed the direction
    pos, neg = np_means(acts, labels)
    assert np.abs((got.numpy() * unit(pos - neg)).sum(-1)).max() < 0.99


def test_whitening_shrinkage_rule() -> None:
    assert whitening_shrinkage(36884, 384) == pytest.approx(math.sqrt(384 / 36884))
    assert whitening_shrinkage(100, 5120) == 0.9  # fewer texts than dimensions: capped


def test_whitened_lw_equals_scikit_learn_ledoit_wolf_lda() -> None:
    from sklearn.covariance import ledoit_wolf

    acts, labels = synthetic()
    pos, neg = np_means(acts, labels)
    want = np.stack(
        [
            np.linalg.solve(ledoit_wolf(acts[:, j].astype(np.float64))[0], (pos[j] - neg[j]).T).T
            for j in range(LAYERS)
        ]
    )
    assert_same_directions(
        FIT_METHODS["whitened_lw"](stats_for("whitened_lw", acts, labels)), unit(want)
    )


def test_pca_equals_numpy_svd_of_matched_differences() -> None:
    acts, labels = synthetic()
    got = FIT_METHODS["pca"](stats_for("pca", acts, labels))
    pos, neg = np_means(acts, labels)
    for j in range(LAYERS):
        for c in range(CONCEPTS):
            d = acts[labels[:, c] == 1, j].astype(np.float64) - neg[j, c]
            top = np.linalg.svd(d, full_matrices=False)[2][0]
            top *= np.sign(top @ (pos[j, c] - neg[j, c]))
            np.testing.assert_allclose(got[j, c].numpy(), top, atol=1e-4)


def test_probe_equals_scikit_learn_logistic_regression() -> None:
    from sklearn.linear_model import LogisticRegression

    acts, labels = synthetic()
    l2 = 1e-3
    got = FIT_METHODS["probe"](stats_for("probe", acts, labels))
    for j in range(LAYERS):
        x = acts[:, j].astype(np.float64)
        mean, std = x.mean(0), x.std(0, ddof=1)
        for c in range(CONCEPTS):
            rows = labels[:, c] != 0
            z = (x[rows] - mean) / std
            # ours: mean BCE + l2/2‖w‖²  ==  scikit-learn's C·ΣBCE + ½‖w‖² with C = 1/(l2·n)
            clf = LogisticRegression(C=1 / (l2 * rows.sum()), tol=1e-10, max_iter=10000)
            clf.fit(z, labels[rows, c] == 1)
            want = unit(clf.coef_[0] / std)
            cos = float(got[j, c].double().numpy() @ want)
            assert cos > 0.999, (j, c, cos)


def test_row_methods_without_row_access_fail_clearly() -> None:
    acts, labels = synthetic()
    stats = stats_for("pca", acts, labels)
    stats.rows = None
    for name in ("pca", "probe"):
        with pytest.raises(ConfigError, match="passes over the stored activations"):
            FIT_METHODS[name](stats)
    with pytest.raises(ConfigError, match="within-concept scatter"):
        FIT_METHODS["whitened"](stats_for("mean_diff", acts, labels))


def test_neutral_denoising_equals_numpy_pca_projection() -> None:
    acts, labels = synthetic()
    neutral, _ = synthetic(5, 60)
    m = Moments.zeros(LAYERS, HIDDEN)
    m.update(torch.from_numpy(neutral))
    vectors = FIT_METHODS["mean_diff"](stats_for("mean_diff", acts, labels))
    basis = neutral_basis(m, 0.5)
    got = project_out(vectors, basis)
    for j in range(LAYERS):
        x = neutral[:, j].astype(np.float64)
        values, vecs = np.linalg.eigh(np.cov(x.T, bias=True))
        values, vecs = values[::-1], vecs[:, ::-1]
        k = int(np.searchsorted(np.cumsum(values) / values.sum(), 0.5) + 1)
        assert basis[j].shape == (HIDDEN, k)
        b = vecs[:, :k]
        v = vectors[j].double().numpy()
        want = unit(v - (v @ b) @ b.T)
        np.testing.assert_allclose(got[j].numpy(), want, atol=1e-5)
        np.testing.assert_allclose(got[j].numpy() @ b, 0.0, atol=1e-5)
    with pytest.raises(ConfigError, match="share of variance"):
        neutral_basis(m, 1.0)


# ---------------------------------------------------------------- through the trainer


def write_data(root: Path, emotions: dict[str, list[str]] = EMOTIONS) -> Path:
    """A training-data directory: each emotion's texts are its positives and every other
    emotion's negatives; every third text of each emotion is held out."""
    root.mkdir(parents=True, exist_ok=True)
    for emotion in emotions:
        rows = [
            {
                "emotion": emotion,
                "text": text,
                "split": "heldout" if i % 3 == 2 else "train",
                "polarity": "positive" if other == emotion else "negative",
            }
            for other, texts in emotions.items()
            for i, text in enumerate(texts)
        ]
        (root / f"{emotion}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def reference_pooled(model_dir: Path, texts: list[str], layers: list[int]) -> np.ndarray:
    """Mean over non-special tokens of `output_hidden_states[i + 1]`: `[n, L, H]`."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    loader = AutoModel if config.get("model_type") == "bert" else AutoModelForCausalLM
    model = loader.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    for text in texts:
        enc = tok(text, return_tensors="pt", return_special_tokens_mask=True)
        keep = enc.pop("special_tokens_mask")[0] == 0
        with torch.no_grad():
            hs = model(**enc, output_hidden_states=True).hidden_states
        out.append(np.stack([hs[i + 1][0][keep].mean(0).numpy() for i in layers]))
    return np.stack(out)


@pytest.mark.parametrize("method", sorted(FIT_METHODS))
def test_every_method_trains_end_to_end(
    tmp_path: Path, method: str, tiny_model_dirs: Callable[[str], Path]
) -> None:
    """Each method runs through `train()`, with the accumulators and passes it declares."""
    from amygdala.artifact import load_artifact
    from amygdala.train import TrainConfig, train

    model_dir = tiny_model_dirs("llama")
    data = write_data(tmp_path / "data")
    out = tmp_path / "r.safetensors"
    train(
        TrainConfig(
            model=str(model_dir),
            training_data_dir=data,
            output=out,
            method=method,
            target_layers="0,2",
            min_examples=3,
            vectors_dtype="float32",
            device="cpu",
            dtype="fp32",
            progress=False,
            no_cache=True,
        )
    )
    art = load_artifact(out)
    assert art.manifest["method"] == method
    if method != "whitened":
        return
    # the default method equals numpy LDA on independently pooled activations
    texts = [t for ts in EMOTIONS.values() for i, t in enumerate(ts) if i % 3 != 2]
    acts = reference_pooled(model_dir, texts, [0, 2])
    labels = np.array(
        [[1 if t in EMOTIONS[c] else -1 for c in art.concepts] for t in texts], dtype=np.int8
    )
    np.testing.assert_allclose(art.stacked().numpy(), numpy_whitened(acts, labels), atol=2e-4)


def test_neutral_share_denoises_and_is_recorded(
    tmp_path: Path, tiny_model_dirs: Callable[[str], Path]
) -> None:
    from amygdala.artifact import load_artifact
    from amygdala.train import TrainConfig, train

    data = write_data(tmp_path / "data")
    neutral = tmp_path / "neutral.txt"
    neutral.write_text(
        "The bus leaves at nine.\n\nPaper is made from wood pulp.\n\n"
        "The meeting moved to room four.\n\nRain is forecast for Tuesday.\n"
    )
    common = dict(
        model=str(tiny_model_dirs("llama")),
        training_data_dir=data,
        target_layers="0,2",
        min_examples=3,
        vectors_dtype="float32",
        device="cpu",
        dtype="fp32",
        progress=False,
        no_cache=True,
        neutral=neutral,
    )
    train(TrainConfig(output=tmp_path / "a.safetensors", **common))  # type: ignore[arg-type]
    train(TrainConfig(output=tmp_path / "b.safetensors", neutral_share=0.5, **common))  # type: ignore[arg-type]
    plain, denoised = (
        load_artifact(tmp_path / "a.safetensors"),
        load_artifact(tmp_path / "b.safetensors"),
    )
    assert "denoise" not in plain.manifest
    assert denoised.manifest["denoise"]["neutral_share"] == 0.5
    assert all(k >= 1 for k in denoised.manifest["denoise"]["components_per_layer"])
    assert not torch.allclose(plain.stacked(), denoised.stacked(), atol=1e-3)
    with pytest.raises(ConfigError, match="--neutral-share needs --neutral"):
        TrainConfig(
            output=tmp_path / "c.safetensors", neutral_share=0.2, **{**common, "neutral": None}
        )  # type: ignore[arg-type]
