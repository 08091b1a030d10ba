"""What amygdala's two HTTP servers share: the listening socket and the request-size cap.

`amygdala serve` and `amygdala memory-server` both bind their socket here (so a busy port
or a bad address is one clear error before anything expensive starts) and both put
`BodyLimit` in front of their app, so no request body larger than the cap is ever held
in memory.

Example:
    sock = bind("127.0.0.1", 0)  # port 0: the kernel picks a free one
    app = BodyLimit(app, DEFAULT_MAX_REQUEST_BYTES, lambda message: json.dumps(...).encode())
    uvicorn.Server(uvicorn.Config(app)).run(sockets=[sock])
"""

from __future__ import annotations

import argparse
import errno
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from amygdala.errors import ConfigError

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024  # 4 MiB: far beyond any prompt a model can take
MAX_PORT = 65535


def check_port(port: int) -> int:
    """`port` when it is a TCP port number (0 = any free port); else a `ConfigError`."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= MAX_PORT:
        raise ConfigError(
            f"--port must be a whole number in 0…{MAX_PORT} (0 picks a free port), got {port!r}"
        )
    return port


def port_arg(text: str) -> int:
    """argparse `type=` for --port: the same rule as `check_port`, at parse time."""
    try:
        return check_port(int(text))
    except (ValueError, ConfigError):
        raise argparse.ArgumentTypeError(
            f"must be a whole number in 0…{MAX_PORT} (0 picks a free port), got {text!r}"
        ) from None


def byte_count_arg(text: str) -> int:
    """argparse `type=` for a size in bytes: a whole number >= 1, or with a K/M/G suffix
    (powers of 1024: `64M` = 64 MiB)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    digits, scale = text.strip(), 1
    if digits[-1:].upper() in units:
        digits, scale = digits[:-1], units[digits[-1].upper()]
    if not digits.isdigit() or int(digits) < 1:
        raise argparse.ArgumentTypeError(
            f"must be a whole number of bytes >= 1 (or with K, M, G: 64M), got {text!r}"
        )
    return int(digits) * scale


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to `host:port` (not yet listening: uvicorn listens on it).

    `IPPROTO_TCP` is passed explicitly: asyncio sets `TCP_NODELAY` on accepted connections
    only when the listening socket says it is TCP, and without it every small answer waits
    ~40 ms for the client's delayed ACK.
    """
    check_port(port)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except (OSError, ValueError) as exc:  # gaierror is an OSError; a NUL in host a ValueError
        sock.close()
        reason = getattr(exc, "strerror", None) or str(exc)
        port_trouble = getattr(exc, "errno", None) in (errno.EADDRINUSE, errno.EACCES)
        hint = "pick another --port (0 picks a free one)" if port_trouble else "check --host"
        raise ConfigError(f"cannot listen on {host}:{port} ({reason}); {hint}") from None
    sock.set_inheritable(True)
    return sock


def describe_bytes(n: int) -> str:
    """`4194304` → `4194304 bytes (4 MiB)`: exact, plus a readable size."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n} bytes ({n / size:.4g} {unit})"
    return f"{n} bytes"


async def send_json(
    send: Send, status: int, payload: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Answer an ASGI request with a whole JSON body (middleware that answers before the
    app runs: the 413 here, the memory server's 401)."""
    start = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    await send(
        {"type": "http.response.start", "status": status, "headers": start + (headers or [])}
    )
    await send({"type": "http.response.body", "body": payload})


class BodyLimit:
    """ASGI middleware: request bodies over `max_bytes` get 413 before the app runs.

    A declared `Content-Length` over the cap is refused without reading a byte; a body
    sent without one (chunked) is read only until it passes the cap. A body within the
    cap is read whole and handed to the app as one message, so the app never waits on a
    slow client. `error_body(message)` is the JSON body of the 413, in the server's own
    error shape. A client that leaves before its body is complete gets nothing.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, error_body: Callable[[str], bytes]) -> None:
        if max_bytes < 1:
            raise ConfigError(f"the request-size cap must be at least 1 byte, got {max_bytes}")
        self.app = app
        self.max_bytes = max_bytes
        self.error_body = error_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before its body was complete: nobody to answer
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await self._refuse(send)
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(bytes(body), receive), send)

    async def _refuse(self, send: Send) -> None:
        message = (
            f"the request body is larger than {describe_bytes(self.max_bytes)}, this "
            "server's limit; send less, or start the server with a larger --max-request-bytes"
        )
        await send_json(send, 413, self.error_body(message), [(b"connection", b"close")])


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the buffered body once, then the client's next messages."""
    pending = [body]

    async def replayed() -> Message:
        if pending:
            return {"type": "http.request", "body": pending.pop(), "more_body": False}
        return await receive()

    return replayed
