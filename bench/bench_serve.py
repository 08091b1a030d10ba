"""Decode throughput of `amygdala serve`'s engine with per-token readout against without.

Usage:
  python bench/bench_serve.py            # 128 tokens per request, 9 rounds
  python bench/bench_serve.py --quick    # a smoke run: numbers are meaningless

A random Llama-style decoder (built offline from a config, seeded) decodes greedily on
CPU through `amygdala.serve.engine.Engine` — the KV-cache loop the server runs. Each
round runs the same request twice, once with readout on (200 concepts × 4 layers,
calibrated, so raw and z for every token, converted to the lists the server sends) and
once with readout off (no hooks, no extra pass); the order alternates between rounds.
The ratio is the median of the per-round ratios (each round's two runs are adjacent in
time, so a busy machine slows both alike), the tokens/s the medians of the rounds. Tokens/s counts the whole request — prefill,
every decode step and, with readout, the last token's extra pass that stops after the
deepest hooked block. Goal: readout keeps ≥ 97% of the throughput.

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

    hidden: int = 512
    layers: int = 8
    heads: int = 8
    intermediate: int = 1408
    vocab: int = 8000
    concepts: int = 200
    readout_layers: tuple[int, ...] = (1, 3, 5, 7)
    prompt_tokens: int = 16
    new_tokens: int = 128
    rounds: int = 9

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


def timed_request(engine: Any, prompt: tuple[int, ...], setup: Setup, readout: bool) -> float:
    """Tokens/s of one whole greedy request (events consumed as the server consumes them)."""
    from amygdala.serve.engine import GenerationRequest, SamplingParams, TokenEvent

    request = GenerationRequest(
        prompt,
        SamplingParams(max_tokens=setup.new_tokens, temperature=0, ignore_eos=True),
        readout=readout,
    )
    start = time.perf_counter()
    tokens = 0
    for event in engine.generate(request):
        tokens += isinstance(event, TokenEvent)
        if readout and isinstance(event, TokenEvent) and event.raw is None:
            raise RuntimeError("readout was asked for but the event carries none")
    seconds = time.perf_counter() - start
    if tokens != setup.new_tokens:
        raise RuntimeError(f"expected {setup.new_tokens} tokens, got {tokens}")
    return tokens / seconds


def measure(setup: Setup) -> dict[str, Any]:
    """Median tokens/s with and without readout over alternating rounds."""
    import torch

    from amygdala.models import load_model
    from amygdala.serve.engine import Engine

    with tempfile.TemporaryDirectory(prefix="amygdala-bench-serve-") as tmp:
        lm = load_model(str(build_model(setup, Path(tmp))), device="cpu", dtype="fp32")
        artifact = build_artifact(setup, Path(tmp))
        engine = Engine(lm, artifact, max_concurrency=1)
        engine.start()
        try:
            prompt = tuple(
                [1] + [4 + i % (setup.vocab - 4) for i in range(setup.prompt_tokens - 1)]
            )
            timed_request(engine, prompt, setup, True)  # warm-up: allocator, kernels
            timed_request(engine, prompt, setup, False)
            with_r, without = [], []
            for round_ in range(setup.rounds):
                order = (True, False) if round_ % 2 == 0 else (False, True)
                for readout in order:
                    (with_r if readout else without).append(
                        timed_request(engine, prompt, setup, readout)
                    )
        finally:
            engine.close()
    on, off = statistics.median(with_r), statistics.median(without)
    ratio = statistics.median(a / b for a, b in zip(with_r, without))
    return {
        "benchmark": "serve decode",
        "model": setup.describe(),
        "readout": f"{setup.concepts} concepts x {len(setup.readout_layers)} layers",
        "torch_threads": torch.get_num_threads(),
        "rounds": setup.rounds,
        "tok_s_without": round(off, 1),
        "tok_s_with": round(on, 1),
        "ratio": round(ratio, 4),
        "goal": GOAL,
        "met": ratio >= GOAL,
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
        "threads",
        "load avg",
        "tok/s without",
        "tok/s with",
        "ratio",
        "goal",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        verdict = "**met**" if r["met"] else "**missed**"
        lines.append(
            f"| {r['model']} | {r['readout']} | {r['torch_threads']} | {r['load_avg']} | "
            f"{r['tok_s_without']:.1f} | {r['tok_s_with']:.1f} | "
            f"{r['ratio']:.1%} | ≥ {r['goal']:.0%}: {verdict} |"
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
