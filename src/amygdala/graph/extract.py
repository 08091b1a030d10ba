"""Graph → training-data directory (docs/architecture.md, "Training-data directory").

```
DIR/manifest.json    {"format": "amygdala-training-data/1", "source", "selection",
                      "emotions", "summary"}
DIR/<emotion>.jsonl  {"emotion", "polarity", "text", "key", "score", "split"} per line
```

The directory is written through `atomic_directory`: it appears complete or not at
all, and an existing one is replaced only when the new one is whole. The bytes depend
only on the graph's nodes and the options — rows sorted, keys in a fixed order, no
timestamps — so a graph read from a file export and the same graph read over MCP give
identical `<emotion>.jsonl` files. In `manifest.json` only `source` and
`summary.graph` (records, deleted, superseded, problems: what the source itself
reported, and for an MCP source `reader`: transport, formats, footers stripped) depend
on where the graph came from.

Example:
    >>> from amygdala.graph.filesource import FileSource
    >>> summary = extract(FileSource(Path("graph.jsonl")), SelectionOptions(),
    ...                   Path("training-data"))  # doctest: +SKIP
    >>> sorted(summary.selection.emotions)  # doctest: +SKIP
    ['clarity', 'curiosity', 'warmth']
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amygdala._io import atomic_directory
from amygdala._text import read_json_file
from amygdala.errors import ConfigError, GraphError
from amygdala.graph.nodes import GraphRead, GraphSource
from amygdala.graph.select import (
    Example,
    Selection,
    SelectionOptions,
    SelectionSummary,
    select,
)

FORMAT = "amygdala-training-data/1"
MAX_PROBLEMS_IN_MANIFEST = 100  # problem lines kept in manifest.json (all are counted)
MAX_LEFT_OUT_IN_MANIFEST = 100  # left-out emotions named in manifest.json (all are counted)
SHOWN = 5  # lines of each kind the summary shows before "… N more"


@dataclass(frozen=True)
class ExtractSummary:
    """What an extraction read, selected and wrote."""

    output_dir: Path
    source: str
    records_seen: int  # records the source read (malformed ones included)
    nodes: int  # live nodes the source returned
    deleted: int
    superseded: int
    problems: tuple[str, ...]  # source records that could not be used, with location
    selection: SelectionSummary
    manifest: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)  # GraphRead.details: how it was read


def check_output_dir(path: Path) -> None:
    """Refuse to replace anything that is not a training-data directory we wrote.

    The directory is replaced as a whole, so `--output-dir .` or a typo must not
    wipe unrelated files.
    """
    if not path.exists():
        return
    if not path.is_dir():
        raise ConfigError(f"--output-dir {path} is a file; pass a directory path")
    if not any(path.iterdir()):
        return
    try:
        manifest = read_json_file(path / "manifest.json", error=ConfigError)
    except ConfigError:  # missing, a folder, not JSON …: not a directory we wrote
        manifest = None
    fmt = manifest.get("format") if isinstance(manifest, dict) else None
    if fmt != FORMAT:
        raise ConfigError(
            f"--output-dir {path} exists and is not a training-data directory "
            f"(no manifest.json with format {FORMAT!r}); it would be replaced "
            "as a whole, so pass a new or empty directory"
        )


def graph_summary(read: GraphRead) -> dict[str, Any]:
    """The source-dependent part of the manifest summary."""
    summary = {
        "records_seen": read.records_seen,
        "nodes": len(read.nodes),
        "deleted": read.deleted,
        "superseded": read.superseded,
        "malformed_records": len(read.problems),
        "problems": list(read.problems[:MAX_PROBLEMS_IN_MANIFEST]),
    }
    if read.details:
        summary["reader"] = dict(read.details)
    return summary


def selection_summary(summary: SelectionSummary) -> dict[str, Any]:
    """The selection part of the manifest summary, bounded: left-out emotions are
    counted (`left_out_emotions`) and the first `MAX_LEFT_OUT_IN_MANIFEST` named (one
    node with 10⁶ distinct tags must not write a 73 MB manifest)."""
    out = summary.to_json()
    left_out = out.pop("left_out")
    out["left_out_emotions"] = len(left_out)
    out["left_out"] = dict(itertools.islice(left_out.items(), MAX_LEFT_OUT_IN_MANIFEST))
    return out


def build_manifest(read: GraphRead, selection: Selection) -> dict[str, Any]:
    """manifest.json's content: format, source, flags, per-emotion counts, summary."""
    summary = selection.summary
    return {
        "format": FORMAT,
        "source": read.source,
        "selection": selection.options.to_json(),
        "emotions": {e: c.to_json() for e, c in summary.emotions.items()},
        "summary": {"graph": graph_summary(read), **selection_summary(summary)},
    }


def _jsonl(rows: tuple[Example, ...]) -> bytes:
    return "".join(json.dumps(r.to_row(), ensure_ascii=False) + "\n" for r in rows).encode()


def _nothing_selected(read: GraphRead, summary: SelectionSummary) -> GraphError:
    if summary.nodes_used == 0:
        skipped = ", ".join(f"{n} {r}" for r, n in summary.skipped.items()) or "none"
        return GraphError(
            f"{read.source}: none of its {len(read.nodes)} live nodes can be used (skipped: "
            f"{skipped}); a node needs a trailing tag line such as 'warmth:9 clarity:7' and "
            "--min-content-chars of text"
        )
    shown = itertools.islice(summary.left_out.items(), SHOWN)
    reasons = "; ".join(f"{e}: {r}" for e, r in shown)
    n_left = len(summary.left_out)
    more = f" (and {n_left - SHOWN} more)" if n_left > SHOWN else ""
    return GraphError(
        f"{read.source}: no emotion has enough examples — {reasons}{more}. "
        "Lower --min-positives or --min-positive-score, or pick --emotions"
    )


def write_training_data(output_dir: Path, read: GraphRead, selection: Selection) -> dict[str, Any]:
    """Write manifest.json and one <emotion>.jsonl per emitted emotion, atomically."""
    manifest = build_manifest(read, selection)
    with atomic_directory(Path(output_dir).resolve()) as tmp:  # resolve: `.` has no name
        for emotion, rows in selection.examples.items():
            (tmp / f"{emotion}.jsonl").write_bytes(_jsonl(rows))
        text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
        (tmp / "manifest.json").write_bytes(text.encode())
    return manifest


def extract(source: GraphSource, options: SelectionOptions, output_dir: Path) -> ExtractSummary:
    """Read a graph, select examples, write the training-data directory.

    Raises `GraphError` when the graph cannot be read or yields no emotion, and
    `ConfigError` when `output_dir` is something other than a training-data directory;
    in both cases nothing is written.
    """
    output_dir = Path(output_dir)
    check_output_dir(output_dir)
    read = source.read()
    selection = select(read.nodes, options)
    if not selection.examples:
        raise _nothing_selected(read, selection.summary)
    manifest = write_training_data(output_dir, read, selection)
    return ExtractSummary(
        output_dir=output_dir,
        source=read.source,
        records_seen=read.records_seen,
        nodes=len(read.nodes),
        deleted=read.deleted,
        superseded=read.superseded,
        problems=tuple(read.problems),
        selection=selection.summary,
        manifest=manifest,
        details=dict(read.details),
    )


def summary_lines(summary: ExtractSummary) -> list[str]:
    """A short human summary, one line each: counts, skips, left-out emotions (the
    command line prints it on stderr; long lists end in "… N more")."""
    sel = summary.selection
    lines = [
        f"read {summary.records_seen} records from {summary.source}: {summary.nodes} live "
        f"nodes, {summary.deleted} deleted, {summary.superseded} superseded, "
        f"{len(summary.problems)} malformed"
    ]
    if summary.details:
        how = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in summary.details.items())
        lines.append(f"  read with {how}")
    lines += [f"  {line}" for line in summary.problems[:SHOWN]]
    if len(summary.problems) > SHOWN:
        kept = min(len(summary.problems), MAX_PROBLEMS_IN_MANIFEST)
        lines.append(f"  … {len(summary.problems) - SHOWN} more ({kept} listed in manifest.json)")
    skipped = ", ".join(f"{n} {r.replace('_', ' ')}" for r, n in sel.skipped.items()) or "none"
    lines.append(f"used {sel.nodes_used} of {sel.nodes_seen} nodes; skipped: {skipped}")
    if sel.malformed_tags:
        lines.append(
            f"malformed tags: {sel.malformed_tags} tokens in {sel.nodes_with_malformed_tags} "
            "nodes (reported, never used), e.g.:"
        )
        lines += [f"  {line}" for line in sel.malformed_tag_examples[:SHOWN]]
        if sel.malformed_tags > SHOWN:
            lines.append(f"  … {sel.malformed_tags - SHOWN} more")
    lines.append(f"  {'emotion':<20} {'positive':>9} {'negative':>9} {'heldout':>13}")
    for emotion, c in sel.emotions.items():
        held = f"{c.heldout_positive}+/{c.heldout_negative}-"
        lines.append(f"  {emotion:<20} {c.positive:>9} {c.negative:>9} {held:>13}")
    for emotion, reason in itertools.islice(sel.left_out.items(), SHOWN):
        lines.append(f"  left out {emotion}: {reason}")
    if len(sel.left_out) > SHOWN:
        kept = min(len(sel.left_out), MAX_LEFT_OUT_IN_MANIFEST)
        lines.append(
            f"  … {len(sel.left_out) - SHOWN} more emotions left out ({kept} listed in "
            "manifest.json)"
        )
    lines.append(f"wrote {len(sel.emotions)} emotions to {summary.output_dir}")
    return lines
