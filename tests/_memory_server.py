"""Start and stop `amygdala memory-server` as a real subprocess, for the MCP tests.

The server is asked for port 0 (the kernel picks a free one while binding, so two test
runs cannot race for a port) and announces its URL on stdout once it accepts requests;
we wait for that line, then also poll until a TCP connection succeeds. The process is
always stopped in `finally`, killed if it does not exit on SIGTERM.
"""

from __future__ import annotations

import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

TOKEN_ENV = "AMYGDALA_MEMORY_TOKEN"
READY = re.compile(r" on (http://\S+?)(;|$)")
START_TIMEOUT = 60.0  # seconds; generous for a loaded CI machine, never reached when healthy


@dataclass
class RunningServer:
    proc: subprocess.Popen[str]
    url: str  # the full endpoint URL, e.g. http://127.0.0.1:41234/mcp
    ready_line: str
    stderr: list[str]  # what the server wrote to stderr so far (drained by a thread)

    @property
    def port(self) -> int:
        port = urlsplit(self.url).port
        assert port is not None
        return port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_process(self.proc)


def free_port() -> int:
    """A port nothing listens on (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**overrides: str) -> dict[str, str]:
    """The test process's environment without a stray token, plus overrides."""
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    env.update(overrides)
    return env


def stop_process(proc: subprocess.Popen[str]) -> None:
    """SIGTERM, then SIGKILL after 10 s; the pipes are drained by reader threads."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _drain(stream: IO[str], sink: queue.Queue[str] | list[str]) -> None:
    with stream:
        for line in stream:
            if isinstance(sink, list):
                sink.append(line)
            else:
                sink.put(line)


def _wait_ready(proc: subprocess.Popen[str], lines: queue.Queue[str], errors: list[str]) -> str:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.1)
        except queue.Empty:
            if proc.poll() is not None:
                time.sleep(0.2)  # let the stderr thread catch the last lines
                raise RuntimeError(
                    f"memory-server exited with {proc.returncode}: {''.join(errors)}"
                ) from None
            continue
        if READY.search(line):
            return line.strip()
    raise RuntimeError(f"memory-server did not announce a URL within {START_TIMEOUT} s")


def _wait_connectable(port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"memory-server port {port} never accepted a connection")


@contextmanager
def memory_server(
    graph: Path,
    *args: str,
    port: int = 0,
    env: dict[str, str] | None = None,
) -> Iterator[RunningServer]:
    """Run `python -m amygdala memory-server --graph GRAPH --port PORT ARGS…` until the block ends."""
    cmd: Sequence[str] = [
        sys.executable, "-m", "amygdala", "memory-server",
        "--graph", str(graph), "--port", str(port), *args,
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env if env is not None else clean_env(),
    )
    try:
        lines: queue.Queue[str] = queue.Queue()
        errors: list[str] = []
        for stream, sink in ((proc.stdout, lines), (proc.stderr, errors)):
            threading.Thread(target=_drain, args=(stream, sink), daemon=True).start()
        line = _wait_ready(proc, lines, errors)
        match = READY.search(line)
        assert match is not None
        server = RunningServer(proc, match.group(1), line, errors)
        _wait_connectable(server.port)
        yield server
    finally:
        stop_process(proc)
