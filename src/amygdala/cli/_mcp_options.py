"""The memory MCP source's flags (`amygdala extract` and `amygdala run`), and the source
they describe.

Each flag's default is the matching `McpOptions` field's, so the library and the command
line cannot disagree; `--no-progress` (where a command has it) also hides the fetch bar.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from amygdala._defaults import MCP_PATH, MEMORY_TOKEN_ENV

if TYPE_CHECKING:
    from amygdala.graph.mcp_source import McpGraphSource


def add_mcp_arguments(parser: argparse.ArgumentParser) -> None:
    """`--memory-mcp-url` / `--memory-mcp-command` and the flags that tune the MCP source."""
    from amygdala.graph.mcp_source import McpOptions  # its field defaults are the flags'

    g = parser.add_argument_group("memory MCP server")
    g.add_argument(
        "--memory-mcp-url",
        default=None,
        metavar="URL",
        help="a memory MCP server over streamable HTTP: its base URL (http://localhost:7777, "
        f"{MCP_PATH} is appended) or its full endpoint URL; a URL whose path ends in "
        "/sse uses the legacy SSE transport",
    )
    g.add_argument(
        "--memory-mcp-command",
        default=None,
        metavar="CMD",
        help="start a memory MCP server as a subprocess and speak MCP over its stdin/stdout, "
        "e.g. 'amygdala memory-server --graph graph.jsonl --stdio'; split into arguments "
        "like a shell would (quotes work), never run through a shell; it inherits this "
        "environment, and its stderr is shown when it fails",
    )
    g.add_argument(
        "--query",
        dest="mcp_query",
        default=McpOptions.query,
        metavar="QUERY",
        help=f"what the query tool is asked for; default {McpOptions.query!r}",
    )
    g.add_argument(
        "--query-tool",
        default=McpOptions.query_tool,
        metavar="NAME",
        help="tool that lists node keys (JSON, or one key per line); "
        f"default {McpOptions.query_tool}",
    )
    g.add_argument(
        "--query-arg",
        default=McpOptions.query_arg,
        metavar="NAME",
        help=f"the query tool's argument name; default {McpOptions.query_arg}",
    )
    g.add_argument(
        "--render-tool",
        default=McpOptions.render_tool,
        metavar="NAME",
        help=f"tool that returns one node's content; default {McpOptions.render_tool}",
    )
    g.add_argument(
        "--render-arg",
        default=McpOptions.render_arg,
        metavar="NAME",
        help=f"the render tool's argument name; default {McpOptions.render_arg}",
    )
    g.add_argument(
        "--render-footer",
        default=None,
        metavar="REGEX",
        help="where a render answer's trailing links section starts: the answer is cut at "
        "the last match of this regex (^ and $ match at each line), e.g. '^-- links --$'; "
        "'' strips nothing. By default a final block that starts with a header such as "
        "'Links:', '## Links' or 'Neighbors:', or that holds only link lines ('→ key "
        "(0.83)', '- key 0.83', '[[key]]'), is stripped",
    )
    g.add_argument(
        "--mcp-token-env",
        default=None,
        metavar="NAME",
        help="environment variable holding an HTTP server's bearer token (sent only "
        f"when set, never printed); default {MEMORY_TOKEN_ENV}. Not used with "
        "--memory-mcp-command: a stdio server takes no token",
    )
    g.add_argument(
        "--mcp-concurrency",
        type=int,
        default=McpOptions.concurrency,
        metavar="N",
        help=f"render calls in flight at once; default {McpOptions.concurrency}",
    )
    g.add_argument(
        "--mcp-timeout",
        type=float,
        default=McpOptions.timeout,
        metavar="SECONDS",
        help=f"limit per tool call; default {McpOptions.timeout:g}",
    )
    g.add_argument(
        "--mcp-retries",
        type=int,
        default=McpOptions.retries,
        metavar="N",
        help="retries of a dropped connection, timeout, HTTP 5xx or exited stdio server "
        f"(started again), with exponential backoff; default {McpOptions.retries}",
    )
    g.add_argument(
        "--mcp-backoff",
        type=float,
        default=McpOptions.backoff,
        metavar="SECONDS",
        help=f"wait before the first retry, doubled each time; default {McpOptions.backoff:g}",
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
    from amygdala.graph.mcp_source import McpGraphSource, McpOptions

    options = McpOptions(
        url=args.memory_mcp_url,
        command=args.memory_mcp_command,
        query=args.mcp_query,
        query_tool=args.query_tool,
        query_arg=args.query_arg,
        render_tool=args.render_tool,
        render_arg=args.render_arg,
        token_env=args.mcp_token_env,
        render_footer=args.render_footer,
        concurrency=args.mcp_concurrency,
        timeout=args.mcp_timeout,
        retries=args.mcp_retries,
        backoff=args.mcp_backoff,
        progress=args.mcp_progress and not getattr(args, "no_progress", False),
    )
    return McpGraphSource(options)
