"""Start and stop `amygdala memory-server` (and other CLI runs) as real subprocesses.

The server is asked for port 0 (the kernel picks a free one while binding, so two test
runs cannot race for a port) and announces its URL on stdout once it accepts requests;
we wait for that line, then also poll until a TCP connection succeeds. Processes are
always stopped in `finally` (SIGTERM, then SIGKILL), and their pipes are drained by
threads so a chatty process can never block on a full pipe.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

TOKEN_ENV = "AMYGDALA_MEMORY_TOKEN"
READY = re.compile(r" on (http://\S+?)(;|$)")
START_TIMEOUT = 60.0  # seconds; generous for a loaded CI machine, never reached when healthy


@dataclass
class Spawned:
    """A subprocess whose stdout and stderr lines are collected as they arrive."""

    proc: subprocess.Popen[str]
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    _new: queue.Queue[tuple[str, str]] = field(default_factory=queue.Queue)

    def start_draining(self) -> None:
        for name in ("stdout", "stderr"):
            stream = getattr(self.proc, name)
            threading.Thread(target=self._drain, args=(name, stream), daemon=True).start()

    def _drain(self, name: str, stream: IO[str]) -> None:
        with stream:
            for line in stream:
                getattr(self, name).append(line)
                self._new.put((name, line))

    def wait_for(self, pattern: str, stream: str = "stdout", timeout: float = START_TIMEOUT) -> str:
        """The first line of `stream` matching the regex `pattern` (seen before or after now)."""
        regex = re.compile(pattern)
        for line in list(getattr(self, stream)):
            if regex.search(line):
                return line
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                name, line = self._new.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None and self._new.empty():
                    time.sleep(0.2)  # let the reader threads catch the last lines
                    if self._new.empty():
                        raise RuntimeError(
                            f"{self.proc.args!r} exited with {self.proc.returncode} before "
                            f"printing {pattern!r}; stderr: {''.join(self.stderr)}"
                        ) from None
                continue
            if name == stream and regex.search(line):
                return line
        raise RuntimeError(f"{self.proc.args!r} did not print {pattern!r} within {timeout} s")

    def wait(self, timeout: float = START_TIMEOUT) -> int:
        code = self.proc.wait(timeout=timeout)
        time.sleep(0.05)
        return code

    def stop(self) -> None:
        stop_process(self.proc)


def spawn(cmd: Sequence[str], env: dict[str, str] | None = None) -> Spawned:
    proc = subprocess.Popen(
        list(cmd),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env if env is not None else clean_env(),
    )
    spawned = Spawned(proc)
    spawned.start_draining()
    return spawned


def amygdala(*args: str) -> list[str]:
    """The command line of `python -m amygdala ARGS…` with this interpreter."""
    return [sys.executable, "-m", "amygdala", *args]


@dataclass
class RunningServer:
    spawned: Spawned
    url: str  # the full endpoint URL, e.g. http://127.0.0.1:41234/mcp
    ready_line: str

    @property
    def port(self) -> int:
        port = urlsplit(self.url).port
        assert port is not None
        return port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def stderr(self) -> list[str]:
        return self.spawned.stderr

    def kill(self) -> None:
        """SIGKILL: the server dies with requests in flight, as in a crash."""
        self.spawned.proc.kill()
        self.spawned.proc.wait(timeout=10)


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
    """SIGTERM, then SIGKILL after 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


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
    """Run `python -m amygdala memory-server --graph GRAPH --port PORT ARGS…` for the block."""
    spawned = spawn(
        amygdala("memory-server", "--graph", str(graph), "--port", str(port), *args), env
    )
    try:
        line = spawned.wait_for(READY.pattern).strip()
        match = READY.search(line)
        assert match is not None
        server = RunningServer(spawned, match.group(1), line)
        _wait_connectable(server.port)
        yield server
    finally:
        spawned.stop()
