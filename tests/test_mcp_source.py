"""The MCP graph source against the reference server, both real: `amygdala memory-server`
runs as a subprocess, and `amygdala extract --memory-mcp-url` talks to it with the
official MCP client over streamable HTTP.

The reference is the file source reading the same graph file: same nodes, same order,
and a training-data directory whose bytes match. The fault tests check that every
failure is one clear `error:` line naming its cause, a non-zero exit, and no output
directory (or an earlier one left untouched).
"""

from __future__ import annotations

import asyncio
import importlib.resources
import json
import random
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _memory_server import (
    RunningServer,
    amygdala,
    clean_env,
    free_port,
    memory_server,
    spawn,
)
from amygdala.cli import main
from amygdala.errors import ConfigError
from amygdala.graph.filesource import FileSource
from amygdala.graph.mcp_source import (
    McpGraphSource,
    McpOptions,
    endpoint_url,
    listing_items,
)

EMOTIONS = ["warmth", "fear", "curiosity", "calm"]
PLACES = ["kitchen", "harbour", "library", "night train", "garden", "server room"]
TYPES = ["episodic_session", "episodic_daily", "semantic", None]
ARGS = ["--min-positives", "3", "--heldout-fraction", "0.25", "--no-mcp-progress"]
MARKER = r"listed \d+ nodes; fetching their content"


def make_records(n: int = 80, seed: int = 0) -> list[dict[str, Any]]:
    """Tagged and untagged nodes with every optional field in its forms (int/str stamps …)."""
    rng = random.Random(seed)
    records: list[dict[str, Any]] = []
    for i in range(n):
        body = (
            f"Entry {i} — at the {PLACES[i % len(PLACES)]} I went over day {i}'s notes "
            f"with Mara; «{rng.choice(['quiet', 'loud', 'odd'])}» is the word for it."
        )
        tags = " ".join(f"{e}:{rng.choice([0, 1, 2, 8, 9, 10])}" for e in rng.sample(EMOTIONS, 2))
        content = body if i % 9 == 0 else f"{body}\r\n\n{tags}\n"
        record: dict[str, Any] = {"key": f"journal#j-{i:03d}", "content": content}
        if TYPES[i % 4] is not None:
            record["node_type"] = TYPES[i % 4]
        if i % 3:
            record["timestamp"] = (
                f"2026-04-{1 + i % 28:02d}T{i % 24:02d}:00:00" if i % 2 else 1775000000 + i
            )
        if i % 5:
            record["weight"] = round(rng.random(), 3)
        if i % 7 == 0:
            record["provenance"] = "agent:journal"
        records.append(record)
    return records


def write_jsonl(path: Path, records: list[dict[str, Any]], extra: tuple[str, ...] = ()) -> Path:
    lines = [json.dumps(r, ensure_ascii=False) for r in records] + list(extra)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def messy_records() -> tuple[list[dict[str, Any]], tuple[str, ...]]:
    records = make_records()
    records.append({"key": "journal#j-001", "content": records[1]["content"] + "edited\n"})
    records.append({"key": "journal#j-002", "deleted": True})
    return records, ("{not json", '{"key": "journal#j-003", "content": 5}')


@pytest.fixture(scope="module")
def graph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    records, extra = messy_records()
    return write_jsonl(tmp_path_factory.mktemp("graph") / "graph.jsonl", records, extra)


@pytest.fixture(scope="module")
def server(graph: Path) -> Iterator[RunningServer]:
    with memory_server(graph) as running:
        yield running


def read_mcp(url: str, **options: Any) -> Any:
    return McpGraphSource(McpOptions(url=url, progress=False, **options)).read()


def tree(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


def extract_cli(*args: str) -> int:
    return main(["extract", *args])


# -- the source reads what the file source reads -------------------------------------


@pytest.mark.parametrize("form", ["base", "base/", "endpoint"])
def test_read_equals_the_file_source(server: RunningServer, graph: Path, form: str) -> None:
    url = {"base": server.base_url, "base/": server.base_url + "/", "endpoint": server.url}[form]
    expected = FileSource(graph).read()
    read = read_mcp(url)
    assert read.nodes == expected.nodes  # same Node values, same order
    assert read.source == f"mcp:{server.url}"
    assert read.records_seen == len(expected.nodes) and read.problems == []


def test_concurrency_does_not_change_the_result(server: RunningServer, graph: Path) -> None:
    expected = FileSource(graph).read().nodes
    assert read_mcp(server.url, concurrency=1).nodes == expected
    assert read_mcp(server.url, concurrency=32).nodes == expected


def test_read_works_from_inside_a_running_event_loop(server: RunningServer, graph: Path) -> None:
    async def from_async_code() -> Any:
        return McpGraphSource(McpOptions(url=server.url, progress=False)).read()

    assert asyncio.run(from_async_code()).nodes == FileSource(graph).read().nodes


def test_query_option_selects_what_the_server_lists(server: RunningServer, graph: Path) -> None:
    semantic = [n for n in FileSource(graph).read().nodes if n.node_type == "semantic"]
    assert semantic
    assert read_mcp(server.url, query="type:semantic").nodes == semantic
    heavy = [n for n in FileSource(graph).read().nodes if n.weight is not None and n.weight > 0.5]
    assert read_mcp(server.url, query="all | weight:>0.5").nodes == heavy


def test_extract_through_mcp_gives_the_same_directory(
    server: RunningServer, graph: Path, tmp_path: Path
) -> None:
    """Data files byte-identical; the manifest differs only where it names the source."""
    from_file, from_mcp = tmp_path / "file", tmp_path / "mcp"
    assert extract_cli("--graph", str(graph), "--output-dir", str(from_file), *ARGS) == 0
    assert (
        extract_cli("--memory-mcp-url", server.base_url, "--output-dir", str(from_mcp), *ARGS) == 0
    )
    a, b = tree(from_file), tree(from_mcp)
    assert sorted(a) == sorted(b) and len(a) >= 3
    for name in a:
        if name != "manifest.json":
            assert a[name] == b[name], name
    ma, mb = json.loads(a["manifest.json"]), json.loads(b["manifest.json"])
    assert (ma.pop("source"), mb.pop("source")) == (f"file:{graph}", f"mcp:{server.url}")
    # what the file source alone can see: the records behind the live nodes
    ga, gb = ma["summary"].pop("graph"), mb["summary"].pop("graph")
    assert ga["nodes"] == gb["nodes"] == gb["records_seen"]
    assert (ga["deleted"], ga["superseded"], ga["malformed_records"]) == (1, 2, 2)
    assert ma == mb


def test_clean_graph_extracts_byte_identical_but_for_the_source(tmp_path: Path) -> None:
    """Only `source` and how the MCP source read (`summary.graph.reader`) differ."""
    graph = write_jsonl(tmp_path / "clean.jsonl", make_records(60, seed=3))
    from_file, from_mcp = tmp_path / "file", tmp_path / "mcp"
    assert extract_cli("--graph", str(graph), "--output-dir", str(from_file), *ARGS) == 0
    with memory_server(graph) as running:
        url = running.base_url
        assert extract_cli("--memory-mcp-url", url, "--output-dir", str(from_mcp), *ARGS) == 0
    a, b = tree(from_file), tree(from_mcp)
    manifest = json.loads(b["manifest.json"])
    assert manifest["summary"]["graph"].pop("reader") == {
        "transport": "streamable-http", "listing_format": "json", "listing_lines_skipped": 0,
        "render_answers_text": 60, "render_answers_json": 0, "footer_rule": "default",
        "footers_stripped": 0,
    }  # fmt: skip
    manifest["source"] = f"file:{graph}"
    b["manifest.json"] = (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode()
    assert a == b


def test_reference_server_over_stdio_extracts_the_same_directory(
    graph: Path, tmp_path: Path
) -> None:
    from_file, from_stdio = tmp_path / "file", tmp_path / "stdio"
    command = shlex.join(amygdala("memory-server", "--graph", str(graph), "--stdio"))
    assert extract_cli("--graph", str(graph), "--output-dir", str(from_file), *ARGS) == 0
    assert extract_cli("--memory-mcp-command", command, "--output-dir", str(from_stdio), *ARGS) == 0
    a, b = tree(from_file), tree(from_stdio)
    assert sorted(a) == sorted(b) and len(a) >= 3
    assert all(a[name] == b[name] for name in a if name != "manifest.json")
    manifest = json.loads(b["manifest.json"])
    assert manifest["source"] == f"mcp:stdio:{command}"
    assert manifest["summary"]["graph"]["reader"]["transport"] == "stdio"
    assert read_stdio(command).nodes == FileSource(graph).read().nodes  # metadata too


def read_stdio(command: str) -> Any:
    return McpGraphSource(McpOptions(command=command, progress=False)).read()


def test_bundled_sample_graph_extracts_identically(tmp_path: Path) -> None:
    resource = importlib.resources.files("amygdala") / "data" / "sample_graph.jsonl"
    assert resource.is_file(), "the sample graph is missing from the package"
    with importlib.resources.as_file(resource) as sample:
        from_file, from_mcp = tmp_path / "file", tmp_path / "mcp"
        assert extract_cli("--graph", str(sample), "--output-dir", str(from_file)) == 0
        with memory_server(sample) as running:
            assert (
                extract_cli("--memory-mcp-url", running.base_url, "--output-dir", str(from_mcp))
                == 0
            )
    a, b = tree(from_file), tree(from_mcp)
    assert sorted(a) == sorted(b)
    assert all(a[name] == b[name] for name in a if name != "manifest.json")


# -- faults ---------------------------------------------------------------------------


def expect_failure(capsys: pytest.CaptureFixture[str], out: Path, *args: str, code: int = 2) -> str:
    """Run extract into `out`; it must fail with one error line and write nothing."""
    assert extract_cli("--output-dir", str(out), "--no-mcp-progress", *args) == code
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert not out.exists()
    return err


def test_server_not_running(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    err = expect_failure(capsys, tmp_path / "out", "--memory-mcp-url", f"http://127.0.0.1:{port}")
    assert f"cannot connect to the memory MCP server at http://127.0.0.1:{port}/mcp" in err
    assert "connection refused" in err and "amygdala memory-server" in err


def test_failed_run_leaves_an_earlier_directory_untouched(
    graph: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert extract_cli("--graph", str(graph), "--output-dir", str(out), *ARGS) == 0
    before = tree(out)
    url = f"http://127.0.0.1:{free_port()}"
    assert extract_cli("--memory-mcp-url", url, "--output-dir", str(out), *ARGS) == 2
    assert "cannot connect" in capsys.readouterr().err
    assert tree(out) == before


def test_server_killed_mid_extraction(graph: Path, tmp_path: Path) -> None:
    """The server lists the nodes, then dies while every render is waiting (deterministic)."""
    out = tmp_path / "out"
    with memory_server(graph, "--render-delay", "60") as slow:
        run = spawn(amygdala("extract", "--memory-mcp-url", slow.base_url, "--output-dir",
                             str(out), "--mcp-retries", "2", "--mcp-backoff", "0.1"))  # fmt: skip
        try:
            run.wait_for(MARKER, stream="stderr")
            slow.kill()
            code = run.wait()
        finally:
            run.stop()
    err = "".join(run.stderr)
    assert code == 2
    n = len(FileSource(graph).read().nodes)
    assert f"the memory MCP server at {slow.url} stopped answering during extraction" in err
    assert f"(0 of {n} nodes fetched)" in err and "still failing after 2 retries" in err
    assert "Traceback" not in err
    assert not out.exists()


def test_server_restarted_mid_extraction_is_retried(graph: Path, tmp_path: Path) -> None:
    """Killed while renders are in flight, back on the same port: the run recovers."""
    reference, out = tmp_path / "reference", tmp_path / "out"
    assert extract_cli("--graph", str(graph), "--output-dir", str(reference), *ARGS) == 0
    with memory_server(graph, "--render-delay", "60") as slow:
        run = spawn(amygdala("extract", "--memory-mcp-url", slow.url, "--output-dir", str(out),
                             "--mcp-retries", "10", "--mcp-backoff", "0.1", *ARGS[:-1]))  # fmt: skip
        try:
            run.wait_for(MARKER, stream="stderr")
            slow.kill()
            with memory_server(graph, port=slow.port):
                code = run.wait()
        finally:
            run.stop()
    assert code == 0, "".join(run.stderr)
    a, b = tree(reference), tree(out)
    assert all(a[name] == b[name] for name in a if name != "manifest.json")


def test_tool_error_is_reported_with_its_message(
    server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = expect_failure(capsys, tmp_path / "out", "--memory-mcp-url", server.base_url,
                         "--query", "all | bogus")  # fmt: skip
    assert f"{server.url}: tool memory_query returned an error for query 'all | bogus'" in err
    assert "unknown stage 'bogus'" in err
    err = expect_failure(capsys, tmp_path / "out", "--memory-mcp-url", server.base_url,
                         "--render-tool", "memory_search")  # fmt: skip
    assert re.search(r"tool memory_search returned an error for key 'journal#j-\d+'", err)
    assert "keyword" in err and "\n" not in err.strip()  # one line


def test_unparsable_listing_names_the_tool_and_the_fix(
    server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # memory_render answers with a node's prose, not a listing
    err = expect_failure(capsys, tmp_path / "out", "--memory-mcp-url", server.base_url,
                         "--query-tool", "memory_render", "--query-arg", "key",
                         "--query", "journal#j-004")  # fmt: skip
    assert "could not read the output of memory_render as a node listing (neither JSON nor" in err
    assert "lines of node keys: none of its 3 lines is a key" in err
    assert "it starts: " in err and "Entry 4 — at the" in err
    assert "point --query-tool at the tool that lists node keys" in err


def test_missing_tool_lists_the_servers_tools(
    server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = expect_failure(capsys, tmp_path / "out", "--memory-mcp-url", server.base_url,
                         "--render-tool", "memory_fetch")  # fmt: skip
    assert "has no tool 'memory_fetch' (its tools: journal_tail, memory_query" in err
    assert "pass --render-tool" in err


def test_wrong_endpoint_path(
    server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = expect_failure(capsys, tmp_path / "out", "--memory-mcp-url", server.base_url + "/v2/mcp")
    assert "HTTP 404, no MCP endpoint at this path" in err


def test_per_call_timeout(graph: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with memory_server(graph, "--render-delay", "30") as slow:
        err = expect_failure(capsys, tmp_path / "out", "--memory-mcp-url", slow.base_url,
                             "--mcp-timeout", "0.3", "--mcp-retries", "1", "--mcp-backoff", "0.05",
                             "--mcp-concurrency", "2")  # fmt: skip
        slow.kill()  # its renders are still sleeping; no point waiting for a graceful stop
    assert "memory_render for key 'journal#j-00" in err
    assert "did not answer within 0.3 s (2 tries)" in err and "--mcp-timeout" in err


# -- auth -----------------------------------------------------------------------------


TOKEN = "tok-4f1c9a7e-never-print-me"


@pytest.fixture(scope="module")
def locked(graph: Path) -> Iterator[RunningServer]:
    with memory_server(graph, env=clean_env(AMYGDALA_MEMORY_TOKEN=TOKEN)) as running:
        yield running


def test_missing_token_is_rejected(
    locked: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.delenv("AMYGDALA_MEMORY_TOKEN", raising=False)
    err = expect_failure(capsys, tmp_path / "out", "--memory-mcp-url", locked.base_url)
    assert f"{locked.url} rejected the request (HTTP 401): no token was sent" in err
    assert "$AMYGDALA_MEMORY_TOKEN" in err


def test_wrong_token_is_rejected_and_not_printed(
    locked: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("AMYGDALA_MEMORY_TOKEN", "wrong-token-value")
    err = expect_failure(capsys, tmp_path / "out", "--memory-mcp-url", locked.base_url)
    assert (
        "rejected the request (HTTP 401): the token in $AMYGDALA_MEMORY_TOKEN was not accepted"
        in err
    )
    assert "wrong-token-value" not in err


def test_right_token_from_a_named_variable_works_and_stays_secret(
    locked: RunningServer, graph: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.delenv("AMYGDALA_MEMORY_TOKEN", raising=False)
    monkeypatch.setenv("MEMORY_TOKEN_FOR_TEST", TOKEN)
    out = tmp_path / "out"
    args = ["--memory-mcp-url", locked.base_url, "--mcp-token-env", "MEMORY_TOKEN_FOR_TEST"]
    assert extract_cli(*args, "--output-dir", str(out), *ARGS) == 0
    captured = capsys.readouterr()
    assert TOKEN not in captured.err + captured.out
    assert TOKEN not in (out / "manifest.json").read_text()
    source = McpGraphSource(McpOptions(url=locked.base_url, token_env="MEMORY_TOKEN_FOR_TEST"))
    assert TOKEN not in repr(source) and TOKEN not in repr(source.options)
    assert read_mcp(locked.url, token_env="MEMORY_TOKEN_FOR_TEST").nodes == (
        FileSource(graph).read().nodes
    )


# -- pieces ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "endpoint"),
    [
        ("http://localhost:7777", "http://localhost:7777/mcp"),
        ("http://localhost:7777/", "http://localhost:7777/mcp"),
        ("http://localhost:7777/mcp", "http://localhost:7777/mcp"),
        ("https://memory.example/api/v1/mcp", "https://memory.example/api/v1/mcp"),
        (" http://127.0.0.1:9/x?tenant=a ", "http://127.0.0.1:9/x?tenant=a"),
    ],
)
def test_endpoint_url(url: str, endpoint: str) -> None:
    assert endpoint_url(url) == endpoint


@pytest.mark.parametrize("url", ["localhost:7777", "ftp://host/mcp", "http://", ""])
def test_bad_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="not an http"):
        McpOptions(url=url)


@pytest.mark.parametrize(
    ("field", "value", "flag"),
    [("concurrency", 0, "--mcp-concurrency"), ("timeout", 0, "--mcp-timeout"),
     ("retries", -1, "--mcp-retries"), ("backoff", -1, "--mcp-backoff"),
     ("render_tool", " ", "--render-tool")],
)  # fmt: skip
def test_bad_options_are_config_errors(field: str, value: object, flag: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        McpOptions(url="http://localhost:7777", **{field: value})


def test_listing_shapes_other_deployments_use() -> None:
    entries = [{"key": "a"}, {"key": "b", "type": "semantic"}]
    assert listing_items(entries) == entries
    assert listing_items(["a", "b"]) == ["a", "b"]
    assert listing_items({"nodes": entries, "count": 2}) == entries
    assert listing_items({"keys": ["a"]}) == ["a"]
    assert listing_items({"result": ["a"]}) == ["a"]  # an SDK tool's structured list result
    assert listing_items({"answer": "a, b"}) is None
    assert listing_items("a b") is None
