"""Run the benchmarks and write BENCHMARKS.md.

Usage:
  python -m bench                          # everything → BENCHMARKS.md (~15 min, 2 cores)
  python -m bench --only capture,memory    # some sections → bench/out/BENCHMARKS-….md
  python -m bench --quick                  # smoke run on tiny data: numbers meaningless

Sections: original (vs the emotion-by-emotion algorithm), peers (repeng and
steering-vectors, each in bench/.venvs/<peer>, created on first use), capture (engine
overhead), memory (peak RSS), scaling (27B on H100s, on paper), serve (readout
overhead while decoding; bench/bench_serve.py), vllm (the vLLM plugin's overhead while
decoding in vLLM's own server; vLLM in bench/.venvs/vllm or $AMYGDALA_VLLM_PYTHON). Scratch files go to --workdir
(bench/out by default, gitignored) and every section's raw numbers to
<workdir>/results/<section>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import shlex
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench.common import (
    DEFAULT_WORKDIR,
    ROOT,
    Context,
    gemm_gflops,
    git_revision,
    machine_info,
    table,
    versions,
)

SECTIONS: dict[str, str] = {
    "original": "bench.bench_original",
    "peers": "bench.bench_peers",
    "capture": "bench.bench_capture",
    "memory": "bench.bench_memory",
    "scaling": "bench.bench_scaling",
    "serve": "bench.bench_serve",
    "vllm": "bench.bench_vllm",
}
SERVE_TITLE = "6. Serving: readout overhead while decoding"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes, no peer installs: checks the harness, not the speed",
    )
    parser.add_argument(
        "--only",
        default=None,
        metavar="NAMES",
        help=f"comma-separated sections out of {', '.join(SECTIONS)}; by default all",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="the report; by default BENCHMARKS.md for a full run, "
        "<workdir>/BENCHMARKS-<what>.md otherwise",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=DEFAULT_WORKDIR,
        help="scratch space for data, models and logs; default bench/out",
    )
    parser.add_argument(
        "--threads",
        default="auto",
        help="torch threads for every measurement; by default `auto`: all "
        "cores on an idle machine, 1 when the load average shows other work "
        "(two threads fighting a busy neighbour for two cores run 4-8x slower)",
    )
    args = parser.parse_args(argv)
    names = (
        list(SECTIONS)
        if args.only is None
        else [n.strip() for n in args.only.split(",") if n.strip()]
    )
    unknown = [n for n in names if n not in SECTIONS]
    if unknown or not names:
        parser.error(f"--only: unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    args.names = names
    if args.output is None:
        full = args.only is None and not args.quick
        tag = "-".join(["quick"] * args.quick + ([] if args.only is None else names))
        args.output = ROOT / "BENCHMARKS.md" if full else args.workdir / f"BENCHMARKS-{tag}.md"
    return args


def run_section(name: str, ctx: Context) -> dict[str, Any]:
    """Run one section; a failure becomes its text, never the end of the whole run."""
    start = time.perf_counter()
    load_before = os.getloadavg()[0]
    try:
        module = importlib.import_module(SECTIONS[name])
    except ModuleNotFoundError as exc:
        if exc.name != SECTIONS[name]:
            raise
        return {
            "name": name,
            "title": SERVE_TITLE if name == "serve" else name,
            "body": f"_not available: {SECTIONS[name].replace('.', '/')}.py is not in this tree._",
            "headline": [],
            "ok": True,
            "seconds": 0.0,
            "rows": [],
        }
    title = getattr(module, "TITLE", SERVE_TITLE if name == "serve" else name)
    try:
        rows = module.run(ctx.quick) if name == "serve" else module.run(ctx)
        body = module.markdown(rows)
        heads = module.headline(rows) if hasattr(module, "headline") else _serve_headline(rows)
        ok = True
    except Exception as exc:  # one section's failure is reported in the document
        rows, heads, ok = [], [], False
        body = (
            f"**failed**: `{type(exc).__name__}: {str(exc)[:400]}`\n\n```\n"
            f"{traceback.format_exc()[-2000:]}```"
        )
        print(traceback.format_exc(), file=sys.stderr)
    return {
        "name": name,
        "title": title,
        "body": body,
        "headline": heads,
        "ok": ok,
        "seconds": time.perf_counter() - start,
        "rows": rows,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }


def choose_threads(spec: str, load: float) -> tuple[int, str]:
    """The thread count for every measurement, and why (for the report)."""
    cores = os.cpu_count() or 1
    if spec != "auto":
        return max(int(spec), 1), f"--threads {spec}"
    if load > 0.5:
        return 1, (
            f"`--threads auto`: the load average was {load:.1f} before the run "
            "started, so other work shared the cores and every measurement used 1 "
            "thread (two threads fighting a busy neighbour for two cores ran 4-8x "
            "slower and very unevenly here)"
        )
    return cores, f"`--threads auto`: the machine was idle (load {load:.1f}), all {cores} cores"


def _serve_headline(rows: list[dict[str, Any]]) -> list[tuple[str, str, str, bool]]:
    return [
        (
            "readout while decoding",
            f"{r['ratio']:.1%} of the throughput without",
            f"≥ {r['goal']:.0%}",
            bool(r["met"]),
        )
        for r in rows
        if "ratio" in r
    ]


def peer_versions() -> dict[str, str]:
    from bench.bench_peers import PEERS, peer_version

    return {p: peer_version(p) or "not installed" for p in PEERS}


def document(
    args: argparse.Namespace, results: list[dict[str, Any]], probes: dict[str, Any], total_s: float
) -> str:
    command = "python -m bench" + "".join(f" {shlex.quote(a)}" for a in sys.argv[1:])
    heads = [h for r in results for h in r["headline"]]
    parts = [
        "# Benchmarks",
        "",
        "Generated by the harness in `bench/` — do not edit by hand; rerun instead:",
        "",
        f"```\n{command}\n```",
        "",
        f"Run on {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}, git {git_revision()}, "
        f"in {total_s / 60:.1f} min"
        + (" — **quick mode: tiny sizes, the numbers mean nothing**" if args.quick else "")
        + ".",
        "",
        "## Summary",
        "",
        table(
            ["measurement", "result", "goal", ""],
            [[w, res, goal, "**met**" if met else "**missed**"] for w, res, goal, met in heads],
        )
        if heads
        else "_no section produced a result_",
        "",
        "## Machine and versions",
        "",
        table(
            ["", ""],
            [
                [k, v]
                for k, v in {
                    **machine_info(),
                    **versions(),
                    **{f"{p} (own venv)": v for p, v in probes["peers"].items()},
                }.items()
            ],
        ),
        "",
        f"Threads: **{probes['threads']}** — {probes['threads_why']}.",
        "",
        f"The machine is shared: load average {probes['load_start']:.1f} at the start, "
        f"{probes['load_end']:.1f} at the end; fp32 matmul peak {probes['gemm_start']:.0f} "
        f"GFLOP/s at the start, {probes['gemm_end']:.0f} at the end. Other work on the same "
        "cores slows every measurement; the ratios come from runs made minutes apart in this "
        "one invocation, interleaved where the section says so.",
    ]
    for r in results:
        parts += [
            "",
            f"## {r['title']}",
            "",
            r["body"],
            "",
            f"_Section time {r['seconds']:.0f} s._",
        ]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args.workdir.mkdir(parents=True, exist_ok=True)
    ctx = Context(workdir=args.workdir.resolve(), quick=args.quick)
    start = time.perf_counter()
    probes: dict[str, Any] = {"load_start": os.getloadavg()[0]}
    probes["threads"], probes["threads_why"] = choose_threads(args.threads, probes["load_start"])
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # every child process inherits it
        os.environ[var] = str(probes["threads"])
    import torch

    torch.set_num_threads(probes["threads"])
    probes["gemm_start"] = gemm_gflops(
        size=512 if args.quick else 2048, seconds=0.3 if args.quick else 1.5
    )
    results = []
    for name in args.names:
        print(f"[bench] {name} …", file=sys.stderr, flush=True)
        result = run_section(name, ctx)
        print(
            f"[bench] {name}: {'ok' if result['ok'] else 'FAILED'} in {result['seconds']:.0f} s",
            file=sys.stderr,
            flush=True,
        )
        results.append(result)
        (ctx.workdir / "results").mkdir(exist_ok=True)
        (ctx.workdir / "results" / f"{name}.json").write_text(
            json.dumps(result, indent=1, default=str)
        )
    probes.update(
        load_end=os.getloadavg()[0],
        gemm_end=gemm_gflops(size=512 if args.quick else 2048, seconds=0.3 if args.quick else 1.5),
        peers=peer_versions(),
    )
    text = document(args, results, probes, time.perf_counter() - start)
    from amygdala._io import atomic_write_text

    atomic_write_text(args.output, text)
    print(f"[bench] wrote {args.output}", file=sys.stderr)
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
