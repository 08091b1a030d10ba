"""Section 4: peak memory of `amygdala train` as the number of texts grows.

Each size is one whole `amygdala train` process on a small random decoder (the model
is a constant; the texts are the variable), with a fresh temporary activation store
(`--no-cache`). Peak RSS is the child's `ru_maxrss` from `wait4`. Goal: flat — from
the smallest to the largest run, growth under 100 MB beyond the texts themselves
(their UTF-8 bytes).
"""

from __future__ import annotations

import json
import random
import sys
from typing import Any

from bench.common import (
    BENCH,
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
    largest = ctx.workdir / "memory" / f"data-{rows[-1]['texts']}"
    for stage in ("current", "chunked"):
        proc = run_timed(
            [
                sys.executable,
                str(BENCH / "memory_probe.py"),
                "--model",
                str(model),
                "--training-data-dir",
                str(largest),
                "--stage",
                stage,
            ],
            ctx.workdir / "memory" / f"probe-{stage}.log",
            env=bench_env(ctx.workdir),
        ).check()
        probe = json.loads(proc.log.read_text().strip().splitlines()[-1])
        rows.append({"probe": stage, "texts": rows[-1]["texts"], **probe})
    return rows


def markdown(all_rows: list[dict[str, Any]]) -> str:
    rows = [r for r in all_rows if "probe" not in r]
    probes = {r["probe"]: r for r in all_rows if "probe" in r}
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
        "one concept and a negative of the next (2 training rows per text)."
    ]
    return table(header, body) + "\n\n" + "\n".join(notes) + _probe_markdown(probes)


def _probe_markdown(probes: dict[str, dict[str, Any]]) -> str:
    """Stage-by-stage RSS of the largest run, as amygdala tokenizes now and as proposed."""
    if set(probes) != {"current", "chunked"}:
        return ""
    cur, new = probes["current"], probes["chunked"]
    stages = [
        ("import torch + transformers", "imports"),
        ("load the model", "model"),
        ("load_corpus", "corpus"),
        ("tokenize every text", "tokenized"),
    ]
    body, prev_c, prev_n = [], cur["start"], new["start"]
    for label, key in stages:
        body.append(
            [
                label,
                f"{cur[key]:,.0f} ({cur[key] - prev_c:+,.0f})",
                f"{new[key]:,.0f} ({new[key] - prev_n:+,.0f})",
            ]
        )
        prev_c, prev_n = cur[key], new[key]
    tok_cur = cur["tokenized"] - cur["corpus"]
    tok_new = new["tokenized"] - new["corpus"]
    return (
        f"\n\n**Where the memory goes** at {cur['texts']:,} texts ({cur['tokens']:,.0f} "
        "tokens), resident MB after each stage (`bench/memory_probe.py`, one process per "
        "column):\n\n"
        + table(
            [
                "stage",
                "amygdala now: one tokenizer call, lists",
                "proposed: 1,024 texts per call, arrays",
            ],
            body,
        )
        + f"\n\nThe growth is `amygdala.capture.tokenize`: it tokenizes every text in one "
        "call (the fast tokenizer's per-token `Encoding` objects for the whole corpus "
        "exist at once) and keeps each text's ids and pooling flags as Python lists "
        f"(~44 bytes a token). That stage costs {tok_cur:+,.0f} MB here; tokenizing "
        "1,024 texts per call and keeping `array('i')` ids and one byte per flag "
        f"costs {tok_new:+,.0f} MB for the same texts — the fix proposed for "
        "`capture.py` (it keeps `Tokenized.ids`/`.keep` usable as sequences)."
    )


def headline(all_rows: list[dict[str, Any]]) -> list[tuple[str, str, str, bool]]:
    rows = [r for r in all_rows if "probe" not in r]
    first, last = rows[0], rows[-1]
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
