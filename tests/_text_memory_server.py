"""A memory MCP server written for the tests: not our reference server, and answering the way
real memory servers do — plain-text listings, rendered nodes followed by a links section.

Usage:
  python tests/_text_memory_server.py --graph graph.jsonl --stdio [--listing S] [--render S]
  python tests/_text_memory_server.py --graph graph.jsonl --port 0 [--sse] [--listing S] …

Over HTTP it prints `serving N nodes on http://127.0.0.1:PORT/PATH` on stdout once it
accepts requests (`/mcp`, stateful streamable HTTP with SSE answers; or `/sse` with
`--sse`, the legacy transport). It reads the graph JSONL itself, with the rules of
docs/architecture.md (a later line with the same key wins, `deleted` removes the key, lines that are
not JSON objects with a string key and string content are skipped), so it shares no code
with amygdala's graph readers.

Listings (`--listing`): `spaced` (a header, `key  0.83`, a count line), `tab`, `paren`
(`key (0.83)`), `bullets` (`1. key 0.83`), `keys`, `json` (`{"results": [{"key", "score"}]}`).
Renders (`--render`): `links` (the issue's example: a blank line, `Links:`, `→ key (0.83)`
lines), `markdown` (`## Links`, a blank line, `- [[key]] (0.83)`), `neighbors` (`Neighbors:`
right under the content, `- key 0.83`), `arrows` (only `→ key (0.83)` lines),
`json` (`{"key", "content", "links"}`), `plain` (the content alone).

Fault switches: `--banner` (a line on stdout before serving), `--exit-on-render N` (the
Nth render call of this process exits with status 3 after a line on stderr),
`--exit-once FILE` (only while FILE does not exist; it is created on exit),
`--garbage-on-render N` (the Nth render writes a non-MCP line on the real stdout first).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

LISTINGS = ("spaced", "tab", "paren", "bullets", "keys", "json")
RENDERS = ("links", "markdown", "neighbors", "arrows", "json", "plain")


def read_graph(path: Path) -> dict[str, str]:
    """key → content of the live nodes, in order of first appearance."""
    nodes: dict[str, str | None] = {}
    for line in path.read_text(encoding="utf-8").split("\n"):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict) or not isinstance(record.get("key"), str):
            continue
        if record.get("deleted") is True:
            nodes[record["key"]] = None
        elif isinstance(record.get("content"), str):
            nodes[record["key"]] = record["content"]
    return {key: content for key, content in nodes.items() if content is not None}


def links_of(keys: list[str], index: int) -> list[tuple[str, float]]:
    """Up to three neighbors of a node with strengths, strongest first."""
    n = len(keys)
    others = [keys[(index + step) % n] for step in (1, 2, -1) if (index + step) % n != index]
    unique = list(dict.fromkeys(others))
    return [(key, round(0.9 - 0.25 * rank, 2)) for rank, key in enumerate(unique)]


def listing(keys: list[str], style: str, query: str) -> str:
    scores = [round(1 - i / (2 * max(len(keys), 1)), 3) for i in range(len(keys))]
    pairs = list(zip(keys, scores))
    if style == "json":
        return json.dumps({"results": [{"key": k, "score": s} for k, s in pairs]})
    if style == "spaced":
        body = "".join(f"{k}  {s}\n" for k, s in pairs)
        return f"# memory_query: {query}\n\n{body}\n({len(keys)} nodes)\n"
    if style == "tab":
        return "".join(f"{k}\t{s}\n" for k, s in pairs)
    if style == "paren":
        return "Results:\n" + "".join(f"{k} ({s})\n" for k, s in pairs)
    if style == "bullets":
        return f"Found {len(keys)} nodes:\n" + "".join(
            f"{i}. {k} {s}\n" for i, (k, s) in enumerate(pairs, 1)
        )
    return "\n".join(keys)


def render(content: str, links: list[tuple[str, float]], style: str, key: str) -> str:
    body = content.rstrip("\r\n")
    if style == "plain":
        return content
    if style == "json":
        links_json = [{"key": k, "strength": s} for k, s in links]
        return json.dumps({"key": key, "content": content, "links": links_json})
    if style == "links":
        return body + "\n\nLinks:\n" + "".join(f"  → {k} ({s})\n" for k, s in links)
    if style == "markdown":
        return body + "\n\n## Links\n\n" + "".join(f"- [[{k}]] ({s})\n" for k, s in links)
    if style == "neighbors":
        return body + "\nNeighbors:\n" + "".join(f"- {k} {s}\n" for k, s in links)
    return body + "\n\n" + "".join(f"→ {k} ({s})\n" for k, s in links)  # arrows


def build(args: argparse.Namespace) -> Any:
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    nodes = read_graph(args.graph)
    keys = list(nodes)
    wire = os.dup(1)  # the real stdout, for --garbage-on-render (the SDK diverts sys.stdout)
    server = MCPServer("text-memory", log_level="WARNING")
    renders = {"n": 0}

    @server.tool(structured_output=False)
    def memory_query(query: str = "all") -> str:
        """Every node key with a relevance score (the query is echoed, not applied)."""
        return listing(keys, args.listing, query)

    @server.tool(structured_output=False)
    def memory_render(key: str) -> str:
        """The full content with neighbor links sorted by strength."""
        renders["n"] += 1
        if renders["n"] == args.garbage_on_render:
            os.write(wire, b"DEBUG rendering node\n")
        if renders["n"] == args.exit_on_render and not (args.exit_once and args.exit_once.exists()):
            if args.exit_once:
                args.exit_once.touch()
            print(f"render {renders['n']}: giving up, exiting", file=sys.stderr, flush=True)
            os._exit(3)
        if key not in nodes:
            raise ToolError(f"no node {key!r}")
        return render(nodes[key], links_of(keys, keys.index(key)), args.render, key)

    return server, len(nodes)


def serve_http(server: Any, count: int, args: argparse.Namespace) -> None:
    import uvicorn

    path = "/sse" if args.sse else "/mcp"
    app = (
        server.sse_app(host="127.0.0.1")
        if args.sse
        else server.streamable_http_app(host="127.0.0.1")
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}{path}"

    class Announcing(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            print(f"serving {count} nodes on {url}", flush=True)

    Announcing(uvicorn.Config(app, log_level="warning", lifespan="on")).run(sockets=[sock])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--graph", type=Path, required=True)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--stdio", action="store_true")
    where.add_argument("--port", type=int)
    parser.add_argument("--sse", action="store_true")
    parser.add_argument("--listing", choices=LISTINGS, default="spaced")
    parser.add_argument("--render", choices=RENDERS, default="links")
    parser.add_argument("--banner", action="store_true")
    parser.add_argument("--exit-on-render", type=int, default=0)
    parser.add_argument("--exit-once", type=Path, default=None)
    parser.add_argument("--garbage-on-render", type=int, default=0)
    args = parser.parse_args()
    server, count = build(args)
    if args.banner:
        print(f"text-memory server 0.1: {count} nodes", flush=True)
    if args.stdio:
        server.run("stdio")
    else:
        serve_http(server, count, args)


if __name__ == "__main__":
    main()
