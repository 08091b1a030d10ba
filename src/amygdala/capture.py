"""Pool residual-stream activations inside forward hooks, one forward pass per text.

Three layers of API:

* `BlockHooks` / `hooked(blocks, layers, on_output)` — the one hook mechanism of the
  package: forward hooks on `blocks[layers]` that hand each block's residual stream to a
  callback, and can end the forward pass after the deepest hooked block with the private
  `_StopForward`, which only this mechanism catches. `capture` below pools in the
  callback; `amygdala.readout.ResidualRecorder` (the readout and the server) keeps the
  outputs. `remove()` takes exactly these hooks off and may be called any number of times.
* `capture(blocks, layers, keep, pooling)` — a context manager around ONE forward
  pass: hooks on the target blocks pool the block output over the `keep` mask as it
  is produced (no `[batch, seq, hidden]` tensor is kept for any layer), and the hook
  on the deepest target block stops the forward pass with a private exception, so
  later blocks, the final norm and the LM head never run. Hooks are removed in
  `finally`, also when the forward raises.
* `capture_texts(lm, texts, …)` — the engine: tokenizes, sorts by length, batches,
  pads, builds the keep mask (no padding, no special tokens), runs `capture` per
  batch and yields `PooledBatch`es of fp32 activations with a progress bar.
"""

from __future__ import annotations

import contextlib
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from amygdala._defaults import (
    BATCH_SIZE,
    MAX_LENGTH,
    POOL_START,
    POOLING,
    POOLINGS,
    PaddingSide,
    Pooling,
)
from amygdala._text import clean_text
from amygdala.errors import ConfigError

if TYPE_CHECKING:
    from amygdala.models import LoadedModel

T = TypeVar("T")


class _StopForward(Exception):
    """Raised by the deepest hooked block to end a forward pass early; caught only by
    `hooked` and `BlockHooks.run`, so every other exception propagates unchanged."""


def block_output(output: object) -> Tensor:
    """The residual stream from a block's return value (a tensor, or a tuple led by one)."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise TypeError(
        f"block returned {type(output).__name__}; expected a tensor or a tuple "
        "whose first element is the hidden states"
    )


def pool(hidden: Tensor, keep: Tensor, how: Pooling) -> Tensor:
    """Pool `[batch, seq, hidden]` over the positions where `keep` is true, in fp32.

    `mean` averages the kept positions; `last` takes the last kept position. Masked
    positions are zeroed with `where` (not multiplied), so NaN from a padded position
    cannot leak into the result. A row with nothing to pool (a text made only of
    special tokens) comes back as NaN, so it is skipped and counted downstream instead
    of silently joining the means as zeros.
    """
    any_kept = keep.any(dim=1, keepdim=True)
    if how == "mean":
        zero = torch.zeros((), dtype=hidden.dtype, device=hidden.device)
        total = torch.where(keep.unsqueeze(-1), hidden, zero).sum(dim=1, dtype=torch.float32)
        count = keep.sum(dim=1, keepdim=True).clamp_min(1).to(torch.float32)
        pooled = total / count
    elif how == "last":
        positions = torch.arange(keep.shape[1], device=keep.device)
        last = torch.where(keep, positions, -1).amax(dim=1).clamp_min(0)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        pooled = hidden[rows, last].to(torch.float32)
    else:
        raise ConfigError(f"pooling {how!r}: choose one of {', '.join(POOLINGS)}")
    return torch.where(any_kept, pooled, torch.full_like(pooled, float("nan")))


def token_sample(keep: Tensor, k: int) -> Tensor:
    """`[batch, k]` positions of up to `k` kept tokens per row, evenly spread; -1 pads.

    Position j of a row with n kept tokens is its `floor((j + 0.5) · n / k)`-th kept
    token: a deterministic sample of single tokens, from which per-token statistics
    (the calibration runtimes use for per-token z-scores) are computed without keeping
    every token.
    """
    n = keep.sum(dim=1, keepdim=True)  # [B, 1]
    j = torch.arange(k, device=keep.device)[None, :]  # [1, k]
    rank = torch.where(n >= k, ((2 * j + 1) * n) // (2 * k), j)  # which kept token
    order = torch.cumsum(keep.long(), dim=1) - 1  # rank of each kept position
    order = torch.where(keep, order, -1)
    hit = order.unsqueeze(1) == rank.unsqueeze(2)  # [B, k, T]
    pos = hit.long().argmax(dim=2)
    return torch.where(hit.any(dim=2), pos, -1)


def gather_tokens(hidden: Tensor, positions: Tensor) -> Tensor:
    """`[batch, k, hidden]` fp32 residuals at `positions` (NaN where a position is -1)."""
    rows = torch.arange(hidden.shape[0], device=hidden.device)[:, None]
    picked = hidden[rows, positions.clamp_min(0)].to(torch.float32)
    return torch.where(
        (positions >= 0).unsqueeze(-1), picked, torch.full_like(picked, float("nan"))
    )


@dataclass
class Captured:
    """What one `capture` block produced: `pooled[layer]` is `[batch, hidden]` fp32, and
    `tokens[layer]` `[batch, k, hidden]` when a token sample was asked for."""

    pooled: dict[int, Tensor] = field(default_factory=dict)
    tokens: dict[int, Tensor] = field(default_factory=dict)

    def stacked_tokens(self, layers: Sequence[int]) -> Tensor:
        """`[batch, n_layers, k, hidden]` in the order of `layers`."""
        device = self.tokens[layers[0]].device
        return torch.stack([self.tokens[layer].to(device) for layer in layers], dim=1)

    def stacked(self, layers: Sequence[int]) -> Tensor:
        """`[batch, n_layers, hidden]` in the order of `layers`."""
        missing = [layer for layer in layers if layer not in self.pooled]
        if missing:
            raise RuntimeError(
                f"layers {missing} produced no activations: the forward pass never reached them"
            )
        device = self.pooled[layers[0]].device  # with device_map, layers live on several GPUs
        return torch.stack([self.pooled[layer].to(device) for layer in layers], dim=1)


OnOutput = Callable[[int, Tensor], None]  # (absolute layer index, block output [B, T, H])


class BlockHooks:
    """Forward hooks on `blocks[layers]` that call `on_output(layer, hidden)` with each
    block's residual stream (`block_output`) as the forward pass produces it.

    While `stop_after_deepest` is set, the hook of the deepest block raises
    `_StopForward` after its callback, so later blocks, the final norm and the LM head
    never run; run the forward pass through `run` (or inside `hooked`) to end it there.
    While `enabled` is false the hooks return at once (a forward pass that wants nothing
    recorded pays almost nothing). `remove()` takes exactly these hooks off, idempotent.

    Example:
        hooks = BlockHooks(lm.blocks, (1, 3), lambda layer, h: seen.update({layer: h}))
        try:
            hooks.run(lambda: lm.model(input_ids=ids))
        finally:
            hooks.remove()
    """

    def __init__(
        self,
        blocks: nn.ModuleList,
        layers: Sequence[int],
        on_output: OnOutput,
        *,
        stop_after_deepest: bool = False,
    ) -> None:
        if not layers:
            raise ConfigError("no target layers given")
        self.layers = tuple(layers)
        self.deepest = max(self.layers)
        self.on_output = on_output
        self.stop_after_deepest = stop_after_deepest
        self.enabled = True
        self._handles: list[RemovableHandle] = []
        try:
            for layer in sorted(set(self.layers)):
                self._handles.append(blocks[layer].register_forward_hook(self._hook(layer)))
        except BaseException:
            self.remove()
            raise

    def _hook(self, layer: int) -> Callable[[nn.Module, object, object], None]:
        def hook(_module: nn.Module, _args: object, output: object) -> None:
            if not self.enabled:
                return
            self.on_output(layer, block_output(output))
            if self.stop_after_deepest and layer == self.deepest:
                raise _StopForward

        return hook

    def run(self, forward: Callable[[], T]) -> T | None:
        """`forward()`'s result, or None when the deepest hook ended it early."""
        try:
            return forward()
        except _StopForward:
            return None

    def remove(self) -> None:
        """Take the hooks off (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


@contextlib.contextmanager
def hooked(
    blocks: nn.ModuleList,
    layers: Sequence[int],
    on_output: OnOutput,
    *,
    stop_after_deepest: bool = True,
) -> Iterator[BlockHooks]:
    """`BlockHooks` for the body of a `with`: the early stop ends the body quietly, and
    the hooks come off in `finally`, also when the body raises.

    Example:
        with hooked(lm.blocks, (1, 3), lambda layer, h: outs.append(h)):
            lm.model(input_ids=ids)  # stops after block 3
    """
    hooks = BlockHooks(blocks, layers, on_output, stop_after_deepest=stop_after_deepest)
    try:
        with contextlib.suppress(_StopForward):
            yield hooks
    finally:
        hooks.remove()


@contextlib.contextmanager
def capture(
    blocks: nn.ModuleList,
    layers: Sequence[int],
    keep: Tensor,
    pooling: Pooling = POOLING,
    *,
    stop_early: bool = True,
    sample: Tensor | None = None,
) -> Iterator[Captured]:
    """Hook `blocks[layers]`, pool their outputs over `keep`, stop after the deepest.

    `sample` (`[batch, k]` positions, see `token_sample`) also keeps those single
    tokens' residuals in `Captured.tokens`.

    Example:
        with capture(lm.blocks, (1, 3), keep, "mean") as out:
            lm.model(input_ids=ids, attention_mask=mask)
        acts = out.stacked((1, 3))  # [batch, 2, hidden], fp32
    """
    result = Captured()

    def on_output(layer: int, hidden: Tensor) -> None:
        result.pooled[layer] = pool(hidden, keep.to(hidden.device), pooling)
        if sample is not None:
            result.tokens[layer] = gather_tokens(hidden, sample.to(hidden.device))

    with hooked(blocks, layers, on_output, stop_after_deepest=stop_early):
        yield result


@dataclass(frozen=True)
class PooledBatch:
    """Pooled activations for a batch of texts: `acts[i]` belongs to `texts[index[i]]`."""

    index: Tensor  # [batch] int64, positions in the input sequence
    acts: Tensor  # [batch, n_layers, hidden] fp32, on the model's device
    n_tokens: int  # real (unpadded) tokens in the batch
    tokens: Tensor | None = None  # [batch, n_layers, k, hidden] sampled single tokens


@dataclass(frozen=True)
class Tokenized:
    """Token ids and the pooling mask of one text (after truncation).

    Compact on purpose: `array('i')` ids and one byte per flag cost ~5 bytes a token,
    where Python lists of ints and bools cost ~44 (50k texts: +8 MB instead of +490).
    Both behave as sequences (`len`, indexing, iteration).
    """

    ids: array[int]
    keep: bytes  # 1 where a real, non-special token may be pooled
    truncated: bool


TOKENIZE_CHUNK = 1024  # texts per tokenizer call: the fast tokenizer's per-token
# `Encoding` objects of one call exist at once, so one call over a whole corpus peaks high


def tokenize(
    tokenizer: object, texts: Sequence[str], *, max_length: int, pool_start: int = POOL_START
) -> list[Tokenized]:
    """Tokenize with special tokens, truncate to `max_length`, mark poolable positions.

    Special tokens (BOS, [CLS], [SEP] …, also when typed into the text) are never
    pooled; the first `pool_start` real tokens are skipped too (mean pooling "from
    token offset k"). Texts go through the tokenizer `TOKENIZE_CHUNK` at a time, lone
    surrogates replaced by U+FFFD first (`amygdala._text.clean_text`): this is where
    every text enters a tokenizer, for training and readout alike.
    """
    if max_length < 1:
        raise ConfigError(f"--max-length must be at least 1, got {max_length}")
    # Special tokens typed into the text itself ("<s>", "<|im_end|>") are not marked by
    # special_tokens_mask; they are never pooled either.
    special_ids = frozenset(getattr(tokenizer, "all_special_ids", ()))
    out: list[Tokenized] = []
    for start in range(0, len(texts), TOKENIZE_CHUNK):
        out.extend(
            _tokenize_chunk(
                tokenizer,
                texts[start : start + TOKENIZE_CHUNK],
                max_length,
                pool_start,
                special_ids,
            )
        )
    return out


def _tokenize_chunk(
    tokenizer: object,
    texts: Sequence[str],
    max_length: int,
    pool_start: int,
    special_ids: frozenset[int],
) -> list[Tokenized]:
    char_cap = max(max_length * 64, 4096)  # no need to tokenize a 5 MB node in full
    # lone surrogates (a \ud800 escape, undecodable argv/stdin bytes) crash the tokenizer
    clipped = [clean_text(t if len(t) <= char_cap else t[:char_cap]) for t in texts]
    enc = tokenizer(
        clipped,
        add_special_tokens=True,
        truncation=True,  # type: ignore[operator]
        max_length=max_length,
        return_special_tokens_mask=True,
        return_attention_mask=False,
    )
    full = [i for i, ids in enumerate(enc["input_ids"]) if len(ids) >= max_length]
    longer: set[int] = set()
    if full:
        probe = tokenizer(
            [clipped[i] for i in full],
            add_special_tokens=True,  # type: ignore[operator]
            truncation=True,
            max_length=max_length + 1,
            return_attention_mask=False,
        )
        longer = {i for i, ids in zip(full, probe["input_ids"]) if len(ids) > max_length}
        longer |= {i for i in full if len(texts[i]) > char_cap}
    out = []
    for i, (ids, special) in enumerate(zip(enc["input_ids"], enc["special_tokens_mask"])):
        keep = bytearray(not s and t not in special_ids for s, t in zip(special, ids))
        if pool_start:
            seen = 0
            for j, k in enumerate(keep):
                if k:
                    keep[j] = seen >= pool_start
                    seen += 1
        out.append(Tokenized(ids=array("i", ids), keep=bytes(keep), truncated=i in longer))
    return out


def token_limit(lm: LoadedModel, max_length: int) -> int:
    """`max_length`, or the model's position limit when that is smaller (a learned
    position table such as GPT-2's or BERT's indexes out of bounds past it)."""
    limit = lm.max_positions
    return max_length if limit is None or max_length <= limit else limit


def truncation_note(lm: LoadedModel, max_length: int, flag: str = "--max-length") -> str:
    """What cut a text: `cut to --max-length 64 tokens`, or the model's limit when
    `max_length` asks for more positions than the model has."""
    limit = token_limit(lm, max_length)
    if limit < max_length:
        return (
            f"cut to {limit} tokens, the most {lm.model_id!r} supports "
            f"(max positions {lm.max_positions}; {flag} {max_length} asks for more)"
        )
    return f"cut to {flag} {max_length} tokens"


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first: OOM shows early)."""
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pad_batch(
    items: Sequence[Tokenized], pad_id: int, side: PaddingSide
) -> tuple[Tensor, Tensor, Tensor]:
    """`(input_ids, attention_mask, keep)` as `[batch, longest]` tensors."""
    width = max(len(t.ids) for t in items)
    ids = np.full((len(items), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(items), width), dtype=np.int64)
    keep = np.zeros((len(items), width), dtype=np.bool_)
    for row, t in enumerate(items):
        n = len(t.ids)
        if not n:
            continue
        cols = slice(width - n, width) if side == "left" else slice(0, n)
        ids[row, cols] = np.frombuffer(t.ids, dtype=np.intc)
        mask[row, cols] = 1
        keep[row, cols] = np.frombuffer(t.keep, dtype=np.uint8)
    return torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(keep)


def forward_kwargs(lm: LoadedModel, ids: Tensor, mask: Tensor) -> dict[str, object]:
    """Inputs for `lm.model`: position ids follow the mask, so left padding is harmless."""
    kwargs: dict[str, object] = {"input_ids": ids, "attention_mask": mask}
    if "position_ids" in lm.forward_params:
        kwargs["position_ids"] = (mask.cumsum(dim=1) - 1).clamp_min(0)
    if "use_cache" in lm.forward_params:
        kwargs["use_cache"] = False
    return kwargs


def capture_texts(
    lm: LoadedModel,
    texts: Sequence[str],
    layers: Sequence[int],
    *,
    pooling: Pooling = POOLING,
    batch_size: int = BATCH_SIZE,
    max_length: int = MAX_LENGTH,
    pool_start: int = POOL_START,
    padding_side: PaddingSide | None = None,
    progress: bool = True,
    stats: CaptureStats | None = None,
    sample_tokens: int = 0,
) -> Iterator[PooledBatch]:
    """Run `lm` once over each text and yield pooled activations, batch by batch.

    Texts are grouped by token length to minimize padding; the order of yielded rows
    follows that grouping, and `PooledBatch.index` maps each row back to `texts`.
    `stats` (when given) is filled in as batches complete. `sample_tokens` > 0 also
    yields that many single-token residuals per text (`token_sample`).
    """
    from tqdm.auto import tqdm

    stats = stats if stats is not None else CaptureStats()
    if not texts:
        return
    stats.token_limit = token_limit(lm, max_length)
    toks = tokenize(lm.tokenizer, texts, max_length=stats.token_limit, pool_start=pool_start)
    stats.truncated += sum(t.truncated for t in toks)
    side: PaddingSide = padding_side or (
        "left" if getattr(lm.tokenizer, "padding_side", "right") == "left" else "right"
    )
    pad_id = int(lm.tokenizer.pad_token_id or 0)
    batches = length_batches([len(t.ids) for t in toks], batch_size)
    bar = tqdm(
        total=len(texts),
        unit="text",
        desc="capture",
        disable=not progress,
        dynamic_ncols=True,
        leave=False,
    )
    start = time.perf_counter()
    try:
        for batch in batches:
            items = [toks[i] for i in batch]
            ids, mask, keep = pad_batch(items, pad_id, side)
            ids, mask, keep = ids.to(lm.device), mask.to(lm.device), keep.to(lm.device)
            sample = token_sample(keep, sample_tokens) if sample_tokens else None
            with (
                torch.inference_mode(),
                capture(lm.blocks, layers, keep, pooling, sample=sample) as out,
            ):
                lm.model(**forward_kwargs(lm, ids, mask))
            n_tokens = int(mask.sum())
            stats.forward_passes += 1
            stats.texts += len(batch)
            stats.tokens += n_tokens
            bar.update(len(batch))
            elapsed = max(time.perf_counter() - start, 1e-9)
            bar.set_postfix_str(
                f"{stats.texts / elapsed:.1f} texts/s, {stats.tokens / elapsed:.0f} tok/s",
                refresh=False,
            )
            yield PooledBatch(
                index=torch.tensor(batch, dtype=torch.long),
                acts=out.stacked(layers),
                n_tokens=n_tokens,
                tokens=out.stacked_tokens(layers) if sample_tokens else None,
            )
    finally:
        bar.close()
        stats.seconds += time.perf_counter() - start


@dataclass
class CaptureStats:
    """Counters of one capture run, for summaries and benchmarks."""

    texts: int = 0
    tokens: int = 0
    forward_passes: int = 0  # model calls (one per batch)
    truncated: int = 0  # texts cut to --max-length tokens (or the model's limit)
    seconds: float = 0.0
    token_limit: int = 0  # tokens a text could keep: --max-length, or the model's limit


def explain_nonfinite(
    lm: LoadedModel, texts: Sequence[str], *, max_length: int, pool_start: int, dtype_flag: str
) -> str:
    """Why every one of `texts` gave NaN/Inf pooled activations, as an error message.

    Two causes look alike downstream: a text with nothing to pool (only special tokens,
    or fewer real tokens than `pool_start`) pools to NaN by design, and fp16 overflows.
    Re-tokenizing tells them apart, so an fp32 run is never told about fp16.
    `dtype_flag` is the --dtype the user passed (`auto`, `fp16` …).
    """
    limit = token_limit(lm, max_length)
    empty = sum(
        not any(t.keep)
        for t in tokenize(lm.tokenizer, texts, max_length=limit, pool_start=pool_start)
    )
    why_empty = "they hold only special tokens"
    if empty and pool_start:
        longest = max(sum(t.keep) for t in tokenize(lm.tokenizer, texts, max_length=limit))
        if longest:
            why_empty = (
                f"--pool-start {pool_start} skips all of their real tokens (the "
                f"longest text has {longest}); lower --pool-start"
            )
    overflow = (
        "fp16 overflows on many models: use --dtype bf16 or fp32"
        if lm.dtype == torch.float16
        else f"the model computes in {str(lm.dtype).removeprefix('torch.')} and still "
        "gives NaN/Inf: check its weight files"
    )
    if empty == len(texts):
        return f"every training text has nothing to pool: {why_empty}"
    if not empty:
        return f"every training text gave NaN/Inf activations with --dtype {dtype_flag}; {overflow}"
    return (
        f"no training text is usable: {empty} have nothing to pool ({why_empty}) and "
        f"{len(texts) - empty} gave NaN/Inf activations with --dtype {dtype_flag} "
        f"({overflow})"
    )
