"""The reference memory server, run as `python -m amygdala memory-server` in a subprocess
and spoken to with the official MCP client over streamable HTTP (and raw HTTP for auth)
and over stdio (`--stdio`).

Expected answers come from the graph file the test writes, not from the server's code.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from _memory_server import RunningServer, clean_env, memory_server

RECORDS: list[dict[str, Any]] = [
    {"key": "journal#j-2026-04-02-kitchen", "node_type": "episodic_session",
     "timestamp": "2026-04-02T21:14:00", "weight": 0.8, "provenance": "agent:journal",
     "content": "We talked in the kitchen until late.\r\nI felt held.  \n\nwarmth:9 clarity:7\n"},
    {"key": "daily-2026-04-02", "node_type": "episodic_daily", "timestamp": "2026-04-02T23:59:00",
     "weight": 0.5, "content": "Digest: kitchen talk, two bug fixes. Kitchen again at night."},
    {"key": "note#rust", "node_type": "semantic", "content": "Lifetimes are promises — ünïcödé ✓"},
    {"key": "journal#j-2026-03-30-harbour", "node_type": "episodic_session",
     "timestamp": 1774857600, "content": "Fog over the harbour.\nfear:3"},
    {"key": "journal#gone", "node_type": "episodic_session", "content": "deleted later"},
    {"key": "journal#gone", "deleted": True},
    {"key": "daily-2026-04-02", "node_type": "episodic_daily", "timestamp": "2026-04-02T23:59:00",
     "weight": 0.6, "content": "Digest (edited): kitchen talk. KITCHEN, kitchen, kitchen."},
    {"key": "weekly-2026-w14", "node_type": "episodic_weekly", "timestamp": "2026-04-05T12:00:00",
     "content": "A week of fog and kitchens.\ncuriosity:6"},
]  # fmt: skip
TOOLS = {"memory_query", "memory_render", "journal_tail", "memory_search"}


def write_graph(path: Path, records: list[dict[str, Any]] = RECORDS) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records) + "{bad\n")
    return path


async def _call_async(url: str, tool: str, args: dict[str, Any], token: str | None) -> Any:
    import httpx2
    from mcp.client.client import Client
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    http = httpx2.AsyncClient(headers=headers)
    async with Client(streamable_http_client(url, http_client=http), cache=None) as client:
        if tool == "tools/list":
            return await client.list_tools()
        return await client.call_tool(tool, args)


def call(url: str, tool: str, args: dict[str, Any] | None = None, token: str | None = None) -> Any:
    return asyncio.run(_call_async(url, tool, args or {}, token))


def text(result: Any) -> str:
    assert [c.type for c in result.content] == ["text"]
    return str(result.content[0].text)


def listing(url: str, tool: str, **args: Any) -> dict[str, Any]:
    result = call(url, tool, args)
    assert not result.is_error, text(result)
    body = json.loads(text(result))
    assert body["format"] == "amygdala-memory-listing/1"
    assert body["count"] == len(body["nodes"])
    return body  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    graph = write_graph(tmp_path_factory.mktemp("graph") / "graph.jsonl")
    with memory_server(graph) as running:
        yield running


def test_announces_a_loopback_url_and_offers_exactly_the_read_only_tools(
    server: RunningServer,
) -> None:
    assert server.url.startswith("http://127.0.0.1:") and server.url.endswith("/mcp")
    assert "serving 5 nodes from" in server.ready_line
    assert {t.name for t in call(server.url, "tools/list").tools} == TOOLS


def test_query_all_lists_live_nodes_in_file_order_with_metadata(server: RunningServer) -> None:
    body = listing(server.url, "memory_query", query="all")
    assert body["nodes"] == [
        {"key": "journal#j-2026-04-02-kitchen", "node_type": "episodic_session",
         "timestamp": "2026-04-02T21:14:00", "weight": 0.8, "provenance": "agent:journal",
         "content_len": len(RECORDS[0]["content"])},
        {"key": "daily-2026-04-02", "node_type": "episodic_daily",
         "timestamp": "2026-04-02T23:59:00", "weight": 0.6, "provenance": None,
         "content_len": len(RECORDS[6]["content"])},
        {"key": "note#rust", "node_type": "semantic", "timestamp": None, "weight": None,
         "provenance": None, "content_len": len(RECORDS[2]["content"])},
        {"key": "journal#j-2026-03-30-harbour", "node_type": "episodic_session",
         "timestamp": "1774857600", "weight": None, "provenance": None,
         "content_len": len(RECORDS[3]["content"])},
        {"key": "weekly-2026-w14", "node_type": "episodic_weekly",
         "timestamp": "2026-04-05T12:00:00", "weight": None, "provenance": None,
         "content_len": len(RECORDS[7]["content"])},
    ]  # fmt: skip
    assert listing(server.url, "memory_query")["nodes"] == body["nodes"]  # query defaults to all


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("type:episodic | sort:timestamp:desc | limit:2", ["weekly-2026-w14", "daily-2026-04-02"]),
        (
            "key:journal#* | sort:key",
            ["journal#j-2026-03-30-harbour", "journal#j-2026-04-02-kitchen"],
        ),
        ("weight:>=0.6", ["journal#j-2026-04-02-kitchen", "daily-2026-04-02"]),
        ("content-len:<30", ["journal#j-2026-03-30-harbour"]),
        ("type:semantic", ["note#rust"]),
    ],
)
def test_query_pipelines(server: RunningServer, query: str, expected: list[str]) -> None:
    assert [n["key"] for n in listing(server.url, "memory_query", query=query)["nodes"]] == expected


def test_bad_query_is_a_tool_error_naming_the_stage(server: RunningServer) -> None:
    result = call(server.url, "memory_query", {"query": "all | wieght:>1"})
    assert result.is_error
    assert "stage 2: unknown stage 'wieght:>1'" in text(result)


def test_render_returns_content_exactly_as_stored(server: RunningServer) -> None:
    for record in (RECORDS[0], RECORDS[2], RECORDS[6]):  # CRLF + tag lines, unicode, superseded
        result = call(server.url, "memory_render", {"key": record["key"]})
        assert not result.is_error
        assert text(result) == record["content"]


@pytest.mark.parametrize("key", ["journal#gone", "no-such-key"])
def test_render_unknown_or_deleted_key_is_a_tool_error(server: RunningServer, key: str) -> None:
    result = call(server.url, "memory_render", {"key": key})
    assert result.is_error
    assert f"unknown key {key!r}" in text(result)


def test_journal_tail_gives_latest_episodic_nodes_with_content(server: RunningServer) -> None:
    nodes = listing(server.url, "journal_tail", n=3)["nodes"]
    assert [n["key"] for n in nodes] == [
        "weekly-2026-w14",
        "daily-2026-04-02",
        "journal#j-2026-04-02-kitchen",
    ]
    assert nodes[2]["content"] == RECORDS[0]["content"]
    assert len(listing(server.url, "journal_tail")["nodes"]) == 4  # every episodic node
    assert call(server.url, "journal_tail", {"n": -1}).is_error


def test_search_is_case_insensitive_and_ranked_by_matches(server: RunningServer) -> None:
    nodes = listing(server.url, "memory_search", keyword="Kitchen", limit=20)["nodes"]
    assert [(n["key"], n["matches"]) for n in nodes] == [
        ("daily-2026-04-02", 4),
        ("journal#j-2026-04-02-kitchen", 2),  # once in the key, once in the content
        ("weekly-2026-w14", 1),
    ]
    limited = listing(server.url, "memory_search", keyword="kitchen", limit=1)["nodes"]
    assert [n["key"] for n in limited] == ["daily-2026-04-02"]
    assert listing(server.url, "memory_search", keyword="zebra")["nodes"] == []
    assert call(server.url, "memory_search", {"keyword": "  "}).is_error


def test_token_is_required_when_set_and_never_printed(tmp_path: Path) -> None:
    token = "s3cret-token-value"
    graph = write_graph(tmp_path / "graph.jsonl")
    with memory_server(graph, env=clean_env(AMYGDALA_MEMORY_TOKEN=token)) as running:
        assert "bearer token required" in running.ready_line
        post = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token}):
            response = httpx.post(running.url, json=post, headers=headers, timeout=10)
            assert response.status_code == 401
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert token not in response.text
        with pytest.raises(Exception):  # noqa: B017 - the SDK reports a 401 as a generic error
            call(running.url, "tools/list")
        tools = call(running.url, "tools/list", token=token).tools
        assert {t.name for t in tools} == TOOLS
        assert (
            text(call(running.url, "memory_render", {"key": "note#rust"}, token=token))
            == (RECORDS[2]["content"])
        )
    assert token not in running.ready_line
    assert token not in "".join(running.stderr)


def test_token_env_flag_names_the_variable(tmp_path: Path) -> None:
    graph = write_graph(tmp_path / "graph.jsonl")
    env = clean_env(MY_MEMORY_TOKEN="abc", AMYGDALA_MEMORY_TOKEN="ignored")
    with memory_server(graph, "--token-env", "MY_MEMORY_TOKEN", env=env) as running:
        assert "from $MY_MEMORY_TOKEN" in running.ready_line
        assert {t.name for t in call(running.url, "tools/list", token="abc").tools} == TOOLS
        post = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
        bad = httpx.post(running.url, json=post, headers={"Authorization": "Bearer ignored"})
        assert bad.status_code == 401


async def _stdio_async(
    graph: Path, calls: list[tuple[str, dict[str, Any]]], errlog: Any
) -> list[Any]:
    from mcp.client.client import Client
    from mcp.client.stdio import StdioServerParameters, stdio_client

    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "amygdala", "memory-server", "--graph", str(graph), "--stdio"],
        env=clean_env(AMYGDALA_MEMORY_TOKEN="set-but-unused"),
    )
    async with Client(stdio_client(params, errlog=errlog), cache=None) as client:
        answers: list[Any] = [await client.list_tools()]
        for tool, args in calls:
            answers.append(await client.call_tool(tool, args))
        return answers


def test_stdio_serves_the_same_tools_and_answers(tmp_path: Path) -> None:
    """`--stdio`: the official client starts the server and talks over its stdin/stdout."""
    graph = write_graph(tmp_path / "graph.jsonl")
    calls = [("memory_render", {"key": RECORDS[0]["key"]}), ("memory_query", {"query": "all"}),
             ("memory_render", {"key": "journal#gone"})]  # fmt: skip
    with (tmp_path / "stderr.txt").open("w+") as errlog:
        tools, render, query, gone = asyncio.run(_stdio_async(graph, calls, errlog))
        errlog.seek(0)
        stderr = errlog.read()
    assert {t.name for t in tools.tools} == TOOLS
    assert text(render) == RECORDS[0]["content"]  # exactly as stored, CRLF and tags included
    assert [n["key"] for n in json.loads(text(query))["nodes"]] == [
        "journal#j-2026-04-02-kitchen", "daily-2026-04-02", "note#rust",
        "journal#j-2026-03-30-harbour", "weekly-2026-w14",
    ]  # fmt: skip
    assert gone.is_error and "unknown key 'journal#gone'" in text(gone)
    assert f"serving 5 nodes from {graph} over stdio" in stderr
    assert "AMYGDALA_MEMORY_TOKEN is set but not checked" in stderr
    assert "set-but-unused" not in stderr


@pytest.mark.parametrize("flag", [["--port", "7777"], ["--host", "0.0.0.0"]])
def test_stdio_refuses_listening_flags(tmp_path: Path, flag: list[str]) -> None:
    graph = write_graph(tmp_path / "graph.jsonl")
    done = _server_cli("--graph", str(graph), "--stdio", *flag)
    assert done.returncode == 2
    assert f"error: {flag[0]}: with --stdio this server listens on no address" in done.stderr


def test_stdio_with_a_missing_graph_file_exits_with_a_clear_error(tmp_path: Path) -> None:
    done = _server_cli("--graph", str(tmp_path / "nope.jsonl"), "--stdio")
    assert done.returncode == 2
    assert "nope.jsonl: no such file" in done.stderr and done.stdout == ""


def _server_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "amygdala", "memory-server", *args],
        capture_output=True, text=True, timeout=60, env=clean_env(),
    )  # fmt: skip


def test_missing_graph_file_exits_with_a_clear_error(tmp_path: Path) -> None:
    done = _server_cli("--graph", str(tmp_path / "nope.jsonl"), "--port", "0")
    assert done.returncode == 2
    assert "nope.jsonl: no such file" in done.stderr
    assert "Traceback" not in done.stderr


def test_port_in_use_exits_with_a_clear_error(tmp_path: Path) -> None:
    graph = write_graph(tmp_path / "graph.jsonl")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = _server_cli("--graph", str(graph), "--port", str(port))
    assert done.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "--port" in done.stderr
