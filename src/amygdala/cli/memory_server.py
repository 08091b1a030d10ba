"""`amygdala memory-server`: serve a graph file as a read-only memory MCP server."""

from __future__ import annotations

import argparse
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

DEFAULT_PORT = 7777


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from amygdala.graph.server import DEFAULT_PATH, DEFAULT_TOKEN_ENV

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
        help="address to listen on; default 127.0.0.1 (this machine only)",
    )
    parser.add_argument(
        "--port",
        type=port_arg,
        default=None,
        help=f"port to listen on, 0…65535; 0 picks a free one; default {DEFAULT_PORT}",
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
        "--path", default=DEFAULT_PATH, help=f"the MCP endpoint path; default {DEFAULT_PATH}"
    )
    parser.add_argument(
        "--token-env",
        default=DEFAULT_TOKEN_ENV,
        metavar="NAME",
        help="environment variable holding the bearer token; when it is set, requests "
        f"without that token get 401; default {DEFAULT_TOKEN_ENV}",
    )
    parser.add_argument(
        "--render-delay",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="testing aid: make each memory_render wait this long (used by the fault "
        "tests to stop a server mid-extraction); default 0",
    )


def run(args: argparse.Namespace) -> int:
    from amygdala.errors import ConfigError
    from amygdala.graph.server import DEFAULT_PATH, ServeConfig, serve, serve_stdio

    if args.render_delay < 0:
        raise ConfigError(f"--render-delay must be >= 0, got {args.render_delay}")
    if args.stdio:
        path = args.path if args.path != DEFAULT_PATH else None
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
        serve_stdio(args.graph, args.token_env, render_delay=args.render_delay)
        return 0
    config = ServeConfig(
        graph=args.graph,
        host="127.0.0.1" if args.host is None else args.host,
        port=DEFAULT_PORT if args.port is None else args.port,
        max_request_bytes=args.max_request_bytes or DEFAULT_MAX_REQUEST_BYTES,
        path=args.path,
        token_env=args.token_env,
        render_delay=args.render_delay,
    )
    serve(config)
    return 0
