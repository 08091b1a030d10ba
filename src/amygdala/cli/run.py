"""`amygdala run`: memory graph → training data → readout vectors, in one command."""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

HELP = "graph → training data → readout vectors in one command (no arguments: a demo)"
DESCRIPTION = """\
Extract training data from a memory graph and train readout vectors on it, in one go.

Usage:
  amygdala run                                   # the bundled sample graph, packaged MiniLM
  amygdala run --graph graph.jsonl --model Qwen/Qwen3-0.6B --output-dir out/
  amygdala run --memory-mcp-url http://localhost:7777 --output-dir out/
  amygdala run --memory-mcp-command "my-memory-server --stdio" --output-dir out/

By default it reads the sample memory graph shipped in the package, uses the packaged
all-MiniLM-L6-v2 (no download), and writes into ./amygdala-out/: the training data in
amygdala-out/training-data/ and the vectors in amygdala-out/readout.safetensors +
readout.json. Every flag of `amygdala extract` and `amygdala train` works here too.
"""

SAMPLE_GRAPH = "data/sample_graph.jsonl"  # inside the amygdala package


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from amygdala.cli.extract import add_selection_arguments, add_source_arguments
    from amygdala.cli.train import add_train_arguments

    add_source_arguments(parser)
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=Path("amygdala-out"),
        help="where everything goes: OUT/training-data/, OUT/readout.safetensors and "
        "OUT/readout.json; default amygdala-out",
    )
    add_selection_arguments(parser)
    add_train_arguments(parser, require_data=False)
    # the vectors go into --output-dir unless --output names another path
    parser.set_defaults(output=None)


@contextlib.contextmanager
def sample_graph() -> Iterator[Path]:
    """The sample memory graph bundled in the package, as a real file path."""
    import importlib.resources

    from amygdala.errors import ConfigError

    resource = importlib.resources.files("amygdala")
    for part in SAMPLE_GRAPH.split("/"):
        resource = resource / part
    if not resource.is_file():
        raise ConfigError(
            "the sample memory graph (amygdala/data/sample_graph.jsonl) is missing from this "
            "install; reinstall amygdala, or pass --graph FILE, --memory-mcp-url URL or "
            "--memory-mcp-command CMD"
        )
    with importlib.resources.as_file(resource) as path:
        yield path


def run(args: argparse.Namespace) -> int:
    from amygdala.cli.extract import has_source, options_from_args, source_from_args
    from amygdala.cli.train import config_from_args
    from amygdala.graph.extract import extract
    from amygdala.graph.extract import print_summary as print_extract_summary
    from amygdala.train import check_output, print_summary, train

    out: Path = args.output_dir
    data_dir = out / "training-data"
    flags = argparse.Namespace(
        **{**vars(args), "output": args.output or out / "readout.safetensors"}
    )
    options = options_from_args(args)
    config = config_from_args(flags, training_data_dir=data_dir)
    check_output(config)  # fail before extracting when the vectors cannot be written
    use_sample = not has_source(args)
    with sample_graph() if use_sample else contextlib.nullcontext(None) as default:
        source = source_from_args(args, default_graph=default)
        summary = extract(source, options, data_dir)
    print_extract_summary(summary)
    result = train(config)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one summary, from rank 0
        print_summary(result)
    return 0
