"""Decode throughput of `amygdala serve`'s engine with per-token readout against without.

Usage:
  python bench/bench_serve.py            # 128 tokens per request, 5 rounds
  python bench/bench_serve.py --quick    # a smoke run: numbers are meaningless

A random Llama-style decoder (built offline from a config, seeded) decodes greedily on
CPU with the steps of `amygdala.serve.engine.Engine` (`Engine.run_here`: the worker's
KV-cache loop, on the timing thread). Each round decodes the same prompt twice in
lockstep, one step of each in turn as the server interleaves clients: once with readout
(200 concepts × 4 layers, calibrated, so raw and z for every token) and once without.
Tokens/s counts every step of the request — prefill and decode, one forward pass per
token with or without readout (a token's readout comes from the pass that samples it)
— plus writing each token's stream chunk as JSON, as the server does.

Two clocks, summed over each request's own steps: the wall clock, and the CPU time of
the decoding thread (torch runs one intra-op thread, so that thread does all the work).
Other processes on a shared machine stretch both, but steps taken in turn are stretched
alike; the goal — readout keeps ≥ 97% of the throughput — is judged on the CPU time.
Ratios are medians of per-round ratios.

What readout costs per step: one read of the vectors (concepts × layers × hidden × 4
bytes, fp32; decoding is memory-bound and the model's weights have just pushed them out
of the cache), one host copy of `[2, layers, concepts]` float32 and its JSON (orjson,
float32 digits). The share therefore shrinks as models grow: the default row is a
GPT-2-small-sized model (~100M parameters); a much smaller one shows a larger share.

`run(quick) -> list[dict]` and `markdown(rows) -> str` are what `python -m bench` calls.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GOAL = 0.97


@dataclass(frozen=True)
class Setup:
    """One benchmark configuration (the defaults are the reported row)."""

    hidden: int = 768
    layers: int = 12
    heads: int = 12
    intermediate: int = 2048
    vocab: int = 16384
    concepts: int = 200
    readout_layers: tuple[int, ...] = (1, 3, 5, 7)
    prompt_tokens: int = 16
    new_tokens: int = 128
    rounds: int = 5

    def describe(self) -> str:
        return (
            f"random Llama, {self.layers} blocks, hidden {self.hidden}, vocab {self.vocab}; "
            f"{self.prompt_tokens}-token prompt, {self.new_tokens} new tokens, greedy"
        )


QUICK = Setup(
    hidden=64,
    layers=4,
    heads=4,
    intermediate=128,
    vocab=500,
    readout_layers=(0, 1, 2, 3),
    new_tokens=16,
    rounds=1,
)


def build_model(setup: Setup, directory: Path) -> Path:
    """Save a seeded random Llama and a word-level tokenizer covering its vocabulary."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    config = LlamaConfig(
        hidden_size=setup.hidden,
        intermediate_size=setup.intermediate,
        num_hidden_layers=setup.layers,
        num_attention_heads=setup.heads,
        num_key_value_heads=setup.heads,
        vocab_size=setup.vocab,
        max_position_embeddings=4096,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        architectures=["LlamaForCausalLM"],
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    words = ["<pad>", "<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(4, setup.vocab)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    ).save_pretrained(directory)
    return directory


def build_artifact(setup: Setup, directory: Path) -> Any:
    """Random unit vectors for `setup.concepts` concepts at the readout layers, calibrated."""
    import torch

    from amygdala.artifact import load_artifact, save_artifact

    g = torch.Generator().manual_seed(0)
    n, shape = setup.concepts, (len(setup.readout_layers), setup.concepts)
    vectors = {
        layer: torch.nn.functional.normalize(torch.randn(n, setup.hidden, generator=g), dim=-1)
        for layer in setup.readout_layers
    }
    manifest = {
        "concepts": [f"concept_{i:03d}" for i in range(n)],
        "layers": list(setup.readout_layers),
        "hidden_size": setup.hidden,
        "dtype": "float16",
        "calibration": {
            "reference": "negatives",
            "mean": torch.zeros(shape).tolist(),
            "std": torch.ones(shape).tolist(),
        },
    }
    path, _ = save_artifact(vectors, manifest, directory / "readout.safetensors")
    return load_artifact(path)


@dataclass(frozen=True)
class Timing:
    """One request: tokens/s by the wall clock and by the CPU time of the decoding thread."""

    wall: float
    cpu: float


def serialize(tokens: list[Any]) -> tuple[float, float]:
    """CPU and wall seconds to write each token's stream chunk as the server does."""
    from amygdala.serve.protocol import dumps

    cpu, wall = time.thread_time(), time.perf_counter()
    for e in tokens:
        choice = {
            "index": 0,
            "text": e.text,
            "finish_reason": e.finish_reason,
            "token_id": e.token_id,
            "token": "",
        }
        if e.raw is not None:
            choice["readout"] = e.raw
        if e.z is not None:
            choice["readout_z"] = e.z
        dumps({"id": "cmpl-bench", "object": "text_completion", "choices": [choice]})
    return time.thread_time() - cpu, time.perf_counter() - wall


def lockstep_round(
    engine: Any, prompt: tuple[int, ...], setup: Setup, first_on: bool
) -> tuple[Timing, Timing]:
    """One request with readout and one without, decoded step by step in turn (as the
    server's worker interleaves clients); returns their (on, off) tokens/s."""
    from amygdala.serve.engine import GenerationRequest, SamplingParams, TokenEvent

    params = SamplingParams(max_tokens=setup.new_tokens, temperature=0, ignore_eos=True)
    flags = (True, False) if first_on else (False, True)
    requests = [GenerationRequest(prompt, params, readout=flag) for flag in flags]
    cpu = [0.0, 0.0]
    wall = [0.0, 0.0]

    def on_step(i: int, cpu_s: float, wall_s: float) -> None:
        cpu[i] += cpu_s
        wall[i] += wall_s

    events = engine.run_here(requests, on_step=on_step)
    timings = {}
    for i, flag in enumerate(flags):
        tokens = [e for e in events[i] if isinstance(e, TokenEvent)]
        if len(tokens) != setup.new_tokens or any((e.raw is not None) != flag for e in tokens):
            raise RuntimeError(f"expected {setup.new_tokens} tokens with readout={flag}")
        cpu_s, wall_s = serialize(tokens)
        timings[flag] = Timing(
            wall=len(tokens) / (wall[i] + wall_s), cpu=len(tokens) / (cpu[i] + cpu_s)
        )
    return timings[True], timings[False]


def measure(setup: Setup) -> dict[str, Any]:
    """Tokens/s with and without readout over rounds of lockstep decoding."""
    import torch

    from amygdala.models import load_model
    from amygdala.serve.engine import Engine

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # all work on the timed thread: its CPU time is the whole cost
    try:
        with tempfile.TemporaryDirectory(prefix="amygdala-bench-serve-") as tmp:
            lm = load_model(str(build_model(setup, Path(tmp))), device="cpu", dtype="fp32")
            engine = Engine(lm, build_artifact(setup, Path(tmp)), max_concurrency=2)
            prompt = tuple(
                [1] + [4 + i % (setup.vocab - 4) for i in range(setup.prompt_tokens - 1)]
            )
            lockstep_round(engine, prompt, setup, True)  # warm-up: allocator, kernels
            on: list[Timing] = []
            off: list[Timing] = []
            for round_ in range(setup.rounds):
                a, b = lockstep_round(engine, prompt, setup, round_ % 2 == 0)
                on.append(a)
                off.append(b)
    finally:
        torch.set_num_threads(threads)
    return summarize(setup, on, off)


def summarize(setup: Setup, on: list[Timing], off: list[Timing]) -> dict[str, Any]:
    """Medians of the rounds, and the medians of the per-round ratios (paired in time)."""
    cpu_ratio = statistics.median(a.cpu / b.cpu for a, b in zip(on, off))
    wall_ratio = statistics.median(a.wall / b.wall for a, b in zip(on, off))
    return {
        "benchmark": "serve decode",
        "model": setup.describe(),
        "readout": f"{setup.concepts} concepts x {len(setup.readout_layers)} layers",
        "torch_threads": 1,
        "rounds": setup.rounds,
        "tok_s_without": round(statistics.median(t.wall for t in off), 1),
        "tok_s_with": round(statistics.median(t.wall for t in on), 1),
        "wall_ratio": round(wall_ratio, 4),
        "cpu_tok_s_without": round(statistics.median(t.cpu for t in off), 1),
        "cpu_tok_s_with": round(statistics.median(t.cpu for t in on), 1),
        "ratio": round(cpu_ratio, 4),
        "goal": GOAL,
        "met": cpu_ratio >= GOAL,
        "load_avg": round(os.getloadavg()[0], 1),
    }


def run(quick: bool) -> list[dict[str, Any]]:
    """The benchmark rows (one); `quick` shrinks everything to a smoke test."""
    return [measure(QUICK if quick else Setup())]


def markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a GitHub markdown table."""
    header = [
        "model",
        "readout",
        "load avg",
        "tok/s without → with (wall)",
        "wall ratio",
        "tok/s without → with (CPU time)",
        "CPU ratio",
        "goal (CPU ratio)",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        verdict = "**met**" if r["met"] else "**missed**"
        lines.append(
            f"| {r['model']} | {r['readout']} | {r['load_avg']} | "
            f"{r['tok_s_without']:.1f} → {r['tok_s_with']:.1f} | {r['wall_ratio']:.1%} | "
            f"{r['cpu_tok_s_without']:.1f} → {r['cpu_tok_s_with']:.1f} | {r['ratio']:.1%} | "
            f"≥ {r['goal']:.0%}: {verdict} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    args = parser.parse_args(argv)
    print(markdown(run(args.quick)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
