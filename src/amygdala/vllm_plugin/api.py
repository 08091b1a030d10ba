"""The endpoint plugin: readout routes on vLLM's own OpenAI server (API server process).

Loaded by vLLM only when `VLLM_PLUGINS` names `amygdala`. With readouts on
(`VLLM_READOUT_VECTORS` + `VLLM_READOUT_MANIFEST`) it puts its own `POST /v1/completions`
and `POST /v1/chat/completions` in front of vLLM's: each takes the request exactly as
vLLM parses it, pops `readout` / `readout_prompt`, tags the sampling params so the worker
sends this request's rows here, calls vLLM's handler, and rewrites the response
(`stream.py`). It also serves `GET /v1/readout/manifest` (404 when readouts are off) and
`GET /v1/readout/stats`; vLLM's `--api-key` guards them like every `/v1` route.

Request fields (beside vLLM's): `"readout": false` turns readouts off for the request;
`"readout_prompt": true` adds the prompt positions' readouts (such a request bypasses the
prefix cache with a cache salt, so every prompt position is computed).
"""

import logging
import os
import uuid
from collections.abc import Awaitable, Callable, Sequence
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.completion.protocol import CompletionRequest

from amygdala.readout import token_strings
from amygdala.serve.protocol import RequestError, dumps, readout_flags
from amygdala.vllm_plugin import _vllm
from amygdala.vllm_plugin.channel import Receiver
from amygdala.vllm_plugin.inbox import Inbox, Subscription
from amygdala.vllm_plugin.settings import SESSION_ENV, TIMEOUT_ENV, ReadoutSettings
from amygdala.vllm_plugin.stream import CombinedScores, Rewriter, ZScores

log = logging.getLogger("amygdala.vllm")

Endpoint = Callable[[Any, Request], Awaitable[Any]]


def _error(status: HTTPStatus, message: str, param: str | None = None) -> JSONResponse:
    """An error body shaped like vLLM's own."""
    kind = "NotFoundError" if status == HTTPStatus.NOT_FOUND else "BadRequestError"
    body = {"error": {"message": message, "type": kind, "param": param, "code": status.value}}
    return JSONResponse(body, status_code=status.value)


class _Served:
    """What the routes need once the server runs (built in `init_state`)."""

    def __init__(self, settings: ReadoutSettings, engine_client: Any) -> None:
        from amygdala.artifact import load_artifact

        artifact = load_artifact(settings.vectors, settings.manifest)
        self.manifest = artifact.manifest
        self.manifest_json = orjson.dumps(artifact.manifest)
        shape = (len(artifact.layers), len(artifact.concepts))
        self.zscores = ZScores(artifact.manifest)
        self.combined = CombinedScores(artifact.manifest)
        self.inbox = Inbox()
        self.receiver = Receiver(os.environ[SESSION_ENV], shape, self.inbox.deliver)
        self.receiver.start()
        self.timeout = float(os.environ.get(TIMEOUT_ENV, "60"))
        self._tokenizer = engine_client.get_tokenizer()
        self._token_cache: dict[int, str] = {}

    def token_text(self, ids: Sequence[int]) -> list[str]:
        """Each token decoded on its own (as `amygdala serve` shows them), cached per id:
        a streamed token costs a dict lookup, not a tokenizer call."""
        cache = self._token_cache
        missing = [i for i in dict.fromkeys(ids) if i not in cache]
        if missing:
            cache.update(zip(missing, token_strings(self._tokenizer, missing)))
        return [cache[i] for i in ids]


class ReadoutEndpoints:
    """The `vllm.endpoint_plugins` entry point (vLLM's `EndpointPlugin` protocol)."""

    name = "amygdala"
    required_tasks = ("generate",)

    def __init__(self) -> None:
        self.settings = ReadoutSettings.from_env()
        self.served: _Served | None = None

    def attach_router(self, app: FastAPI) -> None:
        router = APIRouter()
        router.add_api_route("/v1/readout/manifest", self.manifest, methods=["GET"])
        router.add_api_route("/v1/readout/stats", self.stats, methods=["GET"])
        if self.settings is not None:
            for path, kind, model in (
                ("/v1/completions", "completion", CompletionRequest),
                ("/v1/chat/completions", "chat", ChatCompletionRequest),
            ):
                original = _vllm.find_endpoint(app, path, "POST")
                router.add_api_route(
                    path,
                    self._handler(kind, model, original.endpoint),
                    methods=["POST"],
                    dependencies=original.dependencies,
                    responses=original.responses,
                )
        app.include_router(router)

    async def init_state(self, engine_client: Any, state: Any, args: Any) -> None:
        if self.settings is not None and engine_client is not None:
            self.served = _Served(self.settings, engine_client)
            log.info("amygdala readout: receiving on %s", self.served.receiver.address)

    # ---- routes ---------------------------------------------------------------------

    async def manifest(self) -> Response:
        if self.served is None:
            return _error(
                HTTPStatus.NOT_FOUND,
                "readout is off: start vLLM with VLLM_READOUT_VECTORS and "
                "VLLM_READOUT_MANIFEST to serve per-token readouts",
            )
        return Response(self.served.manifest_json, media_type="application/json")

    async def stats(self) -> Response:
        if self.served is None:
            return _error(HTTPStatus.NOT_FOUND, "readout is off")
        return JSONResponse(self.served.inbox.stats())

    def _handler(self, kind: str, model: type, original: Endpoint) -> Endpoint:
        async def handler(request: Any, raw_request: Request) -> Any:
            return await self._serve(kind, request, raw_request, original)

        handler.__annotations__ = {"request": model, "raw_request": Request}
        handler.__name__ = f"create_{kind}_with_readout"
        return handler

    async def _serve(
        self, kind: str, request: Any, raw_request: Request, original: Endpoint
    ) -> Any:
        extra = request.model_extra if request.model_extra is not None else {}
        try:  # the same check and message as `amygdala serve`
            want, prompt = readout_flags(extra)
        except RequestError as exc:
            return _error(HTTPStatus.BAD_REQUEST, exc.message, exc.param)
        extra.pop("readout", None)
        extra.pop("readout_prompt", None)
        xargs = {k: v for k, v in (request.vllm_xargs or {}).items() if k not in _vllm.XARGS}
        request.vllm_xargs = xargs or None
        served = self.served
        if not want or served is None:
            return await original(request, raw_request)
        if getattr(request, "use_beam_search", False):
            return _error(
                HTTPStatus.BAD_REQUEST,
                'readouts are not available with beam search; pass "readout": false',
                "readout",
            )
        key = uuid.uuid4().hex
        base = _vllm.request_base(raw_request, request.request_id)
        n = int(request.n or 1)
        sub = served.inbox.subscribe(
            key, _vllm.choice_matcher(kind, str(base), n), prompt=prompt, n=n
        )
        xargs.update(
            {_vllm.XARG_KEY: key, _vllm.XARG_PID: os.getpid(), _vllm.XARG_PROMPT: int(prompt)}
        )
        request.vllm_xargs = xargs
        keep_token_ids = bool(request.return_token_ids)
        request.return_token_ids = True
        if prompt:  # cached prompt positions are never recomputed: bypass the cache
            request.cache_salt = f"{request.cache_salt or ''}amygdala-{key}"
        rewriter = Rewriter(
            kind,
            sub,
            served.zscores,
            served.token_text,
            prompt=prompt,
            keep_token_ids=keep_token_ids,
            timeout=served.timeout,
            combined=served.combined,
        )
        try:
            response = await original(request, raw_request)
        except BaseException:
            sub.close()
            raise
        return await _rewrite(response, rewriter, sub)


async def _rewrite(response: Any, rewriter: Rewriter, sub: Subscription) -> Any:
    """vLLM's response with readouts added; the subscription closes when it is done."""
    if isinstance(response, StreamingResponse):

        async def body() -> Any:
            try:
                async for event in rewriter.stream(response.body_iterator):
                    yield event
            finally:
                sub.close()

        headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
        return StreamingResponse(
            body(),
            status_code=response.status_code,
            headers=headers,
            media_type=response.media_type,
            background=response.background,
        )
    try:
        if not isinstance(response, JSONResponse) or response.status_code != 200:
            return response
        rewritten = await rewriter.response(orjson.loads(response.body))
    finally:
        sub.close()
    headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
    return Response(
        dumps(rewritten),
        status_code=200,
        headers=headers,
        media_type="application/json",
        background=response.background,
    )
