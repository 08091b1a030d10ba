"""Turn streamed activations into one direction per concept and layer.

The capture engine feeds `ConceptStats` batch by batch: per-concept running sums of
the positives' and the negatives' pooled activations, so memory stays
`O(layers × concepts × hidden)` however many texts run. A fitting method is a plain
function `ConceptStats -> Tensor[n_layers, n_concepts, hidden]` in `FIT_METHODS`;
adding one is a function plus an entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from amygdala.errors import ConfigError


@dataclass
class ConceptStats:
    """Running sums of pooled activations per layer and concept (fp32, on one device)."""

    pos_sum: Tensor  # [n_layers, n_concepts, hidden]
    neg_sum: Tensor  # [n_layers, n_concepts, hidden]
    pos_count: Tensor  # [n_concepts] int64
    neg_count: Tensor  # [n_concepts] int64

    @classmethod
    def zeros(cls, n_layers: int, n_concepts: int, hidden: int,
              device: torch.device | str = "cpu") -> ConceptStats:
        shape = (n_layers, n_concepts, hidden)
        return cls(
            pos_sum=torch.zeros(shape, dtype=torch.float32, device=device),
            neg_sum=torch.zeros(shape, dtype=torch.float32, device=device),
            pos_count=torch.zeros(n_concepts, dtype=torch.long, device=device),
            neg_count=torch.zeros(n_concepts, dtype=torch.long, device=device),
        )

    def update(self, labels: Tensor, acts: Tensor) -> None:
        """Add a batch: `labels` `[batch, n_concepts]` in {+1, -1, 0}, `acts` `[batch, L, H]`.

        One matrix product per side: each row joins the sums of every concept it is
        a positive or a negative for.
        """
        if acts.shape[1:] != self.pos_sum.shape[::2] or labels.shape != (
                acts.shape[0], self.pos_sum.shape[1]):
            raise ValueError(f"labels {tuple(labels.shape)} / acts {tuple(acts.shape)} do not "
                             f"fit stats of shape {tuple(self.pos_sum.shape)}")
        pos = (labels == 1).to(acts.dtype)
        neg = (labels == -1).to(acts.dtype)
        self.pos_sum += torch.einsum("bc,blh->lch", pos, acts)
        self.neg_sum += torch.einsum("bc,blh->lch", neg, acts)
        self.pos_count += pos.sum(0).long()
        self.neg_count += neg.sum(0).long()

    def merge(self, other: ConceptStats) -> None:
        """Add another shard's sums (e.g. from another process)."""
        self.pos_sum += other.pos_sum
        self.neg_sum += other.neg_sum
        self.pos_count += other.pos_count
        self.neg_count += other.neg_count

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


FIT_METHODS: dict[str, FitMethod] = {
    "mean_diff": mean_diff,
}


def get_method(name: str) -> FitMethod:
    """The fitting function registered as `name`, or a ConfigError listing the choices."""
    try:
        return FIT_METHODS[name]
    except KeyError:
        raise ConfigError(f"--method {name!r}: choose one of {', '.join(FIT_METHODS)}") from None
