"""The memory-MCP-server graph source: list node keys with one tool, fetch each node with another.

It talks to any memory server over streamable HTTP with the official `mcp` SDK client:
`memory_query` (a pipeline query, `all` by default) lists the nodes, then
`memory_render` fetches each node's raw content, a few at a time. Tool names, the
argument names and the query are flags, since deployments differ.

Listing formats understood (one JSON text, or the tool's structured content): the
reference server's `{"nodes": [{"key", "node_type", "timestamp", "weight",
"provenance", …}]}`, a bare list of such objects, a list of key strings, or
`{"keys": [...]}`. Metadata that comes with a key ends up in the node exactly as a file
export's would (the same validation runs), so extracting from a graph file and from
the reference server serving that file gives the same nodes in the same order, and so
byte-identical training data.

Failures are `GraphError`s that name the URL and the cause: nothing listening (start
`amygdala memory-server`), the token rejected, a tool missing or returning an error,
output that is not a listing, or a server that stops answering mid-way. Transient
failures (connection dropped, timeouts, HTTP 5xx) are retried with exponential backoff
on a fresh connection; nodes already fetched are kept. The bearer token is read from
the environment variable `token_env` names when `read()` runs, sent only as an
`Authorization` header, and masked in any server text an error quotes.

Example:
    >>> source = McpGraphSource(McpOptions(url="http://localhost:7777"))  # doctest: +SKIP
    >>> read = source.read()  # doctest: +SKIP
    >>> read.source, len(read.nodes)  # doctest: +SKIP
    ('mcp:http://localhost:7777/mcp', 312)
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from amygdala.errors import ConfigError, GraphError
from amygdala.graph.filesource import parse_record
from amygdala.graph.nodes import GraphRead, Node

if TYPE_CHECKING:
    import httpx2
    from mcp.client.client import Client
    from mcp_types import CallToolResult

DEFAULT_TOKEN_ENV = "AMYGDALA_MEMORY_TOKEN"
DEFAULT_PATH = "/mcp"
_SNIPPET = 120  # characters of unparsable tool output quoted in an error


@dataclass(frozen=True)
class McpOptions:
    """How to reach a memory MCP server and which tools to call."""

    url: str  # base URL (`/mcp` is appended) or the full endpoint URL
    query: str = "all"  # what the query tool is asked for
    query_tool: str = "memory_query"
    query_arg: str = "query"  # the query tool's argument name
    render_tool: str = "memory_render"
    render_arg: str = "key"  # the render tool's argument name
    token_env: str = DEFAULT_TOKEN_ENV  # NAME of the env var holding the bearer token
    concurrency: int = 8  # render calls in flight at once
    timeout: float = 30.0  # seconds per tool call (and per connection attempt)
    retries: int = 3  # retries of a transient failure without progress in between
    backoff: float = 0.5  # first retry waits this long, then twice as long each time
    progress: bool = True  # progress bar on stderr

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ConfigError(f"--mcp-concurrency must be >= 1, got {self.concurrency}")
        if not self.timeout > 0:
            raise ConfigError(f"--mcp-timeout must be > 0 seconds, got {self.timeout}")
        if self.retries < 0:
            raise ConfigError(f"--mcp-retries must be >= 0, got {self.retries}")
        if self.backoff < 0:
            raise ConfigError(f"--mcp-backoff must be >= 0, got {self.backoff}")
        for flag, name in (("--query-tool", self.query_tool), ("--render-tool", self.render_tool)):
            if not name.strip():
                raise ConfigError(f"{flag} must name a tool")
        endpoint_url(self.url)  # validate early


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


def _display_url(url: str) -> str:
    """The endpoint without userinfo or query string (either could hold a secret)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


@dataclass
class _Fetch:
    """What one read has learned so far; it survives reconnects."""

    entries: list[dict[str, Any]] | None = None  # the listing, in order
    problems: list[str] = field(default_factory=list)
    contents: dict[str, str] = field(default_factory=dict)
    contacted: bool = False  # a request got an answer at least once
    http_errors: list[int] = field(default_factory=list)  # HTTP statuses >= 400 seen

    @property
    def pending(self) -> list[str]:
        return [e["key"] for e in self.entries or [] if e["key"] not in self.contents]


class _Retry(Exception):
    """A transient failure: reconnect and carry on after a backoff."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    """The exceptions inside (nested) exception groups, or exc itself."""
    inner = getattr(exc, "exceptions", None)
    if isinstance(inner, (list, tuple)):
        for sub in inner:
            yield from _leaves(sub)
    else:
        yield exc


class McpGraphSource:
    """A memory graph read from an MCP server (see the module docstring)."""

    def __init__(self, options: McpOptions) -> None:
        self.options = options
        self.endpoint = endpoint_url(options.url)
        self.display = _display_url(self.endpoint)

    def __repr__(self) -> str:
        return f"McpGraphSource({self.display!r}, token_env={self.options.token_env!r})"

    def describe(self) -> str:
        return f"mcp:{self.display}"

    def read(self) -> GraphRead:
        """List and fetch every node; raises GraphError when the graph cannot be read."""
        token = os.environ.get(self.options.token_env) or None
        reader = _Reader(self, token)
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # the usual case: no event loop in this thread
            return asyncio.run(reader.run())
        # called from async code (a notebook, a server): run on a thread of its own
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, reader.run()).result()


class _Reader:
    """One read: the retry loop around connection passes, and the error vocabulary."""

    def __init__(self, source: McpGraphSource, token: str | None) -> None:
        self.source = source
        self.opt = source.options
        self._token = token
        self.state = _Fetch()

    # -- the retry loop -------------------------------------------------------------

    async def run(self) -> GraphRead:
        failures = 0
        while True:
            before = (self.state.entries is not None, len(self.state.contents))
            try:
                await self._pass()
                return self._graph_read()
            except GraphError:
                raise
            except Exception as exc:  # connection-level failures arrive as exception groups
                try:
                    retry = self._classify(exc)
                except GraphError as fatal:
                    raise fatal from None
            if (self.state.entries is not None, len(self.state.contents)) != before:
                failures = 0  # progress since the last failure: the budget starts again
            failures += 1
            if failures > self.opt.retries:
                raise self._gave_up(retry.cause)
            await asyncio.sleep(self.opt.backoff * 2 ** (failures - 1))

    async def _pass(self) -> None:
        """One connection: list the nodes (once per read), then fetch what is missing."""
        async with self._http() as http, self._client(http) as client:
            self.state.contacted = True
            if self.state.entries is None:
                await self._check_tools(client)
                text = await self._call(
                    client, self.opt.query_tool, {self.opt.query_arg: self.opt.query}
                )
                self.state.entries = self._parse_listing(text)
                self._announce()
            await self._fetch_all(client)

    def _http(self) -> httpx2.AsyncClient:
        """The HTTP client of one connection: token header, timeouts, status recorder."""
        import httpx2

        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        statuses = self.state.http_errors

        async def record(response: httpx2.Response) -> None:
            if response.status_code >= 400:  # the SDK hides the status; auth errors need it
                statuses.append(response.status_code)

        return httpx2.AsyncClient(
            headers=headers,
            timeout=httpx2.Timeout(self.opt.timeout, read=self.opt.timeout * 2),
            event_hooks={"response": [record]},
        )

    def _client(self, http: httpx2.AsyncClient) -> Client:
        from mcp.client.client import Client
        from mcp.client.streamable_http import streamable_http_client

        transport = streamable_http_client(self.source.endpoint, http_client=http)
        return Client(transport, cache=None, read_timeout_seconds=self.opt.timeout)

    # -- calls ------------------------------------------------------------------------

    async def _check_tools(self, client: Client) -> None:
        """Name the server's tools up front when a configured one is missing."""
        try:
            tools = {t.name for t in (await client.list_tools()).tools}
        except Exception:  # listing is a courtesy; the calls themselves will tell
            return
        for flag, name in (
            ("--query-tool", self.opt.query_tool),
            ("--render-tool", self.opt.render_tool),
        ):
            if tools and name not in tools:
                raise GraphError(
                    f"{self.source.display} has no tool {name!r} (its tools: "
                    f"{', '.join(sorted(tools))}); pass {flag} with the right name"
                )

    async def _call(self, client: Client, tool: str, arguments: dict[str, Any]) -> str:
        """Call a tool; its text, or a GraphError/_Retry. Timeouts are retried in place."""
        from mcp.shared.exceptions import MCPError
        from mcp_types import REQUEST_TIMEOUT

        attempt = 0
        while True:
            try:
                result = await client.call_tool(tool, arguments)
            except MCPError as exc:
                if exc.code != REQUEST_TIMEOUT:
                    raise self._protocol_error(tool, arguments, exc) from None
                attempt += 1
                if attempt > self.opt.retries:
                    raise GraphError(
                        f"{self.source.display}: {tool} {self._what(arguments)} did not answer "
                        f"within {self.opt.timeout:g} s ({attempt} tries); the server is "
                        "overloaded or stuck: raise --mcp-timeout or lower --mcp-concurrency"
                    ) from None
                await asyncio.sleep(self.opt.backoff * 2 ** (attempt - 1))
                continue
            return self._result_text(tool, arguments, result)

    def _result_text(self, tool: str, arguments: dict[str, Any], result: CallToolResult) -> str:
        texts, others = [], []
        for item in result.content:
            if getattr(item, "type", None) == "text":
                texts.append(item.text)  # type: ignore[union-attr]
            else:
                others.append(getattr(item, "type", type(item).__name__))
        if result.is_error:
            message = self._mask(" ".join(" ".join(texts).split()) or "no message")
            raise GraphError(
                f"{self.source.display}: tool {tool} returned an error {self._what(arguments)}: "
                f"{message}"
            )
        if others and not texts and result.structured_content is None:
            raise GraphError(
                f"{self.source.display}: tool {tool} returned {', '.join(others)} content, "
                f"not text {self._what(arguments)}"
            )
        if not texts and result.structured_content is not None:
            return json.dumps(result.structured_content)
        return "".join(texts)

    def _what(self, arguments: dict[str, Any]) -> str:
        (name, value), *_ = arguments.items()
        return f"for {name} {self._mask(str(value))!r}"

    async def _fetch_all(self, client: Client) -> None:
        """Render every pending key with at most `concurrency` calls in flight."""
        import anyio
        from tqdm.auto import tqdm

        pending = iter(self.state.pending)
        total = len(self.state.entries or [])
        with tqdm(
            total=total,
            initial=len(self.state.contents),
            unit="node",
            desc="fetching nodes",
            file=sys.stderr,
            disable=not self.opt.progress,
        ) as bar:

            async def worker() -> None:
                for key in pending:  # shared iterator: each key is taken once
                    content = await self._call(
                        client, self.opt.render_tool, {self.opt.render_arg: key}
                    )
                    self.state.contents[key] = content
                    bar.update(1)

            async with anyio.create_task_group() as tg:
                for _ in range(min(self.opt.concurrency, max(total, 1))):
                    tg.start_soon(worker)

    def _announce(self) -> None:
        if self.opt.progress:
            n = len(self.state.entries or [])
            print(
                f"{self.source.display}: {self.opt.query_tool} {self.opt.query!r} listed {n} "
                "nodes; fetching their content",
                file=sys.stderr,
                flush=True,
            )

    # -- output -------------------------------------------------------------------------

    def _parse_listing(self, text: str) -> list[dict[str, Any]]:
        """The query tool's text → entries with a unique string `key` each."""
        try:
            value = json.loads(text)
        except ValueError:
            raise self._unparsable(text, "it is not JSON") from None
        items = listing_items(value)
        if items is None:
            raise self._unparsable(text, f"JSON {type(value).__name__} without a list of nodes")
        entries: list[dict[str, Any]] = []
        seen: set[str] = set()
        for index, item in enumerate(items, start=1):
            entry = {"key": item} if isinstance(item, str) else item
            key = entry.get("key") if isinstance(entry, dict) else None
            if not isinstance(key, str) or not key:
                raise self._unparsable(text, f"entry {index} has no string 'key'")
            if key in seen:
                self.state.problems.append(
                    f"listing entry {index}: key {key!r} listed again, fetched once"
                )
                continue
            seen.add(key)
            entries.append(entry)
        return entries

    def _unparsable(self, text: str, why: str) -> GraphError:
        snippet = self._mask(" ".join(text.split()))[:_SNIPPET]
        return GraphError(
            f"{self.source.display}: could not read the output of {self.opt.query_tool} as a "
            f"node listing ({why}; it starts: {snippet!r}); point --query-tool at the tool that "
            "lists node keys as JSON, e.g. memory_query"
        )

    def _graph_read(self) -> GraphRead:
        """Entries + contents → nodes, validated exactly as a file export's records are."""
        nodes: list[Node] = []
        deleted = 0
        problems = list(self.state.problems)
        entries = self.state.entries or []
        for index, entry in enumerate(entries, start=1):
            record = {k: v for k, v in entry.items() if k in _NODE_FIELDS}
            if "node_type" not in record and isinstance(entry.get("type"), str):
                record["node_type"] = entry["type"]
            record["content"] = self.state.contents[entry["key"]]
            try:
                parsed = parse_record(record, f"listing entry {index}")
            except ValueError as exc:
                problems.append(f"listing entry {index} ({entry['key']!r}): {exc}, skipped")
                continue
            if parsed.deleted:
                deleted += 1
            elif parsed.node is not None:
                nodes.append(parsed.node)
        return GraphRead(
            nodes=nodes,
            source=self.source.describe(),
            records_seen=len(entries),
            deleted=deleted,
            problems=problems,
        )

    # -- errors ---------------------------------------------------------------------------

    def _mask(self, text: str) -> str:
        return text.replace(self._token, "***") if self._token else text

    def _classify(self, exc: Exception) -> _Retry:
        """A failure that escaped a connection: raise GraphError if fatal, else a _Retry."""
        import httpx2
        from mcp.shared.exceptions import MCPError

        leaves = list(_leaves(exc))
        for leaf in leaves:
            if isinstance(leaf, GraphError):
                raise leaf
        verdict = self._status_verdict()
        if isinstance(verdict, GraphError):
            raise verdict
        for leaf in leaves:
            if isinstance(leaf, _Retry):
                return leaf
            if isinstance(leaf, httpx2.ConnectError) and not self.state.contacted:
                raise self._not_running(leaf)
            if isinstance(leaf, (httpx2.TransportError, MCPError, OSError, TimeoutError)):
                return verdict or _Retry(self._describe(leaf))
        raise exc

    def _status_verdict(self) -> GraphError | _Retry | None:
        """What the HTTP error statuses seen since the last look say (then forget them)."""
        statuses, self.state.http_errors[:] = list(self.state.http_errors), []
        auth = [s for s in statuses if s in (401, 403)]
        if auth:
            env = self.opt.token_env
            hint = (
                f"the token in ${env} was not accepted; set it to the server's token"
                if self._token
                else f"no token was sent; set ${env} to the server's token (or name another "
                "variable with --mcp-token-env)"
            )
            return GraphError(
                f"{self.source.display} rejected the request (HTTP {auth[0]}): {hint}"
            )
        if 404 in statuses and not self.state.contacted:
            return GraphError(
                f"{self.source.display}: HTTP 404, no MCP endpoint at this path; pass the "
                f"server's base URL ({DEFAULT_PATH} is appended) or its full endpoint URL"
            )
        if 404 in statuses:
            return _Retry("the server no longer knows this session (HTTP 404; did it restart?)")
        server = [s for s in statuses if s >= 500]
        if server:
            return _Retry(f"HTTP {server[0]} from the server")
        return None

    def _protocol_error(self, tool: str, arguments: dict[str, Any], exc: Exception) -> Exception:
        """An MCP error answering one call: auth, 404 and 5xx are connection matters."""
        verdict = self._status_verdict()
        if verdict is not None:
            return verdict
        return GraphError(
            f"{self.source.display}: {tool} {self._what(arguments)} failed: "
            f"{self._mask(self._describe(exc))}"
        )

    def _not_running(self, leaf: BaseException) -> GraphError:
        return GraphError(
            f"cannot connect to the memory MCP server at {self.source.display} "
            f"({self._describe(leaf)}): is it running? Start one with `amygdala memory-server "
            "--graph FILE --port 7777`, or check --memory-mcp-url"
        )

    def _gave_up(self, cause: str) -> GraphError:
        listed = self.state.entries
        if listed is None:
            where = "before it listed the nodes"
        else:
            where = f"during extraction ({len(self.state.contents)} of {len(listed)} nodes fetched)"
        return GraphError(
            f"the memory MCP server at {self.source.display} stopped answering {where}: "
            f"{cause}, still failing after {self.opt.retries} retries; is it still running? "
            "Nothing was written"
        )

    @staticmethod
    def _describe(exc: BaseException) -> str:
        import httpx2

        if isinstance(exc, httpx2.ConnectError):
            return "connection refused"
        if isinstance(exc, httpx2.RemoteProtocolError):
            return "the server closed the connection without answering"
        text = str(exc).strip()
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


_NODE_FIELDS = frozenset({"key", "node_type", "timestamp", "weight", "provenance", "deleted"})
_LIST_FIELDS = ("nodes", "keys", "results", "items", "result")


def listing_items(value: object) -> list[Any] | None:
    """The list of entries in a listing: the value itself or one well-known field of it."""
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        for name in _LIST_FIELDS:
            inner = value.get(name)
            if isinstance(inner, list):
                return inner
    return None


# -- command line ---------------------------------------------------------------------------


def add_mcp_arguments(parser: argparse.ArgumentParser) -> None:
    """`--memory-mcp-url` and the flags that tune how the MCP source talks to the server."""
    d = McpOptions(url="http://localhost:7777")
    g = parser.add_argument_group("memory MCP server")
    g.add_argument(
        "--memory-mcp-url",
        default=None,
        metavar="URL",
        help="a memory MCP server over streamable HTTP: its base URL (http://localhost:7777, "
        f"{DEFAULT_PATH} is appended) or its full endpoint URL",
    )
    g.add_argument(
        "--query",
        dest="mcp_query",
        default=d.query,
        metavar="QUERY",
        help=f"what the query tool is asked for; default {d.query!r}",
    )
    g.add_argument(
        "--query-tool",
        default=d.query_tool,
        metavar="NAME",
        help=f"tool that lists node keys; default {d.query_tool}",
    )
    g.add_argument(
        "--query-arg",
        default=d.query_arg,
        metavar="NAME",
        help=f"the query tool's argument name; default {d.query_arg}",
    )
    g.add_argument(
        "--render-tool",
        default=d.render_tool,
        metavar="NAME",
        help=f"tool that returns one node's content; default {d.render_tool}",
    )
    g.add_argument(
        "--render-arg",
        default=d.render_arg,
        metavar="NAME",
        help=f"the render tool's argument name; default {d.render_arg}",
    )
    g.add_argument(
        "--mcp-token-env",
        default=d.token_env,
        metavar="NAME",
        help="environment variable holding the server's bearer token (sent only "
        f"when set, never printed); default {d.token_env}",
    )
    g.add_argument(
        "--mcp-concurrency",
        type=int,
        default=d.concurrency,
        metavar="N",
        help=f"render calls in flight at once; default {d.concurrency}",
    )
    g.add_argument(
        "--mcp-timeout",
        type=float,
        default=d.timeout,
        metavar="SECONDS",
        help=f"limit per tool call; default {d.timeout:g}",
    )
    g.add_argument(
        "--mcp-retries",
        type=int,
        default=d.retries,
        metavar="N",
        help="retries of a dropped connection, timeout or HTTP 5xx, with "
        f"exponential backoff; default {d.retries}",
    )
    g.add_argument(
        "--mcp-backoff",
        type=float,
        default=d.backoff,
        metavar="SECONDS",
        help=f"wait before the first retry, doubled each time; default {d.backoff:g}",
    )
    g.add_argument(
        "--no-mcp-progress",
        dest="mcp_progress",
        action="store_false",
        help="no progress bar while fetching nodes (--no-progress, where a "
        "command has it, hides it too)",
    )


def mcp_source_from_args(args: argparse.Namespace) -> McpGraphSource:
    """The MCP source the flags of `add_mcp_arguments` describe."""
    options = McpOptions(
        url=args.memory_mcp_url,
        query=args.mcp_query,
        query_tool=args.query_tool,
        query_arg=args.query_arg,
        render_tool=args.render_tool,
        render_arg=args.render_arg,
        token_env=args.mcp_token_env,
        concurrency=args.mcp_concurrency,
        timeout=args.mcp_timeout,
        retries=args.mcp_retries,
        backoff=args.mcp_backoff,
        progress=args.mcp_progress and not getattr(args, "no_progress", False),
    )
    return McpGraphSource(options)
