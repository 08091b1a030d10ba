"""OpenAI wire format: parse request bodies, build responses and stream chunks.

Readout fields ride along in each choice, beside the usual OpenAI fields:

* streamed chunk: `choices[i].token_id`, `choices[i].token` (that token's own text),
  `choices[i].readout` `[n_layers][n_concepts]` raw dot products in manifest order,
  `choices[i].readout_z` when the manifest has calibration, and
  `choices[i].readout_combined` `[n_concepts]` (raw `Σ_l weights[l] · readout[l]`) when
  it has a combined score;
* non-streamed choice: `token_ids`, `tokens`, `readout` `[n_tokens][n_layers][n_concepts]`,
  `readout_z` and `readout_combined` `[n_tokens][n_concepts]`, one entry per token;
* `"readout_prompt": true` in the request adds `choices[i].prompt_readout`
  (`token_ids`, `tokens`, `readout`, `readout_z`, `readout_combined`) — in the first
  chunk of a stream;
* `"readout": false` turns readouts off for a request.

`text` / `delta.content` follow OpenAI: stop strings are cut and held-back partial
characters appear in a later chunk, so a chunk's `text` may differ from its `token`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson

from amygdala._text import JSONError, has_lone_surrogate, parse_json
from amygdala.errors import ConfigError
from amygdala.serve.engine import (
    SEED_RANGE,
    GenerationRequest,
    PromptEvent,
    SamplingParams,
    TokenEvent,
)

Kind = Literal["completion", "chat"]
MAX_N = 8

# The template used when the tokenizer has none and no --chat-template was given.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)

# Parameters whose non-default values we cannot honour: rejected, not ignored.
_UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "logprobs": (None, False, 0),
    "top_logprobs": (None, 0),
    "echo": (None, False),
    "best_of": (None, 1),
    "suffix": (None, ""),
    "logit_bias": (None, {}),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "tools": (None, []),
    "response_format": (None, {"type": "text"}),
}


def dumps(obj: Any) -> bytes:
    """JSON bytes; float32 arrays are written as numbers with float32's shortest digits
    (they read back to the same float32), fast enough for every streamed token."""
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)


class RequestError(ValueError):
    """A request the server answers with an OpenAI-style error (status, message, param)."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.param, self.code)


@dataclass(frozen=True)
class Parsed:
    """A validated request: what the engine needs plus how to answer."""

    kind: Kind
    prompt_ids: tuple[int, ...]
    params: SamplingParams
    n: int
    stream: bool
    include_usage: bool
    readout: bool
    readout_prompt: bool

    def requests(self) -> list[GenerationRequest]:
        return [
            GenerationRequest(
                self.prompt_ids, self.params, self.readout, self.readout_prompt, index=i
            )
            for i in range(self.n)
        ]


def error_body(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """The OpenAI error object: `{"error": {"message", "type", "param", "code"}}`."""
    kind = {401: "authentication_error", 404: "not_found_error"}.get(
        status, "invalid_request_error" if status < 500 else "server_error"
    )
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def parse_body(raw: bytes) -> Any:
    """The JSON value of a request body; what is not usable JSON text is a 400.

    UTF-8 only; the JSON layer is `amygdala._text.parse_json`, the one every reader
    uses (nesting bounded at `MAX_JSON_DEPTH`, integers kept exact, so a `seed` beyond
    64 bits is reported as such). A lone surrogate (a `\\ud800` escape without its
    pair) is not text and no tokenizer takes it: it is a 400 naming the field.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(
            400, f"the request body is not UTF-8 (bad byte at offset {exc.start}); send JSON"
        ) from None
    try:
        value = parse_json(text)
    except JSONError as exc:
        raise RequestError(400, f"the request body is not valid JSON ({exc})") from None
    found = _lone_surrogate(value)
    if found is not None:
        where, param = found
        raise RequestError(
            400,
            f"{where} holds a lone surrogate (a \\ud800-\\udfff escape without its pair), "
            "which is not text; send valid UTF-16 pairs or plain UTF-8",
            param,
        )
    return value


def _lone_surrogate(value: Any) -> tuple[str, str | None] | None:
    """Where the first string holding a lone surrogate is (`'messages[0].content'`), and
    the top-level field it is under; None when there is none. Iterative: any depth."""
    stack: list[tuple[Any, str, str | None]] = [(value, "", None)]
    while stack:
        item, path, field = stack.pop()
        if isinstance(item, str):
            if has_lone_surrogate(item):
                return (f"'{path}'" if path else "the request body"), field
        elif isinstance(item, dict):
            for key, child in item.items():
                if has_lone_surrogate(key):
                    return f"a key in {f'{path!r}' if path else 'the request body'}", field
                if isinstance(child, (str, dict, list)):
                    stack.append((child, f"{path}.{key}" if path else key, field or key))
        elif isinstance(item, list):
            stack.extend(
                (child, f"{path}[{i}]", field)
                for i, child in enumerate(item)
                if isinstance(child, (str, dict, list))
            )
    return None


def _get(
    body: Mapping[str, Any],
    name: str,
    types: type | tuple[type, ...],
    default: Any,
    *,
    label: str | None = None,
) -> Any:
    """`body[name]` when it has one of `types` (null counts as absent), else a 400."""
    shown = label or name
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise RequestError(400, f"'{shown}' must be {_type_name(types)}, got a boolean", shown)
    if not isinstance(value, types):
        raise RequestError(
            400, f"'{shown}' must be {_type_name(types)}, got {_json_type(value)}", shown
        )
    return value


def _json_type(value: Any) -> str:
    return {
        "str": "a string",
        "int": "an integer",
        "float": "a number",
        "list": "a list",
        "dict": "an object",
        "bool": "a boolean",
    }.get(type(value).__name__, type(value).__name__)


def _number(body: Mapping[str, Any], name: str, default: float) -> float:
    """A JSON number as a float; an integer too large for a float is a 400, not a crash."""
    value = _get(body, name, (int, float), default)
    try:
        return float(value)
    except OverflowError:
        raise RequestError(400, f"'{name}' is too large, got {value}", name) from None


def _int_in(
    body: Mapping[str, Any], name: str, default: Any, low: int, high: int, what: str = ""
) -> Any:
    """An integer in `low..high` (null: `default`), else a 400 naming the range."""
    value = _get(body, name, int, default)
    if value is not None and not low <= value <= high:
        rule = f"{what} ({low}..{high})" if what else f"in {low}..{high}"
        raise RequestError(400, f"'{name}' must be {rule}, got {value}", name)
    return value


def _type_name(types: type | tuple[type, ...]) -> str:
    names = [t.__name__ for t in (types if isinstance(types, tuple) else (types,))]
    return " or ".join(
        {
            "int": "an integer",
            "float": "a number",
            "str": "a string",
            "bool": "a boolean",
            "list": "a list",
            "dict": "an object",
        }.get(n, n)
        for n in names
    )


def readout_flags(body: Mapping[str, Any]) -> tuple[bool, bool]:
    """`(readout, readout_prompt)` of a request: booleans, by default `(True, False)`.

    Both servers read these two fields through here (`amygdala serve` and the vLLM
    plugin), so a non-boolean gets the same 400 from either.
    """
    return _get(body, "readout", bool, True), _get(body, "readout_prompt", bool, False)


def _check_unsupported(body: dict[str, Any]) -> None:
    for name, defaults in _UNSUPPORTED.items():
        if name in body and body[name] not in defaults:
            raise RequestError(400, f"'{name}' is not supported by amygdala serve", name)


def _stops(body: Mapping[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,)
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return tuple(stop)
    raise RequestError(400, "'stop' must be a string or a list of strings", "stop")


def _sampling(body: dict[str, Any], default_max: int) -> SamplingParams:
    stops = _stops(body)
    max_tokens = _get(body, "max_tokens", int, None)
    if max_tokens is None:
        max_tokens = _get(body, "max_completion_tokens", int, default_max)
    try:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=_number(body, "temperature", 1.0),
            top_p=_number(body, "top_p", 1.0),
            stop=stops,
            seed=_int_in(body, "seed", None, *SEED_RANGE, what="a 64-bit integer"),
            ignore_eos=_get(body, "ignore_eos", bool, False),
        )
    except ConfigError as exc:
        raise RequestError(400, str(exc)) from None


def _common(
    kind: Kind, body: dict[str, Any], ids: list[int], default_max: int, with_readout: bool
) -> Parsed:
    _check_unsupported(body)
    n = _int_in(body, "n", 1, 1, MAX_N)
    options = _get(body, "stream_options", dict, {})
    usage = _get(options, "include_usage", bool, False, label="stream_options.include_usage")
    readout, readout_prompt = readout_flags(body)
    return Parsed(
        kind=kind,
        prompt_ids=tuple(ids),
        params=_sampling(body, default_max),
        n=n,
        stream=_get(body, "stream", bool, False),
        include_usage=usage,
        readout=with_readout and readout,
        readout_prompt=with_readout and readout_prompt,
    )


def parse_completion(body: Any, tokenizer: Any, *, with_readout: bool) -> Parsed:
    """`POST /v1/completions`: `prompt` is a string, a list of token ids, or a list of one."""
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    elif (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(i, int) and not isinstance(i, bool) for i in prompt)
    ):
        ids = list(prompt)
    else:
        raise RequestError(
            400,
            "'prompt' must be a string or a list of token ids (one prompt per request)",
            "prompt",
        )
    # OpenAI's completions default: SamplingParams' (16 tokens)
    return _common("completion", body, ids, SamplingParams.max_tokens, with_readout)


def parse_chat(
    body: Any, tokenizer: Any, template: str | None, *, with_readout: bool, default_max: int
) -> Parsed:
    """`POST /v1/chat/completions`: messages through the chat template."""
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty list", "messages")
    clean = [_message(m, i) for i, m in enumerate(messages)]
    try:
        text = tokenizer.apply_chat_template(
            clean, tokenize=False, add_generation_prompt=True, chat_template=template
        )
    except Exception as exc:  # jinja errors of a user template come in many types
        raise RequestError(
            400, f"the chat template failed on these messages: {exc}", "messages"
        ) from None
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return _common("chat", body, ids, default_max, with_readout)


def _message(m: Any, i: int) -> dict[str, str]:
    if not isinstance(m, dict) or not isinstance(m.get("role"), str):
        raise RequestError(400, f"messages[{i}] must be an object with a 'role'", "messages")
    content = m.get("content")
    if isinstance(content, list):  # [{"type": "text", "text": …}, …]
        parts = [p.get("text") for p in content if isinstance(p, dict)]
        if not all(isinstance(p, str) for p in parts) or len(parts) != len(content):
            raise RequestError(
                400, f"messages[{i}].content: only text parts are supported", "messages"
            )
        content = "".join(parts)  # type: ignore[arg-type]
    if content is None:
        content = ""
    if not isinstance(content, str):
        raise RequestError(400, f"messages[{i}].content must be a string", "messages")
    return {"role": m["role"], "content": content}


class ResponseBuilder:
    """Builds chunks and the final object of one request, in the OpenAI shapes."""

    def __init__(self, parsed: Parsed, model: str, token_text: Any) -> None:
        self.parsed = parsed
        self.model = model
        self.token_text = token_text  # ids -> list of per-token strings
        prefix = "chatcmpl" if parsed.kind == "chat" else "cmpl"
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.object = "chat.completion" if parsed.kind == "chat" else "text_completion"

    def _envelope(self, choices: list[dict[str, Any]], chunk: bool) -> dict[str, Any]:
        obj = self.object + (".chunk" if chunk and self.parsed.kind == "chat" else "")
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    def _text_field(self, text: str, first: bool) -> dict[str, Any]:
        if self.parsed.kind == "completion":
            return {"text": text, "logprobs": None}
        delta: dict[str, Any] = {"role": "assistant"} if first else {}
        if text or not first:
            delta["content"] = text
        return {"delta": delta, "logprobs": None}

    def prompt_readout(self, event: PromptEvent) -> dict[str, Any]:
        out = {
            "token_ids": list(event.token_ids),
            "tokens": self.token_text(event.token_ids),
            "readout": event.raw,
        }
        if event.z is not None:
            out["readout_z"] = event.z
        if event.combined is not None:
            out["readout_combined"] = event.combined
        return out

    def role_chunk(self, index: int, prompt: PromptEvent | None) -> dict[str, Any]:
        """The first chunk of a choice: chat role, and prompt readouts when asked for."""
        choice = {"index": index, **self._text_field("", True), "finish_reason": None}
        if prompt is not None:
            choice["prompt_readout"] = self.prompt_readout(prompt)
        return self._envelope([choice], True)

    def token_chunk(self, event: TokenEvent) -> dict[str, Any]:
        choice: dict[str, Any] = {
            "index": event.index,
            **self._text_field(event.text, False),
            "finish_reason": event.finish_reason,
            "token_id": event.token_id,
            "token": self.token_text([event.token_id])[0],
        }
        if event.raw is not None:
            choice["readout"] = event.raw
        if event.z is not None:
            choice["readout_z"] = event.z
        if event.combined is not None:
            choice["readout_combined"] = event.combined
        return self._envelope([choice], True)

    def usage(self, completion_tokens: int) -> dict[str, int]:
        prompt = len(self.parsed.prompt_ids)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens,
        }

    def usage_chunk(self, completion_tokens: int) -> dict[str, Any]:
        return {**self._envelope([], True), "usage": self.usage(completion_tokens)}

    def final(
        self, tokens: dict[int, list[TokenEvent]], prompts: dict[int, PromptEvent]
    ) -> dict[str, Any]:
        """The non-streamed response: every choice with its per-token readouts."""
        choices = []
        for index in range(self.parsed.n):
            events = tokens.get(index, [])
            text = "".join(e.text for e in events)
            ids = [e.token_id for e in events]
            choice: dict[str, Any] = {"index": index}
            if self.parsed.kind == "chat":
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            choice.update(
                {
                    "logprobs": None,
                    "finish_reason": events[-1].finish_reason if events else "length",
                    "token_ids": ids,
                    "tokens": self.token_text(ids),
                }
            )
            raws = [e.raw for e in events if e.raw is not None]
            zs = [e.z for e in events if e.z is not None]
            combined = [e.combined for e in events if e.combined is not None]
            if raws:
                choice["readout"] = np.stack(raws)
            if zs:
                choice["readout_z"] = np.stack(zs)
            if combined:
                choice["readout_combined"] = np.stack(combined)
            if index in prompts:
                choice["prompt_readout"] = self.prompt_readout(prompts[index])
            choices.append(choice)
        total = sum(len(v) for v in tokens.values())
        return {**self._envelope(choices, False), "usage": self.usage(total)}
