"""Section 3: what the capture engine costs over a bare forward pass.

On the same texts and the same length-grouped batches, four ways to get activations:

* **capture_texts** — the engine as the trainer uses it: tokenize, group by length,
  pad, pooling hooks on the target blocks, early stop after the deepest;
* **capture() on pre-tokenized batches** — the hooks and the early stop alone (the
  difference to the row above is tokenization and batching);
* **bare truncated forward** — one hook on the deepest target block that raises to
  stop the pass there; no pooling, no other hooks, batches prepared beforehand;
* **full forward, output_hidden_states=True** — what the original algorithm runs.

Each is run `ROUNDS` times, interleaved, and the median time is kept (the machine is
shared, so interleaving spreads any interference evenly). Overhead = capture_texts
time / bare truncated forward time - 1; goal ≤ 15%.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from bench import datasets
from bench.common import Context, DecoderSpec, build_decoder, minilm_path, table, verdict

NAME = "capture"
TITLE = "3. Capture overhead"
GOAL = 0.15
BATCH = 16
ROUNDS = 3
LAYER_SPEC = "0.25,0.5,0.75"


class _Stop(Exception):
    """Ends the bare forward pass after the deepest target block."""


def decoder_spec(ctx: Context) -> DecoderSpec:
    """24 blocks like the issue's example, at hidden 512 instead of 1024 (2 CPU cores)."""
    if ctx.quick:
        return DecoderSpec(layers=8, hidden=32, heads=2, intermediate=64, vocab=800)
    return DecoderSpec(layers=24, hidden=512, heads=8, intermediate=1536, vocab=8000)


def runners(
    lm: Any, texts: list[str], layers: list[int]
) -> tuple[dict[str, Callable[[], None]], int]:
    """The four ways (module docstring) as zero-argument callables, and the real tokens."""
    import torch

    from amygdala.capture import (
        capture,
        capture_texts,
        forward_kwargs,
        length_batches,
        pad_batch,
        tokenize,
    )

    toks = tokenize(lm.tokenizer, texts, max_length=512)
    side = getattr(lm.tokenizer, "padding_side", "right")
    pad_id = int(lm.tokenizer.pad_token_id or 0)
    prepared = [
        pad_batch([toks[i] for i in batch], pad_id, side)
        for batch in length_batches([len(t.ids) for t in toks], BATCH)
    ]
    n_tokens = int(sum(int(mask.sum()) for _, mask, _ in prepared))
    deepest = max(layers)

    def engine() -> None:
        for _ in capture_texts(lm, texts, layers, batch_size=BATCH, progress=False):
            pass

    def hooks() -> None:
        for ids, mask, keep in prepared:
            with torch.inference_mode(), capture(lm.blocks, layers, keep, "mean") as out:
                lm.model(**forward_kwargs(lm, ids, mask))
            out.stacked(layers)

    def stop(*_: object) -> None:
        raise _Stop

    def bare() -> None:
        handle = lm.blocks[deepest].register_forward_hook(stop)
        try:
            for ids, mask, _ in prepared:
                try:
                    with torch.inference_mode():
                        lm.model(**forward_kwargs(lm, ids, mask))
                except _Stop:
                    pass
        finally:
            handle.remove()

    def full() -> None:
        for ids, mask, _ in prepared:
            with torch.inference_mode():
                lm.model(**forward_kwargs(lm, ids, mask), output_hidden_states=True)

    return {
        "capture_texts": engine,
        "capture() on pre-tokenized batches": hooks,
        "bare truncated forward": bare,
        "full forward, output_hidden_states": full,
    }, n_tokens


def measure(label: str, model: str, texts: list[str], rounds: int) -> list[dict[str, Any]]:
    from amygdala.layers import parse_layers
    from amygdala.models import load_model

    lm = load_model(model, device="cpu", dtype="fp32")
    layers = parse_layers(LAYER_SPEC, lm.n_layers)
    funcs, n_tokens = runners(lm, texts, layers)
    funcs["capture_texts"]()  # warm-up: first calls pay for lazy init
    times: dict[str, list[float]] = {name: [] for name in funcs}
    for _ in range(rounds):
        for name, fn in funcs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    bare = statistics.median(times["bare truncated forward"])
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append(
            {
                "model": label,
                "blocks": lm.n_layers,
                "layers": layers,
                "method": name,
                "median_s": med,
                "texts_per_s": len(texts) / med,
                "tokens_per_s": n_tokens / med,
                "vs_bare": med / bare - 1,
                "texts": len(texts),
                "tokens": n_tokens,
                "times": ts,
            }
        )
    return rows


def run(ctx: Context) -> list[dict[str, Any]]:
    texts = datasets.goemotions_texts()
    spec = decoder_spec(ctx)
    decoder = build_decoder(spec, ctx.workdir / "models" / "capture-decoder", texts)
    rounds = 1 if ctx.quick else ROUNDS
    rows = measure(
        "all-MiniLM-L6-v2", str(minilm_path()), texts[: 16 if ctx.quick else 384], rounds
    )
    rows += measure(spec.describe(), str(decoder), texts[: 8 if ctx.quick else 96], rounds)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    header = ["model", "target layers", "method", "texts/s", "tokens/s", "time vs bare", "goal"]
    body = []
    for r in rows:
        goal = ""
        if r["method"] == "capture_texts":
            goal = f"≤ {GOAL:.0%} " + verdict(r["vs_bare"] <= GOAL, f"{r['vs_bare']:+.1%}")
        body.append(
            [
                r["model"],
                ",".join(map(str, r["layers"])),
                r["method"],
                f"{r['texts_per_s']:,.1f}",
                f"{r['tokens_per_s']:,.0f}",
                f"{r['vs_bare']:+.1%}",
                goal,
            ]
        )
    seen: dict[str, dict[str, Any]] = {}
    for r in rows:
        seen.setdefault(r["model"], r)
    notes = [
        f"- {m}: {r['texts']} GoEmotions dev texts, {r['tokens']:,} real tokens, "
        f"batch {BATCH}, {len(r['times'])} interleaved rounds (median)."
        for m, r in seen.items()
    ]
    notes.append(
        "- The larger decoder is 24 blocks at hidden 512, not 1024: at 1024 one "
        "round of the four methods takes minutes on 2 CPU cores. Target layers are "
        "¼, ½ and ¾ of the depth (`--target-layers 0.25,0.5,0.75`)."
    )
    return table(header, body) + "\n\n" + "\n".join(notes)


def headline(rows: list[dict[str, Any]]) -> list[tuple[str, str, str, bool]]:
    return [
        (
            f"capture overhead, {r['model'].split(',')[0]}",
            f"{r['vs_bare']:+.1%} vs bare truncated forward",
            f"≤ {GOAL:.0%}",
            r["vs_bare"] <= GOAL,
        )
        for r in rows
        if r["method"] == "capture_texts"
    ]
