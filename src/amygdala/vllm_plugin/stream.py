"""Add readouts to the OpenAI responses vLLM builds, so clients see amygdala's contract.

vLLM's own completion and chat handlers do all the OpenAI work (sampling parameters,
chat templates, tools, logprobs, usage); the plugin asks them for `token_ids` in every
chunk and rewrites what they produce:

* a streamed chunk that carries generated tokens becomes one chunk per token, each with
  `choices[i].token_id`, `choices[i].token` (that token's own text), `choices[i].readout`
  `[n_layers][n_concepts]`, when the manifest is calibrated `choices[i].readout_z`, and
  when it has a combined score `choices[i].readout_combined` `[n_concepts]` (raw
  `Σ_l weights[l] · readout[l]`, computed here from the row that arrived);
  when vLLM put several tokens in one chunk, the earlier ones get chunks with empty text
  and the last keeps vLLM's text, logprobs and finish reason;
* the first chunk of a choice gets `prompt_readout` (`token_ids`, `tokens`, `readout`,
  `readout_z`, `readout_combined`) when the request asked for it;
* a non-streamed choice gets `token_ids`, `tokens`, `readout` `[n_tokens][n_layers]
  [n_concepts]`, `readout_z` and `readout_combined` `[n_tokens][n_concepts]`;
* `token_ids` / `prompt_token_ids` stay only where the client asked for them.

These are exactly the fields `amygdala serve` sends, so `amygdala watch` and any client
work against either engine.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import numpy as np
import orjson

from amygdala.serve.protocol import dumps
from amygdala.vllm_plugin.inbox import Subscription


class ZScores:
    """`z = (raw − mean) / std` from the manifest's calibration (0 where std is 0)."""

    def __init__(self, manifest: dict[str, Any]) -> None:
        from amygdala.readout import Calibration

        cal = Calibration.from_manifest(manifest)
        self._inv_std: np.ndarray | None = None
        self._shift: np.ndarray | None = None
        if cal is not None:
            std = cal.std.numpy().astype(np.float32)
            inv = np.where(std > 0, 1.0 / np.maximum(std, 1e-30), 0.0).astype(np.float32)
            self._inv_std = inv
            self._shift = (-cal.mean.numpy() * inv).astype(np.float32)

    def __call__(self, raw: np.ndarray) -> np.ndarray | None:
        if self._inv_std is None or self._shift is None:
            return None
        return (raw * self._inv_std + self._shift).astype(np.float32)


class CombinedScores:
    """`readout_combined = Σ_l weights[l] · raw[l]` from the manifest's combined entry
    (None for every row when the manifest has none)."""

    def __init__(self, manifest: dict[str, Any]) -> None:
        from amygdala.readout import Combination

        comb = Combination.from_manifest(manifest)
        self._weights = None if comb is None else comb.weights.numpy().astype(np.float32)

    def __call__(self, raw: np.ndarray) -> np.ndarray | None:
        """`[..., L, C]` raw rows → `[..., C]`."""
        if self._weights is None:
            return None
        return (raw * self._weights).sum(axis=-2, dtype=np.float32)


class Rewriter:
    """Rewrites one request's response; see the module docstring for the fields."""

    def __init__(
        self,
        kind: str,
        sub: Subscription,
        zscores: ZScores,
        token_text: Callable[[Sequence[int]], list[str]],
        *,
        prompt: bool,
        keep_token_ids: bool,
        timeout: float,
        combined: CombinedScores | None = None,
    ) -> None:
        self.kind = kind
        self.sub = sub
        self.zscores = zscores
        self.combined = combined
        self.token_text = token_text
        self.prompt = prompt
        self.keep_token_ids = keep_token_ids
        self.timeout = timeout
        self._prompt_ids: dict[int, list[int]] = {}  # choice -> prompt token ids
        self._prompt_sent: set[int] = set()

    # ---- streamed -------------------------------------------------------------------

    async def stream(self, body: AsyncIterator[str | bytes]) -> AsyncIterator[str]:
        """vLLM's server-sent events in, ours out (comments and [DONE] pass through)."""
        pending = ""
        async for piece in body:
            pending += piece.decode() if isinstance(piece, bytes) else piece
            while "\n\n" in pending:
                event, pending = pending.split("\n\n", 1)
                for out in await self._event(event):
                    yield out + "\n\n"
        if pending.strip():
            for out in await self._event(pending):
                yield out + "\n\n"

    async def _event(self, event: str) -> list[str]:
        if not event.startswith("data: ") or event == "data: [DONE]":
            return [event]
        try:
            chunk = orjson.loads(event[6:])
        except orjson.JSONDecodeError:
            return [event]
        if not isinstance(chunk, dict) or not chunk.get("choices"):
            return [event]
        return ["data: " + _dumps(c) for c in await self.chunk(chunk)]

    async def chunk(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        """One chunk of vLLM's stream → the chunks we send (one per generated token)."""
        if self.kind == "chat" and "prompt_token_ids" in chunk:
            ids = (
                chunk["prompt_token_ids"] if self.keep_token_ids else chunk.pop("prompt_token_ids")
            )
            for choice in chunk["choices"]:
                if ids is not None:
                    self._prompt_ids.setdefault(choice["index"], list(ids))
        out: list[dict[str, Any]] = []
        for choice in chunk["choices"]:
            out.extend(await self._choice_chunks(chunk, choice))
        return out

    async def _choice_chunks(
        self, chunk: dict[str, Any], choice: dict[str, Any]
    ) -> list[dict[str, Any]]:
        index = choice["index"]
        if self.kind == "completion" and "prompt_token_ids" in choice:
            ids = (
                choice["prompt_token_ids"]
                if self.keep_token_ids
                else choice.pop("prompt_token_ids")
            )
            if ids is not None:
                self._prompt_ids.setdefault(index, list(ids))
        token_ids = list(choice.get("token_ids") or [])
        if not self.keep_token_ids:
            choice.pop("token_ids", None)
        if self.prompt and index not in self._prompt_sent:
            self._prompt_sent.add(index)
            choice["prompt_readout"] = await self._prompt_readout(index)
        if not token_ids:
            return [{**chunk, "choices": [choice]}]
        readouts = [await self.sub.token(index, self.timeout) for _ in token_ids]
        texts = self.token_text(token_ids)
        out = []
        # Earlier tokens of a multi-token chunk get the envelope without its usage.
        early = {k: v for k, v in chunk.items() if k != "usage"}
        for j, (token_id, text, raw) in enumerate(zip(token_ids, texts, readouts)):
            last = j == len(token_ids) - 1
            envelope, base = (chunk, choice) if last else (early, self._empty_choice(choice))
            fields = self._token_fields(token_id, text, raw)
            out.append({**envelope, "choices": [{**base, **fields}]})
        return out

    def _empty_choice(self, choice: dict[str, Any]) -> dict[str, Any]:
        """A choice for an earlier token of a multi-token chunk: no text of its own."""
        empty: dict[str, Any] = {"index": choice["index"], "logprobs": None, "finish_reason": None}
        if self.kind == "chat":
            empty["delta"] = {}
        else:
            empty["text"] = ""
        return empty

    def _token_fields(self, token_id: int, text: str, raw: np.ndarray | None) -> dict[str, Any]:
        fields: dict[str, Any] = {"token_id": token_id, "token": text, "readout": raw}
        if raw is not None:
            self._add_derived(fields, raw)
        return fields

    def _add_derived(self, out: dict[str, Any], raw: np.ndarray) -> None:
        """`readout_z` and `readout_combined` of `raw` (`[..., L, C]`) where the manifest
        has what they need."""
        z = self.zscores(raw)
        if z is not None:
            out["readout_z"] = z
        combined = self.combined(raw) if self.combined is not None else None
        if combined is not None:
            out["readout_combined"] = combined

    async def _prompt_readout(self, index: int) -> dict[str, Any] | None:
        raw = await self.sub.prompt(index, self.timeout)
        if raw is None:
            return None
        ids = self._prompt_ids.get(index, [])
        out: dict[str, Any] = {"token_ids": ids, "tokens": self.token_text(ids), "readout": raw}
        self._add_derived(out, raw)
        return out

    # ---- not streamed ---------------------------------------------------------------

    async def response(self, body: dict[str, Any]) -> dict[str, Any]:
        """vLLM's whole response → ours, with every token's readout per choice."""
        body = copy.copy(body)
        chat_prompt = body.get("prompt_token_ids")
        if self.kind == "chat" and not self.keep_token_ids:
            body.pop("prompt_token_ids", None)
        choices = []
        for choice in body.get("choices", []):
            index = choice["index"]
            ids = chat_prompt if self.kind == "chat" else choice.get("prompt_token_ids")
            if not self.keep_token_ids:
                choice.pop("prompt_token_ids", None)
            if ids is not None:
                self._prompt_ids.setdefault(index, list(ids))
            token_ids = list(choice.get("token_ids") or [])
            raws = [await self.sub.token(index, self.timeout) for _ in token_ids]
            choice["token_ids"] = token_ids
            choice["tokens"] = self.token_text(token_ids)
            if raws and all(r is not None for r in raws):
                stacked = np.stack(raws)  # type: ignore[arg-type]
                choice["readout"] = stacked
                self._add_derived(choice, stacked)
            else:
                choice["readout"] = [r for r in raws]
            if self.prompt:
                choice["prompt_readout"] = await self._prompt_readout(index)
            choices.append(choice)
        body["choices"] = choices
        return body


def _dumps(obj: Any) -> str:
    return dumps(obj).decode()
