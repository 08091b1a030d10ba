"""Worker side: compute every hooked layer's readout inside the model, publish the rows.

`ReadoutTap.install` gives each hooked decoder layer two non-persistent buffers (its
concept vectors, fp32 and transposed, and a view of the shared output buffer) and wraps
its forward so that, after the layer runs, the custom op writes `h @ Vᵀ` for every token
of the step (`_op.py`). Dynamo traces the wrapper like any other forward, so the op is
part of the compiled graph. After each step `publish` picks the rows worth sending —
for every request that asked for readouts, the row at its sampler's query position (the
last row it scheduled), or all its rows when it asked for prompt readouts — copies them
to the host in one go and hands them to a sender thread, which pushes them to the API
server that owns the request (`channel.py`). Which rows are token readouts is decided on
the API side from the positions sent along: a row at position p of a request with a
P-token prompt is the readout of generated token p - P + 1.
"""

from __future__ import annotations

import logging
import queue
import threading
import types
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from amygdala.vllm_plugin.channel import Entry, Publisher, encode

log = logging.getLogger("amygdala.vllm")

WEIGHT_ATTR = "amygdala_readout_weight_t"
OUT_ATTR = "amygdala_readout_out"


@dataclass(frozen=True)
class Mark:
    """What a request asked for (from its sampling params' extra args)."""

    key: str  # the API server's id of the HTTP request
    pid: int  # the API server process that owns it
    prompt: bool  # also the prompt positions' readouts


@dataclass(frozen=True)
class StepLayout:
    """Where each request's tokens sit in the flat batch of one step."""

    request_ids: Sequence[str]
    query_start: np.ndarray  # [n_requests + 1] row offsets
    marks: Sequence[Mark | None]  # None: no readout for this request
    prompt_lens: Sequence[int]
    positions: Tensor  # [>= rows] position of every row (device)


def plan_rows(layout: StepLayout) -> tuple[list[int], dict[int, list[Entry]]]:
    """The flat rows to send, grouped by API server pid, and each pid's entries.

    A request sends its last row (its sampler's query position) each step; one that
    asked for prompt readouts sends every row it scheduled. The rows come back grouped
    by pid, in the order of `by_pid`, and within a pid in the order of its entries.
    """
    rows_by_pid: dict[int, list[int]] = {}
    by_pid: dict[int, list[Entry]] = {}
    for i, mark in enumerate(layout.marks):
        if mark is None:
            continue
        start, stop = int(layout.query_start[i]), int(layout.query_start[i + 1])
        if stop <= start:
            continue
        first = start if mark.prompt else stop - 1
        rows_by_pid.setdefault(mark.pid, []).extend(range(first, stop))
        entry = Entry(mark.key, layout.request_ids[i], layout.prompt_lens[i], stop - first)
        by_pid.setdefault(mark.pid, []).append(entry)
    return [row for pid in by_pid for row in rows_by_pid[pid]], by_pid


class ReadoutTap:
    """The readout inside one worker's model: buffers, wrapped layers, publishing."""

    def __init__(
        self,
        layers: Sequence[nn.Module],
        vectors: Sequence[Tensor],
        *,
        max_tokens: int,
        device: torch.device,
        publisher: Publisher | None,
    ) -> None:
        """`layers[i]` is the decoder layer of the manifest's i-th layer, `vectors[i]`
        its `[n_concepts, hidden]` vectors; `publisher` None: compute, never send (a
        tensor-parallel rank other than 0)."""
        n_concepts = int(vectors[0].shape[0])
        self.shape = (len(layers), n_concepts)
        self.device = device
        with torch.inference_mode(False):  # buffers the compiled graph may mutate
            self.out = torch.zeros(len(layers), max_tokens, n_concepts, device=device)
            self._weights = [
                v.to(device=device, dtype=torch.float32).t().contiguous() for v in vectors
            ]
        self._layers = list(layers)
        self._sender = _Sender(publisher, device) if publisher is not None else None

    def install(self) -> None:
        """Wrap each hooked layer's forward (idempotent per layer)."""
        from amygdala.vllm_plugin import _op  # noqa: F401  registers the op

        for slot, (layer, weight_t) in enumerate(zip(self._layers, self._weights)):
            if hasattr(layer, WEIGHT_ATTR):
                continue
            layer.register_buffer(WEIGHT_ATTR, weight_t, persistent=False)
            layer.register_buffer(OUT_ATTR, self.out, persistent=False)
            layer.forward = types.MethodType(_readout_forward(layer.forward, slot), layer)

    def publish(self, layout: StepLayout) -> None:
        """Send this step's rows (no-op when no request asked for readouts)."""
        if self._sender is None:
            return
        rows, by_pid = plan_rows(layout)
        if not rows:
            return
        index = torch.tensor(rows, dtype=torch.long)
        if self.device.type == "cuda":
            index = index.pin_memory().to(self.device, non_blocking=True)
        values = self.out.index_select(1, index).transpose(0, 1).contiguous()  # [rows, L, C]
        positions = layout.positions.index_select(0, index)
        self._sender.put(values, positions, by_pid)

    def close(self) -> None:
        if self._sender is not None:
            self._sender.close()


def _readout_forward(forward: Any, slot: int) -> Any:
    """A decoder layer forward that also writes its readout into the shared buffer."""

    def readout_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        out = forward(*args, **kwargs)
        if isinstance(out, tuple):
            hidden, residual = out[0], (out[1] if len(out) > 1 else None)
        else:
            hidden, residual = out, None
        torch.ops.amygdala.readout_project(
            hidden, residual, getattr(self, WEIGHT_ATTR), getattr(self, OUT_ATTR), slot
        )
        return out

    return readout_forward


class _Sender:
    """Pushes each step's rows without stalling the step.

    On a GPU the copy goes to pinned memory on the current stream and a CUDA event marks
    its end; a sender thread waits for the event, so the worker never synchronizes with
    the device for a readout. On a CPU the rows are on the host already and the push (a
    non-blocking ZeroMQ send) happens inline, between steps: a thread woken every step
    would preempt the worker's OpenMP threads, whose barriers then wait for it.
    """

    def __init__(self, publisher: Publisher, device: torch.device) -> None:
        self._publisher = publisher
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread: threading.Thread | None = None
        if device.type == "cuda":
            self._thread = threading.Thread(target=self._run, name="amygdala-readout", daemon=True)
            self._thread.start()

    def put(self, values: Tensor, positions: Tensor, by_pid: dict[int, list[Entry]]) -> None:
        if self._thread is None:
            self._send(values.cpu().numpy(), positions.cpu().numpy().astype(np.int64), by_pid)
            return
        host_values = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
        host_positions = torch.empty(positions.shape, dtype=positions.dtype, pin_memory=True)
        host_values.copy_(values, non_blocking=True)
        host_positions.copy_(positions, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._queue.put((event, host_values, host_positions, by_pid))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            event, values, positions, by_pid = item
            event.synchronize()
            try:
                self._send(values.numpy(), positions.numpy().astype(np.int64), by_pid)
            except Exception:  # a failed send must not kill the thread for later steps
                log.exception("amygdala readout: could not send a step's readouts")

    def _send(
        self, values: np.ndarray, positions: np.ndarray, by_pid: dict[int, list[Entry]]
    ) -> None:
        start = 0
        for pid, entries in by_pid.items():
            stop = start + sum(e.rows for e in entries)
            self._publisher.send(pid, encode(entries, positions[start:stop], values[start:stop]))
            start = stop

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=5)
        self._publisher.close()
