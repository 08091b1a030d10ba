"""The benchmark's training data, made through the public memory-graph path.

Both jobs write a memory graph (JSONL, one node per line, emotion tag lines at the end
of each node) and turn it into a training-data directory with `amygdala extract`, the
way a user would. Results are cached under the work directory, keyed by what made them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    NEUTRAL,
    Context,
    DecoderSpec,
    GraphSpec,
    amygdala_cmd,
    bench_env,
    build_decoder,
    goemotions_names,
    read_goemotions,
    run_timed,
    write_goemotions_graph,
    write_synthetic_graph,
)

CAP = 500  # --max-examples-per-emotion of both jobs (the original design's default)
QUICK_CAP = 12


@dataclass(frozen=True)
class Extracted:
    """A training-data directory and what it holds."""

    graph: Path
    data_dir: Path
    nodes: int
    emotions: list[str]
    selections: int  # (emotion, text) pairs: what an emotion-by-emotion trainer forwards
    unique_texts: int  # distinct texts: what a one-pass trainer forwards
    extract_s: float


def summarize(data_dir: Path) -> tuple[list[str], int, int]:
    """Emotions, selections (train rows) and unique texts of a training-data directory."""
    emotions, selections, texts = [], 0, set()
    for path in sorted(data_dir.glob("*.jsonl")):
        emotions.append(path.stem)
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if row.get("split", "train") == "train":
                selections += 1
                texts.add(row["text"])
    return emotions, selections, len(texts)


def _extract(ctx: Context, name: str, graph: Path, nodes: int, flags: list[str]) -> Extracted:
    data_dir = ctx.workdir / name / "training-data"
    stamp = ctx.workdir / name / "extract-stamp.json"
    key = json.dumps({"flags": flags, "graph_size": graph.stat().st_size, "nodes": nodes})
    extract_s = float("nan")
    if not (stamp.exists() and json.loads(stamp.read_text()).get("key") == key):
        proc = run_timed(
            amygdala_cmd("extract", "--graph", str(graph), "--output-dir", str(data_dir), *flags),
            ctx.workdir / name / "extract.log",
            env=bench_env(ctx.workdir),
        ).check()
        extract_s = proc.wall_s
        stamp.write_text(json.dumps({"key": key, "extract_s": extract_s}))
    else:
        extract_s = json.loads(stamp.read_text())["extract_s"]
    emotions, selections, unique = summarize(data_dir)
    return Extracted(graph, data_dir, nodes, emotions, selections, unique, extract_s)


def goemotions(ctx: Context) -> Extracted:
    """GoEmotions dev: each comment a node tagged with its labels; 27 emotions, cap 500."""
    graph = ctx.workdir / "goemotions" / "graph.jsonl"
    nodes = write_goemotions_graph(graph, limit=400 if ctx.quick else None)
    emotions = [n for n in goemotions_names() if n != NEUTRAL]
    flags = [
        "--emotions",
        ",".join(emotions),
        "--max-examples-per-emotion",
        str(QUICK_CAP if ctx.quick else CAP),
        "--min-content-chars",
        "0",
        "--heldout-fraction",
        "0",
    ]
    if ctx.quick:
        flags += ["--min-positives", "3"]
    return _extract(ctx, "goemotions", graph, nodes, flags)


def production_graph_spec(ctx: Context) -> GraphSpec:
    return GraphSpec(nodes=300, emotions=12) if ctx.quick else GraphSpec()


def production_model_spec(ctx: Context) -> DecoderSpec:
    """64 blocks of a small width: the depth of the real target, none of its cost."""
    if ctx.quick:
        return DecoderSpec(layers=8, hidden=32, heads=2, intermediate=64, vocab=600)
    # hidden 64: at 128 the baseline's 150 emotions x 1000 texts x 64 blocks take hours here
    return DecoderSpec(layers=64, hidden=64, heads=4, intermediate=128, vocab=2000)


def production_layers(ctx: Context) -> str:
    return "1,3,5,6" if ctx.quick else "3,18,33,36"


def production(ctx: Context) -> tuple[Extracted, Path]:
    """The synthetic production-shaped graph, its extraction, and the 64-block decoder."""
    spec = production_graph_spec(ctx)
    graph = ctx.workdir / "production" / "graph.jsonl"
    sample_path = ctx.workdir / "production" / "tokenizer-sample.json"
    stamp = ctx.workdir / "production" / "graph-spec.json"
    if not (graph.exists() and stamp.exists() and stamp.read_text() == repr(spec)):
        sample = write_synthetic_graph(spec, graph)
        sample_path.write_text(json.dumps(sample))
        stamp.write_text(repr(spec))
    sample = json.loads(sample_path.read_text())
    flags = [
        "--max-examples-per-emotion",
        str(QUICK_CAP if ctx.quick else CAP),
        "--heldout-fraction",
        "0",
    ]
    if ctx.quick:
        flags += ["--min-positives", "3"]
    extracted = _extract(ctx, "production", graph, spec.nodes, flags)
    model = build_decoder(production_model_spec(ctx), ctx.workdir / "models" / "production", sample)
    return extracted, model


def goemotions_texts(limit: int | None = None) -> list[str]:
    return [text for text, _, _ in read_goemotions("dev")[:limit]]
