"""Held-out quality of readout vectors: separation, layers, cross-talk, coherence.

`evaluate(vectors, ...)` projects the held-out texts on every concept's vector at every
layer (one pass over their stored activations) and measures:

* **separation** — AUROC of the projection, held-out positives vs held-out negatives,
  and Cohen's d (pooled standard deviation, ddof = 1); with the manifest's combined
  weights, also the AUROC of the combined score `Σ_l weights[l] · projection[l]`;
* **layers** — the best layer per concept, the mean AUROC per layer, and a recommended
  layer set: starting from the best layer on average, layers are added greedily until
  every concept is within `LAYER_TOLERANCE` AUROC of its own best layer;
* **cross-talk** — per layer the cosine matrix between concepts, and a ridge regression
  (λ = 0.01, no intercept) of each concept's vector on all the others: its R² =
  1 − ‖v − Vw‖² / ‖v‖² (the share of the direction the other concepts reproduce), the
  top signed contributors, `redundant` when R² > 0.9, and the nearest concepts;
* **coherence** — the share of variance on the first principal component of a
  concept's train positives (at most `max_coherence` of them per concept): near 1
  means the positives vary along one axis, low values mean a diffuse concept;
* **flags** — too few examples, no held-out data, a vector that reads backwards.

`Quality.to_json()` is what `amygdala report` writes as quality.json.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import Tensor

from amygdala._defaults import MIN_HELDOUT, MIN_TRAIN
from amygdala.errors import ConfigError

if TYPE_CHECKING:
    from amygdala.artifact import Manifest

QUALITY_FORMAT = "amygdala-quality/1"
RIDGE_LAMBDA = 0.01
REDUNDANT_R2 = 0.9
LAYER_TOLERANCE = 0.01  # a concept is served by a layer set when within this of its best
N_CONTRIBUTORS = 3
N_NEAREST = 3


class RowSource(Protocol):
    """Stored pooled activations by text position (`amygdala.activations.Activations` is one)."""

    def iter(
        self, rows: Sequence[int], chunk: int = ...
    ) -> Iterator[tuple[np.ndarray, Tensor]]: ...


@dataclass(frozen=True)
class Thresholds:
    """When counts are too small to trust (docs/architecture.md: five positives can flip signs)."""

    min_train: int = MIN_TRAIN  # train positives (and negatives) below this are flagged
    min_heldout: int = MIN_HELDOUT  # held-out positives (and negatives) below this are flagged
    weak_auroc: float = 0.6  # best held-out AUROC below this is flagged as weak


# ---------------------------------------------------------------- separation metrics


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Area under the ROC curve of scores `pos` vs `neg` (ties count one half); NaN if empty.

    The Mann-Whitney U statistic from average ranks, `O(n log n)`.
    """
    n_pos, n_neg = len(pos), len(neg)
    if n_pos == 0 or n_neg == 0:
        return math.nan
    scores = np.concatenate([pos, neg]).astype(np.float64)
    order = np.argsort(scores, kind="mergesort")
    ranked = scores[order]
    ranks = np.empty(len(scores))
    # average rank within each run of ties
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
    ends = np.r_[starts[1:], len(ranked)]
    run_rank = (starts + ends + 1) / 2.0  # 1-based average of positions start..end-1
    ranks[order] = np.repeat(run_rank, ends - starts)
    u = ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def cohens_d(pos: np.ndarray, neg: np.ndarray) -> float:
    """`(mean₊ - mean₋) / pooled sd` with ddof = 1; NaN with fewer than two of either."""
    n1, n2 = len(pos), len(neg)
    if n1 < 2 or n2 < 2:
        return math.nan
    var = ((n1 - 1) * np.var(pos, ddof=1) + (n2 - 1) * np.var(neg, ddof=1)) / (n1 + n2 - 2)
    if var <= 0:
        return math.nan
    return float((np.mean(pos) - np.mean(neg)) / math.sqrt(var))


def separation(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`(auroc, cohens_d)` `[L, C]` from projections `[n, L, C]` and labels `[n, C]`."""
    _, n_layers, n_concepts = scores.shape
    au = np.full((n_layers, n_concepts), np.nan)
    d = np.full((n_layers, n_concepts), np.nan)
    for c in range(n_concepts):
        pos, neg = labels[:, c] == 1, labels[:, c] == -1
        for layer in range(n_layers):
            au[layer, c] = auroc(scores[pos, layer, c], scores[neg, layer, c])
            d[layer, c] = cohens_d(scores[pos, layer, c], scores[neg, layer, c])
    return au, d


# ---------------------------------------------------------------- layers


def best_layers(au: np.ndarray) -> list[int | None]:
    """Per concept, the index (into the layer list) of its highest AUROC; None if none."""
    out: list[int | None] = []
    for column in au.T:
        out.append(None if np.all(np.isnan(column)) else int(np.nanargmax(column)))
    return out


def recommend_layers(au: np.ndarray, tolerance: float = LAYER_TOLERANCE) -> list[int]:
    """Indices of a small layer set that serves every concept (see the module docstring)."""
    valid = ~np.all(np.isnan(au), axis=0)
    if not valid.any():
        return []
    a = np.where(np.isnan(au[:, valid]), -np.inf, au[:, valid])  # [L, C']
    best = a.max(axis=0)
    chosen = [int(np.argmax(np.nanmean(au[:, valid], axis=1)))]
    while True:
        covered = a[chosen].max(axis=0)
        if np.all(covered >= best - tolerance):
            return sorted(chosen)
        gain = [
            np.mean(np.maximum(a[j], covered)) if j not in chosen else -np.inf
            for j in range(a.shape[0])
        ]
        chosen.append(int(np.argmax(gain)))


# ---------------------------------------------------------------- cross-talk


def cosine_matrix(vectors: np.ndarray) -> np.ndarray:
    """`[C, C]` cosines between the rows of `vectors` `[C, H]`."""
    v = vectors.astype(np.float64)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    u = v / np.where(norms > 0, norms, 1.0)
    return np.clip(u @ u.T, -1.0, 1.0)


def ridge_crosstalk(
    vectors: np.ndarray, lam: float = RIDGE_LAMBDA
) -> tuple[np.ndarray, np.ndarray]:
    """Regress each row of `vectors` `[C, H]` on all the other rows (ridge λ, no intercept).

    Returns `(r2 [C], weights [C, C])`: `weights[c, j]` is concept j's coefficient in the
    fit of concept c (0 on the diagonal), and R² = 1 − ‖v_c − Σ_j w_cj v_j‖² / ‖v_c‖².
    Solved in the `C × C` Gram space, so the hidden size does not matter.
    """
    v = vectors.astype(np.float64)
    gram = v @ v.T
    n = len(v)
    r2 = np.full(n, np.nan)
    weights = np.zeros((n, n))
    for c in range(n):
        others = [j for j in range(n) if j != c]
        if not others or gram[c, c] <= 0:
            continue
        g = gram[np.ix_(others, others)]
        w = np.linalg.solve(g + lam * np.eye(len(others)), gram[others, c])
        residual = gram[c, c] - 2 * w @ gram[others, c] + w @ g @ w
        r2[c] = 1.0 - max(residual, 0.0) / gram[c, c]
        weights[c, others] = w
    return r2, weights


def pca_map(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2-D map of concept vectors `[C, H]`: `(coords [C, 2], explained share [2])`."""
    v = vectors.astype(np.float64)
    centred = v - v.mean(axis=0, keepdims=True)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    coords = np.zeros((len(v), 2))
    k = min(2, len(s))
    coords[:, :k] = u[:, :k] * s[:k]
    total = float((s**2).sum())
    explained = np.zeros(2)
    if total > 0:
        explained[:k] = s[:k] ** 2 / total
    return coords, explained


# ---------------------------------------------------------------- coherence


def first_pc_share(x: np.ndarray) -> float:
    """Share of the variance of rows `x` `[n, H]` on their first principal component."""
    if len(x) < 2:
        return math.nan
    centred = x.astype(np.float64) - x.mean(axis=0, keepdims=True)
    # the top eigenvalue of the smaller Gram matrix equals the top squared singular value
    gram = centred @ centred.T if len(centred) < centred.shape[1] else centred.T @ centred
    total = float(np.trace(gram))
    return float(np.linalg.eigvalsh(gram)[-1] / total) if total > 0 else math.nan


def coherence_rows(train: np.ndarray, cap: int) -> list[list[int]]:
    """Per concept, at most `cap` of its train positives, evenly spaced in corpus order."""
    out = []
    for c in range(train.shape[1]):
        rows = np.flatnonzero(train[:, c] == 1)
        if len(rows) > cap:
            rows = rows[np.linspace(0, len(rows) - 1, cap).round().astype(int)]
        out.append(rows.tolist())
    return out


def coherence(
    source: RowSource, per_concept: list[list[int]], n_layers: int, budget_rows: int = 20000
) -> np.ndarray:
    """`[L, C]` first-PC variance share of each concept's rows, in as few passes as the
    memory budget (`budget_rows` activations held at once) allows."""
    out = np.full((n_layers, len(per_concept)), np.nan)
    for group in _groups(per_concept, budget_rows):
        wanted = sorted({r for c in group for r in per_concept[c]})
        held: dict[int, np.ndarray] = {}
        for index, acts in source.iter(wanted):
            held.update(zip(index.tolist(), acts.numpy()))
        for c in group:
            rows = [held[r] for r in per_concept[c] if r in held]
            if len(rows) < 2:
                continue
            x = np.stack(rows)  # [n, L, H]
            for layer in range(n_layers):
                out[layer, c] = first_pc_share(x[:, layer])
    return out


def _groups(per_concept: list[list[int]], budget_rows: int) -> list[list[int]]:
    groups: list[list[int]] = [[]]
    size = 0
    for c, rows in enumerate(per_concept):
        if groups[-1] and size + len(rows) > budget_rows:
            groups.append([])
            size = 0
        groups[-1].append(c)
        size += len(rows)
    return groups


# ---------------------------------------------------------------- the whole evaluation


def project(
    source: RowSource, rows: Sequence[int], vectors: Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """`(positions, projections [n, L, C])` of `rows` on `vectors` `[L, C, H]`."""
    v = vectors.to(torch.float32)
    positions, scores = [], []
    for index, acts in source.iter(rows):
        scores.append(
            torch.einsum("blh,lch->blc", acts.to(v.device, torch.float32), v).double().cpu().numpy()
        )
        positions.append(index)
    if not scores:
        return np.zeros(0, dtype=int), np.zeros((0, v.shape[0], v.shape[1]))
    return np.concatenate(positions), np.concatenate(scores)


@dataclass(frozen=True)
class Quality:
    """Every number of a quality report; arrays are `[L, C]` in manifest order."""

    concepts: tuple[str, ...]
    layers: tuple[int, ...]
    counts: dict[str, dict[str, int]]
    auroc: np.ndarray
    cohens_d: np.ndarray
    cosine: np.ndarray  # [L, C, C]
    ridge_r2: np.ndarray  # [L, C]
    ridge_weights: np.ndarray  # [L, C, C]
    coherence: np.ndarray  # [L, C]
    coherence_examples: tuple[int, ...]  # rows used per concept
    pca_coords: np.ndarray  # [L, C, 2]
    pca_explained: np.ndarray  # [L, 2]
    thresholds: Thresholds
    info: dict[str, Any]  # provenance (model, method, training data …)
    combined_auroc: np.ndarray | None = None  # [C]: the combined score's, when weighted

    @property
    def mean_combined(self) -> float | None:
        """Mean AUROC of the combined score over the concepts (None without one)."""
        if self.combined_auroc is None or np.all(np.isnan(self.combined_auroc)):
            return None
        return _num(np.nanmean(self.combined_auroc))

    @property
    def mean_per_layer(self) -> list[float | None]:
        return [_num(np.nanmean(col)) if not np.all(np.isnan(col)) else None for col in self.auroc]

    @property
    def best_layer_index(self) -> list[int | None]:
        return best_layers(self.auroc)

    @property
    def recommended(self) -> list[int]:
        return [self.layers[i] for i in recommend_layers(self.auroc)]

    def flags(self) -> dict[str, list[str]]:
        """Per concept, the problems a user should know about (empty list: none)."""
        t, out = self.thresholds, {}
        best = self.best_layer_index
        for c, concept in enumerate(self.concepts):
            n, f = self.counts[concept], []
            if min(n["train_positive"], n["train_negative"]) < t.min_train:
                f.append(
                    f"few training examples ({n['train_positive']} positive, "
                    f"{n['train_negative']} negative; fewer than {t.min_train})"
                )
            if min(n["heldout_positive"], n["heldout_negative"]) == 0:
                f.append("no held-out positives or negatives: AUROC not measured")
            elif min(n["heldout_positive"], n["heldout_negative"]) < t.min_heldout:
                f.append(
                    f"few held-out examples ({n['heldout_positive']} positive, "
                    f"{n['heldout_negative']} negative): AUROC is noisy"
                )
            if best[c] is not None:
                top = float(self.auroc[best[c], c])
                if top < 0.5:
                    f.append(f"reads backwards: best held-out AUROC {top:.3f} < 0.5")
                elif top < t.weak_auroc:
                    f.append(f"weak: best held-out AUROC {top:.3f} < {t.weak_auroc}")
            redundant = [
                self.layers[j]
                for j in range(len(self.layers))
                if self.ridge_r2[j, c] > REDUNDANT_R2
            ]
            if redundant:
                f.append(
                    f"redundant at layers {redundant}: the other concepts reproduce "
                    f"its vector (ridge R² > {REDUNDANT_R2})"
                )
            out[concept] = f
        return out

    def warnings(self) -> list[str]:
        return [f"{concept}: {line}" for concept, lines in self.flags().items() for line in lines]

    def to_json(self) -> dict[str, Any]:
        """The quality.json document (NaN becomes null)."""
        best = self.best_layer_index
        flags = self.flags()
        per_concept = {}
        for c, concept in enumerate(self.concepts):
            b = best[c]
            per_concept[concept] = {
                "counts": self.counts[concept],
                "auroc": _nums(self.auroc[:, c]),
                "cohens_d": _nums(self.cohens_d[:, c]),
                "coherence": _nums(self.coherence[:, c]),
                "coherence_examples": self.coherence_examples[c],
                "best_layer": None if b is None else self.layers[b],
                "best_auroc": None if b is None else _num(float(self.auroc[b, c])),
                "crosstalk": [self._crosstalk(j, c) for j in range(len(self.layers))],
                "flags": flags[concept],
            }
            if self.combined_auroc is not None:
                per_concept[concept]["combined_auroc"] = _num(self.combined_auroc[c])
        combined = (
            {} if self.combined_auroc is None else {"mean_combined_auroc": self.mean_combined}
        )
        return {
            "format": QUALITY_FORMAT,
            **self.info,
            "concepts": list(self.concepts),
            "layers": list(self.layers),
            "mean_auroc_per_layer": self.mean_per_layer,
            **combined,
            "recommended_layers": self.recommended,
            "recommendation_rule": (
                f"the best layer on average, then layers added greedily "
                f"until every concept is within {LAYER_TOLERANCE} AUROC "
                "of its own best layer"
            ),
            "settings": {
                "ridge_lambda": RIDGE_LAMBDA,
                "redundant_r2": REDUNDANT_R2,
                "min_train": self.thresholds.min_train,
                "min_heldout": self.thresholds.min_heldout,
                "weak_auroc": self.thresholds.weak_auroc,
            },
            "per_concept": per_concept,
            "cosine": [[_nums(row) for row in m] for m in self.cosine],
            "pca_map": [
                {
                    "layer": layer,
                    "coords": [_nums(p) for p in self.pca_coords[j]],
                    "explained": _nums(self.pca_explained[j]),
                }
                for j, layer in enumerate(self.layers)
            ],
            "warnings": self.warnings(),
        }

    def _crosstalk(self, j: int, c: int) -> dict[str, Any]:
        w, cos = self.ridge_weights[j, c], self.cosine[j, c]
        others = [k for k in range(len(self.concepts)) if k != c]
        by_weight = sorted(others, key=lambda k: -abs(w[k]))[:N_CONTRIBUTORS]
        by_cos = sorted(others, key=lambda k: -cos[k])[:N_NEAREST]
        r2 = _num(self.ridge_r2[j, c])
        return {
            "layer": self.layers[j],
            "r2": r2,
            "redundant": bool(r2 is not None and r2 > REDUNDANT_R2),
            "contributors": [
                {"concept": self.concepts[k], "weight": _num(w[k])} for k in by_weight
            ],
            "nearest": [{"concept": self.concepts[k], "cosine": _num(cos[k])} for k in by_cos],
        }


def evaluate(
    vectors: Tensor,
    concepts: Sequence[str],
    layers: Sequence[int],
    source: RowSource,
    train: np.ndarray,
    heldout: np.ndarray,
    *,
    thresholds: Thresholds | None = None,
    max_coherence: int = 500,
    info: dict[str, Any] | None = None,
    combined_weights: np.ndarray | None = None,
) -> Quality:
    """Measure readout vectors `[L, C, H]` on held-out texts (see the module docstring).

    Args:
        vectors: the artifact's vectors, layers and concepts in manifest order.
        source: stored activations by text position (rows of `train` / `heldout`).
        train, heldout: `[n_texts, C]` labels in {+1, -1, 0} (a `Corpus`'s arrays).
        max_coherence: train positives per concept used for coherence.
        combined_weights: `[L, C]`, the manifest's `combined.weights`: also measure the
            combined score.

    Example:
        q = evaluate(art.stacked(), art.concepts, art.layers, acts, corpus.train,
                     corpus.heldout)
        atomic_write_json(out / "quality.json", q.to_json())
    """
    n_layers, n_concepts, _ = vectors.shape
    if (
        (n_layers, n_concepts) != (len(layers), len(concepts))
        or train.shape != heldout.shape
        or train.shape[1] != n_concepts
    ):
        raise ConfigError(
            f"vectors {tuple(vectors.shape)} do not match {len(layers)} layers x "
            f"{len(concepts)} concepts / labels {train.shape} and {heldout.shape}"
        )
    rows = np.flatnonzero((heldout != 0).any(axis=1)).tolist()
    positions, scores = project(source, rows, vectors)
    au, d = separation(scores, heldout[positions])
    combined_au = None
    if combined_weights is not None:
        weights = np.asarray(combined_weights, dtype=np.float64)
        if weights.shape != (n_layers, n_concepts):
            raise ConfigError(
                f"combined weights {weights.shape} do not match {n_layers} layers x "
                f"{n_concepts} concepts"
            )
        combined = np.einsum("nlc,lc->nc", scores, weights)[:, None, :]
        combined_au = separation(combined, heldout[positions])[0][0]
    v = vectors.double().cpu().numpy()
    cos = np.stack([cosine_matrix(v[j]) for j in range(n_layers)])
    ridge = [ridge_crosstalk(v[j]) for j in range(n_layers)]
    maps = [pca_map(v[j]) for j in range(n_layers)]
    picks = coherence_rows(train, max_coherence)
    return Quality(
        concepts=tuple(concepts),
        layers=tuple(int(x) for x in layers),
        counts=_counts(concepts, train, heldout),
        auroc=au,
        cohens_d=d,
        cosine=cos,
        ridge_r2=np.stack([r for r, _ in ridge]),
        ridge_weights=np.stack([w for _, w in ridge]),
        coherence=coherence(source, picks, n_layers),
        coherence_examples=tuple(len(p) for p in picks),
        pca_coords=np.stack([m for m, _ in maps]),
        pca_explained=np.stack([e for _, e in maps]),
        thresholds=thresholds or Thresholds(),
        info=dict(info or {}),
        combined_auroc=combined_au,
    )


def _counts(
    concepts: Sequence[str], train: np.ndarray, heldout: np.ndarray
) -> dict[str, dict[str, int]]:
    return {
        c: {
            "train_positive": int((train[:, j] == 1).sum()),
            "train_negative": int((train[:, j] == -1).sum()),
            "heldout_positive": int((heldout[:, j] == 1).sum()),
            "heldout_negative": int((heldout[:, j] == -1).sum()),
        }
        for j, c in enumerate(concepts)
    }


def _num(x: float | np.floating[Any]) -> float | None:
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else round(x, 6)


def _nums(xs: np.ndarray) -> list[float | None]:
    return [_num(x) for x in xs]


def quality_info(manifest: Manifest, vectors_path: Any) -> dict[str, Any]:
    """Provenance for quality.json, taken from an artifact's manifest: the fields it
    records (a null one too), as it records them."""
    keys = ("model", "model_revision", "method", "pooling", "training_data", "hidden_size")
    recorded = manifest.to_dict()
    return {"vectors": str(vectors_path), **{k: recorded[k] for k in keys if k in recorded}}
