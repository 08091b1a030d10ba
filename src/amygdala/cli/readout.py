"""`amygdala readout`: per-token concept readouts of one text (terminal, HTML, JSONL)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from amygdala import _defaults
from amygdala.cli._options import (
    add_device_option,
    add_dtype_option,
    add_manifest_option,
    add_model_code_options,
)

if TYPE_CHECKING:
    from amygdala.readout import LayerChoice, Readout

HELP = "show which concepts a text and each of its tokens read as (table, HTML heatmap, JSONL)"
DESCRIPTION = """\
Project every token's residual stream onto the concept vectors and show the text's top
concepts (the mean over its real tokens, as the trainer pools) and each token's top
concept. z-scores when the manifest is calibrated, raw dot products otherwise. By default
the tables show the combined score over all layers when the manifest has one (else the
deepest layer); to change it, pass --layer N or --layer combined.

Usage:
  amygdala readout --model minilm --vectors out/readout.safetensors "I miss you."
  amygdala readout --model minilm --vectors out/readout.safetensors \\
      --html heat.html --jsonl tokens.jsonl "The lights went out."

The HTML page is self-contained (no network): pick the concept, the layer (or
"combined") and raw/z in the page. The JSONL has one line per token with every layer's
and concept's values, and the combined score's (`combined`, `combined_z`).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("text", help="the text to read ('-' reads standard input)")
    parser.add_argument(
        "--model",
        required=True,
        help="Hugging Face id or local directory (`minilm` = packaged MiniLM)",
    )
    parser.add_argument("--vectors", type=Path, required=True, help="readout.safetensors")
    add_manifest_option(parser)
    parser.add_argument(
        "--layer",
        type=layer_choice,
        default=None,
        help="which artifact layer the tables show, or `combined` (all layers, the manifest's "
        "weights); by default combined when the manifest has it, else the deepest layer",
    )
    parser.add_argument(
        "--top", type=int, default=5, help="concepts listed for the whole text; default 5"
    )
    parser.add_argument(
        "--html", type=Path, default=None, help="write a self-contained token heatmap page here"
    )
    parser.add_argument(
        "--jsonl",
        type=Path,
        default=None,
        help="write one JSON line per token (all layers and concepts) here",
    )
    parser.add_argument(
        "--max-length",
        type=int,
        default=_defaults.READOUT_MAX_LENGTH,
        help="tokens read; longer texts are cut (with a warning); "
        f"default {_defaults.READOUT_MAX_LENGTH}",
    )
    add_device_option(parser)
    add_dtype_option(parser)
    add_model_code_options(parser)


def layer_choice(value: str) -> LayerChoice:
    """`--layer`: an absolute layer index or `combined`."""
    if value == "combined":
        return "combined"
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r}: pass a layer index of the artifact or `combined`"
        ) from None


def read_text(value: str) -> str:
    """The text to read: the argument, or standard input for `-` (`_text.text_argument`:
    bytes that are not UTF-8 and lone surrogates become U+FFFD)."""
    from amygdala._text import text_argument
    from amygdala.errors import ConfigError

    if value == "-" and sys.stdin is None:
        raise ConfigError("standard input is closed; pass the text to read as the last argument")
    try:
        return text_argument(value)
    except OSError as exc:
        raise ConfigError(f"cannot read the text from standard input: {exc.strerror}") from None


def check_readout_outputs(args: argparse.Namespace) -> None:
    """--html and --jsonl checked before the model loads; neither may be an input (the
    vectors, the manifest, a file of the model) nor the other."""
    import contextlib

    from amygdala._io import Input, Output, check_outputs
    from amygdala.artifact import default_manifest_path
    from amygdala.errors import AmygdalaError
    from amygdala.models import resolve_model_name

    outputs = [Output(p, flag) for p, flag in ((args.html, "--html"), (args.jsonl, "--jsonl"))]
    inputs = [
        Input(args.vectors, "the vectors (--vectors)"),
        Input(args.manifest or default_manifest_path(args.vectors), "the manifest (--manifest)"),
    ]
    with contextlib.suppress(AmygdalaError):  # a missing packaged model fails at loading
        inputs.append(Input(Path(resolve_model_name(args.model)), "the model (--model)"))
    check_outputs([o for o in outputs if o.path is not None], inputs)


def run(args: argparse.Namespace) -> int:
    from amygdala._heatmap import html_page
    from amygdala._io import atomic_write_files
    from amygdala.artifact import load_artifact
    from amygdala.errors import ConfigError
    from amygdala.models import load_model
    from amygdala.readout import readout

    text = read_text(args.text)
    if not text.strip():
        raise ConfigError("the text is empty; pass the text to read as the last argument")
    if args.top < 1:
        raise ConfigError("--top must be at least 1")
    check_readout_outputs(args)
    artifact = load_artifact(args.vectors, args.manifest)
    has_combined = artifact.meta.combined is not None
    layer: LayerChoice = args.layer
    if layer is None:
        layer = "combined" if has_combined else artifact.layers[-1]
    elif layer == "combined" and not has_combined:
        raise ConfigError(
            "--layer combined: the manifest has no combined score (trained before it "
            f"existed, or with --no-combined); retrain, or pick a layer of {artifact.layers}"
        )
    elif layer != "combined" and layer not in artifact.layers:
        raise ConfigError(
            f"--layer {layer} is not in the artifact; it has layers {artifact.layers}"
        )
    lm = load_model(
        args.model,
        device=args.device,
        dtype=args.dtype,
        blocks_path=args.blocks_path,
        trust_remote_code=args.trust_remote_code,
    )
    ro = readout(lm, artifact, text, max_length=args.max_length)
    if ro.truncated:  # by --max-length, or by the model's positions when those are fewer
        print(f"warning: the text was {ro.truncation}", file=sys.stderr)
    print_tables(ro, layer, args.top)
    files: list[tuple[Path, bytes]] = []
    if args.jsonl is not None:
        lines = "".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in ro.records())
        files.append((args.jsonl, lines.encode("utf-8")))
    if args.html is not None:
        files.append((args.html, html_page(ro, title=text[:80], layer=layer).encode("utf-8")))
    atomic_write_files(files)  # both or neither
    for path, _ in files:
        print(f"wrote {path}", file=sys.stderr)
    return 0


def print_tables(ro: Readout, layer: LayerChoice, top: int) -> None:
    """The text's top concepts, then each token's top concept, at `layer`."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    where = "the combined score (all layers)" if layer == "combined" else f"layer {layer}"
    if layer == "combined":
        raw, z = ro.combined, ro.combined_z
    else:
        li = ro.layer_index(layer)
        raw, z = ro.raw[:, li], (None if ro.z is None else ro.z[:, li])
    assert raw is not None
    unit = "z" if z is not None else "raw"
    console.print(f"[bold]text: top concepts at {where}[/] (mean over real tokens)")
    summary = Table()
    summary.add_column("concept")
    summary.add_column("raw", justify="right")
    if z is not None:
        summary.add_column("z", justify="right")
    pooled_raw = ro.pooled(raw)  # the mean over the kept tokens of this [T, C] view
    pooled_z = None if z is None else ro.pooled(z)
    for name, _ in ro.top(layer, top):
        c = ro.concepts.index(name)
        row = [name, f"{float(pooled_raw[c]):+.3f}"]
        if pooled_z is not None:
            row.append(f"{float(pooled_z[c]):+.2f}")
        summary.add_row(*row)
    console.print(summary)
    console.print(
        f"[bold]tokens: top concept at {where}[/] ({unit}; dim rows are special tokens, not pooled)"
    )
    tokens = Table()
    for name, justify in (
        ("#", "right"),
        ("token", "left"),
        ("top concept", "left"),
        (unit, "right"),
    ):
        tokens.add_column(name, justify=justify)  # type: ignore[arg-type]
    values = z if z is not None else raw
    for t, token in enumerate(ro.tokens):
        c = int(values[t].argmax())
        style = None if ro.keep[t] else "dim"
        tokens.add_row(
            str(t), repr(token), ro.concepts[c], f"{float(values[t, c]):+.2f}", style=style
        )
    console.print(tokens)
