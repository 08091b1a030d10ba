"""Helpers for tests that talk to a real `amygdala serve` subprocess.

Not a test module: `test_serve.py` and `test_watch.py` import it. The server runs as
`python -m amygdala serve --port 0`; the port it picked is read from its banner line.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import torch

TMUX = shutil.which("tmux")
BANNER = re.compile(r"amygdala serve: .* on (http://\S+)")


def random_artifact(
    model_dir: Path,
    out: Path,
    layers: Sequence[int],
    concepts: Sequence[str],
    *,
    hidden: int = 64,
    calibrated: bool = True,
    seed: int = 0,
    combined: bool = False,
) -> Path:
    """Random unit vectors (fp32) for `layers`, with a made-up calibration when asked, and
    a made-up combined score (weights of both signs) with `combined`."""
    from amygdala.artifact import save_artifact

    g = torch.Generator().manual_seed(seed)
    vectors = {
        layer: torch.nn.functional.normalize(
            torch.randn(len(concepts), hidden, generator=g), dim=-1
        )
        for layer in layers
    }
    manifest: dict[str, object] = {
        "concepts": list(concepts),
        "layers": list(layers),
        "hidden_size": hidden,
        "dtype": "float32",
        "model": str(model_dir),
    }
    if calibrated:
        shape = (len(layers), len(concepts))
        manifest["calibration"] = {
            "reference": "negatives",
            "mean": (torch.randn(shape, generator=g) * 0.05).tolist(),
            "std": (torch.rand(shape, generator=g) * 0.2 + 0.05).tolist(),
        }
    if combined:
        n = len(concepts)
        manifest["combined"] = {
            "weights": (torch.randn((len(layers), n), generator=g) * 3).tolist(),
            "mean": (torch.randn(n, generator=g) * 0.1).tolist(),
            "std": (torch.rand(n, generator=g) + 0.5).tolist(),
            "unit": "token",
        }
    path, _ = save_artifact(vectors, manifest, out)
    return path


class ServerProcess:
    """`python -m amygdala serve ARGS --port 0` in a subprocess; `wait()` gives its URL."""

    def __init__(self, args: Sequence[str], log: Path, env: dict[str, str] | None = None) -> None:
        full_env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1",
            **(env or {}),
        }  # tiny models: threads only contend
        self.log = log
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "amygdala", "serve", *args, "--port", "0"],
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=full_env,
            )

    def wait(self, timeout: float = 180.0) -> str:
        """The base URL, once /health answers."""
        deadline = time.monotonic() + timeout
        url = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.proc.returncode}:\n{self.log.read_text()}"
                )
            if url is None:
                match = BANNER.search(self.log.read_text(errors="replace"))
                url = match.group(1) if match else None
            if url is not None:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        return url
            time.sleep(0.1)
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.log.read_text()}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def running_servers(
    *specs: tuple[Sequence[str], Path, dict[str, str] | None],
) -> Iterator[list[str]]:
    """Start several servers side by side (`(args, log, env)` each); yield their URLs."""
    procs = []
    try:
        for args, log, env in specs:
            procs.append(ServerProcess(args, log, env))
        yield [p.wait() for p in procs]
    finally:
        for p in procs:
            p.stop()


def sse_chunks(resp: httpx.Response) -> Iterator[dict[str, object]]:
    """The JSON chunks of a server-sent event stream, up to `[DONE]`."""
    import json

    for line in resp.iter_lines():
        if not line.startswith("data: "):
            continue
        if line == "data: [DONE]":
            return
        yield json.loads(line[len("data: ") :])


class Pane:
    """A tmux session running one command; `text()` is what the terminal shows."""

    def __init__(self, name: str, command: str) -> None:
        assert TMUX is not None
        self.name = name
        self.tmux = [TMUX, "-L", name]  # a private tmux server: no one else's sizes or sessions
        subprocess.run(
            [*self.tmux, "new-session", "-d", "-s", name, "-x", "120", "-y", "45", command],
            check=True,
        )

    def text(self) -> str:
        out = subprocess.run(
            [*self.tmux, "capture-pane", "-p", "-t", self.name],
            capture_output=True,
            text=True,
            check=False,
        )
        return out.stdout

    def wait_for(self, pattern: str, timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            shown = self.text()
            if re.search(pattern, shown):
                return shown
            time.sleep(0.2)
        raise AssertionError(f"{pattern!r} never appeared; the pane shows:\n{self.text()}")

    def keys(self, *keys: str) -> None:
        subprocess.run([*self.tmux, "send-keys", "-t", self.name, *keys], check=True)

    def kill(self) -> None:
        subprocess.run([*self.tmux, "kill-server"], capture_output=True, check=False)


def bars(shown: str) -> dict[str, float]:
    """concept -> value of each bar row in the top-concepts panel."""
    panel = shown.split("top concepts")[1].split("recent tokens")[0]
    rows = re.findall(r"│\s+(\w+) (█*)\s+([+-]\d+\.\d\d)", panel)
    return {name: float(value) for name, _, value in rows}
