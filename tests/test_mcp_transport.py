"""The MCP source against a memory server written in the tests (`_text_memory_server.py`):
plain-text listings and rendered nodes followed by a links section, over stdio, streamable
HTTP and the legacy SSE transport.

The reference is `amygdala extract --graph` on the same graph file: the training data must
be byte-identical, and no link text may reach any training text. The stdio fault tests
check one clear `error:` line, a non-zero exit and nothing written.
"""

from __future__ import annotations

import json
import random
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _memory_server import amygdala, clean_env, spawn
from amygdala.cli import main
from amygdala.errors import ConfigError
from amygdala.graph.filesource import FileSource
from amygdala.graph.mcp_source import McpGraphSource, McpOptions
from amygdala.graph.mcp_transport import display_command, http_kind, split_command

SERVER = Path(__file__).with_name("_text_memory_server.py")
EMOTIONS = ["warmth", "tenderness", "fear", "curiosity"]
ARGS = ["--min-positives", "3", "--heldout-fraction", "0.25", "--no-mcp-progress"]
READY = r" on (http://\S+)$"
TOKEN_ENV = "AMYGDALA_MEMORY_TOKEN"


def make_records(n: int = 48, seed: int = 7) -> list[dict[str, Any]]:
    """Tagged nodes (LF and CRLF, one or two tag lines), untagged ones, a superseded and a
    deleted node, in the shapes a memory graph export has."""
    rng = random.Random(seed)
    records: list[dict[str, Any]] = []
    for i in range(n):
        body = (
            f"Day {i}: helped Mara with the letter at the {['harbour', 'kitchen', 'station'][i % 3]}"
            f", then walked home in the {rng.choice(['rain', 'fog', 'sun'])}."
        )
        tags = " ".join(f"{e}:{rng.choice([0, 1, 2, 8, 9, 10])}" for e in rng.sample(EMOTIONS, 2))
        if i % 10 == 0:
            content = body
        elif i % 4 == 1:
            content = f"{body}\r\n\r\n{tags}\r\n"
        elif i % 4 == 2:
            content = f"{body}\n{tags}\ncuriosity:{i % 11}"
        else:
            content = f"{body}\n\n{tags}\n"
        records.append({"key": f"journal#j-{i:03d}", "content": content})
    records.append({"key": "journal#j-003", "content": records[3]["content"] + "edited\n"})
    records.append({"key": "journal#j-004", "deleted": True})
    return records


@pytest.fixture(scope="module")
def graph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("graph") / "graph.jsonl"
    lines = [json.dumps(r, ensure_ascii=False) for r in make_records()] + ["{not json"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def reference(graph: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "data"
    assert main(["extract", "--graph", str(graph), "--output-dir", str(out), *ARGS]) == 0
    return out


def command(graph: Path, *args: str) -> str:
    return shlex.join([sys.executable, str(SERVER), "--graph", str(graph), "--stdio", *args])


def tree(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


def extract(*args: str) -> int:
    return main(["extract", *args])


def assert_same_training_data(reference: Path, out: Path) -> dict[str, Any]:
    """Data files byte-identical; the manifest differs only in the source and how it read."""
    a, b = tree(reference), tree(out)
    assert sorted(a) == sorted(b) and len(a) >= 3
    for name in a:
        if name != "manifest.json":
            assert a[name] == b[name], name
    ma, mb = json.loads(a["manifest.json"]), json.loads(b["manifest.json"])
    ma.pop("source"), mb.pop("source")
    ga, gb = ma["summary"].pop("graph"), mb["summary"].pop("graph")
    assert ma == mb
    assert ga["nodes"] == gb["nodes"]
    return dict(gb["reader"])


def assert_no_link_text(out: Path, graph: Path) -> None:
    keys = list(FileSource(graph).read().nodes)
    for path in out.glob("*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            text = json.loads(line)["text"]
            assert not any(mark in text for mark in ("→", "[[", "Links", "Neighbors", "(0.")), text
            assert not any(node.key in text for node in keys), text


# -- the same training data over every transport and format ---------------------------

# (listing, render, lines of the listing skipped, answers with a footer stripped)
STYLES = [
    ("spaced", "links", 4, True),
    ("tab", "markdown", 0, True),
    ("paren", "neighbors", 1, True),
    ("bullets", "arrows", 1, True),
    ("keys", "json", 0, False),
    ("json", "links", 0, True),
]


@pytest.mark.parametrize(("listing", "render", "skipped", "footers"), STYLES)
def test_stdio_gives_the_training_data_of_the_graph_file(
    graph: Path, reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, listing: str, render: str, skipped: int, footers: bool,
) -> None:  # fmt: skip
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    out = tmp_path / "out"
    cmd = command(graph, "--listing", listing, "--render", render)
    assert extract("--memory-mcp-command", cmd, "--output-dir", str(out), *ARGS) == 0
    n = len(FileSource(graph).read().nodes)
    reader = assert_same_training_data(reference, out)
    assert reader == {
        "transport": "stdio",
        "listing_format": "json" if listing == "json" else "text",
        "listing_lines_skipped": skipped,
        "render_answers_text": 0 if render == "json" else n,
        "render_answers_json": n if render == "json" else 0,
        "footer_rule": "default",
        "footers_stripped": n if footers else 0,
    }
    assert_no_link_text(out, graph)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"] == f"mcp:stdio:{cmd}"
    err = capsys.readouterr().err
    assert f"read {n} records from mcp:stdio:{cmd}" in err
    assert f"read with transport stdio, listing format {reader['listing_format']}" in err
    assert f"footers stripped {n if footers else 0}" in err


@pytest.fixture(scope="module")
def http_server(graph: Path) -> Iterator[str]:
    server = spawn([sys.executable, str(SERVER), "--graph", str(graph), "--port", "0",
                    "--listing", "tab", "--render", "links"], env=clean_env())  # fmt: skip
    try:
        yield server.wait_for(READY).split(" on ")[1].strip()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def sse_server(graph: Path) -> Iterator[str]:
    server = spawn([sys.executable, str(SERVER), "--graph", str(graph), "--port", "0", "--sse",
                    "--listing", "paren", "--render", "markdown"], env=clean_env())  # fmt: skip
    try:
        yield server.wait_for(READY).split(" on ")[1].strip()
    finally:
        server.stop()


@pytest.mark.parametrize("transport", ["streamable-http", "sse"])
def test_http_and_sse_give_the_training_data_of_the_graph_file(
    graph: Path, reference: Path, tmp_path: Path, request: pytest.FixtureRequest, transport: str
) -> None:
    url = request.getfixturevalue("http_server" if transport != "sse" else "sse_server")
    out = tmp_path / "out"
    assert extract("--memory-mcp-url", url, "--output-dir", str(out), *ARGS) == 0
    reader = assert_same_training_data(reference, out)
    n = len(FileSource(graph).read().nodes)
    assert (reader["transport"], reader["listing_format"], reader["footers_stripped"]) == (
        transport, "text", n,
    )  # fmt: skip
    assert json.loads((out / "manifest.json").read_text())["source"] == f"mcp:{url}"
    assert_no_link_text(out, graph)


def test_stdio_source_reads_the_nodes_of_the_file(graph: Path) -> None:
    """Same keys, same tags and text (the render answer's framing aside)."""
    from amygdala.graph.tags import parse_tags

    source = McpGraphSource(McpOptions(command=command(graph), progress=False, concurrency=1))
    read = source.read()
    expected = FileSource(graph).read().nodes
    assert [n.key for n in read.nodes] == [n.key for n in expected]
    for got, want in zip(read.nodes, expected):
        assert parse_tags(got.content) == parse_tags(want.content), want.key


def test_footer_flag_replaces_the_default_rule(
    graph: Path, reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cmd = command(graph, "--render", "links")
    out = tmp_path / "out"
    assert extract("--memory-mcp-command", cmd, "--render-footer", "^Links:$",
                   "--output-dir", str(out), *ARGS) == 0  # fmt: skip
    assert assert_same_training_data(reference, out)["footer_rule"] == "regex '^Links:$'"
    # stripping turned off: the links section hides every tag line
    off = tmp_path / "off"
    assert extract("--memory-mcp-command", cmd, "--render-footer", "",
                   "--output-dir", str(off), *ARGS) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "none of its" in err and "live nodes can be used" in err and "untagged" in err
    assert not off.exists()


def test_a_server_that_exits_once_is_started_again(
    graph: Path, reference: Path, tmp_path: Path
) -> None:
    out, marker = tmp_path / "out", tmp_path / "exited"
    cmd = command(graph, "--exit-on-render", "5", "--exit-once", str(marker))
    assert extract("--memory-mcp-command", cmd, "--mcp-concurrency", "1", "--mcp-backoff",
                   "0.05", "--output-dir", str(out), *ARGS) == 0  # fmt: skip
    assert marker.exists()  # it did exit once
    assert_same_training_data(reference, out)


# -- faults over stdio ----------------------------------------------------------------


def expect_failure(capsys: pytest.CaptureFixture[str], out: Path, *args: str) -> str:
    """Run extract into `out`; it must fail with one error line and write nothing."""
    assert extract("--output-dir", str(out), "--no-mcp-progress", *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert not out.exists()
    return err


@pytest.fixture(autouse=True)
def _no_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)


def test_command_not_found(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = expect_failure(capsys, tmp_path / "out", "--memory-mcp-command",
                         "no-such-memory-server --stdio")  # fmt: skip
    assert (
        "cannot start the memory MCP server stdio:no-such-memory-server --stdio: command "
        "'no-such-memory-server' not found (not on PATH, nor a file); check --memory-mcp-command"
    ) in err


def test_command_not_executable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = tmp_path / "server.sh"
    script.write_text("#!/bin/sh\n")
    err = expect_failure(capsys, tmp_path / "out", "--memory-mcp-command", str(script))
    assert f"{str(script)!r} is not executable" in err


def test_server_that_exits_before_answering(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cmd = shlex.join([sys.executable, "-c", "import sys; sys.exit('graph.jsonl: no such file')"])
    err = expect_failure(capsys, tmp_path / "out", "--memory-mcp-command", cmd)
    assert (
        f"the memory MCP server stdio:{cmd} did not complete the MCP handshake (the server "
        "closed the connection; its stderr ends: 'graph.jsonl: no such file'): is it an MCP "
        "server speaking stdio?"
    ) in err


def test_server_exiting_midway(
    graph: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cmd = command(graph, "--exit-on-render", "1")
    err = expect_failure(capsys, tmp_path / "out", "--memory-mcp-command", cmd,
                         "--mcp-retries", "1", "--mcp-backoff", "0.05")  # fmt: skip
    n = len(FileSource(graph).read().nodes)
    assert f"the memory MCP server stdio:{cmd} stopped answering during extraction" in err
    assert f"(0 of {n} nodes fetched): the server closed the connection" in err
    assert "still failing after 1 retries; it was started again for each retry" in err
    assert "its stderr ends: 'render 1: giving up, exiting'. Nothing was written" in err


@pytest.mark.parametrize(
    ("flags", "line"),
    [(("--banner",), "text-memory server 0.1: 47 nodes"),
     (("--garbage-on-render", "3"), "DEBUG rendering node")],
)  # fmt: skip
def test_server_writing_garbage_to_stdout(
    graph: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    flags: tuple[str, ...], line: str,
) -> None:  # fmt: skip
    cmd = command(graph, *flags)
    err = expect_failure(capsys, tmp_path / "out", "--memory-mcp-command", cmd)
    assert (
        f"the memory MCP server stdio:{cmd} wrote a line to stdout that is not an MCP message: "
        f"{line!r}; a stdio server may write only MCP messages to stdout (logs belong on stderr)"
    ) in err


def test_server_writing_bytes_that_are_not_utf8(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = "import sys, time; sys.stdout.buffer.write(b'\\xff\\xfe\\n'); sys.stdout.flush(); time.sleep(30)"
    cmd = shlex.join([sys.executable, "-c", code])
    err = expect_failure(capsys, tmp_path / "out", "--memory-mcp-command", cmd)
    assert f"the memory MCP server stdio:{cmd} wrote bytes to stdout that are not UTF-8" in err


def test_garbage_fault_from_the_command_line_prints_one_line(graph: Path, tmp_path: Path) -> None:
    """As a real process (no pytest log capture): the SDK's own tracebacks stay hidden."""
    out = tmp_path / "out"
    done = subprocess.run(
        amygdala("extract", "--memory-mcp-command", command(graph, "--garbage-on-render", "2"),
                 "--output-dir", str(out), "--no-mcp-progress"),
        capture_output=True, text=True, timeout=120, env=clean_env(),
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert "not an MCP message: 'DEBUG rendering node'" in done.stderr
    assert not out.exists()


def test_stdio_timeout(graph: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cmd = shlex.join(amygdala("memory-server", "--graph", str(graph), "--stdio",
                              "--render-delay", "30"))  # fmt: skip
    err = expect_failure(capsys, tmp_path / "out", "--memory-mcp-command", cmd,
                         "--mcp-timeout", "0.3", "--mcp-retries", "0")  # fmt: skip
    assert "memory_render for key 'journal#j-0" in err
    assert "did not answer within 0.3 s (1 tries)" in err


# -- the bearer token over stdio --------------------------------------------------------


def test_token_env_flag_with_a_command_is_refused(
    graph: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = expect_failure(capsys, tmp_path / "out", "--memory-mcp-command", command(graph),
                         "--mcp-token-env", "MY_TOKEN")  # fmt: skip
    assert "--mcp-token-env MY_TOKEN names a bearer token, which only HTTP carries" in err
    assert "drop --mcp-token-env" in err


def test_token_in_the_default_variable_is_ignored_with_a_note(
    graph: Path, reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv(TOKEN_ENV, "tok-never-print-me")
    out = tmp_path / "out"
    assert extract("--memory-mcp-command", command(graph), "--output-dir", str(out), *ARGS) == 0
    err = capsys.readouterr().err
    assert f"note: ${TOKEN_ENV} is set but not sent: a stdio server gets no bearer token" in err
    assert "tok-never-print-me" not in err + (out / "manifest.json").read_text()
    assert_same_training_data(reference, out)


# -- flags and pieces ---------------------------------------------------------------------


def test_source_flags_are_exclusive(
    graph: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = expect_failure(capsys, tmp_path / "out", "--memory-mcp-command", "x",
                         "--memory-mcp-url", "http://127.0.0.1:9")  # fmt: skip
    assert "pass only one graph source: --memory-mcp-url URL or --memory-mcp-command CMD" in err
    err = expect_failure(capsys, tmp_path / "out", "--memory-mcp-command", "x", "--graph",
                         str(graph), "--memory-mcp-url", "http://127.0.0.1:9")  # fmt: skip
    assert "not all three" in err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"command": "server 'unclosed"}, "cannot be split into arguments (No closing quotation)"),
        ({"command": "  "}, "--memory-mcp-command is empty"),
        ({"command": []}, "--memory-mcp-command is empty"),
        ({"command": "x", "url": "http://h"}, "exactly one of --memory-mcp-url"),
        ({}, "exactly one of --memory-mcp-url"),
        ({"command": "x", "render_footer": "(x"}, "--render-footer '(x' is not a valid regular"),
    ],
)
def test_bad_options_are_config_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        McpOptions(**options)


def test_command_is_split_like_a_shell_would_but_never_run_by_one() -> None:
    assert split_command("srv --graph 'my graph.jsonl' --x=\"a b\" $HOME;") == (
        "srv", "--graph", "my graph.jsonl", "--x=a b", "$HOME;",
    )  # fmt: skip
    assert split_command(["srv", "a b"]) == ("srv", "a b")
    options = McpOptions(command="srv --graph 'my graph.jsonl'")
    assert options.argv == ("srv", "--graph", "my graph.jsonl")


def test_secret_looking_arguments_are_masked_in_what_is_shown() -> None:
    argv = ["bridge", "--token", "s3cret", "--api-key=k3y", "--header", "Authorization: Bearer x",
            "-H", "Bearer abc", "--graph", "g.jsonl"]  # fmt: skip
    shown = display_command(argv)
    assert shown == "bridge --token '***' '--api-key=***' --header '***' -H '***' --graph g.jsonl"
    for secret in ("s3cret", "k3y", "Bearer"):
        assert secret not in shown


@pytest.mark.parametrize(
    ("url", "kind"),
    [("http://h/mcp", "streamable-http"), ("http://h/sse", "sse"), ("http://h/api/sse/", "sse"),
     ("http://h/messages", "streamable-http"), ("http://h/ssex", "streamable-http")],
)  # fmt: skip
def test_sse_is_chosen_by_the_url(url: str, kind: str) -> None:
    assert http_kind(url) == kind
