"""The side channel that carries readouts from vLLM's worker to the API server process.

vLLM runs the API server, the engine core and the workers as separate processes; a
token travels worker → engine core → API server. Readouts take a shorter road: after each
step the worker pushes the rows it computed straight to the API server process that owns
the request, over a ZeroMQ PUSH → PULL pipe on a local IPC socket. Each API server process
binds its own socket, named by a per-server session (set once, inherited by every process
vLLM starts) and its pid; a request tells the worker which pid to push to. So several API
server processes each get only their own requests' rows, several data-parallel engines
each push to whichever server sent them a request, and the connect side queues messages
until they are read, so nothing is lost between bind and first read.

One message per step and API server, three frames:

1. header (JSON): `{"v": 1, "shape": [n_layers, n_concepts], "entries": [[key, engine
   request id, prompt length, rows], …]}`;
2. positions: int64, one per row, in entry order;
3. values: float32 `[rows, n_layers, n_concepts]` raw dot products, manifest order.

Example:
    pub = Publisher(session)
    pub.send(pid, encode(entries, positions, values))
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

log = logging.getLogger("amygdala.vllm")

FORMAT_VERSION = 1
# Messages a worker may queue for one API server before it drops (and counts) more:
# about a minute of steps even for a server whose event loop stalls.
SEND_QUEUE = 100_000


def address(session: str, pid: int) -> str:
    """The IPC endpoint of API server process `pid` in `session`."""
    return f"ipc://{tempfile.gettempdir()}/amygdala-{session}-{pid}.sock"


@dataclass(frozen=True)
class Entry:
    """The rows of one engine request in one step (consecutive in the message)."""

    key: str  # the API server's id of the HTTP request
    request_id: str  # vLLM's engine request id
    prompt_len: int
    rows: int


@dataclass(frozen=True)
class Batch:
    """A decoded message: `values[i]` is `[n_layers, n_concepts]` at `positions[i]`."""

    entries: tuple[Entry, ...]
    positions: np.ndarray  # [rows] int64
    values: np.ndarray  # [rows, n_layers, n_concepts] float32

    def split(self) -> list[tuple[Entry, np.ndarray, np.ndarray]]:
        """Each entry with its own positions and values."""
        out, start = [], 0
        for entry in self.entries:
            stop = start + entry.rows
            out.append((entry, self.positions[start:stop], self.values[start:stop]))
            start = stop
        return out


def encode(entries: Sequence[Entry], positions: np.ndarray, values: np.ndarray) -> list[bytes]:
    """The three frames of one message."""
    header = {
        "v": FORMAT_VERSION,
        "shape": list(values.shape[1:]),
        "entries": [[e.key, e.request_id, e.prompt_len, e.rows] for e in entries],
    }
    return [
        orjson.dumps(header),
        np.ascontiguousarray(positions, dtype="<i8").tobytes(),
        np.ascontiguousarray(values, dtype="<f4").tobytes(),
    ]


def decode(frames: Sequence[bytes], shape: tuple[int, int]) -> Batch:
    """Parse and check one message; `ValueError` names what is wrong with it."""
    if len(frames) != 3:
        raise ValueError(f"expected 3 frames, got {len(frames)}")
    try:
        header = orjson.loads(frames[0])
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"header is not JSON ({exc})") from None
    if not isinstance(header, dict) or header.get("v") != FORMAT_VERSION:
        raise ValueError(f"unknown message format {str(header)[:80]}")
    if tuple(header.get("shape", ())) != tuple(shape):
        raise ValueError(f"rows of shape {header.get('shape')}, expected {list(shape)}")
    entries = tuple(_entry(e) for e in header.get("entries", ()))
    rows = sum(e.rows for e in entries)
    positions = np.frombuffer(frames[1], dtype="<i8")
    values = np.frombuffer(frames[2], dtype="<f4")
    if positions.size != rows or values.size != rows * shape[0] * shape[1]:
        raise ValueError(f"{rows} rows announced, {positions.size} positions sent")
    return Batch(entries, positions, values.reshape(rows, *shape))


def _entry(raw: Any) -> Entry:
    if not (isinstance(raw, list) and len(raw) == 4):
        raise ValueError(f"bad entry {str(raw)[:80]}")
    key, request_id, prompt_len, rows = raw
    if not (isinstance(key, str) and isinstance(request_id, str)):
        raise ValueError(f"bad entry {str(raw)[:80]}")
    if not (isinstance(prompt_len, int) and isinstance(rows, int) and rows >= 0):
        raise ValueError(f"bad entry {str(raw)[:80]}")
    return Entry(key, request_id, prompt_len, rows)


class Publisher:
    """Worker side: one PUSH socket per API server process, connected on first use.

    Used from one thread only (zmq sockets are not thread-safe). A full queue — an API
    server that stopped reading — drops the message and counts it, never blocks a step.
    """

    def __init__(self, session: str) -> None:
        import zmq

        self._zmq = zmq
        self._ctx = zmq.Context()
        self._session = session
        self._sockets: dict[int, Any] = {}
        self.dropped = 0

    def send(self, pid: int, frames: list[bytes]) -> None:
        sock = self._sockets.get(pid)
        if sock is None:
            sock = self._ctx.socket(self._zmq.PUSH)
            sock.setsockopt(self._zmq.SNDHWM, SEND_QUEUE)
            sock.setsockopt(self._zmq.LINGER, 0)
            sock.connect(address(self._session, pid))
            self._sockets[pid] = sock
        try:
            sock.send_multipart(frames, flags=self._zmq.NOBLOCK, copy=False)
        except self._zmq.Again:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning(
                    "amygdala readout: API server %d is not reading; %d message(s) dropped",
                    pid,
                    self.dropped,
                )

    def close(self) -> None:
        for sock in self._sockets.values():
            sock.close(linger=0)
        self._sockets.clear()
        self._ctx.term()


class Receiver:
    """API server side: binds this process's PULL socket and hands each message to
    `on_batch`, on the event loop. Malformed messages are counted and logged, not fatal."""

    def __init__(
        self, session: str, shape: tuple[int, int], on_batch: Callable[[Batch], None]
    ) -> None:
        import zmq
        import zmq.asyncio

        self.address = address(session, os.getpid())
        self._path = self.address.removeprefix("ipc://")
        self._shape = shape
        self._on_batch = on_batch
        self._ctx = zmq.asyncio.Context()
        self._sock = self._ctx.socket(zmq.PULL)
        self._sock.setsockopt(zmq.RCVHWM, SEND_QUEUE)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind(self.address)
        self._task: asyncio.Task[None] | None = None
        self.malformed = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            frames = await self._sock.recv_multipart()
            try:
                batch = decode(frames, self._shape)
            except ValueError as exc:
                self.malformed += 1
                log.warning("amygdala readout: malformed message from a worker: %s", exc)
                continue
            self._on_batch(batch)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._sock.close(linger=0)
        self._ctx.term()
        with contextlib.suppress(OSError):
            os.unlink(self._path)
