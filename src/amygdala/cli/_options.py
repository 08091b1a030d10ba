"""Flags that several subcommands share, defined once so their wording and defaults agree."""

from __future__ import annotations

import argparse
from pathlib import Path

Parser = argparse.ArgumentParser | argparse._ArgumentGroup

DTYPES = ["auto", "bf16", "fp16", "fp32"]


def add_manifest_option(parser: Parser) -> None:
    """--manifest: the readout.json beside a readout.safetensors."""
    parser.add_argument("--manifest", type=Path, default=None,
                        help="the manifest; by default the vectors path with .json")


def add_device_option(parser: Parser) -> None:
    """--device: where the model runs."""
    parser.add_argument("--device", default=None,
                        help="cpu, cuda, cuda:N or mps; by default the best available")


def add_dtype_option(parser: Parser) -> None:
    """--dtype: the model's compute dtype (auto: bf16 on CUDA, fp32 elsewhere)."""
    parser.add_argument("--dtype", default="auto", choices=DTYPES,
                        help="model compute dtype; by default bf16 on CUDA, fp32 elsewhere")


def add_model_code_options(parser: Parser, *, from_manifest: bool = False) -> None:
    """--blocks-path and --trust-remote-code: for architectures amygdala does not know."""
    where = ("by default the one in the manifest" if from_manifest
             else "for architectures amygdala doesn't know")
    parser.add_argument("--blocks-path", default=None,
                        help=f"dotted path of the block list; {where}")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="run custom model code from the model repository (off by default)")
