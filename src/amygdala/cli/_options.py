"""Flags that several subcommands share, defined once so their wording and defaults agree.

Defaults and choices come from `amygdala._defaults`, where the library's config
dataclasses read them too: `--help` always says what a run does when a flag is left out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from amygdala import _defaults

Parser = argparse.ArgumentParser | argparse._ArgumentGroup

DTYPES = list(_defaults.DTYPES)  # --dtype's choices


def add_manifest_option(parser: Parser) -> None:
    """--manifest: the readout.json beside a readout.safetensors."""
    parser.add_argument(
        "--manifest",
        type=Path,
        default=None,
        help="the manifest; by default the vectors path with .json",
    )


def add_device_option(parser: Parser) -> None:
    """--device: where the model runs."""
    parser.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:N or mps; by default the best available"
    )


def add_dtype_option(parser: Parser, *, from_manifest: bool = False) -> None:
    """--dtype: the model's compute dtype (auto: bf16 on CUDA, fp32 elsewhere); with
    `from_manifest`, by default the one training used (and no `auto`)."""
    if from_manifest:
        parser.add_argument(
            "--dtype",
            default=None,
            choices=[d for d in DTYPES if d != "auto"],
            help="model compute dtype; by default the one training used",
        )
        return
    parser.add_argument(
        "--dtype",
        default=_defaults.DTYPE,
        choices=DTYPES,
        help="model compute dtype; by default bf16 on CUDA, fp32 elsewhere",
    )


def add_batch_size_option(parser: Parser) -> None:
    """--batch-size: texts per forward pass."""
    parser.add_argument(
        "--batch-size",
        type=int,
        default=_defaults.BATCH_SIZE,
        help=f"texts per forward pass; default {_defaults.BATCH_SIZE}",
    )


def add_model_code_options(parser: Parser, *, from_manifest: bool = False) -> None:
    """--blocks-path and --trust-remote-code: for architectures amygdala does not know."""
    where = (
        "by default the one in the manifest"
        if from_manifest
        else "for architectures amygdala doesn't know"
    )
    parser.add_argument(
        "--blocks-path", default=None, help=f"dotted path of the block list; {where}"
    )
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run custom model code from the model repository (off by default)",
    )
