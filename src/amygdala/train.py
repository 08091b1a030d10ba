"""Training: corpus → one capture pass → fit → artifact.

`train(TrainConfig(...))` is the whole job; the steps are separate functions so
other entry points (the one-command `run`, benchmarks, multi-process training) can
reuse them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from amygdala import __version__
from amygdala.artifact import FORMAT, VECTOR_DTYPES, default_manifest_path, save_artifact
from amygdala.capture import POOLINGS, CaptureStats, Pooling, capture_texts
from amygdala.corpus import Corpus, load_corpus
from amygdala.errors import CaptureError, ConfigError, CorpusError
from amygdala.fit import ConceptStats, get_method
from amygdala.layers import DEFAULT_LAYERS, parse_layers
from amygdala.models import LoadedModel, load_model


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs; the CLI fills it from flags."""

    model: str  # Hub id, local directory, or `minilm` (the packaged MiniLM)
    training_data_dir: Path  # training-data directory or stories corpus
    output: Path  # readout.safetensors
    manifest: Path | None = None  # by default the output path with .json
    target_layers: str = DEFAULT_LAYERS  # absolute, negative, fractions, or `all`
    pooling: Pooling = "mean"
    method: str = "mean_diff"
    dtype: str = "auto"  # model compute dtype: bf16 on CUDA, fp32 elsewhere
    vectors_dtype: str = "float16"  # storage dtype of the vectors
    batch_size: int = 16
    max_length: int = 512  # tokens per text; longer texts are truncated and counted
    min_examples: int = 8  # concepts with fewer train positives or negatives are left out
    pool_start: int = 0  # mean pooling skips this many leading real tokens
    device: str | None = None  # cpu / cuda / mps; by default the best available
    revision: str | None = None
    blocks_path: str | None = None  # dotted path of the block list, for unknown models
    trust_remote_code: bool = False
    padding_side: str | None = None  # by default the tokenizer's
    progress: bool = True

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ConfigError(f"--pooling {self.pooling!r}: choose one of {', '.join(POOLINGS)}")
        if self.vectors_dtype not in VECTOR_DTYPES:
            raise ConfigError(f"--vectors-dtype {self.vectors_dtype!r}: choose one of "
                              f"{', '.join(VECTOR_DTYPES)}")
        for name in ("batch_size", "max_length", "min_examples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
        if self.pool_start < 0:
            raise ConfigError("--pool-start must be 0 or more")
        if self.padding_side not in (None, "left", "right"):
            raise ConfigError("--padding-side must be left or right")
        get_method(self.method)

    @property
    def manifest_path(self) -> Path:
        return self.manifest or default_manifest_path(self.output)


@dataclass
class TrainResult:
    """What a run produced, for summaries and callers."""

    vectors_path: Path
    manifest_path: Path
    manifest: dict[str, Any]
    capture: CaptureStats
    skipped_concepts: dict[str, str] = field(default_factory=dict)
    nonfinite_texts: int = 0
    corpus_problems: tuple[str, ...] = ()  # training rows skipped, with where and why


def select_concepts(corpus: Corpus, min_examples: int) -> tuple[Corpus, dict[str, str]]:
    """Leave out concepts with fewer than `min_examples` train positives or negatives."""
    keep, skipped = [], {}
    for concept, (pos, neg) in corpus.counts("train").items():
        if pos < min_examples or neg < min_examples:
            skipped[concept] = (f"{pos} positives / {neg} negatives in the train split, "
                                f"fewer than --min-examples {min_examples}")
        else:
            keep.append(concept)
    if not keep:
        raise CorpusError(f"no concept in {corpus.source} has at least {min_examples} train "
                          "positives and negatives; add data or lower --min-examples")
    return corpus.select(keep), skipped


def check_output(config: TrainConfig) -> None:
    """Fail before the expensive part when the outputs cannot be written."""
    for path in (config.output, config.manifest_path):
        if path.is_dir():
            raise ConfigError(f"output {path} is a directory; pass a file path such as "
                              f"{path / 'readout.safetensors'}")
    if config.output.resolve() == config.manifest_path.resolve():
        raise ConfigError("--manifest must differ from --output")


def accumulate(lm: LoadedModel, corpus: Corpus, layers: list[int],
               config: TrainConfig) -> tuple[ConceptStats, CaptureStats, int]:
    """One capture pass over the texts that carry a train label; returns running sums."""
    rows = np.flatnonzero((corpus.train != 0).any(axis=1))
    texts = [corpus.texts[i] for i in rows]
    labels = torch.from_numpy(corpus.train[rows].astype(np.int8)).to(lm.device)
    stats = ConceptStats.zeros(len(layers), len(corpus.concepts), lm.hidden_size, lm.device)
    cstats = CaptureStats()
    nonfinite = 0
    for batch in capture_texts(lm, texts, layers, pooling=config.pooling,
                               batch_size=config.batch_size, max_length=config.max_length,
                               pool_start=config.pool_start,
                               padding_side=config.padding_side,  # type: ignore[arg-type]
                               progress=config.progress, stats=cstats):
        ok = torch.isfinite(batch.acts).all(dim=2).all(dim=1)
        index = batch.index.to(lm.device)
        if not bool(ok.all()):
            nonfinite += int((~ok).sum())
            batch_labels, acts = labels[index[ok]], batch.acts[ok]
        else:
            batch_labels, acts = labels[index], batch.acts
        stats.update(batch_labels, acts)
    if nonfinite == len(texts):
        raise CaptureError(f"every text gave NaN/Inf activations with --dtype {config.dtype}; "
                           "fp16 overflows on many models: use --dtype bf16 or fp32")
    return stats, cstats, nonfinite


def build_manifest(config: TrainConfig, lm: LoadedModel, corpus: Corpus, layers: list[int],
                   stats: ConceptStats, skipped: dict[str, str]) -> dict[str, Any]:
    """The manifest: the four runtime fields first, then provenance and counts."""
    pos, neg = stats.pos_count.tolist(), stats.neg_count.tolist()
    return {
        "concepts": list(corpus.concepts),
        "layers": layers,
        "hidden_size": lm.hidden_size,
        "dtype": config.vectors_dtype,
        "format": FORMAT,
        "model": config.model,
        "model_revision": config.revision,
        "model_kind": lm.kind,
        "model_layers": lm.n_layers,
        "blocks_path": lm.blocks_path,
        "pooling": config.pooling,
        "pool_start": config.pool_start,
        "max_length": config.max_length,
        "method": config.method,
        "model_dtype": str(lm.dtype).removeprefix("torch."),
        "training_data": corpus.source,
        "counts": {c: {"positive": p, "negative": n}
                   for c, p, n in zip(corpus.concepts, pos, neg)},
        "skipped_concepts": skipped,
        "amygdala_version": __version__,
    }


def train(config: TrainConfig, lm: LoadedModel | None = None) -> TrainResult:
    """Train readout vectors and write the artifact pair (see the module docstring).

    Args:
        config: the run's settings.
        lm: an already loaded model to reuse (otherwise `config.model` is loaded).

    Example:
        train(TrainConfig(model="minilm", training_data_dir=Path("data"),
                          output=Path("out/readout.safetensors")))
    """
    check_output(config)
    corpus, skipped = select_concepts(load_corpus(config.training_data_dir), config.min_examples)
    if lm is None:
        lm = load_model(config.model, device=config.device, dtype=config.dtype,
                        revision=config.revision, blocks_path=config.blocks_path,
                        trust_remote_code=config.trust_remote_code)
    layers = parse_layers(config.target_layers, lm.n_layers)
    stats, cstats, nonfinite = accumulate(lm, corpus, layers, config)
    vectors = get_method(config.method)(stats)
    bad = ~torch.isfinite(vectors).all(dim=-1) | (vectors.norm(dim=-1) == 0)
    if bool(bad.any()):
        names = sorted({corpus.concepts[c] for _, c in bad.nonzero().tolist()})
        raise CaptureError(f"method {config.method} gave no direction for {names} (positives "
                           "and negatives have the same mean?)")
    manifest = build_manifest(config, lm, corpus, layers, stats, skipped)
    per_layer = {layer: vectors[i].cpu() for i, layer in enumerate(layers)}
    vec_path, man_path = save_artifact(per_layer, manifest, config.output, config.manifest_path)
    return TrainResult(vec_path, man_path, manifest, cstats, skipped, nonfinite, corpus.problems)


def print_summary(result: TrainResult, file: Any = None) -> None:
    """A short human summary of a run (to stderr by default)."""
    out = file or sys.stderr
    m, c = result.manifest, result.capture
    rate = c.texts / c.seconds if c.seconds else 0.0
    print(f"trained {len(m['concepts'])} concepts x {len(m['layers'])} layers {m['layers']} "
          f"({m['method']}, {m['pooling']} pooling) on {m['model']}", file=out)
    print(f"captured {c.texts} texts / {c.tokens} tokens in {c.seconds:.1f}s "
          f"({rate:.1f} texts/s); truncated to --max-length: {c.truncated}", file=out)
    for concept in m["concepts"]:
        n = m["counts"][concept]
        print(f"  {concept:<24} {n['positive']:>6} positive {n['negative']:>7} negative", file=out)
    for concept, reason in result.skipped_concepts.items():
        print(f"  skipped {concept}: {reason}", file=out)
    if result.nonfinite_texts:
        print(f"skipped {result.nonfinite_texts} texts with NaN/Inf activations (fp16 "
              "overflow? try --dtype bf16 or fp32)", file=out)
    if result.corpus_problems:
        print(f"skipped {len(result.corpus_problems)} unusable training rows, e.g.:", file=out)
        for line in result.corpus_problems[:5]:
            print(f"  {line}", file=out)
    print(f"wrote {result.vectors_path} and {result.manifest_path}", file=out)
