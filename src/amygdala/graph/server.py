"""The reference memory MCP server: a graph file served over streamable HTTP or stdio.

It speaks the tool names a memory server deployment uses, so the extract command, the
demo and the tests talk to it exactly as they would to a real one. It is read-only:
it has no write tools at all, and the graph file is read once at start.

Tools (every listing is one JSON text, see `LISTING_FORMAT`):
    memory_query(query="all")         nodes a pipeline query selects (`amygdala.graph.query`)
    memory_render(key)                one node's content exactly as stored, tag lines included
    journal_tail(n=10)                the n latest episodic nodes, newest first, with content
    memory_search(keyword, limit=20)  nodes whose key or content holds the keyword (any case),
                                      most occurrences first

An unknown key, a bad query or an empty keyword is a tool error (`isError: true`) whose
text says what was wrong. When the environment variable named by `token_env`
(`AMYGDALA_MEMORY_TOKEN` by default) is set, every HTTP request needs
`Authorization: Bearer <token>`; the token is never printed or logged.

Over stdio (`serve_stdio`) the server is a child process of its client: MCP messages
go over its stdin and stdout, the ready line goes to stderr, no token is checked (none
can be sent), and it stops when its stdin closes.

Example:
    >>> config = ServeConfig(graph=Path("graph.jsonl"), port=7777)  # doctest: +SKIP
    >>> serve(config, announce=print)  # doctest: +SKIP
    serving 312 nodes from graph.jsonl on http://127.0.0.1:7777/mcp
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amygdala._defaults import HOST, MCP_PATH, MEMORY_PORT, MEMORY_TOKEN_ENV
from amygdala._net import DEFAULT_MAX_REQUEST_BYTES, BodyLimit, bind, send_json
from amygdala.errors import ConfigError, GraphError
from amygdala.graph.filesource import FileSource
from amygdala.graph.nodes import GraphRead, Node
from amygdala.graph.query import QueryError, SortStage, query_nodes

if TYPE_CHECKING:
    import socket

    from mcp.server.mcpserver import MCPServer
    from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger(__name__)

DEFAULT_TOKEN_ENV = MEMORY_TOKEN_ENV
DEFAULT_PATH = MCP_PATH
LISTING_FORMAT = "amygdala-memory-listing/1"
"""memory_query, journal_tail and memory_search answer with one JSON text:

    {"format": "amygdala-memory-listing/1", "count": 2, "nodes": [
        {"key": "journal#j-2026-04-02", "node_type": "episodic_session",
         "timestamp": "2026-04-02T21:14:00", "weight": 0.8, "provenance": null,
         "content_len": 412}, …]}

Every node entry has exactly these six fields (null when the node lacks one);
`content_len` counts characters of the raw content. journal_tail adds `content`;
memory_search adds `matches` (occurrences of the keyword). Nodes are in graph order
(the file's order, first appearance of each key) unless the query sorts them.
"""


@dataclass(frozen=True)
class MemoryGraph:
    """The live nodes of a graph file, indexed by key; every tool is a method here."""

    read: GraphRead
    by_key: dict[str, Node] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_key", {n.key: n for n in self.read.nodes})

    @classmethod
    def load(cls, path: Path) -> MemoryGraph:
        return cls(FileSource(Path(path)).read())

    @property
    def nodes(self) -> list[Node]:
        return self.read.nodes

    def query(self, query: str) -> str:
        """memory_query: the listing of the nodes a pipeline query selects."""
        return listing(query_nodes(query, self.nodes))

    def render(self, key: str) -> str:
        """memory_render: the raw content of one node (KeyError when unknown)."""
        try:
            return self.by_key[key].content
        except KeyError:
            raise KeyError(
                f"unknown key {key!r}: no live node has it (memory_query lists the keys)"
            ) from None

    def journal_tail(self, n: int) -> str:
        """journal_tail: the n latest episodic nodes, newest first, with content."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        episodic = query_nodes("type:episodic", self.nodes)
        latest = SortStage("timestamp", descending=True).apply(episodic)[:n]
        return listing(latest, extra=lambda node: {"content": node.content})

    def search(self, keyword: str, limit: int) -> str:
        """memory_search: nodes whose key or content holds the keyword (case-insensitive)."""
        needle = keyword.strip().casefold()
        if not needle:
            raise ValueError("keyword is empty; pass a word to look for")
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        hits = []
        for node in self.nodes:
            count = node.content.casefold().count(needle) + node.key.casefold().count(needle)
            if count:
                hits.append((node, count))
        hits.sort(key=lambda pair: -pair[1])  # stable: ties keep graph order
        counts = {id(node): count for node, count in hits}
        return listing(
            [node for node, _ in hits[:limit]], extra=lambda node: {"matches": counts[id(node)]}
        )


def node_entry(node: Node) -> dict[str, Any]:
    """A node's light metadata, in the fixed field order of `LISTING_FORMAT`."""
    return {
        "key": node.key,
        "node_type": node.node_type,
        "timestamp": node.timestamp,
        "weight": node.weight,
        "provenance": node.provenance,
        "content_len": len(node.content),
    }


def listing(nodes: Sequence[Node], extra: Callable[[Node], dict[str, Any]] | None = None) -> str:
    """Nodes → the JSON text every listing tool returns."""
    entries = [node_entry(n) | (extra(n) if extra else {}) for n in nodes]
    body = {"format": LISTING_FORMAT, "count": len(entries), "nodes": entries}
    return json.dumps(body, ensure_ascii=False)


def build_mcp_server(graph: MemoryGraph, *, render_delay: float = 0.0) -> MCPServer:
    """An MCPServer with the four read-only tools over `graph`.

    `render_delay` (seconds) makes each memory_render wait first; it exists so tests can
    stop the server deterministically while an extraction is under way.
    """
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    server: MCPServer = MCPServer(
        "amygdala-memory",
        instructions="Read-only memory graph. Tools answer with JSON listings "
        f"({LISTING_FORMAT}); memory_render returns one node's raw content.",
        log_level="WARNING",
    )

    @server.tool(structured_output=False)
    def memory_query(query: str = "all") -> str:
        """List nodes selected by a pipeline query, e.g. 'all | type:episodic | limit:10'.

        Stages (joined by |): all, type:<t>, key:<glob>, weight:<op><x>,
        content-len:<op><n>, sort:<key|timestamp|weight|content-len>[:asc|desc], limit:<n>.
        """
        try:
            return graph.query(query)
        except QueryError as exc:
            raise ToolError(str(exc)) from None

    @server.tool(structured_output=False)
    async def memory_render(key: str) -> str:
        """Return one node's full content, exactly as stored (tag lines included)."""
        if render_delay > 0:
            await asyncio.sleep(render_delay)
        try:
            return graph.render(key)
        except KeyError as exc:
            raise ToolError(str(exc.args[0])) from None

    @server.tool(structured_output=False)
    def journal_tail(n: int = 10) -> str:
        """The n latest episodic nodes (newest first), with their content."""
        try:
            return graph.journal_tail(n)
        except ValueError as exc:
            raise ToolError(str(exc)) from None

    @server.tool(structured_output=False)
    def memory_search(keyword: str, limit: int = 20) -> str:
        """Nodes whose key or content contains the keyword (any case), most matches first."""
        try:
            return graph.search(keyword, limit)
        except ValueError as exc:
            raise ToolError(str(exc)) from None

    return server


class BearerTokenMiddleware:
    """ASGI middleware: HTTP requests need `Authorization: Bearer <token>`, else 401.

    Lifespan events pass through, so the MCP session manager still starts. The
    comparison is constant-time; the token is kept out of repr and logs.
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        self._app = app
        self._expected = f"Bearer {token}".encode()

    def __repr__(self) -> str:
        return "BearerTokenMiddleware(token=***)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, self._expected):
                await _unauthorized(send, "missing bearer token" if not given else "wrong token")
                return
        await self._app(scope, receive, send)


async def _unauthorized(send: Send, reason: str) -> None:
    body = json.dumps({"error": "unauthorized", "detail": reason}).encode()
    await send_json(send, 401, body, [(b"www-authenticate", b'Bearer realm="amygdala-memory"')])


@dataclass(frozen=True)
class ServeConfig:
    """How `amygdala memory-server` serves a graph file."""

    graph: Path
    host: str = HOST  # loopback only; pass 0.0.0.0 deliberately to expose it
    port: int = MEMORY_PORT  # 0 picks a free port (the announced URL names it)
    path: str = DEFAULT_PATH  # the MCP endpoint path
    token_env: str = DEFAULT_TOKEN_ENV  # env var whose value, when set, is the bearer token
    render_delay: float = 0.0  # testing aid: seconds each memory_render waits
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES  # larger bodies get 413 unread


def build_app(graph: MemoryGraph, config: ServeConfig, token: str | None) -> ASGIApp:
    """The Starlette app for `config`, behind the request-size cap (413 with a JSON-RPC
    error), and behind the bearer check when a token is set.

    Stateless with plain JSON answers: a read-only server never calls back into the
    client, so it keeps no sessions (a restarted server serves old clients at once),
    and each call costs a few milliseconds instead of the ~50 ms an SSE stream did.
    """
    server = build_mcp_server(graph, render_delay=config.render_delay)
    app: ASGIApp = server.streamable_http_app(
        streamable_http_path=config.path,
        host=config.host,
        stateless_http=True,
        json_response=True,
        max_request_body_size=config.max_request_bytes,  # BodyLimit answers first
    )
    app = BodyLimit(app, config.max_request_bytes, _jsonrpc_error)
    return BearerTokenMiddleware(app, token) if token else app  # 401 before reading a body


def _jsonrpc_error(message: str) -> bytes:
    """A JSON-RPC error body (invalid request), the shape MCP clients read."""
    body = {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": message}}
    return json.dumps(body).encode()


def endpoint_url(host: str, port: int, path: str) -> str:
    """The URL a client on this machine uses to reach the endpoint."""
    shown = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}{path}"


def _load(path: Path) -> MemoryGraph:
    try:
        return MemoryGraph.load(path)
    except GraphError as exc:
        raise GraphError(f"memory-server: {exc}") from None


def serve_stdio(
    graph_path: Path,
    token_env: str = DEFAULT_TOKEN_ENV,
    *,
    render_delay: float = 0.0,
    announce: Callable[[str], None] = log.info,
) -> None:
    """Serve over stdin/stdout until the client closes stdin; `announce` gets one line
    saying so before the first message is read (the command line prints it on stderr).

    Stdout carries MCP messages only (the SDK points `sys.stdout` at stderr while it
    serves, so a stray print cannot corrupt the stream).
    """
    graph = _load(graph_path)
    if os.environ.get(token_env):
        log.warning(
            "note: $%s is set but not checked: over stdio the client is the "
            "process that started this server, and it sends no token",
            token_env,
        )
    announce(f"serving {len(graph.nodes)} nodes from {graph_path} over stdio")
    build_mcp_server(graph, render_delay=render_delay).run("stdio")


def serve(config: ServeConfig, announce: Callable[[str], None] = log.info) -> None:
    """Serve until interrupted; `announce` gets one line naming the URL once requests
    are accepted (the command line prints it on stdout)."""
    import uvicorn

    if not config.path.startswith("/"):
        raise ConfigError(f"--path must start with '/', got {config.path!r}")
    graph = _load(config.graph)
    token = os.environ.get(config.token_env) or None
    app = build_app(graph, config, token)
    sock = bind(config.host, config.port)
    url = endpoint_url(config.host, sock.getsockname()[1], config.path)
    auth = f"; bearer token required (from ${config.token_env})" if token else ""
    if not token and config.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "warning: serving on %s without a token: anyone who can reach this "
            "port can read the graph; set $%s to require one",
            config.host,
            config.token_env,
        )
    line = f"serving {len(graph.nodes)} nodes from {config.graph} on {url}{auth}"

    class _Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                announce(line)

    try:
        uv_config = uvicorn.Config(
            app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5
        )
        _Server(uv_config).run(sockets=[sock])
    finally:
        sock.close()
