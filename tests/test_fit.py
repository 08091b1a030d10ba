"""Running sums and the CAA fit against a direct numpy difference of means."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from amygdala.errors import ConfigError
from amygdala.fit import FIT_METHODS, ConceptStats, get_method, mean_diff


def numpy_mean_diff(acts: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """[n, L, H] activations, [n, C] labels in {+1,-1,0} → [L, C, H] unit vectors."""
    out = np.zeros((acts.shape[1], labels.shape[1], acts.shape[2]))
    for c in range(labels.shape[1]):
        d = acts[labels[:, c] == 1].mean(0) - acts[labels[:, c] == -1].mean(0)
        out[:, c] = d / np.linalg.norm(d, axis=-1, keepdims=True)
    return out


def test_mean_diff_equals_numpy_streamed_in_batches() -> None:
    rng = np.random.default_rng(0)
    n, n_layers, hidden, n_concepts = 97, 3, 16, 5
    acts = rng.normal(size=(n, n_layers, hidden)).astype(np.float32)
    labels = rng.choice([-1, 0, 1], size=(n, n_concepts), p=[0.5, 0.2, 0.3]).astype(np.int8)
    stats = ConceptStats.zeros(n_layers, n_concepts, hidden)
    for start in range(0, n, 10):
        stats.update(
            torch.from_numpy(labels[start : start + 10]), torch.from_numpy(acts[start : start + 10])
        )
    got = mean_diff(stats).numpy()
    np.testing.assert_allclose(got, numpy_mean_diff(acts, labels), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-6)
    assert stats.pos_count.tolist() == (labels == 1).sum(0).tolist()
    assert stats.neg_count.tolist() == (labels == -1).sum(0).tolist()


def test_merge_equals_single_pass() -> None:
    rng = np.random.default_rng(1)
    acts = torch.from_numpy(rng.normal(size=(40, 2, 8)).astype(np.float32))
    labels = torch.from_numpy(rng.choice([-1, 1], size=(40, 3)).astype(np.int8))
    whole, a, b = (ConceptStats.zeros(2, 3, 8) for _ in range(3))
    whole.update(labels, acts)
    a.update(labels[:13], acts[:13])
    b.update(labels[13:], acts[13:])
    a.merge(b)
    torch.testing.assert_close(mean_diff(a), mean_diff(whole))


def test_update_rejects_mismatched_shapes() -> None:
    stats = ConceptStats.zeros(2, 3, 8)
    with pytest.raises(ValueError, match="do not fit"):
        stats.update(torch.zeros(4, 2, dtype=torch.int8), torch.zeros(4, 2, 8))


def test_registry() -> None:
    assert FIT_METHODS["mean_diff"] is mean_diff
    with pytest.raises(ConfigError, match="choose one of"):
        get_method("nope")
