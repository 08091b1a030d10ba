"""API server side: readout rows arriving from the workers, waiting for their tokens.

Each HTTP request that wants readouts opens a `Subscription` under a random key; the
worker sends rows tagged with that key and the engine request id, and the subscription
files them by choice and position. A response asks for "the readout of generated token k
of choice i" — the row at position `prompt_len - 1 + k`, the sampler's query position —
and waits until it has arrived (rows usually arrive before their token, which travels
through the engine core). Closing the subscription (response done, client gone) drops
everything it held; rows for closed or unknown keys are counted and dropped.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from amygdala.vllm_plugin.channel import Batch


@dataclass
class _ChoiceRows:
    prompt_len: int
    rows: dict[int, np.ndarray] = field(default_factory=dict)  # position -> [L, C]
    consumed: int = 0  # generated tokens already handed out


class Subscription:
    """The rows of one HTTP request, by choice index and position."""

    def __init__(
        self, inbox: Inbox, key: str, match: Callable[[str], int | None], prompt: bool, n: int
    ) -> None:
        self.key = key
        self._inbox = inbox
        self._match = match
        self._prompt = prompt
        self._n = n  # choices per prompt
        self._choices: dict[int, _ChoiceRows] = {}
        self._changed = asyncio.Event()
        self.foreign = 0  # rows whose engine request id is not this request's

    def add(
        self, request_id: str, prompt_len: int, positions: np.ndarray, values: np.ndarray
    ) -> None:
        choice = self._match(request_id)
        if choice is None:
            self.foreign += len(positions)
            return
        rows = self._choices.get(choice)
        if rows is None:
            rows = self._choices[choice] = _ChoiceRows(prompt_len)
        # Rows before the next token's position are kept only while prompt readouts are
        # still to be sent; a recomputed row (after preemption) replaces its twin.
        keep_from = 0 if self._prompt else prompt_len - 1 + rows.consumed
        for position, value in zip(positions.tolist(), values):
            if position >= keep_from:
                rows.rows[position] = value
        self._changed.set()

    async def _wait(self, ready: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not ready():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._changed.clear()
            if ready():
                return True
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                return ready()
        return True

    async def token(self, choice: int, timeout: float) -> np.ndarray | None:
        """The readout `[L, C]` of choice `choice`'s next generated token (None when it
        did not arrive in time)."""

        def position() -> int | None:
            rows = self._choices.get(choice)
            return None if rows is None else rows.prompt_len - 1 + rows.consumed

        def ready() -> bool:
            pos = position()
            return pos is not None and pos in self._choices[choice].rows

        found = await self._wait(ready, timeout)
        rows = self._choices.get(choice)
        if rows is None:
            self._inbox.timeouts += 1
            return None
        pos = rows.prompt_len - 1 + rows.consumed
        rows.consumed += 1
        # With prompt readouts asked for, position P-1 serves both: keep the rows.
        value = (
            (rows.rows.get(pos) if self._prompt else rows.rows.pop(pos, None)) if found else None
        )
        if value is None:
            self._inbox.timeouts += 1
        return value

    async def prompt(self, choice: int, timeout: float) -> np.ndarray | None:
        """The prompt positions' readouts `[P, L, C]` of choice `choice` (None when they
        did not all arrive in time).

        The choices of one prompt share it, and with the prefix cache only the first
        of them may compute it all, so any sibling's rows serve.
        """

        def gather() -> dict[int, np.ndarray] | None:
            siblings = [r for c, r in self._choices.items() if c // self._n == choice // self._n]
            if not siblings:
                return None
            merged: dict[int, np.ndarray] = {}
            for rows in siblings:
                merged.update(rows.rows)
            prompt_len = siblings[0].prompt_len
            if not all(p in merged for p in range(prompt_len)):
                return None
            return {p: merged[p] for p in range(prompt_len)}

        if not await self._wait(lambda: gather() is not None, timeout):
            self._inbox.timeouts += 1
            return None
        found = gather()
        assert found is not None  # ready() just said so, and nothing ran in between
        return np.stack(list(found.values()))

    def close(self) -> None:
        self._inbox.unsubscribe(self)
        self._choices.clear()


class Inbox:
    """All open subscriptions of this API server process, fed by the `Receiver`."""

    def __init__(self) -> None:
        self._subs: dict[str, Subscription] = {}
        self.dropped = 0  # rows for keys no open request holds (finished, cancelled)
        self.timeouts = 0  # tokens sent without a readout because it never came
        self.served = 0  # requests that asked for readouts
        self.received = 0  # rows that arrived from the workers

    def subscribe(
        self, key: str, match: Callable[[str], int | None], *, prompt: bool, n: int = 1
    ) -> Subscription:
        sub = Subscription(self, key, match, prompt, n)
        self._subs[key] = sub
        self.served += 1
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if self._subs.get(sub.key) is sub:
            del self._subs[sub.key]

    def deliver(self, batch: Batch) -> None:
        self.received += len(batch.positions)
        for entry, positions, values in batch.split():
            sub = self._subs.get(entry.key)
            if sub is None:
                self.dropped += entry.rows
                continue
            sub.add(entry.request_id, entry.prompt_len, positions, values)

    def stats(self) -> dict[str, int]:
        return {
            "pid": os.getpid(),  # this API server process (there may be several)
            "served_requests": self.served,
            "open_requests": len(self._subs),
            "received_rows": self.received,
            "dropped_rows": self.dropped,
            "timeouts": self.timeouts,
        }
