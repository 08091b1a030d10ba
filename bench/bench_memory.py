"""Section 4: peak memory of `amygdala train` as the number of texts grows.

Each size is one whole `amygdala train` process on a small random decoder (the model
is a constant; the texts are the variable), with a fresh temporary activation store
(`--no-cache`). Peak RSS is the child's `ru_maxrss` from `wait4`. Goal: flat — from
the smallest to the largest run, growth under 100 MB beyond the texts themselves
(their UTF-8 bytes).
"""

from __future__ import annotations

import random
from typing import Any

from bench.common import (
    Context,
    DecoderSpec,
    amygdala_cmd,
    bench_env,
    build_decoder,
    run_timed,
    synthetic_text,
    synthetic_training_dir,
    synthetic_vocabulary,
    table,
    verdict,
)

NAME = "memory"
TITLE = "4. Memory"
GOAL_MB = 100.0
SIZES = (1_000, 10_000, 50_000)
QUICK_SIZES = (100, 400)
SPEC = DecoderSpec(layers=4, hidden=64, heads=4, intermediate=128, vocab=2000)
BATCH = 64


def run(ctx: Context) -> list[dict[str, Any]]:
    rng = random.Random(1)
    vocab = synthetic_vocabulary(3000)
    sample = [synthetic_text(rng, vocab, 40) for _ in range(2000)]  # as the texts are made
    model = build_decoder(SPEC, ctx.workdir / "models" / "memory", sample)
    rows = []
    for n in QUICK_SIZES if ctx.quick else SIZES:
        data = ctx.workdir / "memory" / f"data-{n}"
        text_bytes = synthetic_training_dir(data, n)
        proc = run_timed(
            amygdala_cmd(
                "train",
                "--model",
                str(model),
                "--training-data-dir",
                str(data),
                "--output",
                str(ctx.workdir / "memory" / f"out-{n}" / "r.safetensors"),
                "--batch-size",
                str(BATCH),
                "--method",
                "mean_diff",
                "--min-examples",
                "2",
                "--no-cache",
                "--no-progress",
            ),
            ctx.workdir / "memory" / f"train-{n}.log",
            env=bench_env(ctx.workdir),
        ).check()
        rows.append(
            {
                "texts": n,
                "text_mb": text_bytes / 2**20,
                "peak_rss_mb": proc.max_rss_mb,
                "wall_s": proc.wall_s,
                "data_mb": sum(p.stat().st_size for p in data.glob("*.jsonl")) / 2**20,
            }
        )
    return rows


def markdown(all_rows: list[dict[str, Any]]) -> str:
    rows = all_rows
    first = rows[0]
    body = []
    for r in rows:
        growth = r["peak_rss_mb"] - first["peak_rss_mb"]
        beyond = growth - (r["text_mb"] - first["text_mb"])
        goal = (
            ""
            if r is first
            else f"< {GOAL_MB:.0f} MB " + verdict(beyond < GOAL_MB, f"{beyond:+.0f} MB")
        )
        body.append(
            [
                f"{r['texts']:,}",
                f"{r['text_mb']:.1f}",
                f"{r['data_mb']:.1f}",
                f"{r['peak_rss_mb']:,.0f}",
                f"{growth:+,.0f}",
                f"{beyond:+,.0f}",
                f"{r['wall_s']:.1f}",
                goal,
            ]
        )
    header = [
        "texts",
        "text (MB)",
        "training files (MB)",
        "peak RSS (MB)",
        "growth vs first",
        "growth beyond the texts",
        "wall (s)",
        "goal",
    ]
    notes = [
        f"- Model: {SPEC.describe()} (default layers ¼…1 of depth), batch {BATCH}; "
        "synthetic texts of 20–60 pseudo-words, 10 concepts, each text a positive of "
        "one concept and a negative of the next (2 training rows per text).",
        "- What keeps it flat: texts are tokenized 1,024 per tokenizer call and kept as "
        "`array('i')` ids with one byte per pooling flag (~5 bytes a token); running sums "
        "per concept instead of kept activations; the activation store on disk. Tokenizing "
        "the whole corpus in one call into Python lists, as amygdala did before, cost "
        "+492 MB at 50,000 texts (3.1 M tokens) on its own.",
    ]
    return table(header, body) + "\n\n" + "\n".join(notes)


def headline(all_rows: list[dict[str, Any]]) -> list[tuple[str, str, str, bool]]:
    first, last = all_rows[0], all_rows[-1]
    growth = last["peak_rss_mb"] - first["peak_rss_mb"]
    beyond = growth - (last["text_mb"] - first["text_mb"])
    return [
        (
            f"peak RSS, {first['texts']:,} → {last['texts']:,} texts",
            f"{first['peak_rss_mb']:,.0f} → {last['peak_rss_mb']:,.0f} MB "
            f"({beyond:+,.0f} MB beyond the texts)",
            f"< {GOAL_MB:.0f} MB growth",
            beyond < GOAL_MB,
        )
    ]
