"""How the MCP graph source reaches a memory server: streamable HTTP, legacy SSE, or stdio.

A `Transport` opens one connection (an `mcp` SDK `Client`) and knows what its own
failures mean; the retry loop, the tool calls and the parsing live in `mcp_source`.

* `HttpTransport` speaks streamable HTTP to an endpoint URL, or the legacy SSE
  transport when the URL's path ends in `/sse`. The bearer token goes into an
  `Authorization` header only; HTTP statuses are recorded as they arrive, since the SDK
  hides them and a 401 or 404 needs its own message.
* `StdioTransport` starts the server command as a subprocess (an argument list, never
  through a shell) with this process's environment, and speaks MCP over its stdin and
  stdout. Its stderr goes to a temporary file whose last lines are quoted when the
  server fails. A reconnect starts the command again. Anything the server writes to
  stdout that is not an MCP message is fatal: the stream can no longer be trusted.

Example:
    >>> transport = StdioTransport(("memory-server", "--stdio"))
    >>> transport.display, transport.describe()
    ('stdio:memory-server --stdio', 'mcp:stdio:memory-server --stdio')
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shlex
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, TextIO, cast
from urllib.parse import urlsplit, urlunsplit

from amygdala.errors import ConfigError, GraphError

if TYPE_CHECKING:
    import anyio
    import httpx2
    from mcp.client.client import Client

TransportKind = Literal["streamable-http", "sse", "stdio"]
DEFAULT_PATH = "/mcp"
STDERR_LINES = 5  # lines of a stdio server's stderr quoted in an error
STDERR_CHARS = 600
STDERR_KEEP = 64 * 1024  # bytes of a stdio server's stderr read back after a connection
SSE_READ_TIMEOUT = 300.0  # seconds an SSE stream may stay quiet between events
_SECRET_OPTION = re.compile(
    r"^--?[\w-]*(token|secret|passw(or)?d|api[-_]?key|auth|header|credential)", re.IGNORECASE
)


class Retry(Exception):
    """A transient failure: reconnect and carry on after a backoff."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


def leaves(exc: BaseException) -> Iterator[BaseException]:
    """The exceptions inside (nested) exception groups, or exc itself."""
    inner = getattr(exc, "exceptions", None)
    if isinstance(inner, (list, tuple)):
        for sub in inner:
            yield from leaves(sub)
    else:
        yield exc


def describe_exception(exc: BaseException) -> str:
    """`Type: message`, or a plain phrase for the failures a user meets most."""
    import httpx2
    from mcp.shared.exceptions import MCPError
    from mcp_types import CONNECTION_CLOSED

    if isinstance(exc, httpx2.ConnectError):
        return "connection refused"
    if isinstance(exc, httpx2.RemoteProtocolError):
        return "the server closed the connection without answering"
    if isinstance(exc, MCPError) and exc.code == CONNECTION_CLOSED:
        return "the server closed the connection"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def quiet_sdk_logs() -> None:
    """Keep the SDK's own tracebacks (a bad stdout line, a broken stream) off stderr.

    The SDK logs transport faults with `logger.exception`; with logging unconfigured,
    Python's last-resort handler would print them next to our one error line. A
    NullHandler on the `mcp` logger (what the logging HOWTO asks of libraries) stops
    that; an application that configures logging still sees them.
    """
    logger = logging.getLogger("mcp")
    if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
        logger.addHandler(logging.NullHandler())


class Transport(Protocol):
    """One way of reaching a server; an instance lives for one read."""

    kind: TransportKind
    display: str  # what error messages name: the endpoint URL, or `stdio:COMMAND`

    def describe(self) -> str:
        """The source description written to manifests (`mcp:…`)."""
        ...

    def connect(self, timeout: float) -> contextlib.AbstractAsyncContextManager[Client]:
        """An entered, initialized `Client` for one connection."""
        ...

    def verdict(self, failures: list[BaseException], contacted: bool) -> GraphError | Retry | None:
        """What a failure that escaped a connection means here; None when it is not ours."""
        ...

    def call_verdict(self) -> GraphError | Retry | None:
        """What a protocol error answering one call means here (HTTP status, stray output)."""
        ...

    def transient(self, failure: BaseException) -> bool:
        """A failure worth a reconnect."""
        ...

    def gone(self) -> str:
        """The phrase ending a gave-up message: what to check, what the server said."""
        ...

    def mask(self, text: str) -> str:
        """`text` with any secret replaced by `***`."""
        ...


# -- streamable HTTP and SSE ----------------------------------------------------------


def endpoint_url(url: str) -> str:
    """A base URL gets `/mcp` appended; a URL with a path is taken as the endpoint."""
    text = url.strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(
            f"--memory-mcp-url {url!r} is not an http(s) URL; pass e.g. http://localhost:7777"
        )
    path = parts.path if parts.path not in ("", "/") else DEFAULT_PATH
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def display_url(url: str) -> str:
    """The endpoint without userinfo or query string (either could hold a secret)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def http_kind(endpoint: str) -> TransportKind:
    """The legacy SSE transport when the endpoint's path says so (`…/sse`)."""
    return "sse" if urlsplit(endpoint).path.rstrip("/").endswith("/sse") else "streamable-http"


class HttpTransport:
    """Streamable HTTP (or legacy SSE) with an optional bearer token."""

    def __init__(self, url: str, token: str | None, token_env: str) -> None:
        self.endpoint = endpoint_url(url)
        self.display = display_url(self.endpoint)
        self.kind: TransportKind = http_kind(self.endpoint)
        self._token = token
        self._token_env = token_env
        self._statuses: list[int] = []  # HTTP statuses >= 400 not looked at yet
        self._timeout = 30.0  # connect/write limit; set by connect()

    def __repr__(self) -> str:
        return f"HttpTransport({self.display!r}, token_env={self._token_env!r})"

    def describe(self) -> str:
        return f"mcp:{self.display}"

    def mask(self, text: str) -> str:
        return text.replace(self._token, "***") if self._token else text

    def _http(self, read_timeout: float) -> httpx2.AsyncClient:
        """The HTTP client of one connection: token header, timeouts, status recorder."""
        import httpx2

        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        statuses = self._statuses

        async def record(response: httpx2.Response) -> None:
            if response.status_code >= 400:  # the SDK hides the status; auth errors need it
                statuses.append(response.status_code)

        return httpx2.AsyncClient(
            headers=headers,
            timeout=httpx2.Timeout(self._timeout, read=read_timeout),
            event_hooks={"response": [record]},
        )

    @contextlib.asynccontextmanager
    async def connect(self, timeout: float) -> AsyncIterator[Client]:
        from mcp.client.client import Client
        from mcp.client.sse import sse_client
        from mcp.client.streamable_http import streamable_http_client

        self._timeout = timeout
        if self.kind == "sse":

            def factory(
                headers: dict[str, str] | None = None,
                timeout: httpx2.Timeout | None = None,
                auth: httpx2.Auth | None = None,
            ) -> httpx2.AsyncClient:
                return self._http(SSE_READ_TIMEOUT)  # the event stream may stay quiet

            transport: Any = sse_client(self.endpoint, httpx_client_factory=factory)
            async with Client(transport, cache=None, read_timeout_seconds=timeout) as client:
                yield client
            return
        async with self._http(timeout * 2) as http:
            transport = streamable_http_client(self.endpoint, http_client=http)
            async with Client(transport, cache=None, read_timeout_seconds=timeout) as client:
                yield client

    def verdict(self, failures: list[BaseException], contacted: bool) -> GraphError | Retry | None:
        import httpx2

        status = self._status_verdict(contacted)
        if isinstance(status, GraphError):
            return status
        for leaf in failures:
            if isinstance(leaf, httpx2.ConnectError) and not contacted:
                return GraphError(
                    f"cannot connect to the memory MCP server at {self.display} "
                    f"({describe_exception(leaf)}): is it running? Start one with `amygdala "
                    "memory-server --graph FILE --port 7777`, or check --memory-mcp-url"
                )
        return status

    def call_verdict(self) -> GraphError | Retry | None:
        return self._status_verdict(contacted=True)

    def _status_verdict(self, contacted: bool) -> GraphError | Retry | None:
        """What the HTTP error statuses seen since the last look say (then forget them)."""
        statuses, self._statuses[:] = list(self._statuses), []
        auth = [s for s in statuses if s in (401, 403)]
        if auth:
            env = self._token_env
            hint = (
                f"the token in ${env} was not accepted; set it to the server's token"
                if self._token
                else f"no token was sent; set ${env} to the server's token (or name another "
                "variable with --mcp-token-env)"
            )
            return GraphError(f"{self.display} rejected the request (HTTP {auth[0]}): {hint}")
        if 404 in statuses and not contacted:
            return GraphError(
                f"{self.display}: HTTP 404, no MCP endpoint at this path; pass the server's "
                f"base URL ({DEFAULT_PATH} is appended), its full endpoint URL, or a URL "
                "ending in /sse for the legacy SSE transport"
            )
        if 404 in statuses:
            return Retry("the server no longer knows this session (HTTP 404; did it restart?)")
        server = [s for s in statuses if s >= 500]
        if server:
            return Retry(f"HTTP {server[0]} from the server")
        return None

    def transient(self, failure: BaseException) -> bool:
        import httpx2
        from mcp.shared.exceptions import MCPError

        return isinstance(failure, (httpx2.TransportError, MCPError, OSError, TimeoutError))

    def gone(self) -> str:
        return "is it still running?"


# -- stdio ------------------------------------------------------------------------------


def split_command(command: str | Sequence[str]) -> tuple[str, ...]:
    """`"CMD ARGS…"` split as a shell would (shlex, no expansion), or a list as given."""
    if isinstance(command, str):
        try:
            argv = tuple(shlex.split(command))
        except ValueError as exc:
            raise ConfigError(
                f"--memory-mcp-command {command!r} cannot be split into arguments ({exc}); "
                "check its quotes"
            ) from None
    else:
        argv = tuple(command)
    if not argv or not argv[0].strip():
        raise ConfigError(
            "--memory-mcp-command is empty; pass the command that starts a memory MCP server "
            "on stdio, e.g. 'amygdala memory-server --graph graph.jsonl --stdio'"
        )
    return argv


def display_command(argv: Sequence[str]) -> str:
    """The command as a shell line, with values of secret-looking options masked."""
    shown: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            shown.append("***")
            hide_next = False
        elif _SECRET_OPTION.match(arg):
            name, eq, _ = arg.partition("=")
            shown.append(f"{name}=***" if eq else arg)
            hide_next = not eq
        elif "bearer " in arg.lower():
            shown.append("***")
        else:
            shown.append(arg)
    return shlex.join(shown)


class StdioTransport:
    """A server started as a subprocess, spoken to over its stdin and stdout."""

    kind: TransportKind = "stdio"

    def __init__(self, argv: Sequence[str]) -> None:
        self.argv = tuple(argv)
        self.command = display_command(self.argv)
        self.display = f"stdio:{self.command}"
        self.stray: list[str] = []  # stdout lines that were not MCP messages
        self._scope: anyio.CancelScope | None = None  # the running connection's work
        self.stderr = ""  # the last started server's stderr

    def __repr__(self) -> str:
        return f"StdioTransport({self.command!r})"

    def describe(self) -> str:
        return f"mcp:{self.display}"

    def mask(self, text: str) -> str:
        return text

    @contextlib.asynccontextmanager
    async def connect(self, timeout: float) -> AsyncIterator[Client]:
        import anyio
        from mcp.client.client import Client
        from mcp.client.stdio import StdioServerParameters, stdio_client

        params = StdioServerParameters(
            command=self.argv[0], args=list(self.argv[1:]), env=dict(os.environ)
        )
        with tempfile.TemporaryFile() as errlog:
            try:
                transport = stdio_client(params, errlog=cast("TextIO", errlog))
                async with Client(
                    transport,
                    cache=None,
                    read_timeout_seconds=timeout,
                    message_handler=self._on_message,
                ) as client:
                    if self.stray:  # a banner before the handshake's answer
                        raise self._stray_error()
                    with anyio.CancelScope() as self._scope:
                        yield client
                if self.stray:  # the connection was cut short on purpose: say why
                    raise self._stray_error()
            finally:  # keep the tail only: a chatty server's log can be large
                errlog.seek(max(0, errlog.seek(0, os.SEEK_END) - STDERR_KEEP))
                self.stderr = errlog.read().decode("utf-8", errors="replace")

    async def _on_message(self, message: object) -> None:
        """Stdout lines that are not MCP messages arrive here as exceptions: fatal.

        The line is recorded and the connection's work is cancelled, so the pending calls
        stop at once (raising here instead would make the SDK log a traceback).
        """
        if isinstance(message, ValueError):  # pydantic's ValidationError is one
            self.stray.append(_offending_input(message))
            if self._scope is not None:
                self._scope.cancel()

    def stderr_tail(self) -> str:
        lines = [line.rstrip() for line in self.stderr.splitlines() if line.strip()]
        if not lines:
            return "it wrote nothing to stderr"
        tail = " | ".join(lines[-STDERR_LINES:])
        if len(tail) > STDERR_CHARS:
            tail = "…" + tail[-STDERR_CHARS:]
        return f"its stderr ends: {tail!r}"

    def _stray_error(self) -> GraphError:
        line = " ".join(self.stray[0].split())[:120]
        return GraphError(
            f"the memory MCP server {self.display} wrote a line to stdout that is not an MCP "
            f"message: {line!r}; a stdio server may write only MCP messages to stdout (logs "
            f"belong on stderr); {self.stderr_tail()}"
        )

    def verdict(self, failures: list[BaseException], contacted: bool) -> GraphError | Retry | None:
        if self.stray:
            return self._stray_error()
        for leaf in failures:
            if isinstance(leaf, UnicodeDecodeError):
                return GraphError(
                    f"the memory MCP server {self.display} wrote bytes to stdout that are not "
                    f"UTF-8 ({leaf.reason}); a stdio server may write only MCP messages "
                    f"there; {self.stderr_tail()}"
                )
            if isinstance(leaf, OSError) and not contacted:
                return self._cannot_start(leaf)
        if not contacted:
            cause = describe_exception(failures[0]) if failures else "no answer"
            return GraphError(
                f"the memory MCP server {self.display} did not complete the MCP handshake "
                f"({cause}; {self.stderr_tail()}): is it an MCP server speaking stdio?"
            )
        return None

    def _cannot_start(self, exc: OSError) -> GraphError:
        program = self.argv[0]
        if exc.errno == errno.ENOENT:
            why = f"command {program!r} not found (not on PATH, nor a file)"
        elif exc.errno == errno.EACCES:
            why = f"{program!r} is not executable"
        else:
            why = f"{program!r} could not be started ({exc.strerror or exc})"
        return GraphError(
            f"cannot start the memory MCP server {self.display}: {why}; check --memory-mcp-command"
        )

    def call_verdict(self) -> GraphError | Retry | None:
        return self._stray_error() if self.stray else None

    def transient(self, failure: BaseException) -> bool:
        from mcp.shared.exceptions import MCPError

        return isinstance(failure, (MCPError, OSError, TimeoutError))

    def gone(self) -> str:
        return f"it was started again for each retry; {self.stderr_tail()}."


def _offending_input(exc: ValueError) -> str:
    """The stdout line a parse error is about (pydantic keeps it), else the message."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        with contextlib.suppress(Exception):
            value = errors()[0].get("input")
            if value is not None:
                return str(value)
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
