"""`amygdala run`: memory graph → training data → readout vectors, in one command."""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from amygdala.train import TrainConfig

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


def check_run_outputs(args: argparse.Namespace, config: TrainConfig) -> None:
    """Every output of the run (OUT, OUT/training-data, the vectors, the report, the
    cache) checked before anything is read or written; none may be one of its inputs."""
    from amygdala._io import Output, check_output, check_outputs
    from amygdala.cli.extract import source_inputs
    from amygdala.train import check_output as check_train_output
    from amygdala.train import input_paths, output_paths

    check_output(Output(args.output_dir, "--output-dir", "dir"))  # the folder first
    check_train_output(config)
    data_dir = args.output_dir / "training-data"
    outputs = [
        Output(args.output_dir, "--output-dir", "dir"),
        Output(data_dir, "--output-dir", "tree"),
        *output_paths(config),
    ]
    inputs = [i for i in input_paths(config) if i.path != data_dir]  # written here first
    check_outputs(outputs, [*source_inputs(args), *inputs])


def run(args: argparse.Namespace) -> int:
    from amygdala.cli.extract import has_source, options_from_args, source_from_args
    from amygdala.cli.extract import print_summary as print_extract_summary
    from amygdala.cli.train import config_from_args, print_summary, restoring, written_paths
    from amygdala.graph.extract import extract
    from amygdala.train import train

    out: Path = args.output_dir
    data_dir = out / "training-data"  # check_run_outputs names the same
    flags = argparse.Namespace(
        **{**vars(args), "output": args.output or out / "readout.safetensors"}
    )
    options = options_from_args(args)
    config = config_from_args(flags, training_data_dir=data_dir)
    check_run_outputs(args, config)  # fail before extracting when an output is unusable
    use_sample = not has_source(args)
    # a failure anywhere (bad --target-layers, a missing model, a full disk …) puts the
    # training data, the vectors and the report back as they were
    with restoring([data_dir, *written_paths(config)], f"left {out} as it was before this run"):
        with sample_graph() if use_sample else contextlib.nullcontext(None) as default:
            source = source_from_args(args, default_graph=default)
            summary = extract(source, options, data_dir)
        print_extract_summary(summary)
        result = train(config)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one summary, from rank 0
        print_summary(result)
    return 0
