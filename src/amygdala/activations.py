"""Pooled activations of texts: captured once, kept in the activation store, read back.

The seam between the model and everything that reads activations. Training
(`amygdala.train`) and the quality report (`amygdala.report`) both capture through
here, with the same `CaptureSettings`, so a report after `amygdala train` on the same
`--cache-dir` finds every activation in the store and never runs the model.

* `CaptureSettings` — how texts become pooled activations, and the model that computes
  them (a frozen dataclass, validated when built);
* `open_store(settings, fingerprint)` — the run's `ActivationStore` (the cache, or a
  temporary one with `no_cache`); what it had to skip or clean up is logged as a
  warning when it opens (the command line shows it then) and kept in `store.problems`,
  which the stages return (`TrainResult.store_problems`, `ReportResult.store_problems`);
* `capture_missing(...)` — run the model over the texts the store lacks;
* `Activations` — the stored rows of a list of texts, read back as often as needed.

Example:
    settings = CaptureSettings(model="minilm", pooling="mean", pool_start=0,
                               max_length=512, batch_size=16, dtype="auto")
    lm = settings.load()
    with open_store(settings, settings.fingerprint(lm, [1, 3])) as store:
        acts = Activations(store, [text_hash(t) for t in texts])
        capture_missing(lm, texts, acts, [1, 3], settings, range(len(texts)))
        for positions, batch in acts.iter(range(len(texts))): ...  # [B, 2, H] fp32
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from amygdala._defaults import PADDING_SIDES, DType, PaddingSide
from amygdala.capture import POOLINGS, CaptureStats, Pooling, capture_texts
from amygdala.errors import ConfigError
from amygdala.models import LoadedModel, load_model, resolve_model_name
from amygdala.store import ActivationStore, default_cache_dir, model_identity

TOKEN_SAMPLE = 4  # single tokens kept per text for per-token calibration

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class CaptureSettings:
    """How texts become pooled activations, and which model computes them.

    `TrainConfig.capture_settings()` builds one from the trainer's flags; the report
    builds one from an artifact's manifest. Every setting that changes an activation is
    part of the store's key (`fingerprint`); the rest (batch size, padding side, device,
    progress) change how fast, never what.
    """

    model: str  # Hub id, local directory, or `minilm` (the packaged MiniLM)
    pooling: Pooling  # mean over real tokens, or the last real token
    pool_start: int  # mean pooling skips this many leading real tokens
    max_length: int  # tokens per text; longer texts are truncated and counted
    batch_size: int  # texts per forward pass
    dtype: DType  # model compute dtype flag: auto, bf16, fp16, fp32
    revision: str | None = None  # model revision (branch, tag or commit)
    blocks_path: str | None = None  # dotted path of the block list, for unknown models
    trust_remote_code: bool = False
    device: str | None = None  # cpu / cuda / mps; None: the best available
    device_map: str | None = None  # e.g. `auto`: spread a large model over GPUs
    padding_side: PaddingSide | None = None  # None: the tokenizer's
    progress: bool = True  # a progress bar while capturing
    cache_dir: Path | None = None  # the activation store; None: `default_cache_dir()`
    no_cache: bool = False  # a temporary store, removed afterwards

    def __post_init__(self) -> None:
        if self.cache_dir is not None and not isinstance(self.cache_dir, Path):
            object.__setattr__(self, "cache_dir", Path(self.cache_dir))
        if self.pooling not in POOLINGS:
            raise ConfigError(f"--pooling {self.pooling!r}: choose one of {', '.join(POOLINGS)}")
        for name in ("batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
        if self.pool_start < 0:
            raise ConfigError("--pool-start must be 0 or more")
        if self.padding_side not in (None, *PADDING_SIDES):
            raise ConfigError("--padding-side must be left or right")

    def load(self, device: str | None = None) -> LoadedModel:
        """The model, loaded with these settings (on `device`, by default `self.device`)."""
        return load_model(
            self.model,
            device=device or self.device,
            dtype=self.dtype,
            revision=self.revision,
            blocks_path=self.blocks_path,
            trust_remote_code=self.trust_remote_code,
            device_map=self.device_map,
        )

    def fingerprint(self, lm: LoadedModel, layers: list[int]) -> dict[str, Any]:
        """Everything that changes a pooled activation (the activation store's key)."""
        return {
            "model": self.model,
            "revision": self.revision,
            "model_identity": model_identity(resolve_model_name(self.model)),
            "blocks_path": lm.blocks_path,
            "layers": layers,
            "pooling": self.pooling,
            "pool_start": self.pool_start,
            "max_length": self.max_length,
            "dtype": str(lm.dtype).removeprefix("torch."),
            "token_sample": TOKEN_SAMPLE,
        }


@contextlib.contextmanager
def open_store(settings: CaptureSettings, fingerprint: dict[str, Any]) -> Iterator[ActivationStore]:
    """The run's activation store: the cache, or a temporary one with `no_cache`.

    Unreadable shards it skipped and leftovers of killed runs it removed are in the
    store's `problems`, each also logged as a warning (`warning: activation store: …`).
    """
    if not settings.no_cache:
        store = ActivationStore(settings.cache_dir or default_cache_dir(), fingerprint)
        for line in store.problems:
            log.warning("warning: activation store: %s", line)
        yield store
        return
    with tempfile.TemporaryDirectory(prefix="amygdala-acts-") as tmp:
        yield ActivationStore(Path(tmp), fingerprint)


@dataclass
class Activations:
    """Pooled activations of a set of texts, read back from the store as often as needed.

    Fitting, calibration and evaluation each make their own pass through `iter`;
    only one forward pass per text ever ran. Rows whose activations are not finite
    (fp16 overflow) are dropped on the way out and remembered in `nonfinite`.
    """

    store: ActivationStore
    hashes: list[str]  # one per text, in the caller's text order
    nonfinite: set[int] = field(default_factory=set)

    def iter(
        self, rows: Sequence[int], chunk: int = 256
    ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """Yield `(text positions, acts [B, L, H] fp32)` for `rows`, in their order."""
        rows = list(rows)
        for positions, acts in self.store.iter_rows([self.hashes[r] for r in rows], chunk):
            index = np.asarray([rows[p] for p in positions])
            ok = torch.isfinite(acts).flatten(1).all(dim=1)
            if not bool(ok.all()):
                self.nonfinite.update(index[~ok.numpy()].tolist())
                index, acts = index[ok.numpy()], acts[ok]
            if len(index):
                yield index, acts

    def iter_tokens(
        self, rows: Sequence[int], chunk: int = 256
    ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """Yield `(text positions, tokens [B, L, k, H] fp32)`: each text's sampled single
        tokens (NaN where a text had fewer than k, or where the model overflowed)."""
        rows = list(rows)
        hashes = [self.hashes[r] for r in rows]
        for positions, tokens in self.store.iter_rows(hashes, chunk, key="tokens"):
            yield np.asarray([rows[p] for p in positions]), tokens


def capture_missing(
    lm: LoadedModel,
    texts: Sequence[str],
    acts: Activations,
    layers: list[int],
    settings: CaptureSettings,
    rows: Sequence[int],
) -> CaptureStats:
    """Run the model over the texts among `rows` that the store lacks, one shard per batch."""
    missing = [rows[i] for i in acts.store.missing([acts.hashes[r] for r in rows])]
    stats = CaptureStats()
    for batch in capture_texts(
        lm,
        [texts[r] for r in missing],
        layers,
        pooling=settings.pooling,
        batch_size=settings.batch_size,
        max_length=settings.max_length,
        pool_start=settings.pool_start,
        padding_side=settings.padding_side,
        progress=settings.progress,
        stats=stats,
        sample_tokens=TOKEN_SAMPLE,
    ):
        acts.store.write(
            [acts.hashes[missing[j]] for j in batch.index.tolist()], batch.acts, batch.tokens
        )
    return stats
