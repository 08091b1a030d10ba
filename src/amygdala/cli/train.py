"""`amygdala train`: labeled texts in, readout.safetensors + readout.json out."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from amygdala import _defaults
from amygdala.cli._options import (
    add_batch_size_option,
    add_device_option,
    add_dtype_option,
    add_model_code_options,
)

if TYPE_CHECKING:
    from amygdala.train import TrainConfig, TrainResult

HELP = "train readout vectors from a training-data directory or a stories corpus"
DESCRIPTION = """\
Train one readout direction per concept and layer, in one forward pass per unique text.

Usage:
  amygdala train --model minilm --training-data-dir data/ \\
      --output out/readout.safetensors --target-layers 1,3,5

The artifact is readout.safetensors (key layer_<idx>.vectors, [n_concepts, hidden],
unit-norm rows) plus readout.json (concepts, layers, hidden_size, dtype, provenance).
"""


def add_train_arguments(parser: argparse.ArgumentParser, *, require_data: bool = True) -> None:
    """The trainer's flags (also used by `amygdala run`, which supplies the data itself)."""
    from amygdala.layers import DEFAULT_LAYERS

    g = parser.add_argument_group("trainer")
    g.add_argument(
        "--model",
        required=require_data,
        default=None if require_data else "minilm",
        help="Hugging Face id or local model directory; `minilm` is the packaged "
        "all-MiniLM-L6-v2" + ("" if require_data else " (the default)"),
    )
    if require_data:
        g.add_argument(
            "--training-data-dir",
            required=True,
            type=Path,
            help="a training-data directory (<emotion>.jsonl) or a stories corpus "
            "(stories/, paired/, direct/, _*.txt)",
        )
    g.add_argument(
        "--target-layers",
        default=DEFAULT_LAYERS,
        help="blocks to read, comma-separated: absolute 0-based (3,18,33,36), "
        f"negative (-1), fractions of depth (0.5) or `all`; default {DEFAULT_LAYERS}",
    )
    g.add_argument(
        "--output",
        type=Path,
        required=require_data,
        default=None if require_data else Path("amygdala-out/readout.safetensors"),
        help="path of readout.safetensors",
    )
    g.add_argument(
        "--manifest",
        type=Path,
        default=None,
        help="path of the manifest; by default the output path with .json",
    )
    add_dtype_option(g)
    g.add_argument(
        "--vectors-dtype",
        default=_defaults.VECTORS_DTYPE,
        choices=_defaults.VECTORS_DTYPES,
        help=f"storage dtype of the vectors; default {_defaults.VECTORS_DTYPE}",
    )
    add_batch_size_option(g)
    g.add_argument(
        "--pooling",
        default=_defaults.POOLING,
        choices=_defaults.POOLINGS,
        help="mean over real tokens (no padding, no special tokens), or the last "
        f"real non-special token; default {_defaults.POOLING}",
    )
    g.add_argument(
        "--pool-start",
        type=int,
        default=_defaults.POOL_START,
        help=f"mean pooling skips this many leading real tokens; default {_defaults.POOL_START}",
    )
    g.add_argument(
        "--method",
        default=_defaults.METHOD,
        help="fitting method: whitened (difference of means whitened by the shrunk "
        "pooled within-concept covariance; best on GoEmotions, see README "
        "'Methods'), mean_diff (CAA difference of means), one_vs_mean (concept "
        "mean minus the mean of all concept means), whitened_lw (Ledoit-Wolf "
        "covariance of all texts), pca (first principal component of matched "
        "differences; extra passes), probe (logistic regression; holds all rows in "
        f"memory); default {_defaults.METHOD}",
    )
    add_device_option(g)
    g.add_argument(
        "--max-length",
        type=int,
        default=_defaults.MAX_LENGTH,
        help="tokens per text; longer texts are truncated and counted; "
        f"default {_defaults.MAX_LENGTH}",
    )
    g.add_argument(
        "--min-examples",
        type=int,
        default=_defaults.MIN_EXAMPLES,
        help="leave out (and report) concepts with fewer train positives or negatives; "
        f"default {_defaults.MIN_EXAMPLES}",
    )
    g.add_argument("--revision", default=None, help="model revision (branch, tag or commit)")
    g.add_argument(
        "--padding-side",
        default=None,
        choices=_defaults.PADDING_SIDES,
        help="padding side; by default the tokenizer's (results are the same)",
    )
    add_model_code_options(g)
    g.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    g.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="activation store (resume, reruns skip the model); by default "
        "$AMYGDALA_CACHE_DIR or ~/.cache/amygdala/activations",
    )
    g.add_argument(
        "--no-cache",
        action="store_true",
        help="keep activations in a temporary store removed after the run",
    )
    g.add_argument(
        "--device-map",
        default=None,
        help="`auto` places a model too large for one GPU across several "
        "(needs accelerate); by default the whole model goes to --device",
    )
    g.add_argument(
        "--neutral",
        type=Path,
        default=None,
        help="neutral text (.txt, paragraphs separated by blank lines, or a folder "
        "of them): the calibration reference; by default each concept's negatives",
    )
    g.add_argument(
        "--neutral-share",
        type=float,
        default=0.0,
        help="with --neutral: project the neutral text's top principal components "
        "explaining this share of its variance (e.g. 0.1) out of every vector; "
        "default 0 (off)",
    )
    g.add_argument(
        "--no-combined",
        action="store_true",
        help="skip the combined score over all layers; by default its layer "
        "weights are fitted on out-of-fold projections of the train rows (the "
        "method is refitted once per fold) and stored in the manifest",
    )
    g.add_argument(
        "--report",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write DIR/quality.json and DIR/report.html (held-out AUROC, "
        "cross-talk, coherence), as `amygdala report` does",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_train_arguments(parser, require_data=True)


def config_from_args(
    args: argparse.Namespace, training_data_dir: Path | None = None
) -> TrainConfig:
    """A TrainConfig from parsed flags (`training_data_dir` overrides the flag)."""
    from amygdala.train import TrainConfig

    return TrainConfig(
        model=args.model,
        training_data_dir=training_data_dir or args.training_data_dir,
        output=args.output,
        manifest=args.manifest,
        target_layers=args.target_layers,
        pooling=args.pooling,
        method=args.method,
        dtype=args.dtype,
        vectors_dtype=args.vectors_dtype,
        batch_size=args.batch_size,
        max_length=args.max_length,
        min_examples=args.min_examples,
        pool_start=args.pool_start,
        device=args.device,
        revision=args.revision,
        blocks_path=args.blocks_path,
        trust_remote_code=args.trust_remote_code,
        padding_side=args.padding_side,
        progress=not args.no_progress,
        cache_dir=args.cache_dir,
        no_cache=args.no_cache,
        neutral=args.neutral,
        neutral_share=args.neutral_share,
        report_dir=getattr(args, "report", None),
        device_map=args.device_map,
        combined=not args.no_combined,
    )


def written_paths(config: TrainConfig) -> list[Path]:
    """The files a training run replaces: put back as they were when it fails."""
    from amygdala.report import report_paths

    report = report_paths(config.report_dir) if config.report_dir is not None else ()
    return [config.output, config.manifest_path, *report]


def restoring(paths: Sequence[Path], note: str = "") -> contextlib.AbstractContextManager[None]:
    """`restore_on_failure(paths)` in the process that writes (rank 0 under torchrun)."""
    from amygdala._io import restore_on_failure

    is_main = os.environ.get("RANK", "0") == "0"
    return restore_on_failure(paths, note) if is_main else contextlib.nullcontext()


def print_summary(result: TrainResult) -> None:
    """The run's summary (`amygdala.train.summary_lines`) on stderr."""
    from amygdala.train import summary_lines

    for line in summary_lines(result):
        print(line, file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from amygdala.train import check_output, train

    config = config_from_args(args)
    check_output(config)  # before the backup: nothing to put back when the paths are bad
    with restoring(written_paths(config)):  # the report can fail after the vectors
        result = train(config)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one summary, from rank 0
        print_summary(result)
        if args.report:
            print(
                f"wrote {args.report / 'quality.json'} and {args.report / 'report.html'}",
                file=sys.stderr,
            )
    return 0
