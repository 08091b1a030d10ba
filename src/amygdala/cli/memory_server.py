"""`amygdala memory-server`: serve a graph file as a read-only memory MCP server."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from amygdala._net import DEFAULT_MAX_REQUEST_BYTES, byte_count_arg, describe_bytes, port_arg

HELP = "serve a memory graph file over MCP (streamable HTTP or stdio), read-only"
DESCRIPTION = """\
Serve a memory graph file (JSONL export, or a JSON array) as an MCP server over
streamable HTTP (or stdio, with --stdio), with the tools a memory deployment offers:
memory_query (pipeline queries such as 'all | type:episodic | sort:timestamp:desc |
limit:10'), memory_render (one node's raw content by key), journal_tail and
memory_search. It is read-only: there are no write tools, and the file is read once at
start.

Usage:
  amygdala memory-server --graph graph.jsonl --port 7777
  amygdala extract --memory-mcp-url http://localhost:7777 --output-dir training-data/
  amygdala extract --memory-mcp-command "amygdala memory-server --graph graph.jsonl --stdio" \\
      --output-dir training-data/

By default it listens on 127.0.0.1 only; pass --host 0.0.0.0 to expose it. When the
environment variable AMYGDALA_MEMORY_TOKEN (or the one --token-env names) is set, every
request needs `Authorization: Bearer <token>`; the token is never printed. Once ready it
prints one line with the endpoint URL; stop it with Ctrl-C. With --stdio it speaks MCP
over its stdin and stdout instead (its client starts it), prints its ready line on
stderr, checks no token, and stops when stdin closes.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from amygdala.graph.server import ServeConfig  # its defaults are the flags'

    parser.add_argument(
        "--graph",
        type=Path,
        required=True,
        metavar="FILE",
        help="the graph file to serve: JSONL, one node per line, or a JSON array",
    )
    parser.add_argument(
        "--stdio",
        action="store_true",
        help="speak MCP over stdin/stdout (for a client that starts this command, such as "
        "`amygdala extract --memory-mcp-command`) instead of listening on a port",
    )
    parser.add_argument(
        "--host",
        default=None,
        help=f"address to listen on; default {ServeConfig.host} (this machine only)",
    )
    parser.add_argument(
        "--port",
        type=port_arg,
        default=None,
        help=f"port to listen on, 0…65535; 0 picks a free one; default {ServeConfig.port}",
    )
    parser.add_argument(
        "--max-request-bytes",
        type=byte_count_arg,
        default=None,
        metavar="N",
        help="larger request bodies get 413 before they are read; by default "
        f"{describe_bytes(DEFAULT_MAX_REQUEST_BYTES)}; K, M, G suffixes work (64M)",
    )
    parser.add_argument(
        "--path",
        default=ServeConfig.path,
        help=f"the MCP endpoint path; default {ServeConfig.path}",
    )
    parser.add_argument(
        "--token-env",
        default=ServeConfig.token_env,
        metavar="NAME",
        help="environment variable holding the bearer token; when it is set, requests "
        f"without that token get 401; default {ServeConfig.token_env}",
    )
    parser.add_argument(
        "--render-delay",
        type=float,
        default=ServeConfig.render_delay,
        metavar="SECONDS",
        help="testing aid: make each memory_render wait this long (used by the fault "
        "tests to stop a server mid-extraction); default 0",
    )


def run(args: argparse.Namespace) -> int:
    from amygdala.errors import ConfigError
    from amygdala.graph.server import ServeConfig, serve, serve_stdio

    if args.render_delay < 0:
        raise ConfigError(f"--render-delay must be >= 0, got {args.render_delay}")
    if args.stdio:
        path = args.path if args.path != ServeConfig.path else None
        flags_given = (
            ("--host", args.host),
            ("--port", args.port),
            ("--path", path),
            ("--max-request-bytes", args.max_request_bytes),
        )
        given = [flag for flag, value in flags_given if value is not None]
        if given:
            flags = ", ".join(given)
            raise ConfigError(
                f"{flags}: with --stdio this server listens on no address; drop {flags} or --stdio"
            )
        serve_stdio(args.graph, args.token_env, render_delay=args.render_delay, announce=_to_stderr)
        return 0
    config = ServeConfig(
        graph=args.graph,
        host=ServeConfig.host if args.host is None else args.host,
        port=ServeConfig.port if args.port is None else args.port,
        max_request_bytes=args.max_request_bytes or DEFAULT_MAX_REQUEST_BYTES,
        path=args.path,
        token_env=args.token_env,
        render_delay=args.render_delay,
    )
    serve(config, announce=_to_stdout)
    return 0


def _to_stdout(line: str) -> None:
    """The HTTP server's ready line: on stdout, at once (a client may wait for it)."""
    print(line, flush=True)


def _to_stderr(line: str) -> None:
    """The stdio server's ready line: stdout carries MCP messages, so stderr."""
    print(line, file=sys.stderr, flush=True)
