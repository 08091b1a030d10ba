"""`amygdala extract`: a memory graph (file export or MCP server) → training-data directory."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from amygdala._io import Input
    from amygdala.graph.extract import ExtractSummary
    from amygdala.graph.nodes import GraphSource
    from amygdala.graph.select import SelectionOptions

HELP = "turn a tagged memory graph into a training-data directory"
DESCRIPTION = """\
Read a memory graph, take each node's trailing emotion tag lines (`warmth:9 clarity:10`)
as its labels, strip them from the text, and write one <emotion>.jsonl of positives and
negatives per emotion plus manifest.json.

Usage:
  amygdala extract --graph graph.jsonl --output-dir training-data/
  amygdala extract --memory-mcp-url http://localhost:7777 --output-dir training-data/
  amygdala extract --memory-mcp-command "my-memory-server --stdio" --output-dir training-data/

Positive for E: score(E) >= --min-positive-score. Negative for E: a node that has tags,
where E is absent or scores at most --max-negative-score, and whose text names E at most
--max-negative-mentions times. Untagged nodes are neither. The output directory appears
complete or not at all; an existing training-data directory there is replaced.
"""


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """`--graph FILE` and the MCP source's flags (`--memory-mcp-url`, `--memory-mcp-command` …)."""
    g = parser.add_argument_group("graph source (pass exactly one)")
    g.add_argument(
        "--graph",
        type=Path,
        default=None,
        metavar="FILE",
        help="a graph file export: JSONL, one node per line, or a JSON array",
    )
    from amygdala.cli._mcp_options import add_mcp_arguments

    add_mcp_arguments(parser)


def add_selection_arguments(parser: argparse.ArgumentParser) -> None:
    """The selection flags (names and defaults of the original design)."""
    from amygdala.graph.select import SelectionOptions

    d = SelectionOptions()
    g = parser.add_argument_group("selection")
    g.add_argument(
        "--min-positive-score",
        type=float,
        default=d.min_positive_score,
        help=f"positive for E when score(E) >= this; default {d.min_positive_score:g}",
    )
    g.add_argument(
        "--max-negative-score",
        type=float,
        default=d.max_negative_score,
        help="a tagged node is a negative for E only when E is absent or scores at "
        f"most this; default {d.max_negative_score:g}",
    )
    g.add_argument(
        "--max-negative-mentions",
        type=int,
        default=d.max_negative_mentions,
        help="a negative for E names E (whole word, any case) at most this many "
        f"times; default {d.max_negative_mentions}",
    )
    g.add_argument(
        "--min-content-chars",
        type=int,
        default=d.min_content_chars,
        help=f"skip nodes whose text (tag lines removed) is shorter; default {d.min_content_chars}",
    )
    g.add_argument(
        "--max-examples-per-emotion",
        type=int,
        default=d.max_examples_per_emotion,
        help="cap on positives and on negatives, each, with a deterministic sample; "
        f"0 = no cap; default {d.max_examples_per_emotion}",
    )
    g.add_argument(
        "--emotions",
        default=None,
        metavar="LIST|@FILE",
        help="emotions to emit: a,b,c, or @FILE / a file path with names separated "
        "by commas, spaces or newlines (# comments); by default every emotion "
        "seen in a valid tag",
    )
    g.add_argument(
        "--min-positives",
        type=int,
        default=d.min_positives,
        help=f"emotions with fewer positives are left out and reported; default {d.min_positives}",
    )
    g.add_argument(
        "--heldout-fraction",
        type=float,
        default=d.heldout_fraction,
        help="share of nodes written with split 'heldout', chosen by a stable hash "
        f"of the node key; default {d.heldout_fraction:g}",
    )
    g.add_argument(
        "--seed",
        type=int,
        default=d.seed,
        help=f"seed of the capped sample and the split; default {d.seed}",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_source_arguments(parser)
    parser.add_argument(
        "--output-dir",
        type=Path,
        required=True,
        help="the training-data directory to write (replaced as a whole)",
    )
    add_selection_arguments(parser)


def parse_emotions_arg(value: str) -> list[str]:
    """`a,b,c`, `@FILE` or an existing file path → the names it lists (a file is read
    with `read_text_file`: a FIFO or a folder there is an error, never a hang)."""
    from amygdala._text import read_text_file
    from amygdala.errors import ConfigError

    path = Path(value[1:]) if value.startswith("@") else Path(value)
    if value.startswith("@") or path.is_file():
        text = read_text_file(path, label=f"--emotions {value}", error=ConfigError)
        text = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    else:
        text = value
    return [name for name in re.split(r"[\s,]+", text) if name]


def options_from_args(args: argparse.Namespace) -> SelectionOptions:
    """SelectionOptions from parsed flags (ConfigError for values that cannot work)."""
    from amygdala.graph.select import SelectionOptions

    emotions = parse_emotions_arg(args.emotions) if args.emotions is not None else None
    return SelectionOptions(
        min_positive_score=args.min_positive_score,
        max_negative_score=args.max_negative_score,
        max_negative_mentions=args.max_negative_mentions,
        min_content_chars=args.min_content_chars,
        max_examples_per_emotion=args.max_examples_per_emotion,
        emotions=tuple(emotions) if emotions is not None else None,
        min_positives=args.min_positives,
        heldout_fraction=args.heldout_fraction,
        seed=args.seed,
    )


def source_from_args(args: argparse.Namespace, default_graph: Path | None = None) -> GraphSource:
    """The graph source the flags name; `default_graph` when neither flag is given."""
    from amygdala.errors import ConfigError
    from amygdala.graph.filesource import FileSource

    given = [
        flag
        for flag, value in (
            ("--graph FILE", args.graph),
            ("--memory-mcp-url URL", getattr(args, "memory_mcp_url", None)),
            ("--memory-mcp-command CMD", getattr(args, "memory_mcp_command", None)),
        )
        if value is not None and value != ""
    ]
    if len(given) > 1:
        both = "not both" if len(given) == 2 else "not all three"
        raise ConfigError(f"pass only one graph source: {' or '.join(given)}, {both}")
    if args.graph is not None:
        return FileSource(args.graph)
    if given:
        from amygdala.cli._mcp_options import mcp_source_from_args

        return mcp_source_from_args(args)
    if default_graph is not None:
        return FileSource(default_graph)
    raise ConfigError(
        "no graph: pass --graph FILE (a JSONL export), --memory-mcp-url URL (a memory MCP "
        "server over HTTP such as `amygdala memory-server`) or --memory-mcp-command CMD "
        "(one that speaks stdio)"
    )


def has_source(args: argparse.Namespace) -> bool:
    """Did the flags name a graph source (a file, a server URL or a server command)?"""
    return any(
        getattr(args, name, None) not in (None, "")
        for name in ("graph", "memory_mcp_url", "memory_mcp_command")
    )


def source_inputs(args: argparse.Namespace) -> list[Input]:
    """The files the flags name that a run reads: the graph file and an --emotions file."""
    from amygdala._io import Input

    inputs = [Input(args.graph, "the graph (--graph)")] if args.graph is not None else []
    value = args.emotions
    if value is not None and (value.startswith("@") or Path(value).is_file()):
        inputs.append(Input(Path(value.removeprefix("@")), "the emotions list (--emotions)"))
    return inputs


def print_summary(summary: ExtractSummary) -> None:
    """What an extraction read, selected and wrote (`summary_lines`), on stderr."""
    from amygdala.graph.extract import summary_lines

    for line in summary_lines(summary):
        print(line, file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from amygdala._io import Output, check_outputs
    from amygdala.graph.extract import extract

    options = options_from_args(args)
    source = source_from_args(args)
    # the directory is replaced as a whole: a graph inside it would be deleted
    check_outputs([Output(args.output_dir, "--output-dir", "tree")], source_inputs(args))
    summary = extract(source, options, args.output_dir)
    print_summary(summary)
    return 0
