"""The HTTP layer: a Starlette app around one `Engine`.

Routes: `GET /v1/models`, `POST /v1/completions`, `POST /v1/chat/completions`,
`GET /v1/readout/manifest` (404 without vectors), and an open `GET /health` with the
engine's counters. Every `/v1` route wants `Authorization: Bearer <key>` when the
server has a key. Streams are server-sent events (`data: {json}\\n\\n`, then
`data: [DONE]`); a client that goes away cancels its sequences, which frees their slot.

Every error is an OpenAI error body (`{"error": {"message", "type", "param", "code"}}`):
a body over the size cap gets 413 before it is read (`amygdala._net.BodyLimit`), a
request that is not what the API takes gets 400, and `Api.guard` is the one place that
turns exceptions into answers. Decoding JSON, tokenizing and building a whole response
run in worker threads, so a 4 MB prompt never stalls `/health` or other streams.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from amygdala._net import DEFAULT_MAX_REQUEST_BYTES, BodyLimit
from amygdala.errors import ConfigError
from amygdala.readout import token_strings
from amygdala.serve.engine import (
    Engine,
    ErrorEvent,
    Event,
    GenerationRequest,
    PromptEvent,
    TokenEvent,
    is_final,
)
from amygdala.serve.protocol import (
    FALLBACK_CHAT_TEMPLATE,
    Kind,
    Parsed,
    RequestError,
    ResponseBuilder,
    dumps,
    error_body,
    parse_body,
    parse_chat,
    parse_completion,
)

log = logging.getLogger("amygdala.serve")


@dataclass(frozen=True)
class ServerConfig:
    """What the app serves besides the engine."""

    model_name: str  # the id in /v1/models and in responses
    manifest: dict[str, Any] | None  # None: readout is off
    api_key: str | None  # None: open (bind to loopback)
    chat_template: str | None  # None: the tokenizer's, else a plain fallback
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES  # larger bodies get 413 unread


async def engine_events(engine: Engine, requests: list[GenerationRequest]) -> AsyncIterator[Event]:
    """The events of `requests`, as they come; leaving early cancels the sequences."""
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[Event] = asyncio.Queue()

    def sink(event: Event) -> None:
        try:
            loop.call_soon_threadsafe(inbox.put_nowait, event)
        except RuntimeError:  # the loop is gone (shutdown): nobody is listening
            for handle in handles:
                handle.cancel()

    handles = []
    try:
        for request in requests:
            handles.append(engine.submit(request, sink))
        remaining = len(requests)
        while remaining:
            event = await inbox.get()
            remaining -= is_final(event)
            yield event
    finally:
        for handle in handles:
            handle.cancel()


class _EventStream(StreamingResponse):
    """A streaming response that always closes its generator (so its sequences stop)."""

    def __init__(self, content: AsyncIterator[bytes]) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._content = content

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self._content, "aclose", None)
            if aclose is not None:
                await aclose()


async def _disconnected(request: Request) -> None:
    """Return once the client has gone (the body was already read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _sse(obj: Any) -> bytes:
    return b"data: " + dumps(obj) + b"\n\n"


def _prompt_chunk(builder: ResponseBuilder, event: PromptEvent) -> bytes:
    return _sse(builder.role_chunk(event.index, event))


class JSONResponse(Response):
    """A JSON response written with orjson (float32 arrays included)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content)


class Api:
    """Route handlers; state lives here, not in globals."""

    def __init__(self, engine: Engine, config: ServerConfig) -> None:
        self.engine = engine
        self.config = config
        tok = engine.tokenizer
        self.template = config.chat_template or (
            None if getattr(tok, "chat_template", None) else FALLBACK_CHAT_TEMPLATE
        )

    def token_text(self, ids: Any) -> list[str]:
        return list(token_strings(self.engine.tokenizer, list(ids)))

    def authorized(self, request: Request) -> bool:
        key = self.config.api_key
        if key is None:
            return True
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), key.encode()
        )

    def guard(
        self, handler: Callable[[Request], Awaitable[Response]], *, auth: bool = True
    ) -> Callable[[Request], Awaitable[Response]]:
        """Auth first (unless `auth=False`), then the handler: the app's one error handler.

        A `RequestError` answers with its own status and OpenAI error body. Anything
        else is a bug: its traceback goes to the server log, and the client gets a 500
        error body that says so, never a traceback.
        """

        async def wrapped(request: Request) -> Response:
            try:
                if auth and not self.authorized(request):
                    raise RequestError(
                        401,
                        "missing or wrong API key: send 'Authorization: Bearer <key>'",
                        code="invalid_api_key",
                    )
                return await handler(request)
            except RequestError as exc:
                return JSONResponse(exc.body(), status_code=exc.status)
            except Exception:
                log.exception("%s %s failed", request.method, request.url.path)
                message = "internal error: the server failed on this request; its log says why"
                return JSONResponse(error_body(500, message), status_code=500)

        return wrapped

    async def health(self, _request: Request) -> Response:
        return JSONResponse({"status": "ok", **self.engine.snapshot()})

    async def models(self, _request: Request) -> Response:
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {
                        "id": self.config.model_name,
                        "object": "model",
                        "created": int(time.time()),
                        "owned_by": "amygdala",
                        "readout": self.config.manifest is not None,
                    }
                ],
            }
        )

    async def manifest(self, _request: Request) -> Response:
        if self.config.manifest is None:
            raise RequestError(
                404, "readout is off: this server was started without --vectors", code="readout_off"
            )
        return JSONResponse(self.config.manifest)

    async def completions(self, request: Request) -> Response:
        raw = await request.body()  # already whole and within the cap (BodyLimit)
        return await self._answer(await asyncio.to_thread(self.parse, "completion", raw), request)

    async def chat(self, request: Request) -> Response:
        raw = await request.body()
        return await self._answer(await asyncio.to_thread(self.parse, "chat", raw), request)

    @property
    def _readout_on(self) -> bool:
        return self.engine.projector is not None

    def parse(self, kind: Kind, raw: bytes) -> Parsed:
        """Body bytes → a request the engine can take, or a `RequestError`.

        Decodes the JSON, checks the model and every field, tokenizes and checks the
        prompt against the model. A long prompt takes seconds of CPU here, so the routes
        call this in a worker thread, off the event loop.
        """
        body = parse_body(raw)
        model = body.get("model") if isinstance(body, dict) else None
        if model is not None and not isinstance(model, str):
            raise RequestError(400, "'model' must be a string", "model")
        if model not in (None, "", self.config.model_name):
            raise RequestError(
                404,
                f"model {model!r} is not served here; this server serves "
                f"{self.config.model_name!r}",
                "model",
                "model_not_found",
            )
        if kind == "completion":
            parsed = parse_completion(body, self.engine.tokenizer, with_readout=self._readout_on)
        else:
            parsed = parse_chat(
                body,
                self.engine.tokenizer,
                self.template,
                with_readout=self._readout_on,
                default_max=self.engine.max_positions,
            )
        try:
            self.engine.check_prompt(parsed.prompt_ids)
        except ConfigError as exc:
            param = "prompt" if kind == "completion" else "messages"
            raise RequestError(400, str(exc), param) from None
        return parsed

    async def _answer(self, parsed: Parsed, request: Request) -> Response:
        builder = ResponseBuilder(parsed, self.config.model_name, self.token_text)
        if parsed.stream:
            return _EventStream(self._stream(parsed, builder))
        work = asyncio.ensure_future(self._collect(parsed))
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (work, gone):
                if not task.done():
                    task.cancel()  # a client that left cancels its sequences
        if not work.done() or work.cancelled():
            return Response(status_code=499)  # nobody is listening any more
        tokens, prompts = work.result()
        # the whole response (every token's text and readout) is built off the event loop
        return await asyncio.to_thread(lambda: JSONResponse(builder.final(tokens, prompts)))

    async def _collect(
        self, parsed: Parsed
    ) -> tuple[dict[int, list[TokenEvent]], dict[int, PromptEvent]]:
        tokens: dict[int, list[TokenEvent]] = {}
        prompts: dict[int, PromptEvent] = {}
        async for event in engine_events(self.engine, parsed.requests()):
            if isinstance(event, ErrorEvent):
                raise RequestError(500, f"generation failed: {event.message}")
            if isinstance(event, PromptEvent):
                prompts[event.index] = event
            else:
                tokens.setdefault(event.index, []).append(event)
        return tokens, prompts

    async def _stream(self, parsed: Parsed, builder: ResponseBuilder) -> AsyncIterator[bytes]:
        started: set[int] = set()
        count = 0
        if parsed.kind == "chat" and not parsed.readout_prompt:
            for index in range(parsed.n):
                started.add(index)
                yield _sse(builder.role_chunk(index, None))
        async for event in engine_events(self.engine, parsed.requests()):
            if isinstance(event, ErrorEvent):
                yield _sse(RequestError(500, f"generation failed: {event.message}").body())
                continue
            if event.index not in started and (
                parsed.kind == "chat" or isinstance(event, PromptEvent)
            ):
                started.add(event.index)
                if isinstance(event, PromptEvent):  # a long prompt's texts: off the loop
                    yield await asyncio.to_thread(_prompt_chunk, builder, event)
                else:
                    yield _sse(builder.role_chunk(event.index, None))
            if isinstance(event, TokenEvent):
                count += 1
                yield _sse(builder.token_chunk(event))
        if parsed.include_usage:
            yield _sse(builder.usage_chunk(count))
        yield b"data: [DONE]\n\n"


def create_app(engine: Engine, config: ServerConfig) -> ASGIApp:
    """The ASGI app; the engine's worker runs while the app does.

    Example:
        app = create_app(Engine(lm, artifact), ServerConfig("m", artifact.manifest, None, None))
        uvicorn.run(app, host="127.0.0.1", port=8000)
    """
    api = Api(engine, config)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            await asyncio.to_thread(engine.close)

    async def no_route(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = "not_found" if exc.status_code == 404 else None
        body = error_body(exc.status_code, f"{exc.detail}: {_request.url.path}", code=code)
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    routes = [
        Route("/health", api.guard(api.health, auth=False), methods=["GET"]),
        Route("/v1/models", api.guard(api.models), methods=["GET"]),
        Route("/v1/readout/manifest", api.guard(api.manifest), methods=["GET"]),
        Route("/v1/completions", api.guard(api.completions), methods=["POST"]),
        Route("/v1/chat/completions", api.guard(api.chat), methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: no_route})
    return BodyLimit(
        app,
        config.max_request_bytes,
        lambda message: dumps(error_body(413, message, code="request_too_large")),
    )
