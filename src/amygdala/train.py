"""Training: corpus → one capture pass → fit → artifact.

`train(TrainConfig(...))` is the whole job; the steps are separate functions so
other entry points (the one-command `run`, benchmarks, multi-process training) can
reuse them.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch

from amygdala import __version__, _defaults
from amygdala._defaults import DType, PaddingSide, VectorsDtype
from amygdala._io import Input, Output, check_outputs
from amygdala.activations import (
    TOKEN_SAMPLE,
    Activations,
    CaptureSettings,
    capture_missing,
    open_store,
)
from amygdala.artifact import (
    FORMAT,
    VECTOR_DTYPES,
    Manifest,
    default_manifest_path,
    save_artifact,
)
from amygdala.capture import CaptureStats, Pooling, explain_nonfinite
from amygdala.combine import (
    FOLDS,
    combined_calibration,
    fit_combination,
    fold_ids,
    manifest_entry,
    significant,
)
from amygdala.corpus import NEGATIVE, Corpus, load_corpus, read_paragraphs
from amygdala.distributed import init_distributed
from amygdala.errors import AmygdalaError, CaptureError, ConfigError, CorpusError
from amygdala.evaluate import evaluate, project, quality_info
from amygdala.fit import (
    DEFAULT_METHOD,
    ConceptStats,
    Moments,
    get_method,
    method_needs,
    neutral_basis,
    project_out,
)
from amygdala.layers import DEFAULT_LAYERS, parse_layers
from amygdala.models import LoadedModel, resolve_model_name
from amygdala.store import default_cache_dir, text_hash


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs; the CLI fills it from flags.

    Every path field takes a `str` or any `os.PathLike` and holds a `Path` afterwards.
    """

    model: str  # Hub id, local directory, or `minilm` (the packaged MiniLM)
    training_data_dir: Path | None  # training-data directory or stories corpus; None when
    #                                 the corpus is handed to `train` (e.g. in-memory rows)
    output: Path  # readout.safetensors
    manifest: Path | None = None  # by default the output path with .json
    target_layers: str = DEFAULT_LAYERS  # absolute, negative, fractions, or `all`
    # the defaults below live in amygdala._defaults, where the CLI's flags read them too
    pooling: Pooling = _defaults.POOLING  # mean over real tokens, or the last real token
    method: str = DEFAULT_METHOD  # see amygdala.fit.FIT_METHODS and bench/bench_methods.py
    dtype: DType = _defaults.DTYPE  # model compute dtype: bf16 on CUDA, fp32 elsewhere
    vectors_dtype: VectorsDtype = _defaults.VECTORS_DTYPE  # storage dtype of the vectors
    batch_size: int = _defaults.BATCH_SIZE  # texts per forward pass
    max_length: int = _defaults.MAX_LENGTH  # tokens per text; longer ones are cut and counted
    min_examples: int = _defaults.MIN_EXAMPLES  # concepts with fewer train positives or
    #                                             negatives are left out
    pool_start: int = _defaults.POOL_START  # mean pooling skips this many leading real tokens
    device: str | None = None  # cpu / cuda / mps; by default the best available
    revision: str | None = None
    blocks_path: str | None = None  # dotted path of the block list, for unknown models
    trust_remote_code: bool = False
    padding_side: PaddingSide | None = None  # by default the tokenizer's
    progress: bool = True
    cache_dir: Path | None = None  # activation store; by default ~/.cache/amygdala/activations
    no_cache: bool = False  # use a temporary store, removed after the run
    device_map: str | None = None  # e.g. `auto`: spread a large model over GPUs (accelerate)
    neutral: Path | None = None  # neutral text (.txt paragraphs or a folder of .txt): the
    #                              calibration reference instead of each concept's negatives
    neutral_share: float = 0.0  # > 0: project out the neutral text's top principal
    #                             components explaining this share of its variance
    report_dir: Path | None = None  # also write quality.json + report.html here
    combined: bool = True  # also fit the combined score over all layers (amygdala.combine);
    #                        off with --no-combined (refits the method once per fold)

    def __post_init__(self) -> None:
        for f in fields(self):  # str / PathLike → Path, so `.is_dir()` & co. work
            value = getattr(self, f.name)
            if "Path" in str(f.type) and value is not None and not isinstance(value, Path):
                object.__setattr__(self, f.name, Path(value))
        self.capture_settings()  # checks pooling, batch size, max length, pool start, padding
        if self.vectors_dtype not in VECTOR_DTYPES:
            raise ConfigError(
                f"--vectors-dtype {self.vectors_dtype!r}: choose one of {', '.join(VECTOR_DTYPES)}"
            )
        if self.min_examples < 1:
            raise ConfigError("--min-examples must be at least 1")
        get_method(self.method)
        if not 0.0 <= self.neutral_share < 1.0:
            raise ConfigError(
                f"--neutral-share {self.neutral_share}: pass a share of variance "
                "in [0, 1); 0 turns denoising off"
            )
        if self.neutral_share and self.neutral is None:
            raise ConfigError(
                "--neutral-share needs --neutral PATH (the neutral text whose "
                "principal components are projected out)"
            )

    @property
    def manifest_path(self) -> Path:
        return self.manifest or default_manifest_path(self.output)

    def capture_settings(self) -> CaptureSettings:
        """The run's capture settings: the model, how texts are pooled, the store."""
        return CaptureSettings(
            model=self.model,
            pooling=self.pooling,
            pool_start=self.pool_start,
            max_length=self.max_length,
            batch_size=self.batch_size,
            dtype=self.dtype,
            revision=self.revision,
            blocks_path=self.blocks_path,
            trust_remote_code=self.trust_remote_code,
            device=self.device,
            device_map=self.device_map,
            padding_side=cast("Literal['left', 'right'] | None", self.padding_side),
            progress=self.progress,
            cache_dir=self.cache_dir,
            no_cache=self.no_cache,
        )


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
    cached_texts: int = 0  # texts whose activations came from the activation store
    combined_note: str = ""  # why the manifest has no combined score, when it has none
    store_problems: tuple[str, ...] = ()  # activation-store shards skipped, leftovers removed


def select_concepts(corpus: Corpus, min_examples: int) -> tuple[Corpus, dict[str, str]]:
    """Leave out concepts with fewer than `min_examples` train positives or negatives."""
    keep, skipped = [], {}
    for concept, (pos, neg) in corpus.counts("train").items():
        if pos < min_examples or neg < min_examples:
            skipped[concept] = (
                f"{pos} positives / {neg} negatives in the train split, "
                f"fewer than --min-examples {min_examples}"
            )
        else:
            keep.append(concept)
    if not keep:
        raise CorpusError(
            f"no concept in {corpus.source} has at least {min_examples} train "
            "positives and negatives; add data or lower --min-examples"
        )
    return corpus.select(keep), skipped


def output_paths(config: TrainConfig) -> list[Output]:
    """Every path a run writes, the activation cache included (for `check_outputs`)."""
    default = "" if config.manifest else " (by default --output with .json)"
    outputs = [
        Output(config.output, "--output"),
        Output(config.manifest_path, f"--manifest{default}"),
    ]
    if config.report_dir is not None:
        outputs += [Output(config.report_dir, "--report", "dir")]
        outputs += [
            Output(config.report_dir / n, "--report") for n in ("quality.json", "report.html")
        ]
    if not config.no_cache:
        cache = config.cache_dir or default_cache_dir()
        outputs.append(Output(cache, "--cache-dir", "dir", "or pass --no-cache"))
    return outputs


def input_paths(config: TrainConfig) -> list[Input]:
    """Every path a run reads that an output must not overwrite."""
    inputs = []
    if config.training_data_dir is not None:
        inputs.append(Input(config.training_data_dir, "the training data (--training-data-dir)"))
    with contextlib.suppress(AmygdalaError):  # a missing packaged model fails at loading
        inputs.append(Input(Path(resolve_model_name(config.model)), "the model (--model)"))
    if config.neutral is not None:
        inputs.append(Input(config.neutral, "the neutral text (--neutral)"))
    return inputs


def check_output(config: TrainConfig) -> None:
    """Fail before the expensive part when an output cannot be written (`check_outputs`)."""
    if config.manifest is None and config.output.suffix == ".json":
        raise ConfigError(
            f"--output {config.output} ends in .json, the manifest's default name (the "
            "--output path with .json); pass the vectors file, e.g. --output "
            f"{config.output.with_suffix('.safetensors')}, or name the manifest with --manifest"
        )
    if config.output.resolve() == config.manifest_path.resolve():
        raise ConfigError("--manifest must differ from --output")
    check_outputs(output_paths(config), input_paths(config))


def accumulate(
    acts: Activations,
    labels: np.ndarray,
    rows: Sequence[int],
    n_layers: int,
    hidden: int,
    method: str = DEFAULT_METHOD,
) -> ConceptStats:
    """Pass 1: per-concept running sums over `rows` (labels `[n_texts, n_concepts]`), with
    the accumulators `method` needs; methods that make their own passes get `stats.rows`."""
    stats = ConceptStats.zeros(n_layers, labels.shape[1], hidden, needs=method_needs(method))
    for index, batch in acts.iter(rows):
        stats.update(torch.from_numpy(labels[index]), batch)
    if "rows" in method_needs(method):

        def passes() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for index, batch in acts.iter(rows):
                yield torch.from_numpy(labels[index]), batch

        stats.rows = passes
    return stats


def denoise_basis(
    acts: Activations, rows: Sequence[int], share: float, n_layers: int, hidden: int, dist: Any
) -> list[torch.Tensor]:
    """Per layer, the neutral texts' top principal components (`share` of their variance),
    to be projected out of every vector (`project_out`)."""
    moments = Moments.zeros(n_layers, hidden)
    for _, batch in acts.iter(rows):
        moments.update(batch)
    for tensor in moments.tensors():
        dist.sum_(tensor)
    return neutral_basis(moments, share)


@dataclass
class TokenMoments:
    """Sums over the reference texts' sampled single tokens (they add across processes).

    `layer` `[3, n_layers, n_concepts]`: count, Σ raw and Σ raw² of each layer's projection
    (tokens valid at that layer), for the per-layer calibration (`calibration_stats`);
    `joint_count` `[C]`, `joint_sum` `[C, L]` and `joint_outer` `[C, L, L]`: the same over
    tokens valid at every layer, with cross products, so that the calibration of any
    weighted sum of layers (the combined score) follows without another pass.
    """

    layer: np.ndarray
    joint_count: np.ndarray
    joint_sum: np.ndarray
    joint_outer: np.ndarray

    @classmethod
    def zeros(cls, n_layers: int, n_concepts: int) -> TokenMoments:
        return cls(
            np.zeros((3, n_layers, n_concepts)),
            np.zeros(n_concepts),
            np.zeros((n_concepts, n_layers)),
            np.zeros((n_concepts, n_layers, n_layers)),
        )

    def summed(self, dist: Any) -> TokenMoments:
        """The sums over every process (itself without torchrun)."""
        parts = (self.layer, self.joint_count, self.joint_sum, self.joint_outer)
        flat = dist.sum_array(np.concatenate([p.ravel() for p in parts]))
        out, start = [], 0
        for p in parts:
            out.append(np.asarray(flat[start : start + p.size]).reshape(p.shape))
            start += p.size
        return TokenMoments(*out)


def token_moments(
    acts: Activations, vectors: torch.Tensor, reference: np.ndarray, rows: Sequence[int]
) -> TokenMoments:
    """Pass 2: the sums of each concept's per-token projections over its reference texts'
    sampled tokens (`TokenMoments`).

    Runtimes show a z-score for every token, so the statistics are those of single
    tokens (`TOKEN_SAMPLE` per text, evenly spread over its real tokens), not of
    per-text means, which spread much less. `reference[i, c]` says whether text i is
    reference text for concept c (its negatives, or the neutral texts for all).
    """
    n_layers, n_concepts, _ = vectors.shape
    sums = TokenMoments.zeros(n_layers, n_concepts)
    for index, tokens in acts.iter_tokens(rows):
        raw = torch.einsum("blkh,lch->blkc", tokens, vectors).double()
        valid = torch.isfinite(raw)
        proj = torch.where(valid, raw, 0.0).numpy()  # [B, L, k, C]
        ref = reference[index].astype(np.float64)
        mask = ref[:, None, None, :] * valid.numpy()
        sums.layer[0] += mask.sum(axis=(0, 2))
        sums.layer[1] += (proj * mask).sum(axis=(0, 2))
        sums.layer[2] += (proj * proj * mask).sum(axis=(0, 2))
        joint = ref[:, None, :] * valid.numpy().all(axis=1)  # [B, k, C]
        sums.joint_count += joint.sum(axis=(0, 1))
        sums.joint_sum += np.einsum("bkc,blkc->cl", joint, proj)
        sums.joint_outer += np.einsum("bkc,blkc,bmkc->clm", joint, proj, proj)
    return sums


def calibration_stats(sums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`(mean, std)` `[n_layers, n_concepts]` from `TokenMoments.layer` (std with ddof=1)."""
    n = np.maximum(sums[0], 1)
    mean = sums[1] / n
    var = np.maximum(sums[2] / n - mean**2, 0.0) * (n / np.maximum(n - 1, 1))
    return mean, np.sqrt(var)


def load_neutral(path: Path) -> list[str]:
    """Neutral texts: paragraphs of a .txt file, or of every .txt file in a folder."""
    files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
    if not path.exists() or not files:
        raise CorpusError(f"--neutral {path}: no such file, or a folder without .txt files")
    texts = [p for f in files for p in read_paragraphs(f)]
    if len(texts) < 2:
        raise CorpusError(f"--neutral {path}: need at least 2 paragraphs of neutral text")
    return texts


def build_manifest(
    config: TrainConfig,
    lm: LoadedModel,
    corpus: Corpus,
    layers: list[int],
    stats: ConceptStats,
    skipped: dict[str, str],
) -> dict[str, Any]:
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
        "counts": {c: {"positive": p, "negative": n} for c, p, n in zip(corpus.concepts, pos, neg)},
        "skipped_concepts": skipped,
        "amygdala_version": __version__,
    }


def train(
    config: TrainConfig, lm: LoadedModel | None = None, corpus: Corpus | None = None
) -> TrainResult:
    """Train readout vectors and write the artifact pair (see the module docstring).

    Args:
        config: the run's settings.
        lm: an already loaded model to reuse (otherwise `config.model` is loaded).
        corpus: training data already loaded (otherwise `config.training_data_dir` is read).

    Example:
        train(TrainConfig(model="minilm", training_data_dir=Path("data"),
                          output=Path("out/readout.safetensors")))
    """
    check_output(config)
    if corpus is None:
        if config.training_data_dir is None:
            raise ConfigError("no training data: set training_data_dir, or pass a Corpus")
        corpus = load_corpus(config.training_data_dir)
    corpus, skipped = select_concepts(corpus, config.min_examples)
    neutral = load_neutral(config.neutral) if config.neutral else []
    dist, device = init_distributed(config.device)
    if dist.active and ("rows" in method_needs(config.method) or config.report_dir):
        raise ConfigError(
            f"--method {config.method} / --report read every stored activation "
            "in one process; run them without torchrun (amygdala report can "
            "follow a torchrun job, on the same --cache-dir)"
        )
    settings = config.capture_settings()
    if lm is None:
        lm = settings.load(device)
    layers = parse_layers(config.target_layers, lm.n_layers)
    texts = list(corpus.texts) + neutral
    train_rows = np.flatnonzero((corpus.train != 0).any(axis=1)).tolist()
    heldout_rows = np.flatnonzero((corpus.heldout != 0).any(axis=1)).tolist()
    needed: list[int] = sorted(
        set(train_rows) | set(heldout_rows) | set(range(len(corpus.texts), len(texts)))
    )
    mine = set(dist.share(needed))  # this process's texts (all of them without torchrun)
    with open_store(settings, settings.fingerprint(lm, layers)) as store:
        acts = Activations(store, [text_hash(t) for t in texts])
        cstats = capture_missing(
            lm, texts, acts, layers, settings, [r for r in needed if r in mine]
        )
        stats = accumulate(
            acts,
            corpus.train,
            [r for r in train_rows if r in mine],
            len(layers),
            lm.hidden_size,
            config.method,
        )
        for tensor in stats.tensors():
            dist.sum_(tensor)
        nonfinite = int(dist.sum_array(np.array([len(acts.nonfinite)]))[0])
        if nonfinite >= len(train_rows):
            raise CaptureError(
                explain_nonfinite(
                    lm,
                    [texts[r] for r in train_rows],
                    max_length=config.max_length,
                    pool_start=config.pool_start,
                    dtype_flag=config.dtype,
                )
            )
        vectors = fit_vectors(config, corpus, stats)
        basis: list[torch.Tensor] = []
        if config.neutral_share:
            neutral_rows = [r for r in range(len(corpus.texts), len(texts)) if r in mine]
            basis = denoise_basis(
                acts, neutral_rows, config.neutral_share, len(layers), lm.hidden_size, dist
            )
            vectors = project_out(vectors, basis)
        stored = vectors.to(VECTOR_DTYPES[config.vectors_dtype]).float()
        reference, ref_rows, ref_name = calibration_reference(corpus, len(neutral), train_rows)
        moments = token_moments(acts, stored, reference, [r for r in ref_rows if r in mine]).summed(
            dist
        )
        mean, std = calibration_stats(moments.layer)
        combined, combined_note = None, "--no-combined"
        if config.combined:
            combined, combined_note = fit_combined(
                Refit(config, corpus, acts, stats, basis, dist), train_rows, mine, std, moments
            )
        quality = (
            evaluate(
                stored,
                corpus.concepts,
                layers,
                acts,
                corpus.train,
                corpus.heldout,
                combined_weights=None if combined is None else np.array(combined["weights"]),
            )
            if config.report_dir
            else None
        )
        store_problems = tuple(store.problems)
    manifest = build_manifest(config, lm, corpus, layers, stats, skipped)
    manifest["calibration"] = {
        "reference": ref_name,
        "unit": "token",
        "tokens_per_text": TOKEN_SAMPLE,
        "mean": mean.round(6).tolist(),
        "std": std.round(6).tolist(),
    }
    if combined is not None:
        manifest["combined"] = combined
    if config.neutral_share:
        manifest["denoise"] = {
            "neutral_share": config.neutral_share,
            "components_per_layer": [b.shape[1] for b in basis],
        }
    vec_path, man_path = config.output, config.manifest_path
    if dist.is_main:
        per_layer = {layer: vectors[i] for i, layer in enumerate(layers)}
        save_artifact(per_layer, manifest, vec_path, man_path)
        if quality is not None and config.report_dir is not None:
            from amygdala.report import write_report

            info = quality_info(Manifest.from_dict(manifest), vec_path)
            write_report(replace(quality, info=info), config.report_dir)
    dist.barrier()
    cached = int(dist.sum_array(np.array([len(mine) - cstats.texts]))[0])
    return TrainResult(
        vec_path,
        man_path,
        manifest,
        cstats,
        skipped,
        nonfinite,
        corpus.problems,
        cached,
        "" if combined is not None else combined_note,
        store_problems,
    )


def fit_vectors(config: TrainConfig, corpus: Corpus, stats: ConceptStats) -> torch.Tensor:
    """Apply the chosen method; every concept must get a finite, non-zero direction."""
    vectors = get_method(config.method)(stats)
    bad = ~torch.isfinite(vectors).all(dim=-1) | (vectors.norm(dim=-1) == 0)
    if bool(bad.any()):
        names = sorted({corpus.concepts[c] for _, c in bad.nonzero().tolist()})
        raise CaptureError(
            f"method {config.method} gave no direction for {names} (positives "
            "and negatives have the same mean?)"
        )
    return vectors


@dataclass
class Refit:
    """What refitting the run's method on part of the train rows needs."""

    config: TrainConfig
    corpus: Corpus
    acts: Activations
    stats: ConceptStats  # the sums over every train row (this process's share)
    basis: list[torch.Tensor]  # neutral components projected out (empty: none)
    dist: Any

    def without(self, held: Sequence[int], rest: Sequence[int]) -> torch.Tensor:
        """Vectors `[L, C, H]` (rounded to the storage dtype) fitted on `rest`, the train
        rows outside the fold `held` (both this process's share).

        Methods that only read sums get `stats` minus the fold's sums (one pass over the
        fold); methods that make their own passes read the other rows again."""
        config, n_layers, _, hidden = self.config, *self.stats.pos_sum.shape
        if "rows" in method_needs(config.method):
            part = accumulate(self.acts, self.corpus.train, rest, n_layers, hidden, config.method)
        else:
            fold = accumulate(self.acts, self.corpus.train, held, n_layers, hidden, config.method)
            for tensor in fold.tensors():
                self.dist.sum_(tensor)
            part = copy.deepcopy(self.stats)
            for total, mine in zip(part.tensors(), fold.tensors()):
                total -= mine
        vectors = get_method(config.method)(part)
        if self.basis:
            vectors = project_out(vectors, self.basis)
        vectors = torch.nan_to_num(vectors, nan=0.0, posinf=0.0, neginf=0.0)
        return vectors.to(VECTOR_DTYPES[config.vectors_dtype]).float()


def out_of_fold(
    refit: Refit, rows: Sequence[int], mine: set[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Project every train text on vectors fitted without its fold (`amygdala.combine`).

    Returns `(text positions [n], projections [n, L, C], folds [n])` over the rows whose
    activations are finite, gathered from every process.
    """
    rows = list(rows)
    folds = fold_ids([refit.acts.hashes[r] for r in rows])
    where = {r: i for i, r in enumerate(rows)}
    n_layers, n_concepts = refit.stats.pos_sum.shape[:2]
    proj = np.zeros((len(rows), n_layers, n_concepts))
    seen = np.zeros(len(rows))
    for f in range(FOLDS):
        held = [r for r, g in zip(rows, folds) if g == f and r in mine]
        rest = [r for r, g in zip(rows, folds) if g != f and r in mine]
        vectors = refit.without(held, rest)
        positions, scores = project(refit.acts, held, vectors)
        index = [where[int(p)] for p in positions]
        proj[index] = scores
        seen[index] = 1.0
    seen = refit.dist.sum_array(seen) > 0
    proj = refit.dist.sum_array(proj)
    return np.asarray(rows)[seen], proj[seen], folds[seen]


def fit_combined(
    refit: Refit, train_rows: Sequence[int], mine: set[int], std: np.ndarray, moments: TokenMoments
) -> tuple[dict[str, Any] | None, str]:
    """The manifest's `combined` entry (or None and the reason): layer weights chosen on
    out-of-fold projections of the train rows, calibrated on the reference tokens."""
    rows, proj, folds = out_of_fold(refit, train_rows, mine)
    labels = refit.corpus.train[rows]
    fit = fit_combination(proj, labels, std, folds)
    weights = significant(fit.weights)
    mean, cstd = combined_calibration(
        moments.joint_count, moments.joint_sum, moments.joint_outer, weights
    )
    bad = [
        refit.corpus.concepts[c]
        for c in range(len(cstd))
        if not (np.isfinite(cstd[c]) and cstd[c] > 0 and np.isfinite(mean[c]))
    ]
    if bad:
        return None, (
            f"no spread of the combined score over the reference tokens for {bad} "
            "(no reference text, or vectors with no spread)"
        )
    return manifest_entry(fit, weights, significant(mean), significant(cstd)), ""


def calibration_reference(
    corpus: Corpus, n_neutral: int, train_rows: list[int]
) -> tuple[np.ndarray, list[int], str]:
    """Which texts calibrate which concept: the neutral texts when given, else its negatives.

    Returns the `[n_texts, n_concepts]` mask over corpus texts followed by neutral texts,
    the rows to read, and the reference's name for the manifest.
    """
    n_texts, n_concepts = len(corpus.texts), len(corpus.concepts)
    if n_neutral:
        mask = np.zeros((n_texts + n_neutral, n_concepts), dtype=bool)
        mask[n_texts:] = True
        return mask, list(range(n_texts, n_texts + n_neutral)), "neutral"
    mask = np.zeros((n_texts, n_concepts), dtype=bool)
    mask[:] = corpus.train == NEGATIVE
    return mask, train_rows, "negatives"


def summary_lines(result: TrainResult) -> list[str]:
    """A short human summary of a run, one line per item (`amygdala train` prints it to
    stderr); the activation store's warnings are `result.store_problems`, apart."""
    m, c = result.manifest, result.capture
    rate = c.texts / c.seconds if c.seconds else 0.0
    lines = [
        f"trained {len(m['concepts'])} concepts x {len(m['layers'])} layers {m['layers']} "
        f"({m['method']}, {m['pooling']} pooling) on {m['model']}"
    ]
    cut = "truncated to --max-length"
    if 0 < c.token_limit < m["max_length"]:
        cut = f"truncated to {c.token_limit} tokens (the model's limit, below --max-length)"
    lines.append(
        f"captured {c.texts} texts / {c.tokens} tokens in {c.seconds:.1f}s "
        f"({rate:.1f} texts/s), {result.cached_texts} found in the activation cache; "
        f"{cut}: {c.truncated}"
    )
    for concept in m["concepts"]:
        n = m["counts"][concept]
        lines.append(f"  {concept:<24} {n['positive']:>6} positive {n['negative']:>7} negative")
    for concept, reason in result.skipped_concepts.items():
        lines.append(f"  skipped {concept}: {reason}")
    if result.nonfinite_texts:
        start = m.get("pool_start")
        few = f", or at most --pool-start {start} real tokens" if start else ""
        lines.append(
            f"skipped {result.nonfinite_texts} texts with NaN/Inf activations (fp16 "
            f"overflow: try --dtype bf16 or fp32) or nothing to pool (only special tokens{few})"
        )
    if result.combined_note:
        lines.append(f"no combined score: {result.combined_note}")
    elif "combined" in m:
        fit = m["combined"].get("fit", {})
        lines.append(
            f"combined score over {len(m['layers'])} layers: {fit.get('chosen')} weights "
            f"(cross-validated train AUROC {fit.get('cv_auroc')})"
        )
    if result.corpus_problems:
        lines.append(f"skipped {len(result.corpus_problems)} unusable training rows, e.g.:")
        lines.extend(f"  {line}" for line in result.corpus_problems[:5])
    lines.append(f"wrote {result.vectors_path} and {result.manifest_path}")
    return lines
