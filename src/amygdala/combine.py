"""One calibrated score per concept from all hooked layers, fitted at training time.

Users should not have to guess which layer to watch. The combined score of concept c is

    combined_raw[c] = Σ_l weights[l][c] · raw[l][c]
    combined_z[c]   = (combined_raw[c] − mean[c]) / std[c]

where `raw[l][c]` is the per-layer readout (a token's, or a text's pooled projection)
and mean / std describe single tokens of the calibration reference text, exactly as the
per-layer calibration does (`amygdala.train.token_moments`).

The weights come from training rows only, never from held-out rows:

1. **Out-of-fold projections** (`amygdala.train.out_of_fold`): the train texts are cut
   into `FOLDS` folds by a stable hash of their text; each fold is projected on vectors
   fitted, with the run's method, on the other folds. These projections carry the
   estimation noise that the final vectors carry on unseen text; in-sample projections
   do not, and weights fitted on them favour the layers that overfit most.
2. **Candidates**, in z units (`u[l] = raw[l] / std[l]`): `zsum`, the calibrated z-sum
   (weights `1 / std[l][c]`), and `lda`, per concept the linear discriminant of the L
   projections, `S⁻¹ (μ₊ − μ₋)` with S the pooled within-class covariance, shrunk toward
   the z-sum by `n₊ / (n₊ + SHRINK_POSITIVES)` (a rare concept keeps close to the z-sum;
   a concept with thousands of positives gets its own weights).
3. **Choice**: cross-validated over the same folds (the `lda` weights of fold f are
   fitted on the other folds' rows), the candidate with the higher mean AUROC over the
   concepts is kept for every concept; a tie keeps `zsum`.

Measured on GoEmotions × MiniLM (bench/bench_combined.py), the z-sum already beats the
best single layer by about 0.01 mean AUROC and the shrunk LDA adds about 0.001;
`SHRINK_POSITIVES` = 100 was chosen on train.tsv rows outside the training samples,
not on the evaluation split.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FOLDS = 5  # folds of the out-of-fold projections and of the choice between candidates
SHRINK_POSITIVES = 100.0  # a concept's own LDA weight is n₊ / (n₊ + this)
CANDIDATES = ("zsum", "lda")
SIGNIFICANT = 4  # significant digits of the numbers in the manifest entry: a z-score moves by
#                 less than 1e-3, and fp32 noise in the activations (batch size, padding
#                 side: ~1e-7 relative) almost never reaches a rounding boundary


def fold_ids(hashes: Sequence[str], folds: int = FOLDS) -> np.ndarray:
    """Fold of each text from its sha256 (hex): the same text lands in the same fold on
    any machine and in any order."""
    return np.asarray([int(h[:12], 16) % folds for h in hashes], dtype=np.int64)


def zsum_weights(std: np.ndarray) -> np.ndarray:
    """`[L, C]` weights `1 / std` (0 where a layer has no spread): the calibrated z-sum."""
    std = np.asarray(std, dtype=np.float64)
    return np.where(std > 0, 1.0 / np.where(std > 0, std, 1.0), 0.0)


def lda_weights(u: np.ndarray, labels: np.ndarray, alpha: float = SHRINK_POSITIVES) -> np.ndarray:
    """`[L, C]` weights in z units: per concept the LDA direction of `u` `[n, L, C]`
    (labels `[n, C]` in {+1, −1, 0}) shrunk toward the z-sum (see the module docstring).

    Both directions are scaled to unit within-class variance (`wᵀ S w = 1`) before they
    are mixed, and the result to `‖w‖ = √L`, so the z-sum itself comes out as all ones.
    Layers whose column is all zero (no spread in the calibration) get weight 0; a
    concept with fewer than two positives or negatives, or no separation, gets the z-sum.
    """
    n_layers, n_concepts = u.shape[1], u.shape[2]
    out = np.zeros((n_layers, n_concepts))
    for c in range(n_concepts):
        layers = np.flatnonzero(np.any(u[:, :, c] != 0, axis=0))
        ones = np.zeros(n_layers)
        ones[layers] = 1.0
        pos = u[labels[:, c] == 1][:, layers, c]
        neg = u[labels[:, c] == -1][:, layers, c]
        w = ones.copy()
        if len(layers) and len(pos) >= 2 and len(neg) >= 2:
            w[layers] = _shrunk_lda(pos, neg, alpha)
        norm = np.linalg.norm(w)
        out[:, c] = w * math.sqrt(len(layers)) / norm if norm > 0 else w
    return out


def _shrunk_lda(pos: np.ndarray, neg: np.ndarray, alpha: float) -> np.ndarray:
    """LDA of `pos` vs `neg` `[n, L]`, mixed with all-ones by `n₊ / (n₊ + alpha)`."""
    dim = pos.shape[1]
    diff = pos.mean(axis=0) - neg.mean(axis=0)
    scatter = _centred(pos).T @ _centred(pos) + _centred(neg).T @ _centred(neg)
    cov = scatter / (len(pos) + len(neg))
    cov = cov + 1e-9 * max(float(np.trace(cov)) / dim, 1e-300) * np.eye(dim)
    ones = np.ones(dim)
    one_var = float(ones @ cov @ ones)
    if one_var <= 0:
        return ones
    ones = ones / math.sqrt(one_var)
    lda = np.linalg.solve(cov, diff)
    lda_var = float(lda @ cov @ lda)
    if not np.isfinite(lda).all() or lda_var <= 0:
        return ones
    share = len(pos) / (len(pos) + alpha)
    return share * lda / math.sqrt(lda_var) + (1 - share) * ones


def _centred(x: np.ndarray) -> np.ndarray:
    return x - x.mean(axis=0, keepdims=True)


def mean_auroc(scores: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """`(mean over concepts, per concept [C])` AUROC of `scores` `[n, C]`; NaN where a
    concept lacks positives or negatives (left out of the mean)."""
    from amygdala.evaluate import auroc

    per = np.array(
        [
            auroc(scores[labels[:, c] == 1, c], scores[labels[:, c] == -1, c])
            for c in range(labels.shape[1])
        ]
    )
    valid = per[~np.isnan(per)]
    return (float(valid.mean()) if len(valid) else math.nan), per


@dataclass(frozen=True)
class CombinationFit:
    """The fitted combination: raw-unit weights `[L, C]`, which candidate won and why."""

    weights: np.ndarray  # [L, C] in raw units: combined_raw = Σ_l weights[l] · raw[l]
    chosen: str  # one of CANDIDATES
    cv_auroc: dict[str, float] = field(default_factory=dict)  # mean cross-validated AUROC
    rows: int = 0  # out-of-fold rows the fit saw


def fit_combination(
    proj: np.ndarray,
    labels: np.ndarray,
    std: np.ndarray,
    folds: np.ndarray,
    *,
    alpha: float = SHRINK_POSITIVES,
) -> CombinationFit:
    """Choose the layer weights of every concept from out-of-fold projections.

    Args:
        proj: `[n, L, C]` raw projections of train texts, each on vectors fitted
            without its fold.
        labels: `[n, C]` train labels in {+1, −1, 0} of the same texts.
        std: `[L, C]` the per-layer calibration std (single tokens).
        folds: `[n]` fold of each text (`fold_ids`).

    Example:
        fit = fit_combination(proj, corpus.train[rows], std, fold_ids(hashes))
        combined = np.einsum("nlc,lc->nc", proj, fit.weights)
    """
    if (
        proj.ndim != 3
        or labels.shape != (proj.shape[0], proj.shape[2])
        or std.shape != proj.shape[1:]
        or folds.shape != proj.shape[:1]
    ):
        raise ValueError(
            f"projections {proj.shape}, labels {labels.shape}, std {std.shape} and "
            f"folds {folds.shape} do not fit ([n, L, C], [n, C], [L, C], [n])"
        )
    inv = zsum_weights(std)
    u = proj * inv[None]
    if proj.shape[1] == 1:  # one layer: the combined score is that layer's z
        return CombinationFit(
            weights=inv,
            chosen="zsum",
            cv_auroc={"zsum": mean_auroc(u.sum(axis=1), labels)[0]},
            rows=len(proj),
        )
    cv_scores = {"zsum": u.sum(axis=1), "lda": np.zeros(labels.shape)}
    for f in np.unique(folds):
        inside = folds == f
        w = lda_weights(u[~inside], labels[~inside], alpha)
        cv_scores["lda"][inside] = np.einsum("nlc,lc->nc", u[inside], w)
    cv = {name: mean_auroc(cv_scores[name], labels)[0] for name in CANDIDATES}
    lda_wins = not math.isnan(cv["lda"]) and (math.isnan(cv["zsum"]) or cv["lda"] > cv["zsum"])
    chosen = "lda" if lda_wins else "zsum"
    w_u = lda_weights(u, labels, alpha) if lda_wins else (inv > 0).astype(np.float64)
    return CombinationFit(weights=w_u * inv, chosen=chosen, cv_auroc=cv, rows=len(proj))


def significant(x: np.ndarray, digits: int = SIGNIFICANT) -> np.ndarray:
    """`x` rounded to `digits` significant digits (what the manifest stores)."""
    x = np.asarray(x, dtype=np.float64)
    return np.array([float(f"{v:.{digits}g}") for v in x.ravel()]).reshape(x.shape)


def combined_calibration(
    count: np.ndarray, total: np.ndarray, outer: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """`(mean, std)` `[C]` of the combined score over reference tokens, from the joint sums
    of the per-layer token projections: `count` `[C]`, `total` `[C, L]` (Σ raw),
    `outer` `[C, L, L]` (Σ raw rawᵀ), over tokens valid at every layer (std with ddof=1,
    as the per-layer calibration)."""
    w = np.asarray(weights, dtype=np.float64).T  # [C, L]
    n = np.maximum(count, 1)
    mean = np.einsum("cl,cl->c", w, total) / n
    second = np.einsum("cl,clk,ck->c", w, outer, w) / n
    var = np.maximum(second - mean**2, 0.0) * (n / np.maximum(n - 1, 1))
    return mean, np.sqrt(var)


def manifest_entry(
    fit: CombinationFit, weights: np.ndarray, mean: np.ndarray, std: np.ndarray
) -> dict[str, Any]:
    """The manifest's `combined` object: `weights` `[L][C]` (as stored: `significant`, and
    the weights `mean` and `std` `[C]` were computed with), plus how they were chosen."""
    return {
        "weights": np.asarray(weights, dtype=np.float64).tolist(),
        "mean": significant(mean).tolist(),
        "std": significant(std).tolist(),
        "unit": "token",
        "fit": {
            "chosen": fit.chosen,
            "cv_auroc": {
                k: (None if math.isnan(v) else round(v, 6)) for k, v in fit.cv_auroc.items()
            },
            "folds": FOLDS,
            "shrink_positives": SHRINK_POSITIVES,
            "rows": fit.rows,
        },
    }
