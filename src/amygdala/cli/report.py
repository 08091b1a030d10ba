"""`amygdala report`: held-out quality of an artifact, as quality.json + report.html."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from amygdala import _defaults
from amygdala.cli._options import (
    add_batch_size_option,
    add_device_option,
    add_dtype_option,
    add_manifest_option,
    add_model_code_options,
)

HELP = "measure an artifact on held-out data: AUROC per concept and layer, cross-talk, coherence"
DESCRIPTION = """\
Evaluate readout vectors on the held-out split of their training data and write
quality.json (every number) and report.html (self-contained: AUROC heatmap, cross-talk
matrix, PCA map of the vectors, counts, warnings; opens offline).

Usage:
  amygdala report --vectors out/readout.safetensors --training-data-dir data/
  amygdala report --vectors out/readout.safetensors --training-data-dir data/ \\
      --model minilm --output-dir out/report/

The model, layers, pooling, max length and dtype come from the artifact's manifest, so
after `amygdala train` (same --cache-dir) every activation is read from the activation
store and the model does not run. `amygdala train --report DIR` writes the same files
right after training.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vectors", type=Path, required=True, help="readout.safetensors")
    parser.add_argument(
        "--training-data-dir",
        type=Path,
        required=True,
        help="the training data the vectors came from; its held-out rows "
        '(split "heldout") are scored',
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="where quality.json and report.html go; by default the vectors' directory",
    )
    add_manifest_option(parser)
    parser.add_argument(
        "--model", default=None, help="model id or directory; by default the one in the manifest"
    )
    add_dtype_option(parser, from_manifest=True)
    add_device_option(parser)
    add_batch_size_option(parser)
    parser.add_argument(
        "--revision", default=None, help="model revision; by default the one in the manifest"
    )
    add_model_code_options(parser, from_manifest=True)
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="activation store; by default $AMYGDALA_CACHE_DIR or "
        "~/.cache/amygdala/activations (the trainer's)",
    )
    parser.add_argument(
        "--no-cache", action="store_true", help="capture into a temporary store removed afterwards"
    )
    parser.add_argument(
        "--max-coherence",
        type=int,
        default=_defaults.MAX_COHERENCE,
        help=f"train positives per concept used for coherence; default {_defaults.MAX_COHERENCE}",
    )
    parser.add_argument(
        "--min-train",
        type=int,
        default=_defaults.MIN_TRAIN,
        help="flag concepts with fewer train positives or negatives; "
        f"default {_defaults.MIN_TRAIN}",
    )
    parser.add_argument(
        "--min-heldout",
        type=int,
        default=_defaults.MIN_HELDOUT,
        help="flag concepts with fewer held-out positives or negatives; "
        f"default {_defaults.MIN_HELDOUT}",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    from amygdala.errors import ConfigError
    from amygdala.evaluate import Thresholds
    from amygdala.report import ReportConfig, report_artifact

    for flag in ("batch_size", "max_coherence", "min_train", "min_heldout"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be at least 1")
    config = ReportConfig(
        vectors=args.vectors,
        training_data_dir=args.training_data_dir,
        output_dir=args.output_dir or args.vectors.parent,
        manifest=args.manifest,
        model=args.model,
        dtype=args.dtype,
        device=args.device,
        revision=args.revision,
        blocks_path=args.blocks_path,
        trust_remote_code=args.trust_remote_code,
        batch_size=args.batch_size,
        cache_dir=args.cache_dir,
        no_cache=args.no_cache,
        progress=not args.no_progress,
        max_coherence=args.max_coherence,
        thresholds=Thresholds(min_train=args.min_train, min_heldout=args.min_heldout),
    )
    result = report_artifact(config)
    _print_summary(result.json_path)
    print(f"wrote {result.json_path} and {result.html_path}", file=sys.stderr)
    return 0


def _print_summary(json_path: Path) -> None:
    from amygdala._text import read_json_file
    from amygdala.errors import OutputError

    doc: Any = read_json_file(json_path, error=OutputError)  # written a moment ago
    means = ", ".join(
        f"{layer}: {'–' if m is None else f'{m:.3f}'}"
        for layer, m in zip(doc["layers"], doc["mean_auroc_per_layer"])
    )
    print(f"mean held-out AUROC per layer: {means}")
    if doc.get("mean_combined_auroc") is not None:
        print(f"mean held-out AUROC of the combined score: {doc['mean_combined_auroc']:.3f}")
    print(f"recommended layers: {doc['recommended_layers']}")
    for line in doc["warnings"]:
        print(f"warning: {line}")
