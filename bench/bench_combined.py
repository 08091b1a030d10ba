"""The combined score over all layers vs the best single layer, on GoEmotions with MiniLM.

Usage:
  python bench/bench_combined.py --data ../shared/data/goemotions
  python bench/bench_combined.py --seeds 5 --small 5000 --out bench/out

For each seed 0..N-1, `amygdala train` itself (the `train()` function, default method,
all six MiniLM blocks, activation store under `--out/activation-cache`) trains on a
training-data directory holding a seeded sample of `--small` texts of `train.tsv` (the
same sample `bench/bench_methods.py` draws; every row is a train row: the trainer fits
the combination on these texts alone). The artifact is then scored on `dev.tsv` (5,426
texts, never seen in training) from the pooled activations `bench_methods.py` caches:
mean AUROC over the 27 emotions of each layer's projection (the best layer is the one
with the best mean, as in the methods table), of the calibrated z-sum (weights
`1 / std`, the starting point), and of the manifest's combined score
(`Σ_l weights[l] · projection[l]`). Also times training with and without the
combination (`--no-combined`), both with every activation already in the store.

Writes `--out/combined-<small>.md` (the table) and prints it. `--small 43410 --seeds 1`
trains on the whole of train.tsv.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from bench_methods import DEFAULT_DATA, load_split, read_tsv, sample  # noqa: E402


def write_training_dir(root: Path, texts: list[str], hot: np.ndarray, emotions: list[str]) -> Path:
    """One `<emotion>.jsonl` per emotion: each text a positive of the emotions it carries
    and a negative of every other, all in the train split."""
    root.mkdir(parents=True, exist_ok=True)
    for c, emotion in enumerate(emotions):
        lines = [
            json.dumps(
                {
                    "emotion": emotion,
                    "polarity": "positive" if hot[i, c] else "negative",
                    "text": text,
                    "split": "train",
                    "key": f"train-{i}",
                }
            )
            for i, text in enumerate(texts)
        ]
        (root / f"{emotion}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def trained(
    data_dir: Path, out: Path, cache: Path, *, combined: bool
) -> tuple[dict[str, object], dict[int, np.ndarray], float]:
    """Train with the library's defaults on all six blocks: (manifest, vectors, seconds)."""
    from amygdala.artifact import load_artifact
    from amygdala.train import TrainConfig, train

    config = TrainConfig(
        model="minilm",
        training_data_dir=data_dir,
        output=out,
        target_layers="all",
        dtype="fp32",
        vectors_dtype="float32",
        min_examples=1,  # keep all 27 emotions, as bench_methods.py does
        progress=False,
        cache_dir=cache,
        batch_size=64,
        combined=combined,
    )
    start = time.perf_counter()
    train(config)
    seconds = time.perf_counter() - start
    art = load_artifact(out)
    return art.manifest, {k: v.double().numpy() for k, v in art.vectors.items()}, seconds


def mean_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    from amygdala.evaluate import auroc

    return float(
        np.mean(
            [
                auroc(scores[labels[:, c] == 1, c], scores[labels[:, c] == -1, c])
                for c in range(labels.shape[1])
            ]
        )
    )


def measure(
    manifest: dict[str, object],
    vectors: dict[int, np.ndarray],
    dev_acts: np.ndarray,
    dev_labels: np.ndarray,
    emotions: list[str],
) -> dict[str, float]:
    """Mean dev AUROC: every layer, the z-sum and the stored combined score."""
    layers = list(manifest["layers"])  # type: ignore[call-overload]
    order = [manifest["concepts"].index(e) for e in emotions]  # type: ignore[attr-defined]
    stacked = np.stack([vectors[layer][order] for layer in layers])  # [L, 27, H]
    scores = np.einsum("nlh,lch->nlc", dev_acts[:, layers].astype(np.float64), stacked)
    per_layer = [mean_auroc(scores[:, j], dev_labels) for j in range(len(layers))]
    std = np.asarray(manifest["calibration"]["std"])[:, order]  # type: ignore[index]
    out = {f"L{layer}": v for layer, v in zip(layers, per_layer)}
    best = int(np.argmax(per_layer))
    out["best"], out["best_layer"] = per_layer[best], layers[best]
    out["zsum"] = mean_auroc((scores / std).sum(axis=1), dev_labels)
    comb = manifest["combined"]  # type: ignore[index]
    weights = np.asarray(comb["weights"])[:, order]  # type: ignore[index]
    out["combined"] = mean_auroc((scores * weights).sum(axis=1), dev_labels)
    out["chosen"] = comb["fit"]["chosen"]  # type: ignore[index]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="GoEmotions folder")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "out", help="work folder and the table"
    )
    parser.add_argument("--small", type=int, default=5000, help="training texts per seed")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1")
    parser.add_argument("--batch-size", type=int, default=64, help="capture batch size")
    args = parser.parse_args(argv)
    emotions = [e for e in (args.data / "emotions.txt").read_text().split() if e != "neutral"]
    texts, hot = read_tsv(args.data / "train.tsv", len(emotions))
    dev = load_split(args.data, "dev", args.out, args.batch_size)
    work = args.out / f"combined-{args.small}"
    rows = []
    for seed in range(args.seeds):
        pick = sample(len(texts), args.small, seed)
        data = write_training_dir(
            work / f"seed-{seed}" / "data", [texts[i] for i in pick], hot[pick], emotions
        )
        cache = args.out / "activation-cache"
        trained(data, work / f"seed-{seed}" / "plain.safetensors", cache, combined=False)
        # both timed runs read every activation from the store (the first run captured)
        _, _, plain = trained(
            data, work / f"seed-{seed}" / "plain.safetensors", cache, combined=False
        )
        manifest, vectors, seconds = trained(
            data, work / f"seed-{seed}" / "readout.safetensors", cache, combined=True
        )
        result = measure(manifest, vectors, dev.acts, dev.labels, emotions)
        result.update(seed=seed, seconds=seconds, plain_seconds=plain)
        rows.append(result)
        print(json.dumps(result), file=sys.stderr, flush=True)
    text = table(rows, args.small, args.data) + "\n"
    (args.out / f"combined-{args.small}.md").write_text(text)
    print(text)
    return 0


def table(rows: list[dict[str, float]], small: int, data: Path) -> str:
    lines = [
        f"GoEmotions, all-MiniLM-L6-v2 (6 blocks, mean pooling, `whitened`), 27 emotions; "
        f"mean dev AUROC (5,426 texts). `amygdala train` on {small:,} texts of train.tsv per "
        "seed (all six blocks hooked); the combined score's weights come from those texts "
        "alone.",
        "",
        "| seed | best single layer | z-sum (weights 1/std) | combined (stored weights) "
        "| chosen | combined − best | train s, cached (without combined) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['seed']} | {r['best']:.4f} (L{r['best_layer']}) | {r['zsum']:.4f} | "
            f"**{r['combined']:.4f}** | {r['chosen']} | {r['combined'] - r['best']:+.4f} | "
            f"{r['seconds']:.1f} ({r['plain_seconds']:.1f}) |"
        )
    if len(rows) > 1:
        mean = {k: float(np.mean([r[k] for r in rows])) for k in ("best", "zsum", "combined")}
        sd = {k: float(np.std([r[k] for r in rows], ddof=1)) for k in mean}
        lines.append(
            f"| mean ± sd | {mean['best']:.4f} ± {sd['best']:.4f} | {mean['zsum']:.4f} ± "
            f"{sd['zsum']:.4f} | **{mean['combined']:.4f}** ± {sd['combined']:.4f} | | "
            f"{mean['combined'] - mean['best']:+.4f} | |"
        )
    lines += [
        "",
        f"Reproduce: `python bench/bench_combined.py --data {data} --small {small} "
        f"--seeds {len(rows)}`",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
