"""The memory-MCP-server graph source: list node keys with one tool, fetch each node with another.

It talks to any memory server with the official `mcp` SDK client, over one of three
transports (`amygdala.graph.mcp_transport`): streamable HTTP (`--memory-mcp-url`), the
legacy SSE transport (a URL whose path ends in `/sse`), or stdio (`--memory-mcp-command
"CMD ARGS…"`: the server is started as a subprocess). `memory_query` (a pipeline query,
`all` by default) lists the nodes, then `memory_render` fetches each node, a few at a
time. Tool names, the argument names and the query are flags, since deployments differ.

What the tools answer is read by `amygdala.graph.formats`: a JSON listing (the reference
server's `{"nodes": [{"key", "node_type", …}]}`, a list of objects or key strings,
`{"keys": [...]}` …) or a plain-text one (one key per line, optionally with a score);
a render answer as text or as JSON `{"content": …}`, with a trailing links section
(`Links:` / `→ key (0.83)` …) stripped so the tag lines above it count. Metadata that
comes with a key ends up in the node exactly as a file export's would (the same
validation runs), so extracting from a graph file and from a server serving that file
gives the same training data.

Failures are `GraphError`s that name the server and the cause: nothing listening (start
`amygdala memory-server`), a command that cannot be started, the token rejected, a tool
missing or returning an error, output that is not a listing, stray text on a stdio
server's stdout, or a server that stops answering mid-way. Transient failures
(connection dropped, timeouts, HTTP 5xx, a stdio server that exited after it had
answered) are retried with exponential backoff on a fresh connection (a stdio server is
started again); nodes already fetched are kept. The bearer token is read from the
environment variable `token_env` names when `read()` runs, sent only as an
`Authorization` header over HTTP, and masked in any server text an error quotes. A stdio
server gets no token: it is a child process that inherits this environment, so naming a
token variable together with a command is a `ConfigError`, and a token in the default
variable is ignored with a note.

Example:
    >>> source = McpGraphSource(McpOptions(url="http://localhost:7777"))  # doctest: +SKIP
    >>> read = source.read()  # doctest: +SKIP
    >>> read.source, len(read.nodes)  # doctest: +SKIP
    ('mcp:http://localhost:7777/mcp', 312)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from amygdala._defaults import MEMORY_TOKEN_ENV
from amygdala.errors import ConfigError, GraphError
from amygdala.graph.filesource import parse_record
from amygdala.graph.formats import (
    FooterRule,
    FormatError,
    Listing,
    Rendered,
    listing_items,
    parse_listing,
    parse_render,
)
from amygdala.graph.mcp_transport import (
    HttpTransport,
    Retry,
    StdioTransport,
    Transport,
    describe_exception,
    display_command,
    endpoint_url,
    leaves,
    quiet_sdk_logs,
    split_command,
)
from amygdala.graph.nodes import GraphRead, Node

if TYPE_CHECKING:
    from mcp.client.client import Client
    from mcp_types import CallToolResult

__all__ = ["McpGraphSource", "McpOptions", "endpoint_url", "listing_items"]

log = logging.getLogger(__name__)

DEFAULT_TOKEN_ENV = MEMORY_TOKEN_ENV
_SNIPPET = 120  # characters of unparsable tool output quoted in an error


@dataclass(frozen=True)
class McpOptions:
    """How to reach a memory MCP server and which tools to call.

    Pass exactly one of `url` (streamable HTTP, or SSE when the path ends in `/sse`)
    and `command` (stdio; a string is split like a shell would, a sequence is taken as
    the argument list).
    """

    url: str | None = None  # base URL (`/mcp` is appended) or the full endpoint URL
    command: str | Sequence[str] | None = None  # a server to start and speak stdio to
    query: str = "all"  # what the query tool is asked for
    query_tool: str = "memory_query"
    query_arg: str = "query"  # the query tool's argument name
    render_tool: str = "memory_render"
    render_arg: str = "key"  # the render tool's argument name
    token_env: str | None = None  # NAME of the env var holding the bearer token (HTTP only)
    render_footer: str | None = None  # None: the default links-section rule; "": none
    concurrency: int = 8  # render calls in flight at once
    timeout: float = 30.0  # seconds per tool call (and per connection attempt)
    retries: int = 3  # retries of a transient failure without progress in between
    backoff: float = 0.5  # first retry waits this long, then twice as long each time
    progress: bool = True  # progress bar on stderr

    def __post_init__(self) -> None:
        if (self.url is None) == (self.command is None):
            raise ConfigError(
                "pass exactly one of --memory-mcp-url URL and --memory-mcp-command CMD"
            )
        if self.command is not None:
            object.__setattr__(self, "command", split_command(self.command))
            if self.token_env is not None:
                raise ConfigError(
                    f"--mcp-token-env {self.token_env} names a bearer token, which only HTTP "
                    "carries; a stdio server (--memory-mcp-command) is a child process that "
                    "inherits this environment: drop --mcp-token-env and pass what the server "
                    "needs through its own arguments or environment"
                )
        else:
            endpoint_url(str(self.url))  # validate early
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
        try:
            FooterRule(self.render_footer)
        except re.error as exc:
            raise ConfigError(
                f"--render-footer {self.render_footer!r} is not a valid regular expression "
                f"({exc}); pass a Python regex matching the footer's first line, e.g. '^Links:'"
            ) from None

    @property
    def token_variable(self) -> str:
        """The environment variable the bearer token is read from."""
        return self.token_env or DEFAULT_TOKEN_ENV

    @property
    def argv(self) -> tuple[str, ...]:
        """The stdio server's command line, split (empty for an HTTP source)."""
        return tuple(self.command or ())

    @property
    def footer_rule(self) -> FooterRule:
        return FooterRule(self.render_footer)


@dataclass
class _Fetch:
    """What one read has learned so far; it survives reconnects."""

    listing: Listing | None = None
    rendered: dict[str, Rendered] = field(default_factory=dict)
    contacted: bool = False  # a connection completed its handshake at least once

    @property
    def entries(self) -> tuple[dict[str, Any], ...]:
        return self.listing.entries if self.listing else ()

    @property
    def pending(self) -> list[str]:
        return [e["key"] for e in self.entries if e["key"] not in self.rendered]


class McpGraphSource:
    """A memory graph read from an MCP server (see the module docstring)."""

    def __init__(self, options: McpOptions) -> None:
        self.options = options
        if options.command is not None:
            self.display = f"stdio:{display_command(options.argv)}"
        else:
            self.display = HttpTransport(str(options.url), None, "").display

    def __repr__(self) -> str:
        if self.options.command is not None:
            return f"McpGraphSource({self.display!r})"
        return f"McpGraphSource({self.display!r}, token_env={self.options.token_variable!r})"

    def describe(self) -> str:
        return f"mcp:{self.display}"

    def _transport(self) -> Transport:
        if self.options.command is not None:
            return StdioTransport(self.options.argv)
        env = self.options.token_variable
        return HttpTransport(str(self.options.url), os.environ.get(env) or None, env)

    def read(self) -> GraphRead:
        """List and fetch every node; raises GraphError when the graph cannot be read."""
        env = self.options.token_variable
        if self.options.command is not None and os.environ.get(env):
            log.warning(
                "note: $%s is set but not sent: a stdio server gets no bearer token "
                "(it is a child process and inherits this environment)",
                env,
            )
        quiet_sdk_logs()
        reader = _Reader(self.options, self._transport())
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # the usual case: no event loop in this thread
            return asyncio.run(reader.run())
        # called from async code (a notebook, a server): run on a thread of its own
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, reader.run()).result()


class _Reader:
    """One read: the retry loop around connection passes, and the error vocabulary."""

    def __init__(self, options: McpOptions, transport: Transport) -> None:
        self.opt = options
        self.transport = transport
        self.display = transport.display
        self.footer = options.footer_rule
        self.state = _Fetch()

    # -- the retry loop -------------------------------------------------------------

    async def run(self) -> GraphRead:
        failures = 0
        while True:
            before = (self.state.listing is not None, len(self.state.rendered))
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
            if (self.state.listing is not None, len(self.state.rendered)) != before:
                failures = 0  # progress since the last failure: the budget starts again
            failures += 1
            if failures > self.opt.retries:
                raise self._gave_up(retry.cause)
            await asyncio.sleep(self.opt.backoff * 2 ** (failures - 1))

    async def _pass(self) -> None:
        """One connection: list the nodes (once per read), then fetch what is missing."""
        async with self.transport.connect(self.opt.timeout) as client:
            self.state.contacted = True
            if self.state.listing is None:
                await self._check_tools(client)
                text = await self._call(
                    client, self.opt.query_tool, {self.opt.query_arg: self.opt.query}
                )
                self.state.listing = self._parse_listing(text)
                self._announce()
            await self._fetch_all(client)
        verdict = self.transport.call_verdict()  # e.g. stray stdout seen after the last answer
        if isinstance(verdict, GraphError):
            raise verdict

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
                    f"{self.display} has no tool {name!r} (its tools: "
                    f"{', '.join(sorted(tools))}); pass {flag} with the right name"
                )

    async def _call(self, client: Client, tool: str, arguments: dict[str, Any]) -> str:
        """Call a tool; its text, or a GraphError/Retry. Timeouts are retried in place."""
        from mcp.shared.exceptions import MCPError
        from mcp_types import CONNECTION_CLOSED, REQUEST_TIMEOUT

        attempt = 0
        while True:
            try:
                result = await client.call_tool(tool, arguments)
            except MCPError as exc:
                if exc.code != REQUEST_TIMEOUT:
                    raise self._protocol_error(tool, arguments, exc, CONNECTION_CLOSED) from None
                attempt += 1
                if attempt > self.opt.retries:
                    raise GraphError(
                        f"{self.display}: {tool} {self._what(arguments)} did not answer "
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
                f"{self.display}: tool {tool} returned an error {self._what(arguments)}: {message}"
            )
        if others and not texts and result.structured_content is None:
            raise GraphError(
                f"{self.display}: tool {tool} returned {', '.join(others)} content, "
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
        total = len(self.state.entries)
        with tqdm(
            total=total,
            initial=len(self.state.rendered),
            unit="node",
            desc="fetching nodes",
            file=sys.stderr,
            disable=not self.opt.progress,
        ) as bar:

            async def worker() -> None:
                for key in pending:  # shared iterator: each key is taken once
                    text = await self._call(
                        client, self.opt.render_tool, {self.opt.render_arg: key}
                    )
                    self.state.rendered[key] = parse_render(text, self.footer)
                    bar.update(1)

            async with anyio.create_task_group() as tg:
                for _ in range(min(self.opt.concurrency, max(total, 1))):
                    tg.start_soon(worker)

    def _announce(self) -> None:
        """One progress line (logged at INFO: the command line shows it on stderr)."""
        if self.opt.progress:
            log.info(
                "%s: %s %r listed %d nodes; fetching their content",
                self.display,
                self.opt.query_tool,
                self.opt.query,
                len(self.state.entries),
            )

    # -- output -------------------------------------------------------------------------

    def _parse_listing(self, text: str) -> Listing:
        """The query tool's text → entries with a unique string `key` each."""
        try:
            return parse_listing(text)
        except FormatError as exc:
            snippet = self._mask(" ".join(text.split()))[:_SNIPPET]
            raise GraphError(
                f"{self.display}: could not read the output of {self.opt.query_tool} as a "
                f"node listing ({exc}; it starts: {snippet!r}); point --query-tool at the "
                "tool that lists node keys (JSON, or one key per line), e.g. memory_query"
            ) from None

    def _graph_read(self) -> GraphRead:
        """Entries + contents → nodes, validated exactly as a file export's records are."""
        nodes: list[Node] = []
        deleted = 0
        listing = self.state.listing
        problems = list(listing.problems) if listing else []
        for index, entry in enumerate(self.state.entries, start=1):
            record = {k: v for k, v in entry.items() if k in _NODE_FIELDS}
            if "node_type" not in record and isinstance(entry.get("type"), str):
                record["node_type"] = entry["type"]
            record["content"] = self.state.rendered[entry["key"]].content
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
            source=self.transport.describe(),
            records_seen=len(self.state.entries),
            deleted=deleted,
            problems=problems,
            details=self._details(),
        )

    def _details(self) -> dict[str, Any]:
        """How the graph was read: transport, formats, footers stripped (for the summary)."""
        listing = self.state.listing
        rendered = self.state.rendered.values()
        return {
            "transport": self.transport.kind,
            "listing_format": listing.format if listing else None,
            "listing_lines_skipped": listing.skipped_lines if listing else 0,
            "render_answers_text": sum(r.format == "text" for r in rendered),
            "render_answers_json": sum(r.format == "json" for r in rendered),
            "footer_rule": self.footer.describe(),
            "footers_stripped": sum(r.footer_stripped for r in rendered),
        }

    # -- errors ---------------------------------------------------------------------------

    def _mask(self, text: str) -> str:
        return self.transport.mask(text)

    def _classify(self, exc: Exception) -> Retry:
        """A failure that escaped a connection: raise GraphError if fatal, else a Retry."""
        failures = list(leaves(exc))
        for leaf in failures:
            if isinstance(leaf, GraphError):
                raise leaf
        verdict = self.transport.verdict(failures, self.state.contacted)
        if isinstance(verdict, GraphError):
            raise verdict
        for leaf in failures:
            if isinstance(leaf, Retry):
                return verdict or leaf
            if self.transport.transient(leaf):
                return verdict or Retry(describe_exception(leaf))
        raise exc

    def _protocol_error(
        self, tool: str, arguments: dict[str, Any], exc: Exception, closed: int
    ) -> Exception:
        """An MCP error answering one call: the transport's verdict, a reconnect, or fatal."""
        verdict = self.transport.call_verdict()
        if verdict is not None:
            return verdict
        if getattr(exc, "code", None) == closed:
            return Retry(describe_exception(exc))
        return GraphError(
            f"{self.display}: {tool} {self._what(arguments)} failed: "
            f"{self._mask(describe_exception(exc))}"
        )

    def _gave_up(self, cause: str) -> GraphError:
        listed = self.state.listing
        if listed is None:
            where = "before it listed the nodes"
        else:
            where = (
                f"during extraction ({len(self.state.rendered)} of {len(listed.entries)} "
                "nodes fetched)"
            )
        server = "" if self.transport.kind == "stdio" else "at "
        return GraphError(
            f"the memory MCP server {server}{self.display} stopped answering {where}: "
            f"{cause}, still failing after {self.opt.retries} retries; "
            f"{self.transport.gone()} Nothing was written"
        )


_NODE_FIELDS = frozenset({"key", "node_type", "timestamp", "weight", "provenance", "deleted"})
