"""Compare the fitting methods on GoEmotions with MiniLM: mean held-out AUROC at the best layer.

Usage:
  python bench/bench_methods.py                       # every method, full train + 5k subset
  python bench/bench_methods.py --methods mean_diff,whitened --sizes full
  python bench/bench_methods.py --data ../shared/data/goemotions --out bench/out

Trains on `train.tsv` (43k texts, or a seeded 5k sample of it) and evaluates on `dev.tsv`:
27 emotions (`neutral` is left out as a concept; its texts stay negatives), a text is a
positive of every emotion it carries and a negative of every other. The pooled
activations of all six MiniLM blocks are captured once (mean pooling, as `amygdala train`
does) and cached under `--out` as .npy, so later runs skip the model. Each method is the
registered `amygdala.fit.FIT_METHODS` entry, fed through `ConceptStats` in batches exactly
as the trainer feeds it; AUROC is `amygdala.evaluate.auroc`.

Writes `--out/methods.md` (the table) and prints it.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "goemotions"
SMALL_SEED = 0


@dataclass(frozen=True)
class Split:
    """One GoEmotions split: texts, activations `[n, L, H]` and labels `[n, 27]` in {+1,-1}."""

    texts: list[str]
    acts: np.ndarray
    labels: np.ndarray


def read_tsv(path: Path, n_emotions: int) -> tuple[list[str], np.ndarray]:
    """Texts and their `[n, n_emotions]` multi-hot labels (ids ≥ n_emotions are dropped)."""
    texts, rows = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        text, ids, _ = line.split("\t")
        hot = np.zeros(n_emotions, dtype=bool)
        for i in ids.split(","):
            if int(i) < n_emotions:
                hot[int(i)] = True
        texts.append(text)
        rows.append(hot)
    return texts, np.stack(rows)


def captured(texts: list[str], cache: Path, batch_size: int) -> np.ndarray:
    """Mean-pooled activations of all blocks `[n, L, H]`, from `cache` when it matches."""
    from amygdala.capture import capture_texts
    from amygdala.models import load_model

    key = hashlib.sha256("\0".join(texts).encode()).hexdigest()[:16]
    path = cache.with_name(f"{cache.name}-{key}.npy")
    if path.exists():
        return np.load(path)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    lm = load_model("minilm", device="cpu", dtype="fp32")
    layers = list(range(lm.n_layers))
    out = np.zeros((len(texts), len(layers), lm.hidden_size), dtype=np.float32)
    for batch in capture_texts(lm, texts, layers, batch_size=batch_size, progress=True):
        out[batch.index.numpy()] = batch.acts.numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, out)
    tmp.replace(path)
    return out


def load_split(data: Path, name: str, out: Path, batch_size: int) -> Split:
    emotions = (data / "emotions.txt").read_text().split()
    n = len([e for e in emotions if e != "neutral"])
    texts, hot = read_tsv(data / f"{name}.tsv", n)
    acts = captured(texts, out / f"minilm-{name}", batch_size)
    return Split(texts, acts, np.where(hot, 1, -1).astype(np.int8))


@dataclass(frozen=True)
class Variant:
    """One row of the table: a registered method, optionally denoised against neutral text."""

    method: str
    neutral_share: float = 0.0

    @property
    def name(self) -> str:
        return self.method + (f" + neutral {self.neutral_share:g}" if self.neutral_share else "")


def fit(
    variant: Variant, acts: np.ndarray, labels: np.ndarray, neutral: np.ndarray, chunk: int = 1024
) -> torch.Tensor:
    """Stream `acts` through `ConceptStats` and the registered method, as the trainer does."""
    from amygdala.fit import (
        ConceptStats,
        Moments,
        get_method,
        method_needs,
        neutral_basis,
        project_out,
    )

    n, n_layers, hidden = acts.shape

    def passes() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, n, chunk):
            yield (
                torch.from_numpy(labels[start : start + chunk]),
                torch.from_numpy(acts[start : start + chunk]),
            )

    stats = ConceptStats.zeros(
        n_layers, labels.shape[1], hidden, needs=method_needs(variant.method)
    )
    for lab, batch in passes():
        stats.update(lab, batch)
    stats.rows = passes
    vectors = get_method(variant.method)(stats)
    if variant.neutral_share:
        moments = Moments.zeros(n_layers, hidden)
        moments.update(torch.from_numpy(neutral))
        vectors = project_out(vectors, neutral_basis(moments, variant.neutral_share))
    return vectors


def layer_means(vectors: torch.Tensor, dev: Split) -> np.ndarray:
    """Mean dev AUROC over the 27 emotions, per layer."""
    from amygdala.evaluate import separation

    scores = np.einsum("nlh,lch->nlc", dev.acts.astype(np.float64), vectors.double().numpy())
    au, _ = separation(scores, dev.labels)
    return au.mean(axis=1)


def sample(n_total: int, size: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n_total, size, replace=False))


def measure(
    variant: Variant, train: Split, dev: Split, rows: np.ndarray | slice, neutral_rows: np.ndarray
) -> tuple[float, int, float]:
    """`(best-layer mean AUROC, best layer, seconds to fit)` for one training subset."""
    acts, labels = train.acts[rows], train.labels[rows]
    neutral = acts[neutral_rows[rows]]
    start = time.perf_counter()
    vectors = fit(variant, acts, labels, neutral)
    seconds = time.perf_counter() - start
    means = layer_means(vectors, dev)
    return float(means.max()), int(means.argmax()), seconds


VARIANTS = [
    Variant("mean_diff"),
    Variant("one_vs_mean"),
    Variant("pca"),
    Variant("mean_diff", 0.1),
    Variant("whitened_lw"),
    Variant("probe"),
    Variant("whitened"),
    Variant("whitened", 0.1),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="GoEmotions folder")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "out", help="activation cache and methods.md"
    )
    parser.add_argument(
        "--methods",
        default=None,
        help="comma-separated variants (e.g. mean_diff,whitened+0.1); default: all",
    )
    parser.add_argument("--small", type=int, default=5000, help="size of the small train set")
    parser.add_argument(
        "--seeds",
        type=int,
        default=5,
        help="small train sets drawn (seeds 0..N-1); seed 0 is the headline",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="capture batch size")
    args = parser.parse_args(argv)
    variants = (
        VARIANTS
        if not args.methods
        else [
            Variant(m.split("+")[0], float(m.split("+")[1]) if "+" in m else 0.0)
            for m in args.methods.split(",")
        ]
    )
    train = load_split(args.data, "train", args.out, args.batch_size)
    dev = load_split(args.data, "dev", args.out, args.batch_size)
    neutral_rows = (train.labels == 1).sum(axis=1) == 0  # only the `neutral` label
    lines = table_header(len(train.texts), args.small, args.seeds)
    for variant in variants:
        full = measure(variant, train, dev, slice(None), neutral_rows)
        small = [
            measure(variant, train, dev, sample(len(train.texts), args.small, seed), neutral_rows)
            for seed in range(args.seeds)
        ]
        spread = np.array([s[0] for s in small])
        lines.append(
            f"| `{variant.name}` | {full[0]:.4f} (L{full[1]}) | "
            f"{small[0][0]:.4f} (L{small[0][1]}) | {spread.mean():.4f} ± "
            f"{spread.std(ddof=1) if len(spread) > 1 else 0:.4f} | {full[2]:.1f} |"
        )
        print(lines[-1], file=sys.stderr, flush=True)
    text = "\n".join(lines) + "\n"
    (args.out / "methods.md").write_text(text)
    print(text)
    return 0


def table_header(n_train: int, small: int, seeds: int) -> list[str]:
    return [
        f"GoEmotions, all-MiniLM-L6-v2 (6 blocks, mean pooling), 27 emotions; mean dev AUROC "
        f"(5,426 texts) at the best layer (L = block index). Trained on train.tsv "
        f"({n_train:,} texts) or {small:,} of them (seed 0, and the mean ± sd over seeds "
        f"0–{seeds - 1}). `+ neutral s`: components explaining a share s of the variance of "
        "the train texts labeled only `neutral` projected out.",
        "",
        f"| method | full train | {small // 1000}k (seed 0) | {small // 1000}k, {seeds} seeds "
        "| fit seconds (full) |",
        "|---|---|---|---|---|",
    ]


if __name__ == "__main__":
    sys.exit(main())
