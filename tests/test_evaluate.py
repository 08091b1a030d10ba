"""Every number in quality.json against a direct computation (scikit-learn, numpy)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from amygdala.cli import main
from amygdala.evaluate import (
    LAYER_TOLERANCE,
    REDUNDANT_R2,
    Thresholds,
    auroc,
    cohens_d,
    evaluate,
    recommend_layers,
)

N_TEXTS, LAYERS, HIDDEN, CONCEPTS = 150, 3, 10, 4
NAMES = ("anger", "awe", "calm", "dread")


class MemorySource:
    """Activations held in memory, served like the activation store (odd chunk sizes)."""

    def __init__(self, acts: np.ndarray) -> None:
        self.acts = acts
        self.requested: list[list[int]] = []

    def iter(
        self, rows: Sequence[int], chunk: int = 7
    ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        rows = list(rows)
        self.requested.append(rows)
        for s in range(0, len(rows), chunk):
            index = np.asarray(rows[s : s + chunk], dtype=int)
            yield index, torch.from_numpy(self.acts[index])


def dataset(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, torch.Tensor]:
    """acts `[n, L, H]`, train and held-out labels `[n, C]`, vectors `[L, C, H]`.

    Concept 3's vector is nearly a combination of concepts 0 and 1 (redundant), and
    concept 2 has only 3 held-out positives (flagged). Scores are rounded so AUROC
    meets ties.
    """
    rng = np.random.default_rng(seed)
    acts = rng.normal(size=(N_TEXTS, LAYERS, HIDDEN)).round(1).astype(np.float32)
    labels = rng.choice([-1, 1, 0], size=(N_TEXTS, CONCEPTS), p=[0.6, 0.3, 0.1]).astype(np.int8)
    heldout_rows = np.arange(N_TEXTS) % 3 == 0
    train = np.where(heldout_rows[:, None], 0, labels).astype(np.int8)
    heldout = np.where(heldout_rows[:, None], labels, 0).astype(np.int8)
    pos_c2 = np.flatnonzero(heldout[:, 2] == 1)
    heldout[pos_c2[3:], 2] = -1
    vectors = rng.normal(size=(LAYERS, CONCEPTS, HIDDEN))
    vectors[:, 3] = vectors[:, 0] - 0.5 * vectors[:, 1] + 0.01 * rng.normal(size=(LAYERS, HIDDEN))
    for c in range(CONCEPTS):  # plant some signal so layers and AUROCs differ
        acts[labels[:, c] == 1] += (
            0.4
            * (c + 1)
            * vectors[:, c]
            / np.linalg.norm(vectors[:, c], axis=-1, keepdims=True)
            * np.array([0.2, 1.0, 0.6])[:, None]
        ).astype(np.float32)
    v = torch.from_numpy(vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)).float()
    return acts, train, heldout, v


@pytest.fixture(scope="module")
def quality_doc() -> tuple[dict, np.ndarray, np.ndarray, np.ndarray, torch.Tensor]:
    acts, train, heldout, vectors = dataset()
    q = evaluate(
        vectors,
        NAMES,
        [2, 5, 7],
        MemorySource(acts),
        train,
        heldout,
        max_coherence=25,
        info={"model": "synthetic"},
    )
    doc = json.loads(json.dumps(q.to_json()))  # exactly what quality.json holds
    return doc, acts, train, heldout, vectors


def test_auroc_matches_scikit_learn_with_ties() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    for _ in range(20):
        pos = rng.integers(0, 5, size=rng.integers(1, 30)).astype(float)
        neg = rng.integers(0, 5, size=rng.integers(1, 30)).astype(float)
        want = roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg])
        assert auroc(pos, neg) == pytest.approx(want, abs=1e-12)
    assert np.isnan(auroc(np.array([]), np.array([1.0])))


def test_cohens_d_matches_numpy() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.normal(1, 2, 40), rng.normal(0, 1, 25)
    pooled = np.sqrt(
        ((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2)
    )
    assert cohens_d(a, b) == pytest.approx((a.mean() - b.mean()) / pooled, rel=1e-12)
    assert np.isnan(cohens_d(a[:1], b))


def test_separation_numbers(quality_doc: tuple) -> None:
    from sklearn.metrics import roc_auc_score

    doc, acts, _, heldout, vectors = quality_doc
    v = vectors.double().numpy()
    for c, concept in enumerate(NAMES):
        per = doc["per_concept"][concept]
        pos, neg = heldout[:, c] == 1, heldout[:, c] == -1
        for j in range(LAYERS):
            score = acts[:, j].astype(np.float64) @ v[j, c]
            want = roc_auc_score(
                np.r_[np.ones(pos.sum()), np.zeros(neg.sum())], np.r_[score[pos], score[neg]]
            )
            assert per["auroc"][j] == pytest.approx(want, abs=1e-6)
            p, n = score[pos], score[neg]
            sd = np.sqrt(
                ((len(p) - 1) * p.var(ddof=1) + (len(n) - 1) * n.var(ddof=1))
                / (len(p) + len(n) - 2)
            )
            assert per["cohens_d"][j] == pytest.approx((p.mean() - n.mean()) / sd, abs=1e-5)
        best = int(np.argmax(per["auroc"]))
        assert per["best_layer"] == [2, 5, 7][best]
        assert per["best_auroc"] == pytest.approx(max(per["auroc"]), abs=1e-9)
    table = np.array([doc["per_concept"][c]["auroc"] for c in NAMES])  # [C, L]
    np.testing.assert_allclose(doc["mean_auroc_per_layer"], table.mean(axis=0), atol=1e-6)


def test_combined_auroc_is_that_of_the_weighted_sum(quality_doc: tuple) -> None:
    from sklearn.metrics import roc_auc_score

    _, acts, train, heldout, vectors = quality_doc
    weights = np.array([[1.0, 0.5, -1.0, 2.0], [0.0, 1.0, 1.0, 1.0], [2.0, -0.5, 0.5, 1.0]])
    q = evaluate(
        vectors, NAMES, [2, 5, 7], MemorySource(acts), train, heldout, combined_weights=weights
    )
    doc = json.loads(json.dumps(q.to_json()))
    scores = np.einsum("nlh,lch->nlc", acts.astype(np.float64), vectors.double().numpy())
    combined = (scores * weights).sum(axis=1)  # Σ_l weights[l] · projection[l]
    want = []
    for c, concept in enumerate(NAMES):
        pos, neg = heldout[:, c] == 1, heldout[:, c] == -1
        truth = np.r_[np.ones(pos.sum()), np.zeros(neg.sum())]
        want.append(roc_auc_score(truth, np.r_[combined[pos, c], combined[neg, c]]))
        assert doc["per_concept"][concept]["combined_auroc"] == pytest.approx(want[-1], abs=1e-6)
    assert doc["mean_combined_auroc"] == pytest.approx(np.mean(want), abs=1e-6)
    assert (
        "mean_combined_auroc"
        not in evaluate(vectors, NAMES, [2, 5, 7], MemorySource(acts), train, heldout).to_json()
    )
    from amygdala.errors import ConfigError

    with pytest.raises(ConfigError, match=r"combined weights \(1, 4\) do not match"):
        evaluate(
            vectors,
            NAMES,
            [2, 5, 7],
            MemorySource(acts),
            train,
            heldout,
            combined_weights=weights[:1],
        )


def test_recommended_layers_serve_every_concept(quality_doc: tuple) -> None:
    doc = quality_doc[0]
    table = np.array([doc["per_concept"][c]["auroc"] for c in NAMES])  # [C, L]
    chosen = [doc["layers"].index(x) for x in doc["recommended_layers"]]
    assert int(np.argmax(table.mean(axis=0))) in chosen
    assert np.all(table[:, chosen].max(axis=1) >= table.max(axis=1) - LAYER_TOLERANCE)
    # greedy: a concept whose best layer is far better elsewhere pulls that layer in
    au = np.array([[0.9, 0.9, 0.6], [0.8, 0.8, 0.95]])  # [L, C]
    assert recommend_layers(au) == [0, 1]
    assert recommend_layers(np.array([[0.9, 0.9], [0.905, 0.7]])) == [0]


def test_crosstalk_numbers(quality_doc: tuple) -> None:
    from sklearn.linear_model import Ridge

    doc, _, _, _, vectors = quality_doc
    v = vectors.double().numpy()
    for j in range(LAYERS):
        u = v[j] / np.linalg.norm(v[j], axis=1, keepdims=True)
        np.testing.assert_allclose(np.array(doc["cosine"][j], dtype=float), u @ u.T, atol=1e-6)
        for c, concept in enumerate(NAMES):
            others = [k for k in range(CONCEPTS) if k != c]
            x, y = v[j, others].T, v[j, c]  # samples = hidden coordinates
            w = np.linalg.solve(x.T @ x + 0.01 * np.eye(len(others)), x.T @ y)  # closed form
            ridge = Ridge(alpha=0.01, fit_intercept=False).fit(x, y)
            np.testing.assert_allclose(w, ridge.coef_, atol=1e-8)
            r2 = 1 - np.sum((y - x @ w) ** 2) / np.sum(y**2)
            entry = doc["per_concept"][concept]["crosstalk"][j]
            assert entry["layer"] == doc["layers"][j]
            assert entry["r2"] == pytest.approx(r2, abs=1e-6)
            assert entry["redundant"] == (r2 > REDUNDANT_R2)
            top = sorted(others, key=lambda k: -abs(w[others.index(k)]))[:3]
            assert [e["concept"] for e in entry["contributors"]] == [NAMES[k] for k in top]
            for e in entry["contributors"]:
                k = NAMES.index(e["concept"])
                assert e["weight"] == pytest.approx(w[others.index(k)], abs=1e-6)
            near = sorted(others, key=lambda k: -(u @ u.T)[c, k])[:3]
            assert [e["concept"] for e in entry["nearest"]] == [NAMES[k] for k in near]
    assert doc["per_concept"]["dread"]["crosstalk"][0]["redundant"]  # planted combination
    assert not doc["per_concept"]["calm"]["crosstalk"][0]["redundant"]


def test_coherence_pca_map_counts_and_flags(quality_doc: tuple) -> None:
    from sklearn.decomposition import PCA

    doc, acts, train, heldout, vectors = quality_doc
    for c, concept in enumerate(NAMES):
        per = doc["per_concept"][concept]
        rows = np.flatnonzero(train[:, c] == 1)
        rows = rows[np.linspace(0, len(rows) - 1, 25).round().astype(int)]  # the cap
        assert per["coherence_examples"] == 25
        for j in range(LAYERS):
            x = acts[rows, j].astype(np.float64)
            s = np.linalg.svd(x - x.mean(0), compute_uv=False)
            assert per["coherence"][j] == pytest.approx(s[0] ** 2 / np.sum(s**2), abs=1e-6)
        assert per["counts"] == {
            "train_positive": int((train[:, c] == 1).sum()),
            "train_negative": int((train[:, c] == -1).sum()),
            "heldout_positive": int((heldout[:, c] == 1).sum()),
            "heldout_negative": int((heldout[:, c] == -1).sum()),
        }
    for j, entry in enumerate(doc["pca_map"]):
        pca = PCA(n_components=2).fit(vectors[j].double().numpy())
        want = pca.transform(vectors[j].double().numpy())
        got = np.array(entry["coords"])
        np.testing.assert_allclose(np.abs(got), np.abs(want), atol=1e-6)  # up to sign
        np.testing.assert_allclose(entry["explained"], pca.explained_variance_ratio_, atol=1e-6)
    flags = doc["per_concept"]["calm"]["flags"]
    assert any("few held-out examples (3 positive" in f for f in flags)
    assert any(w.startswith("dread: redundant at layers") for w in doc["warnings"])
    assert doc["format"] == "amygdala-quality/1" and doc["model"] == "synthetic"
    assert doc["settings"]["ridge_lambda"] == 0.01


def test_flags_for_backwards_and_missing_heldout() -> None:
    acts, train, heldout, vectors = dataset(1)
    flipped = vectors.clone()
    flipped[:, 3] *= -1  # reads backwards
    heldout[:, 1] = np.where(heldout[:, 1] == 1, 0, heldout[:, 1])  # no held-out positives
    q = evaluate(
        flipped,
        NAMES,
        [0, 1, 2],
        MemorySource(acts),
        train,
        heldout,
        thresholds=Thresholds(min_train=1000),
    )
    doc = q.to_json()
    assert doc["per_concept"]["awe"]["auroc"] == [None, None, None]
    assert doc["per_concept"]["awe"]["best_layer"] is None
    assert any("no held-out positives" in f for f in doc["per_concept"]["awe"]["flags"])
    assert any("reads backwards" in f for f in doc["per_concept"]["dread"]["flags"])
    assert all(
        any("few training examples" in f for f in doc["per_concept"][c]["flags"]) for c in NAMES
    )


def test_evaluate_reads_each_needed_row_once_per_purpose() -> None:
    acts, train, heldout, vectors = dataset()
    source = MemorySource(acts)
    evaluate(vectors, NAMES, [0, 1, 2], source, train, heldout, max_coherence=10)
    heldout_rows = np.flatnonzero((heldout != 0).any(axis=1)).tolist()
    assert source.requested[0] == heldout_rows  # one pass for the projections
    assert len(source.requested) == 2  # one pass for coherence (fits the memory budget)


def test_shape_mismatch_is_a_config_error() -> None:
    from amygdala.errors import ConfigError

    acts, train, heldout, vectors = dataset()
    with pytest.raises(ConfigError, match="do not match"):
        evaluate(vectors, NAMES[:3], [0, 1, 2], MemorySource(acts), train, heldout)


# ---------------------------------------------------------------- `amygdala report`


def test_report_cli_matches_independent_projection(
    tmp_path: Path, tiny_model_dirs: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Train, then report: AUROCs equal scikit-learn's on output_hidden_states projections,
    and the report reuses the activation store (the model does not run again)."""
    from sklearn.metrics import roc_auc_score

    from amygdala.artifact import load_artifact
    from test_methods import EMOTIONS, reference_pooled, write_data

    model_dir = tiny_model_dirs("llama")
    data = write_data(tmp_path / "data")
    out = tmp_path / "out" / "readout.safetensors"
    cache = tmp_path / "cache"
    common = ["--training-data-dir", str(data), "--cache-dir", str(cache), "--no-progress"]
    assert (
        main(
            [
                "train",
                "--model",
                str(model_dir),
                "--output",
                str(out),
                "--target-layers",
                "0,2",
                "--min-examples",
                "3",
                "--dtype",
                "fp32",
                "--device",
                "cpu",
                "--report",
                str(tmp_path / "from-train"),
                *common,
            ]
        )
        == 0
    )
    shards = sorted(p.name for p in cache.rglob("*.safetensors"))
    assert (
        main(
            [
                "report",
                "--vectors",
                str(out),
                "--output-dir",
                str(tmp_path / "rep"),
                "--device",
                "cpu",
                *common,
            ]
        )
        == 0
    )
    assert sorted(p.name for p in cache.rglob("*.safetensors")) == shards  # nothing captured
    err = capsys.readouterr()
    assert "recommended layers" in err.out and "report.html" in err.err
    doc = json.loads((tmp_path / "rep" / "quality.json").read_text())
    assert doc == json.loads((tmp_path / "from-train" / "quality.json").read_text())
    assert (tmp_path / "rep" / "report.html").read_text().startswith("<!DOCTYPE html>")

    art = load_artifact(out)
    held = [(t, e) for e, ts in EMOTIONS.items() for i, t in enumerate(ts) if i % 3 == 2]
    pooled = reference_pooled(model_dir, [t for t, _ in held], [0, 2])
    scores = np.einsum("nlh,lch->nlc", pooled, art.stacked().double().numpy())
    weights = np.array(art.manifest["combined"]["weights"])
    for c, concept in enumerate(art.concepts):
        truth = np.array([e == concept for _, e in held])
        for j in range(2):
            want = roc_auc_score(truth, scores[:, j, c])
            assert doc["per_concept"][concept]["auroc"][j] == pytest.approx(want, abs=1e-6)
        want = roc_auc_score(truth, (scores[:, :, c] * weights[:, c]).sum(axis=1))
        assert doc["per_concept"][concept]["combined_auroc"] == pytest.approx(want, abs=1e-6)
    assert "mean held-out AUROC of the combined score" in err.out
    assert doc["method"] == "whitened" and doc["layers"] == [0, 2]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("no_heldout", "has no held-out rows"),
        ("missing_concept", "has no examples of ['joy']"),
        ("wrong_model", "pass the artifact's model with --model"),
    ],
)
def test_report_errors_are_clear(
    tmp_path: Path,
    tiny_model_dirs: Callable[[str], Path],
    capsys: pytest.CaptureFixture[str],
    setup: str,
    message: str,
) -> None:
    from test_methods import EMOTIONS, write_data

    data = write_data(tmp_path / "data")
    out = tmp_path / "readout.safetensors"
    assert (
        main(
            [
                "train",
                "--model",
                str(tiny_model_dirs("llama")),
                "--training-data-dir",
                str(data),
                "--output",
                str(out),
                "--target-layers",
                "0,2",
                "--min-examples",
                "3",
                "--no-progress",
                "--no-cache",
            ]
        )
        == 0
    )
    other = tmp_path / "other"
    extra: list[str] = []
    if setup == "no_heldout":
        for path in data.glob("*.jsonl"):
            rows = [json.loads(line) for line in path.read_text().splitlines()]
            (other / path.name).parent.mkdir(exist_ok=True)
            (other / path.name).write_text(
                "".join(json.dumps({**r, "split": "train"}) + "\n" for r in rows)
            )
    elif setup == "missing_concept":
        write_data(other, {k: v for k, v in EMOTIONS.items() if k != "joy"})
    else:
        other = data
        extra = ["--model", "minilm"]  # hidden 384, not 64
    report_dir = tmp_path / "rep"
    code = main(
        [
            "report",
            "--vectors",
            str(out),
            "--training-data-dir",
            str(other),
            "--output-dir",
            str(report_dir),
            "--no-cache",
            "--no-progress",
            *extra,
        ]
    )
    assert code == 2
    assert message in capsys.readouterr().err
    assert not report_dir.exists()
