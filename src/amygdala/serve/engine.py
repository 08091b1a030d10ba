"""The model worker: KV-cache decoding with per-token readouts, one sequence at a time.

One thread owns the model. Requests queue up; up to `max_concurrency` sequences are
active and the worker steps them round-robin, one forward pass each, so concurrent
clients advance together. Every forward pass records its own block outputs inside its
own hook context (`ResidualRecorder.record`), so readouts of different sequences can
never mix. A cancelled sequence (client gone) is dropped before its next step and its
KV cache freed; a waiting request then takes the slot.

**Which residual a token's readout is.** The readout of a generated token is the
residual stream at the *sampler's query position*: the position whose logits sampled
the token (the last prompt position for the first token; position
`len(prompt_ids) - 1 + k` for token k). It is each hooked block's output in the very
forward pass that produced those logits, so a pass records its last position, samples,
and emits the token with its readout at once: no delay and no extra pass at the end (a
sequence of m tokens takes m passes, the prefill and m - 1 decode steps). Token k's
readout equals `amygdala.readout.readout_ids(prompt_ids + generated[:k]).raw[-1]`, the
offline readout of the text before it; this is the same contract as the vLLM plugin's.
Prompt readouts (on request) come from the prefill pass, position by position, so the
last one is also the first token's readout. With a combined score in the manifest, every
event also carries `combined` (`Σ_l weights[l] · raw[l]`, `[n_concepts]` per token), one
small multiply-add on the host copy.

Example:
    engine = Engine(lm, artifact)
    engine.start()
    for event in engine.generate(GenerationRequest(prompt_ids=(1, 5, 9))):
        print(event.token_id, event.raw)  # raw: [n_layers, n_concepts] float32
    engine.close()
"""

from __future__ import annotations

import contextlib
import logging
import queue
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor

from amygdala._defaults import MAX_CONCURRENCY
from amygdala.errors import ConfigError
from amygdala.readout import AttachedHooks, Projector, ResidualRecorder, check_compatible

if TYPE_CHECKING:
    from amygdala.artifact import Artifact
    from amygdala.models import LoadedModel

log = logging.getLogger("amygdala.serve")

FinishReason = Literal["stop", "length"]
SEED_RANGE = (-(1 << 63), (1 << 63) - 1)  # a 64-bit signed integer, as vLLM takes
_PREFIX_WINDOW = 6  # prompt tokens kept for detokenizing the first generated tokens


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens; validated when built."""

    max_tokens: int = 16
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()  # generation ends before the first occurrence of any
    seed: int | None = None  # by default a fresh random seed per sequence
    ignore_eos: bool = False  # keep going past the end-of-sequence token

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if not 0 <= self.temperature <= 100:
            raise ConfigError(f"temperature must be in 0..100, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if any(not s for s in self.stop):
            raise ConfigError("stop strings must be non-empty")
        low, high = SEED_RANGE
        if self.seed is not None and not low <= self.seed <= high:
            raise ConfigError(f"seed must be in {low}..{high} (64 bits), got {self.seed}")


@dataclass(frozen=True)
class GenerationRequest:
    """One sequence to generate; a request with `n` choices submits `n` of these."""

    prompt_ids: tuple[int, ...]
    params: SamplingParams = SamplingParams()
    readout: bool = True  # per-token readouts (only when the engine has vectors)
    readout_prompt: bool = False  # also the prompt tokens' readouts
    index: int = 0  # the choice index this sequence answers


@dataclass(frozen=True)
class PromptEvent:
    """Readouts of the prompt tokens (from the prefill pass), sent before any token."""

    index: int
    token_ids: tuple[int, ...]
    raw: np.ndarray  # [n_prompt, n_layers, n_concepts] float32
    z: np.ndarray | None
    combined: np.ndarray | None = None  # [n_prompt, n_concepts] float32


@dataclass(frozen=True)
class TokenEvent:
    """One generated token, its text delta, and the readout at the position that sampled it."""

    index: int
    token_id: int
    text: str  # new text (stop strings cut, incomplete characters held back)
    raw: np.ndarray | None  # [n_layers, n_concepts] float32
    z: np.ndarray | None
    finish_reason: FinishReason | None = None  # set on the sequence's last token
    combined: np.ndarray | None = None  # [n_concepts] float32: Σ_l weights[l] · raw[l]


@dataclass(frozen=True)
class ErrorEvent:
    """The sequence failed; nothing more follows for it."""

    index: int
    message: str


Event = PromptEvent | TokenEvent | ErrorEvent


def is_final(event: Event) -> bool:
    """Whether `event` is the last one of its sequence."""
    return isinstance(event, ErrorEvent) or (
        isinstance(event, TokenEvent) and event.finish_reason is not None
    )


def sample(logits: Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """Greedy at temperature 0; else nucleus sampling from softmax(logits / T)."""
    if params.temperature == 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p < 1:
        sorted_p, order = torch.sort(probs, descending=True)
        outside = torch.cumsum(sorted_p, dim=-1) - sorted_p >= params.top_p
        sorted_p = sorted_p.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return int(torch.multinomial(probs, 1, generator=generator))


class Detokenizer:
    """Incremental text of generated ids, with stop strings.

    Decodes a short window of ids so a token's leading space survives, holds back a
    trailing incomplete character (`\\ufffd`) and any tail that could still become a
    stop string, and cuts the text before the first stop string.
    """

    def __init__(self, tokenizer: Any, prompt_ids: Sequence[int], stop: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.ids = list(prompt_ids[-_PREFIX_WINDOW:])
        self.prefix, self.read = 0, len(self.ids)
        self.stop = tuple(stop)
        self.text = ""  # decoded generated text so far
        self.emitted = 0  # characters of `text` handed out

    def _decode(self, ids: list[int]) -> str:
        return str(
            self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        )

    def add(self, token_id: int) -> tuple[str, bool]:
        """Feed one id; returns `(text to emit now, a stop string was reached)`."""
        self.ids.append(token_id)
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.text += after[len(before) :]
            self.prefix, self.read = self.read, len(self.ids)
        cut = min((i for i in (self.text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            delta = self.text[self.emitted : cut]
            self.emitted = cut
            return delta, True
        safe = len(self.text) - self._held_back()
        delta = self.text[self.emitted : safe] if safe > self.emitted else ""
        self.emitted = max(self.emitted, safe)
        return delta, False

    def _held_back(self) -> int:
        hold = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(self.text)), hold, -1):
                if self.text.endswith(s[:k]):
                    hold = k
                    break
        return hold

    def flush(self) -> str:
        """Everything not yet emitted (the sequence ended for another reason)."""
        rest = self._decode(self.ids[self.prefix :])[
            len(self._decode(self.ids[self.prefix : self.read])) :
        ]
        self.text += rest
        delta, self.emitted = self.text[self.emitted :], len(self.text)
        return delta


@dataclass
class _Sequence:
    engine: Engine
    request: GenerationRequest
    sink: Callable[[Event], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    cache: Any = None
    started: bool = False
    generated: int = 0
    last_token: int = -1  # the latest sampled token: the next pass's input
    detok: Detokenizer | None = None
    generator: torch.Generator | None = None

    def step(self) -> bool:
        """Run one forward pass, sample from its last position and emit that token with
        the readout at the same position; True when the sequence is done."""
        engine, req = self.engine, self.request
        read = req.readout and engine.projector is not None
        if not self.started:
            self.started = True
            self.detok = Detokenizer(engine.tokenizer, req.prompt_ids, req.params.stop)
            seed = req.params.seed if req.params.seed is not None else secrets.randbits(62)
            self.generator = torch.Generator(device=engine.device).manual_seed(seed + req.index)
            prompt_too = read and req.readout_prompt
            logits, raw = engine.forward(
                self, list(req.prompt_ids), record=read, all_positions=prompt_too
            )
            if prompt_too:
                assert raw is not None
                self.sink(engine.prompt_event(req, raw))
        else:
            logits, raw = engine.forward(self, [self.last_token], record=read)
        return self._sample(logits, raw)

    def _sample(self, logits: Tensor, raw: Tensor | None) -> bool:
        """Pick the next token and emit it with `raw` (the readout of the pass whose
        logits these are); True when it ends the sequence."""
        assert self.detok is not None and self.generator is not None
        req, engine = self.request, self.engine
        token = sample(logits, req.params, self.generator)
        self.generated += 1
        self.last_token = token
        text, stopped = self.detok.add(token)
        finish: FinishReason | None = None
        if stopped or (token in engine.eos_ids and not req.params.ignore_eos):
            finish = "stop"
        elif (
            self.generated >= req.params.max_tokens
            or len(req.prompt_ids) + self.generated >= engine.max_positions
        ):
            finish = "length"
        if finish is not None and not stopped:
            text += self.detok.flush()
        self.sink(engine.token_event(req.index, token, text, finish, raw))
        return finish is not None


@dataclass
class EngineStats:
    """Counters only the worker thread updates (read by /health)."""

    active: int = 0
    completed: int = 0
    cancelled: int = 0
    failed: int = 0
    tokens: int = 0


class Handle:
    """Cancel a submitted sequence; idempotent, safe from any thread."""

    def __init__(self, seq: _Sequence) -> None:
        self._seq = seq

    def cancel(self) -> None:
        self._seq.cancelled.set()


class Engine:
    """Owns the model and decodes submitted sequences on one worker thread."""

    def __init__(
        self,
        lm: LoadedModel,
        artifact: Artifact | None = None,
        *,
        max_concurrency: int = MAX_CONCURRENCY,
    ) -> None:
        if lm.kind != "decoder":
            raise ConfigError(
                f"{lm.model_id!r} is an encoder; serving needs a decoder LM "
                "(a model loaded with AutoModelForCausalLM)"
            )
        if max_concurrency < 1:
            raise ConfigError("--max-concurrency must be at least 1")
        self.lm = lm
        self.tokenizer = lm.tokenizer
        self.device = lm.device
        self.max_concurrency = max_concurrency
        self.projector: Projector | None = None
        self.recorder: ResidualRecorder | None = None
        self._combine: np.ndarray | None = None  # [L, C] float32 combined-score weights
        if artifact is not None:
            check_compatible(lm, artifact)
            self.projector = Projector(artifact, lm.device)
            self.recorder = ResidualRecorder(lm.blocks, self.projector.layers)
            if self.projector.combination is not None:
                self._combine = self.projector.combination.weights.numpy()
        self.eos_ids = _eos_ids(lm)
        self.max_positions = lm.max_positions or 1 << 30  # a very large number: no limit known
        self._logits_to_keep = "logits_to_keep" in lm.forward_params
        # transformers 5.24 renamed the KV cache argument and output field
        # `past_key_values` → `cache` (the old name warns until 5.40); use what forward takes.
        self._cache_name = "cache" if "cache" in lm.forward_params else "past_key_values"
        self.stats = EngineStats()
        self._inbox: queue.Queue[_Sequence | None] = queue.Queue()
        self._waiting: deque[_Sequence] = deque()
        self._active: list[_Sequence] = []
        self._thread: threading.Thread | None = None
        self._hooks: AttachedHooks | None = None  # on the blocks while a decode loop runs

    # ---- called from other threads -------------------------------------------------

    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="amygdala-engine", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the worker after the sequences it holds are dropped."""
        if self._thread is not None:
            self._inbox.put(None)
            self._thread.join(timeout=30)
            self._thread = None

    def submit(self, request: GenerationRequest, sink: Callable[[Event], None]) -> Handle:
        """Queue a sequence; `sink` receives its events on the worker thread."""
        self.check_prompt(request.prompt_ids)
        seq = _Sequence(self, request, sink)
        self._inbox.put(seq)
        return Handle(seq)

    def generate(self, request: GenerationRequest) -> Iterator[Event]:
        """Submit and yield the sequence's events here (for scripts and benchmarks)."""
        events: queue.Queue[Event] = queue.Queue()
        handle = self.submit(request, events.put)
        try:
            while True:
                event = events.get()
                yield event
                if is_final(event):
                    return
        finally:
            handle.cancel()

    def run_here(
        self,
        requests: Sequence[GenerationRequest],
        *,
        on_step: Callable[[int, float, float], None] | None = None,
    ) -> list[list[Event]]:
        """Decode sequences round-robin on the calling thread, as the worker does.

        For scripts and benchmarks that want no thread hand-off; the worker must not be
        running (two threads must never hook and run the model at once). Returns each
        request's events; `on_step(i, cpu_seconds, wall_seconds)` hears about every step
        of request i (the CPU time of this thread).
        """
        if self._thread is not None:
            raise RuntimeError("run_here() needs the worker stopped; use generate()")
        for request in requests:
            self.check_prompt(request.prompt_ids)
        events: list[list[Event]] = [[] for _ in requests]
        live = {i: _Sequence(self, r, events[i].append) for i, r in enumerate(requests)}
        with self._hooks_on():
            while live:
                for i, seq in list(live.items()):
                    cpu, wall = time.thread_time(), time.perf_counter()
                    done = seq.step()
                    if on_step is not None:
                        on_step(i, time.thread_time() - cpu, time.perf_counter() - wall)
                    if done:
                        del live[i]
        return events

    @contextlib.contextmanager
    def _hooks_on(self) -> Iterator[None]:
        """Readout hooks on the blocks for the length of a decode loop, then off."""
        if self.recorder is None:
            yield
            return
        self._hooks = self.recorder.attach()
        try:
            yield
        finally:
            self._hooks.remove()
            self._hooks = None

    def snapshot(self) -> dict[str, int]:
        """Counters plus the number of sequences waiting for a slot."""
        waiting = self._inbox.qsize() + len(self._waiting)
        return {**self.stats.__dict__, "waiting": waiting}

    def check_prompt(self, ids: Sequence[int]) -> None:
        """Reject prompts the model cannot take (empty, too long, ids out of the vocabulary)."""
        if not ids:
            raise ConfigError("the prompt is empty (no tokens)")
        if len(ids) >= self.max_positions:
            raise ConfigError(
                f"the prompt has {len(ids)} tokens; this model takes at most "
                f"{self.max_positions} positions, so nothing can be generated"
            )
        vocab = int(getattr(self.lm.model.config, "vocab_size", 0) or 0)
        top = vocab or 1 << 63  # without a vocabulary size: what a tensor of longs holds
        if any(not 0 <= i < top for i in ids):
            raise ConfigError(f"prompt token ids must be in 0..{top - 1}")

    # ---- worker thread ---------------------------------------------------------------

    def forward(
        self, seq: _Sequence, ids: list[int], *, record: bool, all_positions: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """One forward pass of `ids` on `seq`'s cache: (last position's logits, readout
        `[k, n, L, C]` when recording, see `Projector.project_stacked`). The readout is
        of the last position only (n = 1) unless `all_positions`."""
        kwargs: dict[str, Any] = {
            "input_ids": torch.tensor([ids], dtype=torch.long, device=self.device),
            self._cache_name: seq.cache,
            "use_cache": True,
        }
        if self._logits_to_keep:
            kwargs["logits_to_keep"] = 1
        raw = None
        with torch.inference_mode():
            if record:
                assert self._hooks is not None and self.projector is not None
                out, outs = self._hooks.run(lambda: self.lm.model(**kwargs))
                assert out is not None  # never stopped early: the logits are needed
                raw = self.projector.project_stacked(
                    [o[0] if all_positions else o[0, -1:] for o in outs]
                )
            else:
                out = self.lm.model(**kwargs)
            seq.cache = getattr(out, self._cache_name)
            return out.logits[0, -1].float(), raw

    def prompt_event(self, req: GenerationRequest, out: Tensor) -> PromptEvent:
        arrays = out.cpu().numpy()  # [k, n, L, C]: one host copy, no Python floats
        return PromptEvent(
            req.index,
            req.prompt_ids,
            arrays[0],
            arrays[1] if len(arrays) > 1 else None,
            self.combined(arrays[0]),
        )

    def combined(self, raw: np.ndarray) -> np.ndarray | None:
        """`[..., L, C]` raw readouts → `[..., C]` combined scores (None without one)."""
        if self._combine is None:
            return None
        return (raw * self._combine).sum(axis=-2, dtype=np.float32)

    def token_event(
        self,
        index: int,
        token_id: int,
        text: str,
        finish: FinishReason | None,
        out: Tensor | None,
    ) -> TokenEvent:
        """The event of a sampled token; `out` is its pass's readout (its last position)."""
        self.stats.tokens += 1
        if out is None:
            return TokenEvent(index, token_id, text, None, None, finish)
        arrays = np.ascontiguousarray(out[:, -1].cpu().numpy())  # [k, L, C]
        z = arrays[1] if len(arrays) > 1 else None
        return TokenEvent(index, token_id, text, arrays[0], z, finish, self.combined(arrays[0]))

    def _run(self) -> None:
        with self._hooks_on():
            self._loop()

    def _loop(self) -> None:
        closing = False
        while not (closing and not self._active):
            closing = self._admit(block=not self._active) or closing
            while closing and self._waiting:
                seq = self._waiting.popleft()
                seq.sink(ErrorEvent(seq.request.index, "the server is shutting down"))
                self.stats.cancelled += 1
            for seq in list(self._active):
                self._step(seq, closing)
        self.stats.active = 0

    def _admit(self, *, block: bool) -> bool:
        """Move queued sequences in; returns True once close() was asked for."""
        closing = False
        with contextlib.suppress(queue.Empty):
            item = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
            while True:
                if item is None:
                    closing = True
                else:
                    self._waiting.append(item)
                item = self._inbox.get_nowait()
        while self._waiting and len(self._active) < self.max_concurrency:
            seq = self._waiting.popleft()
            if seq.cancelled.is_set():
                self.stats.cancelled += 1
                continue
            self._active.append(seq)
        self.stats.active = len(self._active)
        return closing

    def _step(self, seq: _Sequence, closing: bool) -> None:
        done = False
        if seq.cancelled.is_set() or closing:
            if closing:
                seq.sink(ErrorEvent(seq.request.index, "the server is shutting down"))
            self.stats.cancelled += 1
            done = True
        else:
            try:
                if seq.step():
                    self.stats.completed += 1
                    done = True
            except Exception as exc:  # one failing sequence must not stop the others
                log.exception("sequence failed")
                seq.sink(ErrorEvent(seq.request.index, f"{type(exc).__name__}: {exc}"))
                self.stats.failed += 1
                done = True
        if done:
            seq.cache = None  # free the KV cache now, not when the client lets go
            self._active.remove(seq)
            self.stats.active = len(self._active)


def _eos_ids(lm: LoadedModel) -> frozenset[int]:
    """End-of-sequence ids from the generation config and the tokenizer (in the vocabulary)."""
    ids: set[int] = set()
    gen = getattr(lm.model, "generation_config", None)
    for value in (getattr(gen, "eos_token_id", None), getattr(lm.tokenizer, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    vocab = int(getattr(lm.model.config, "vocab_size", 0) or 0)
    return frozenset(i for i in ids if not vocab or 0 <= i < vocab)
