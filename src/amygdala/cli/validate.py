"""`amygdala validate`: check a readout.safetensors + readout.json pair."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "check a readout artifact: shapes, dtype, unit norms, NaN/Inf, manifest agreement"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", type=Path, help="readout.safetensors")
    parser.add_argument(
        "--manifest", type=Path, default=None, help="the manifest; by default PATH with .json"
    )


def run(args: argparse.Namespace) -> int:
    from amygdala.artifact import inspect_artifact

    artifact, problems = inspect_artifact(args.path, args.manifest)
    if problems:
        for line in problems:
            print(f"invalid: {line}")
        return 1
    assert artifact is not None
    m = artifact.meta
    model = f", model {m.model}" if m.model else ""
    print(
        f"ok: {len(m.concepts)} concepts x layers {list(m.layers)}, hidden {m.hidden_size}, "
        f"{m.dtype}{model}"
    )
    return 0
