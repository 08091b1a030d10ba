"""Turn streamed activations into one direction per concept and layer.

The capture engine feeds `ConceptStats` batch by batch: per-concept running sums of
the positives' and the negatives' pooled activations, so memory stays
`O(layers × concepts × hidden)` however many texts run. A fitting method is a plain
function `ConceptStats -> Tensor[n_layers, n_concepts, hidden]` in `FIT_METHODS`;
adding one is a function plus an entry, and `METHOD_NEEDS` says what it reads beyond
the running means (`method_needs`):

* `means` — the per-concept sums only (one pass, `O(L·C·H)` memory);
* `within` — also the pooled within-concept scatter (`WithinScatter`), and `moments`
  — the pooled second moments of every training text (`Moments`): still one streaming
  pass, plus `O(L·H²)` float64 memory (840 MB at hidden 5120 × 4 layers), never a
  per-concept `[C, H, H]`;
* `rows` — further passes over the stored activations (`ConceptStats.rows`), for
  methods that need more than sums (`pca`, the logistic `probe`).

`neutral_basis` + `project_out` are the optional denoising step against neutral text
(`--neutral` with `--neutral-share`): the top principal components of the neutral
activations are removed from every direction.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from amygdala._defaults import METHOD
from amygdala.errors import ConfigError

Need = Literal["means", "moments", "within", "rows"]
RowPasses = Callable[[], Iterator[tuple[Tensor, Tensor]]]
"""Calling it starts one pass over the training rows: `(labels [B, C], acts [B, L, H])`."""


@dataclass
class Moments:
    """Streaming weighted first, second and fourth moments of pooled activations, per layer.

    Float64 and uncentered (weighted sums of `x`, `x xᵀ`, `‖x‖²·x`, `‖x‖⁴`), so shards
    from several processes simply add and the order of rows does not matter. From these
    come the mean, the covariance and its Ledoit-Wolf shrinkage, exactly as if all rows
    (each repeated `weight` times) had been held at once. Memory: `L·H²` float64.
    """

    count: Tensor  # [] float64, Σ w
    total: Tensor  # [L, H] Σ w x
    outer: Tensor  # [L, H, H] Σ w x xᵀ
    norm2_x: Tensor  # [L, H] Σ w ‖x‖² x
    norm4: Tensor  # [L] Σ w ‖x‖⁴

    @classmethod
    def zeros(cls, n_layers: int, hidden: int, device: torch.device | str = "cpu") -> Moments:
        def z(*shape: int) -> Tensor:
            return torch.zeros(shape, dtype=torch.float64, device=device)

        return cls(
            count=z(),
            total=z(n_layers, hidden),
            outer=z(n_layers, hidden, hidden),
            norm2_x=z(n_layers, hidden),
            norm4=z(n_layers),
        )

    def update(self, acts: Tensor, weights: Tensor | None = None) -> None:
        """Add a batch of pooled activations `[batch, L, H]` (optionally weighted `[batch]`)."""
        x = acts.to(self.outer.device, torch.float64)
        if x.shape[1:] != self.total.shape:
            raise ValueError(
                f"acts {tuple(acts.shape)} do not fit moments of shape {tuple(self.total.shape)}"
            )
        w = (
            torch.ones(x.shape[0], dtype=torch.float64, device=x.device)
            if weights is None
            else weights.to(x.device, torch.float64)
        )
        q = (x * x).sum(-1)  # [B, L]
        self.count += w.sum()
        self.total += torch.einsum("b,blh->lh", w, x)
        self.outer += torch.einsum("blh,blk->lhk", x * w[:, None, None], x)
        self.norm2_x += torch.einsum("bl,blh->lh", q * w[:, None], x)
        self.norm4 += (q * q * w[:, None]).sum(0)

    def tensors(self) -> list[Tensor]:
        """Every accumulator (to add across processes in place)."""
        return [self.count, self.total, self.outer, self.norm2_x, self.norm4]

    def merge(self, other: Moments) -> None:
        for mine, theirs in zip(self.tensors(), other.tensors()):
            mine += theirs

    def mean(self) -> Tensor:
        """`[L, H]` mean (float64)."""
        return self.total / self.count.clamp_min(1)

    def covariance(self) -> Tensor:
        """`[L, H, H]` maximum-likelihood covariance (divided by n, as Ledoit-Wolf uses)."""
        mu = self.mean()
        cov = self.outer / self.count.clamp_min(1) - mu[:, :, None] * mu[:, None, :]
        return (cov + cov.transpose(1, 2)) / 2

    def ledoit_wolf(self) -> tuple[Tensor, Tensor]:
        """`(shrunk covariance [L, H, H], shrinkage [L])`, equal to scikit-learn's
        `ledoit_wolf` on the same rows: `(1 - s)·S + s·(tr S / H)·I`.

        The estimator needs `Σ‖x - μ‖⁴`, which expands into the streamed sums.
        """
        n = self.count.clamp_min(1)
        cov = self.covariance()
        hidden = cov.shape[-1]
        mu = self.mean()
        m = (mu * mu).sum(-1)  # [L] μᵀμ
        # Σ‖x-μ‖⁴ = Σq² - 4μᵀΣ(q·x) + 4μᵀ(Σxxᵀ)μ + 2m·Σq - 3n·m²   (q = ‖x‖², Σμᵀx = n·m)
        sum_q = torch.diagonal(self.outer, dim1=1, dim2=2).sum(-1)
        mu_outer_mu = torch.einsum("lh,lhk,lk->l", mu, self.outer, mu)
        quartic = (
            self.norm4
            - 4 * (mu * self.norm2_x).sum(-1)
            + 4 * mu_outer_mu
            + 2 * m * sum_q
            - 3 * n * m * m
        )
        trace = torch.diagonal(cov, dim1=1, dim2=2).sum(-1)
        target = trace / hidden  # [L]
        frob2 = (cov * cov).sum((1, 2))
        beta = ((quartic / n - frob2) / (hidden * n)).clamp_min(0)
        delta = (frob2 - 2 * target * trace + hidden * target * target) / hidden
        shrink = torch.where(
            delta > 0, torch.minimum(beta, delta) / delta.clamp_min(1e-300), torch.zeros_like(delta)
        )
        return shrink_to_identity(cov, shrink), shrink


@dataclass
class WithinScatter:
    """Pooled within-concept covariance: every concept's positives around their own mean.

    `Σ_c Σ_{i ∈ pos(c)} (x_i - μ_c)(x_i - μ_c)ᵀ / Σ_c n_c`, streamed as one `[L, H, H]`
    sum of `x xᵀ` weighted by how many concepts a text is a positive for, plus the
    per-concept positive sums in float64 — never a per-concept `[C, H, H]`.
    """

    weighted: Moments  # rows weighted by their number of positive concepts
    pos_total: Tensor  # [L, C, H] float64
    pos_count: Tensor  # [C] float64

    @classmethod
    def zeros(
        cls, n_layers: int, n_concepts: int, hidden: int, device: torch.device | str = "cpu"
    ) -> WithinScatter:
        return cls(
            Moments.zeros(n_layers, hidden, device),
            torch.zeros((n_layers, n_concepts, hidden), dtype=torch.float64, device=device),
            torch.zeros(n_concepts, dtype=torch.float64, device=device),
        )

    def update(self, labels: Tensor, acts: Tensor) -> None:
        pos = (labels == 1).to(self.pos_total.device, torch.float64)  # [B, C]
        x = acts.to(self.pos_total.device, torch.float64)
        keep = pos.sum(1) > 0
        if bool(keep.any()):
            self.weighted.update(x[keep], pos.sum(1)[keep])
        self.pos_total += torch.einsum("bc,blh->lch", pos, x)
        self.pos_count += pos.sum(0)

    def tensors(self) -> list[Tensor]:
        return [*self.weighted.tensors(), self.pos_total, self.pos_count]

    def merge(self, other: WithinScatter) -> None:
        for mine, theirs in zip(self.tensors(), other.tensors()):
            mine += theirs

    @property
    def dof(self) -> float:
        """Degrees of freedom: positive memberships minus one mean per concept."""
        return float(self.pos_count.sum()) - int((self.pos_count > 0).sum())

    def covariance(self) -> Tensor:
        """`[L, H, H]` pooled within-concept covariance (divided by the degrees of freedom)."""
        mu = self.pos_total / self.pos_count.clamp_min(1)[None, :, None]
        between = torch.einsum("c,lch,lck->lhk", self.pos_count, mu, mu)
        cov = (self.weighted.outer - between) / max(self.dof, 1.0)
        return (cov + cov.transpose(1, 2)) / 2


def shrink_to_identity(cov: Tensor, shrink: Tensor) -> Tensor:
    """`(1 - s)·S + s·(tr S / H)·I` per layer, for `cov` `[L, H, H]` and `s` `[L]`."""
    hidden = cov.shape[-1]
    target = torch.diagonal(cov, dim1=1, dim2=2).sum(-1) / hidden
    eye = torch.eye(hidden, dtype=cov.dtype, device=cov.device)
    s = shrink.to(cov.dtype)
    return (1 - s)[:, None, None] * cov + (s * target)[:, None, None] * eye


@dataclass
class ConceptStats:
    """Running sums of pooled activations per layer and concept (fp32, on one device).

    `moments` (every training text, for `whitened_lw`) and `within` (the pooled
    within-concept scatter, for `whitened`) are only accumulated when the method needs
    them; `rows` is set by the trainer for methods that make their own passes.
    """

    pos_sum: Tensor  # [n_layers, n_concepts, hidden]
    neg_sum: Tensor  # [n_layers, n_concepts, hidden]
    pos_count: Tensor  # [n_concepts] int64
    neg_count: Tensor  # [n_concepts] int64
    moments: Moments | None = None
    within: WithinScatter | None = None
    rows: RowPasses | None = field(default=None, repr=False, compare=False)

    @classmethod
    def zeros(
        cls,
        n_layers: int,
        n_concepts: int,
        hidden: int,
        device: torch.device | str = "cpu",
        *,
        needs: frozenset[Need] = frozenset(),
    ) -> ConceptStats:
        """Empty sums; `needs` (see `method_needs`) adds the optional accumulators."""
        shape = (n_layers, n_concepts, hidden)
        return cls(
            pos_sum=torch.zeros(shape, dtype=torch.float32, device=device),
            neg_sum=torch.zeros(shape, dtype=torch.float32, device=device),
            pos_count=torch.zeros(n_concepts, dtype=torch.long, device=device),
            neg_count=torch.zeros(n_concepts, dtype=torch.long, device=device),
            moments=Moments.zeros(n_layers, hidden, device) if "moments" in needs else None,
            within=(
                WithinScatter.zeros(n_layers, n_concepts, hidden, device)
                if "within" in needs
                else None
            ),
        )

    def update(self, labels: Tensor, acts: Tensor) -> None:
        """Add a batch: `labels` `[batch, n_concepts]` in {+1, -1, 0}, `acts` `[batch, L, H]`.

        One matrix product per side: each row joins the sums of every concept it is
        a positive or a negative for.
        """
        if acts.shape[1:] != self.pos_sum.shape[::2] or labels.shape != (
            acts.shape[0],
            self.pos_sum.shape[1],
        ):
            raise ValueError(
                f"labels {tuple(labels.shape)} / acts {tuple(acts.shape)} do not "
                f"fit stats of shape {tuple(self.pos_sum.shape)}"
            )
        pos = (labels == 1).to(acts.dtype)
        neg = (labels == -1).to(acts.dtype)
        self.pos_sum += torch.einsum("bc,blh->lch", pos, acts)
        self.neg_sum += torch.einsum("bc,blh->lch", neg, acts)
        self.pos_count += pos.sum(0).long()
        self.neg_count += neg.sum(0).long()
        if self.moments is not None:
            self.moments.update(acts)
        if self.within is not None:
            self.within.update(labels, acts)

    def tensors(self) -> list[Tensor]:
        """Every accumulator, in a fixed order (to add across processes in place)."""
        extra = [
            *(self.moments.tensors() if self.moments is not None else []),
            *(self.within.tensors() if self.within is not None else []),
        ]
        return [self.pos_sum, self.neg_sum, self.pos_count, self.neg_count, *extra]

    def merge(self, other: ConceptStats) -> None:
        """Add another shard's sums (e.g. from another process)."""
        self.pos_sum += other.pos_sum
        self.neg_sum += other.neg_sum
        self.pos_count += other.pos_count
        self.neg_count += other.neg_count
        if self.moments is not None and other.moments is not None:
            self.moments.merge(other.moments)
        if self.within is not None and other.within is not None:
            self.within.merge(other.within)

    def means(self) -> tuple[Tensor, Tensor]:
        """`(positive_mean, negative_mean)`, each `[n_layers, n_concepts, hidden]`."""
        pos_n = self.pos_count.clamp_min(1).to(self.pos_sum.dtype)[None, :, None]
        neg_n = self.neg_count.clamp_min(1).to(self.neg_sum.dtype)[None, :, None]
        return self.pos_sum / pos_n, self.neg_sum / neg_n


FitMethod = Callable[[ConceptStats], Tensor]


def unit_rows(vectors: Tensor) -> Tensor:
    """Normalize the last axis to unit length (fp32); zero rows stay zero."""
    v = vectors.to(torch.float32)
    norms = v.norm(dim=-1, keepdim=True)
    return torch.where(norms > 0, v / norms.clamp_min(torch.finfo(v.dtype).tiny), v)


def mean_diff(stats: ConceptStats) -> Tensor:
    """CAA: mean of the positives minus mean of the negatives, unit-normalized per layer."""
    pos, neg = stats.means()
    return unit_rows(pos - neg)


def one_vs_mean(stats: ConceptStats) -> Tensor:
    """A concept's positive mean minus the mean of all concepts' positive means.

    The reference is the average concept rather than the concept's negatives, so a
    direction shared by every concept's data (style, format, setting) cancels out.
    Cost: the running sums only (one pass, `O(L·C·H)` memory).
    """
    pos, _ = stats.means()
    present = (stats.pos_count > 0).to(pos.dtype)[None, :, None]
    centre = (pos * present).sum(1, keepdim=True) / present.sum(1, keepdim=True).clamp_min(1)
    return unit_rows(pos - centre)


def whitening_shrinkage(dof: float, hidden: int) -> float:
    """`min(0.9, √(H / n))`: the relative sampling error of a covariance from n rows in H dims.

    Measured on GoEmotions × MiniLM (bench/bench_methods.py), this comes within 0.0015
    AUROC of the best fixed shrinkage from 1k to 43k training texts; the cap keeps some
    whitening when there are fewer texts than dimensions.
    """
    return min(0.9, math.sqrt(hidden / max(dof, 1.0)))


def whiten(diff: Tensor, cov: Tensor) -> Tensor:
    """Solve `cov · v = diff` per layer (float64 Cholesky), for `diff` `[L, C, H]`."""
    factor = torch.linalg.cholesky(cov.to(torch.float64))
    rhs = diff.to(torch.float64).transpose(1, 2)  # [L, H, C]
    return torch.cholesky_solve(rhs, factor).transpose(1, 2)


def whitened(stats: ConceptStats) -> Tensor:
    """Difference of means whitened by the shrunk pooled within-concept covariance (LDA).

    `v = (Σ_w + shrinkage)⁻¹ (μ₊ - μ₋)`: directions along which every text varies a lot
    (length, topic, style) are discounted, so the readout keeps the part of the mean
    difference that actually separates the concept. `Σ_w` is the scatter of each
    concept's positives around their own mean, pooled over concepts (`WithinScatter`),
    shrunk toward `(tr Σ_w / H)·I` by `whitening_shrinkage` (√(H/n)). The default method.
    Cost: one streaming pass; `L·H²` float64 memory (840 MB at hidden 5120 × 4 layers),
    `n·L·H²` multiply-adds to accumulate it, plus one Cholesky per layer.
    """
    if stats.within is None:
        raise ConfigError(
            "method whitened needs the pooled within-concept scatter; build "
            "the stats with ConceptStats.zeros(..., needs=method_needs('whitened'))"
        )
    cov = stats.within.covariance()
    s = whitening_shrinkage(stats.within.dof, cov.shape[-1])
    shrink = torch.full((cov.shape[0],), s, dtype=cov.dtype, device=cov.device)
    cov = shrink_to_identity(cov, shrink)
    # A layer without any spread (one positive per concept) gets the plain mean difference.
    flat = torch.diagonal(cov, dim1=1, dim2=2).sum(-1) <= 0
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
    cov = torch.where(flat[:, None, None], eye, cov)
    pos, neg = stats.means()
    return unit_rows(whiten(pos.double() - neg.double(), cov))


def whitened_lw(stats: ConceptStats) -> Tensor:
    """Difference of means whitened by the Ledoit-Wolf covariance of all training texts.

    The classical estimator (equal to scikit-learn's `ledoit_wolf`): the shrinkage is
    chosen to estimate the covariance well, which on GoEmotions is far less shrinkage
    than what separates concepts best (see `whitened`). Kept as a yardstick.
    Cost: one streaming pass; `L·H²` float64 memory plus one Cholesky per layer.
    """
    if stats.moments is None or float(stats.moments.count) < 2:
        raise ConfigError(
            "method whitened_lw needs the pooled second moments; build the "
            "stats with ConceptStats.zeros(..., needs=method_needs('whitened_lw'))"
        )
    cov, _ = stats.moments.ledoit_wolf()
    pos, neg = stats.means()
    return unit_rows(whiten(pos.double() - neg.double(), cov))


def require_rows(stats: ConceptStats, method: str) -> RowPasses:
    if stats.rows is None:
        raise ConfigError(
            f"method {method} makes its own passes over the stored activations; "
            "set ConceptStats.rows (train() does)"
        )
    return stats.rows


def pca(stats: ConceptStats, *, rank: int = 3, max_passes: int = 100, tol: float = 1e-12) -> Tensor:
    """First principal component of the matched differences `x_i - μ₋` over a concept's
    positives (uncentered), signed to agree with the difference of means.

    Each positive is matched with its concept's negative mean (the corpus keeps no
    pairing); the component is found by block power iteration with Rayleigh-Ritz,
    warm-started at the mean difference, one pass over the stored activations per
    iteration, for every concept and layer at once.
    Cost: up to `max_passes` passes over the training rows; `L·C·H·rank` memory.
    """
    rows = require_rows(stats, "pca")
    pos_mean, neg_mean = (m.double() for m in stats.means())
    diff = pos_mean - neg_mean
    basis = _initial_basis(diff, rank)  # [L, C, H, k] orthonormal
    for _ in range(max_passes):
        product = _matched_product(rows, basis, neg_mean)  # M·V
        new = _rayleigh_ritz(basis, product)
        change = 1 - (new[..., 0] * basis[..., 0]).sum(-1).abs()
        basis = new
        if float(change.max()) < tol:
            break
    top = basis[..., 0]
    sign = torch.where((top * diff).sum(-1, keepdim=True) < 0, -1.0, 1.0).to(top.dtype)
    return unit_rows(top * sign)


def _initial_basis(diff: Tensor, rank: int) -> Tensor:
    """Mean difference plus fixed pseudo-random directions, orthonormalized."""
    n_layers, n_concepts, hidden = diff.shape
    k = max(1, min(rank, hidden))
    gen = torch.Generator().manual_seed(0)
    extra = torch.randn(
        (n_layers, n_concepts, hidden, k - 1), generator=gen, dtype=torch.float64
    ).to(diff.device)
    q, _ = torch.linalg.qr(torch.cat([diff[..., None], extra], dim=-1))
    return q


def _matched_product(rows: RowPasses, basis: Tensor, neg_mean: Tensor) -> Tensor:
    """One pass: `Σ_{i ∈ pos(c)} (x_i - μ₋)(x_i - μ₋)ᵀ V` for every layer and concept."""
    out = torch.zeros_like(basis)
    offset = torch.einsum("lch,lchk->lck", neg_mean, basis)
    for labels, acts in rows():
        x = acts.to(basis.device, torch.float64)
        pos = (labels == 1).to(basis.device, torch.float64)  # [B, C]
        proj = (torch.einsum("blh,lchk->blck", x, basis) - offset) * pos[:, None, :, None]
        out += torch.einsum("blck,blh->lchk", proj, x)
        out -= neg_mean[..., None] * proj.sum(0)[:, :, None, :]
    return out


def _rayleigh_ritz(basis: Tensor, product: Tensor) -> Tensor:
    """Next orthonormal basis: `M·V` rotated by the Ritz vectors of `Vᵀ M V` (largest first),
    so column 0 is one power step from the current best estimate of the top eigenvector."""
    small = basis.transpose(-1, -2) @ product
    _, vecs = torch.linalg.eigh((small + small.transpose(-1, -2)) / 2)
    q, r = torch.linalg.qr(product @ vecs.flip(-1))
    return q * torch.where(torch.diagonal(r, dim1=-2, dim2=-1) < 0, -1.0, 1.0)[..., None, :]


def probe(stats: ConceptStats, *, l2: float = 1e-3, max_iter: int = 200) -> Tensor:
    """Logistic-regression probe per concept and layer (a yardstick, not the default).

    Fits `σ(wᵀz + b)` on standardized activations `z` with an L2 penalty `l2·‖w‖²/2`
    (full-batch L-BFGS, every concept at once), and maps `w` back to the raw
    activation space (`w / std`) so that `x · v` ranks texts as the probe does.
    Cost: holds every training row in memory (`n·L·H` floats) — fine for a benchmark,
    not for a 5120-wide model on a large corpus.
    """
    rows = require_rows(stats, "probe")
    batches = list(rows())
    labels = torch.cat([lab for lab, _ in batches]).to(torch.float32)
    acts = torch.cat([a for _, a in batches]).to(torch.float32)
    out = [_probe_layer(acts[:, layer], labels, l2, max_iter) for layer in range(acts.shape[1])]
    return unit_rows(torch.stack(out))


def _probe_layer(x: Tensor, labels: Tensor, l2: float, max_iter: int) -> Tensor:
    """`[C, H]` logistic weights for one layer, in raw activation units."""
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    target = (labels == 1).to(z.dtype)
    mask = (labels != 0).to(z.dtype)
    per_concept = mask.sum(0).clamp_min(1)
    weight = torch.zeros((x.shape[1], labels.shape[1]), dtype=z.dtype, requires_grad=True)
    bias = torch.zeros(labels.shape[1], dtype=z.dtype, requires_grad=True)
    opt = torch.optim.LBFGS(
        [weight, bias],
        max_iter=max_iter,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-6,
        tolerance_change=1e-9,
    )

    def closure() -> Tensor:
        opt.zero_grad()
        logits = z @ weight + bias
        loss_each = (
            torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
            * mask
        )
        loss = (loss_each.sum(0) / per_concept).sum() + l2 / 2 * (weight * weight).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return (weight.detach() / std[:, None]).T


FIT_METHODS: dict[str, FitMethod] = {
    "mean_diff": mean_diff,
    "one_vs_mean": one_vs_mean,
    "whitened": whitened,
    "whitened_lw": whitened_lw,
    "pca": pca,
    "probe": probe,
}

# What each method reads beyond the running means (see the module docstring).
METHOD_NEEDS: dict[str, frozenset[Need]] = {
    "whitened": frozenset({"within"}),
    "whitened_lw": frozenset({"moments"}),
    "pca": frozenset({"rows"}),
    "probe": frozenset({"rows"}),
}

DEFAULT_METHOD = METHOD  # amygdala._defaults: the CLI's --method default too


def get_method(name: str) -> FitMethod:
    """The fitting function registered as `name`, or a ConfigError listing the choices."""
    try:
        return FIT_METHODS[name]
    except KeyError:
        raise ConfigError(f"--method {name!r}: choose one of {', '.join(FIT_METHODS)}") from None


def method_needs(name: str) -> frozenset[Need]:
    """The accumulators and passes `name` needs: `means` always, plus `METHOD_NEEDS`."""
    get_method(name)
    means: frozenset[Need] = frozenset({"means"})
    return means | METHOD_NEEDS.get(name, frozenset())


def neutral_basis(neutral: Moments, share: float) -> list[Tensor]:
    """Per layer, the top principal components of neutral text (`[H, k_l]`, orthonormal)
    that together explain at least `share` of its variance.

    These are the directions along which text varies whatever its concept (topic,
    register, length); `project_out` removes them from the readout vectors.
    """
    if not 0.0 < share < 1.0:
        raise ConfigError(f"--neutral-share {share}: pass a share of variance in (0, 1)")
    if float(neutral.count) < 2:
        raise ConfigError("neutral denoising needs at least 2 neutral texts")
    out = []
    for cov in neutral.covariance():
        values, vectors = torch.linalg.eigh(cov)
        values, vectors = values.flip(0).clamp_min(0), vectors.flip(1)
        explained = values.cumsum(0) / values.sum().clamp_min(1e-300)
        k = int((explained < share).sum()) + 1
        out.append(vectors[:, :k])
    return out


def project_out(vectors: Tensor, basis: list[Tensor]) -> Tensor:
    """Remove `basis[l]`'s span from every concept's vector at layer l, then unit-normalize."""
    cleaned = []
    for layer, b in enumerate(basis):
        v = vectors[layer].to(torch.float64)
        b64 = b.to(v.device, torch.float64)
        cleaned.append(v - (v @ b64) @ b64.T)
    return unit_rows(torch.stack(cleaned))
