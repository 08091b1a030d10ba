"""The combined score over all layers: its fit and calibration against independent
references (scikit-learn's LDA and AUROC, numpy from `output_hidden_states`)."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.metrics import roc_auc_score

from amygdala.artifact import load_artifact
from amygdala.cli import main
from amygdala.combine import (
    FOLDS,
    SHRINK_POSITIVES,
    combined_calibration,
    fit_combination,
    fold_ids,
    lda_weights,
    significant,
)
from test_train import EMOTIONS, reference_hidden, sampled_tokens, write_training_dir

# ---------------------------------------------------------------- independent references


def sklearn_lda(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Fisher's discriminant `Σ⁻¹ (μ₊ − μ₋)` from scikit-learn (pooled class covariance)."""
    x = np.concatenate([pos, neg])
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    return LinearDiscriminantAnalysis(solver="lsqr").fit(x, y).coef_[0]


def reference_weights(u: np.ndarray, labels: np.ndarray, alpha: float) -> np.ndarray:
    """The shrunk LDA of the module docstring, per concept, from scikit-learn's LDA."""
    n_layers, n_concepts = u.shape[1:]
    out = np.ones((n_layers, n_concepts))
    for c in range(n_concepts):
        pos, neg = u[labels[:, c] == 1, :, c], u[labels[:, c] == -1, :, c]
        if len(pos) < 2 or len(neg) < 2:
            continue
        x = np.concatenate([pos, neg])
        centred = np.concatenate([pos - pos.mean(0), neg - neg.mean(0)])
        cov = centred.T @ centred / len(x)
        lda = sklearn_lda(pos, neg)
        ones = np.ones(n_layers)
        k = len(pos) / (len(pos) + alpha)
        w = k * lda / math.sqrt(lda @ cov @ lda) + (1 - k) * ones / math.sqrt(ones @ cov @ ones)
        out[:, c] = w * math.sqrt(n_layers) / np.linalg.norm(w)
    return out


def sk_mean_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    per = [
        roc_auc_score(labels[labels[:, c] != 0, c] == 1, scores[labels[:, c] != 0, c])
        for c in range(labels.shape[1])
        if (labels[:, c] == 1).any() and (labels[:, c] == -1).any()
    ]
    return float(np.mean(per))


def reference_fit(
    proj: np.ndarray, labels: np.ndarray, std: np.ndarray, folds: np.ndarray
) -> tuple[np.ndarray, str]:
    """Cross-validate z-sum vs shrunk LDA on the folds, keep the better for all concepts."""
    u = proj / std
    lda_cv = np.zeros(labels.shape)
    for f in np.unique(folds):
        w = reference_weights(u[folds != f], labels[folds != f], SHRINK_POSITIVES)
        lda_cv[folds == f] = np.einsum("nlc,lc->nc", u[folds == f], w)
    if sk_mean_auroc(lda_cv, labels) > sk_mean_auroc(u.sum(1), labels):
        return reference_weights(u, labels, SHRINK_POSITIVES) / std, "lda"
    return 1 / std, "zsum"


def noisy_layers(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Projections `[n, 3, 2]`: layer 0 = signal + shared noise, layer 1 = the shared noise
    plus a little of its own, layer 2 = the signal, weaker, with independent noise."""
    rng = np.random.default_rng(seed)
    labels = rng.choice([-1, 1], size=(n, 2), p=[0.7, 0.3]).astype(np.int8)
    signal = (labels == 1).astype(float)
    shared = rng.normal(size=(n, 2)) * 2
    proj = np.stack(
        [
            signal + shared,
            shared + 0.3 * rng.normal(size=(n, 2)),
            0.5 * signal + rng.normal(size=(n, 2)),
        ],
        axis=1,
    )
    return proj, labels


# ---------------------------------------------------------------- the fit, in numpy


def test_shrunk_lda_equals_scikit_learn() -> None:
    proj, labels = noisy_layers()
    for alpha in (0.0, 30.0, SHRINK_POSITIVES, 1e12):
        np.testing.assert_allclose(
            lda_weights(proj, labels, alpha),
            reference_weights(proj, labels, alpha),
            rtol=1e-6,
            atol=1e-9,
        )
    # no shrinkage: Fisher's direction itself; infinite shrinkage: the z-sum (all ones)
    w = lda_weights(proj, labels, 0.0)[:, 0]
    lda = sklearn_lda(proj[labels[:, 0] == 1, :, 0], proj[labels[:, 0] == -1, :, 0])
    np.testing.assert_allclose(w / np.linalg.norm(w), lda / np.linalg.norm(lda), atol=1e-6)
    np.testing.assert_allclose(lda_weights(proj, labels, 1e15), 1.0, atol=1e-9)


def test_fit_picks_lda_when_layers_cancel_noise_and_keeps_units() -> None:
    proj, labels = noisy_layers()
    std = np.array([[2.0, 4.0], [0.5, 1.0], [1.0, 3.0]])
    folds = np.arange(len(proj)) % FOLDS
    fit = fit_combination(proj, labels, std, folds)
    want, chosen = reference_fit(proj, labels, std, folds)
    assert fit.chosen == chosen == "lda" and fit.rows == len(proj)
    np.testing.assert_allclose(fit.weights, want, rtol=1e-6)
    assert fit.cv_auroc["lda"] > fit.cv_auroc["zsum"]
    # layer 1 carries the noise of layer 0: the fit subtracts it
    assert (fit.weights[1] < 0).all() and (fit.weights[0] > 0).all()
    combined = np.einsum("nlc,lc->nc", proj, fit.weights)
    assert sk_mean_auroc(combined, labels) > max(
        sk_mean_auroc(proj[:, j], labels) for j in range(3)
    )


def test_fit_keeps_the_zsum_without_enough_positives_and_skips_flat_layers() -> None:
    proj, labels = noisy_layers(n=40)
    labels[:, :] = -1
    labels[:1, :] = 1  # one positive per concept: nothing to fit
    std = np.array([[2.0, 4.0], [0.0, 1.0], [1.0, 3.0]])  # no spread at layer 1, concept 0
    fit = fit_combination(proj, labels, std, np.arange(40) % FOLDS)
    assert fit.chosen == "zsum"
    np.testing.assert_allclose(fit.weights, np.where(std > 0, 1 / np.where(std > 0, std, 1), 0))
    single = fit_combination(proj[:, :1], labels, std[:1], np.arange(40) % FOLDS)
    assert single.chosen == "zsum" and np.allclose(single.weights, 1 / std[:1])


def test_fit_refuses_mismatched_shapes() -> None:
    proj, labels = noisy_layers(n=20)
    with pytest.raises(ValueError, match=r"do not fit \(\[n, L, C\]"):
        fit_combination(proj, labels[:, :1], np.ones((3, 2)), np.zeros(20, dtype=int))


def test_calibration_from_joint_sums_equals_direct_mean_and_std() -> None:
    rng = np.random.default_rng(3)
    tokens = rng.normal(size=(50, 3, 2)) * np.array([1.0, 2.0, 0.5])[None, :, None] + 0.7
    weights = rng.normal(size=(3, 2))
    mean, std = combined_calibration(
        np.full(2, 50.0), tokens.sum(0).T, np.einsum("nlc,nmc->clm", tokens, tokens), weights
    )
    direct = np.einsum("nlc,lc->nc", tokens, weights)
    np.testing.assert_allclose(mean, direct.mean(0), rtol=1e-10)
    np.testing.assert_allclose(std, direct.std(0, ddof=1), rtol=1e-10)


def test_folds_come_from_the_text_hash_and_significant_digits() -> None:
    h = hashlib.sha256(b"I miss you.").hexdigest()
    assert fold_ids([h])[0] == int(h[:12], 16) % FOLDS
    assert significant(np.array([31.80796, -0.0001234567, 0.0])).tolist() == [
        31.81,
        -0.0001235,
        0.0,
    ]


# ---------------------------------------------------------------- end to end, from HF


def oof_reference(
    model_dir: Path, layers: list[int]
) -> tuple[list[str], np.ndarray, dict[str, np.ndarray]]:
    """Train texts, their out-of-fold projections `[n, L, C]` under `mean_diff`, and the
    full-data vectors per concept — all in numpy from `output_hidden_states`."""
    hidden = reference_hidden(model_dir, layers)
    texts = [t for ts in EMOTIONS.values() for i, t in enumerate(ts) if i % 3 != 2]
    concepts = sorted(EMOTIONS)
    pooled = np.stack([hidden[t].mean(axis=1) for t in texts])  # [n, L, H]
    labels = np.array([[1 if t in EMOTIONS[c] else -1 for c in concepts] for t in texts])
    folds = np.array([int(hashlib.sha256(t.encode()).hexdigest()[:12], 16) % FOLDS for t in texts])

    def vectors(rows: np.ndarray) -> np.ndarray:  # [L, C, H] unit mean differences
        out = []
        for c in range(len(concepts)):
            d = pooled[rows & (labels[:, c] == 1)].mean(0) - pooled[
                rows & (labels[:, c] == -1)
            ].mean(0)
            out.append(d / np.linalg.norm(d, axis=-1, keepdims=True))
        return np.stack(out, axis=1)

    proj = np.zeros((len(texts), len(layers), len(concepts)))
    for f in range(FOLDS):
        inside = folds == f
        proj[inside] = np.einsum("nlh,lch->nlc", pooled[inside], vectors(~inside))
    return texts, proj, {"labels": labels, "folds": folds, "vectors": vectors(folds >= 0)}


def test_stored_weights_and_calibration_equal_numpy_recomputation(
    tmp_path: Path, tiny_model_dirs: Callable[[str], Path]
) -> None:
    model_dir = tiny_model_dirs("llama")
    data = write_training_dir(tmp_path / "data")
    out = tmp_path / "readout.safetensors"
    # layers 0-2: Hugging Face's last hidden state of a Llama is after the final norm
    assert (
        main(
            [
                "train",
                "--model",
                str(model_dir),
                "--training-data-dir",
                str(data),
                "--target-layers",
                "0,1,2",
                "--output",
                str(out),
                "--dtype",
                "fp32",
                "--method",
                "mean_diff",
                "--vectors-dtype",
                "float32",
                "--min-examples",
                "3",
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    art = load_artifact(out)
    m = art.manifest
    assert main(["validate", str(out)]) == 0
    texts, proj, ref = oof_reference(model_dir, [0, 1, 2])
    std = np.asarray(m["calibration"]["std"])
    want, chosen = reference_fit(proj, ref["labels"], std, ref["folds"])
    combined = m["combined"]
    assert combined["unit"] == "token" and combined["fit"]["chosen"] == chosen
    assert combined["fit"]["rows"] == len(texts) == 12
    weights = np.asarray(combined["weights"])
    assert weights.shape == (3, 3)
    np.testing.assert_allclose(weights, want, rtol=2e-3)

    # calibration: the combined value of every sampled token of the concept's train
    # negatives, Σ_l weights[l][c] · (token_l · vector_l[c]), its mean and std (ddof=1)
    hidden = reference_hidden(model_dir, [0, 1, 2])
    for c, concept in enumerate(m["concepts"]):
        negs = [
            sampled_tokens(hidden[t[i]])
            for o, t in EMOTIONS.items()
            if o != concept
            for i in range(len(t))
            if i % 3 != 2
        ]
        values = np.concatenate(
            [
                sum(
                    weights[j, c] * (n[j] @ art.vectors[layer][c].numpy().astype(np.float64))
                    for j, layer in enumerate(m["layers"])
                )
                for n in negs
            ]
        )
        assert combined["mean"][c] == pytest.approx(values.mean(), rel=1e-3, abs=1e-4)
        assert combined["std"][c] == pytest.approx(values.std(ddof=1), rel=1e-3)


def test_heldout_rows_never_reach_the_combination(tmp_path: Path, llama: object) -> None:
    from test_train import run_train

    data = write_training_dir(tmp_path / "data")
    _, base = run_train(llama, data, tmp_path / "a.safetensors")
    for path in data.glob("*.jsonl"):  # flip every held-out label
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        for r in rows:
            if r["split"] == "heldout":
                r["polarity"] = "negative" if r["polarity"] == "positive" else "positive"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _, flipped = run_train(llama, data, tmp_path / "b.safetensors")
    assert flipped["combined"] == base["combined"]
    _, none = run_train(llama, data, tmp_path / "c.safetensors", combined=False)
    assert "combined" not in none and none["calibration"] == base["calibration"]


@pytest.fixture(scope="module")
def llama(tiny_model_dirs: Callable[[str], Path]) -> object:
    from amygdala.models import load_model

    return load_model(str(tiny_model_dirs("llama")), device="cpu", dtype="fp32")
