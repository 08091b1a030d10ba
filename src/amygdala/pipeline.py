"""The Python API: the whole pipeline in a few calls, each a thin front for one stage.

`extract` (memory graph → training-data directory, `amygdala.graph.extract`), `train`
(training data → artifact, `amygdala.train`), `load_artifact` (`amygdala.artifact`) and
`readout` (artifact + text → per-token readouts, `amygdala.readout`), and `load_model` to
load a model once for many calls (`amygdala.models`). They add only what
a Python caller needs on top of the stages: paths as `str` or any `os.PathLike`, training
data as a directory, a stories corpus or in-memory rows, a graph as a file, a server URL
or a server command — and no progress bars unless asked for (`progress=True`). Options
are the stages' own, passed by keyword, with the stages' defaults (`TrainConfig`,
`SelectionOptions`, `readout.readout`, `models.load_model`); an unknown name is a
`TypeError` that lists the valid ones.

Example:
    >>> import amygdala
    >>> amygdala.extract("graph.jsonl", "training-data")  # doctest: +SKIP
    >>> art = amygdala.train(model="minilm", training_data="training-data",
    ...                      target_layers=[1, 3], output="out/readout.safetensors")  # doctest: +SKIP
    >>> amygdala.readout("minilm", art, "I miss you.").top(k=3)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from amygdala.artifact import Artifact, load_artifact

if TYPE_CHECKING:
    from typing import TypeAlias

    from typing_extensions import Unpack

    from amygdala._defaults import DType, PaddingSide, Pooling, VectorsDtype
    from amygdala.corpus import Corpus
    from amygdala.graph.extract import ExtractSummary
    from amygdala.graph.mcp_source import McpOptions
    from amygdala.graph.nodes import GraphSource
    from amygdala.models import LoadedModel
    from amygdala.readout import Readout
    from amygdala.train import TrainResult

    StrPath: TypeAlias = str | os.PathLike[str]
    # A graph file path, an MCP server URL (http:// or https://), a server command to
    # start and speak stdio to (its argument list), McpOptions for every MCP setting, or
    # any object with the GraphSource `read()` method.
    GraphInput: TypeAlias = StrPath | Sequence[str] | McpOptions | GraphSource
    # A training-data directory or stories corpus, a loaded Corpus, or training-data rows.
    TrainingData: TypeAlias = StrPath | Corpus | Iterable[Mapping[str, object]]

__all__ = ["TrainedArtifact", "extract", "load_artifact", "load_model", "readout", "train"]


class SelectionKeywords(TypedDict, total=False):
    """`extract`'s options: the fields of `amygdala.graph.select.SelectionOptions`."""

    min_positive_score: float
    max_negative_score: float
    max_negative_mentions: int
    min_content_chars: int
    max_examples_per_emotion: int
    emotions: Sequence[str] | None
    min_positives: int
    heldout_fraction: float
    seed: int


class TrainKeywords(TypedDict, total=False):
    """`train`'s options: the fields of `TrainConfig` it does not take by name."""

    manifest: StrPath | None
    pooling: Pooling
    method: str
    dtype: DType
    vectors_dtype: VectorsDtype
    batch_size: int
    max_length: int
    min_examples: int
    pool_start: int
    device: str | None
    revision: str | None
    blocks_path: str | None
    trust_remote_code: bool
    padding_side: PaddingSide | None
    progress: bool
    cache_dir: StrPath | None
    no_cache: bool
    device_map: str | None
    neutral: StrPath | None
    neutral_share: float
    report_dir: StrPath | None
    combined: bool


class ModelKeywords(TypedDict, total=False):
    """`load_model`'s options: the keyword arguments of `amygdala.models.load_model`."""

    device: str | None
    dtype: DType | str
    revision: str | None
    blocks_path: str | None
    trust_remote_code: bool
    device_map: str | None


class ReadoutKeywords(TypedDict, total=False):
    """`readout`'s options: the keyword arguments of `amygdala.readout.readout`."""

    max_length: int
    device: str | None
    dtype: DType | str


@dataclass(frozen=True)
class TrainedArtifact(Artifact):
    """The artifact `train` wrote, loaded back from disk, with the run's summary.

    It is an `Artifact` (vectors and manifest, usable wherever one is), plus `summary`:
    what the run did — texts captured and from the cache, concepts left out and why,
    training rows skipped and why (`summary.corpus_problems`), the paths written.
    """

    summary: TrainResult


def extract(
    source: GraphInput, output_dir: StrPath, **selection: Unpack[SelectionKeywords]
) -> ExtractSummary:
    """Read a memory graph, select examples, and write the training-data directory.

    Args:
        source: a graph file (JSONL export or JSON array); a memory MCP server's URL
            (`http://…`, `https://…`; a path ending in `/sse` uses SSE); a server command
            as an argument list (`["my-memory-server", "--stdio"]`, started and spoken to
            over stdio); `McpOptions` for the MCP settings (token, tools, query …); or
            any object with a `read() -> GraphRead` method.
        output_dir: the training-data directory to write (replaced as a whole, atomically).
        selection: `SelectionOptions` fields, e.g. `min_positive_score=7`,
            `emotions=["warmth", "fear"]`, `heldout_fraction=0.2`.

    Returns the `ExtractSummary`: nodes read, skipped by reason, per-emotion counts.

    Example:
        >>> summary = extract("graph.jsonl", "training-data", min_positives=5)  # doctest: +SKIP
        >>> sorted(summary.selection.emotions)  # doctest: +SKIP
        ['clarity', 'curiosity', 'warmth']
    """
    from amygdala.graph.extract import extract as run_extract
    from amygdala.graph.select import SelectionOptions

    options = _build(SelectionOptions, dict(selection), "extract")
    return run_extract(graph_source(source), options, Path(output_dir))


def graph_source(source: GraphInput) -> GraphSource:
    """The `GraphSource` that `extract`'s `source` argument names (see `extract`)."""
    from amygdala.errors import ConfigError
    from amygdala.graph.filesource import FileSource

    if isinstance(source, str) and source.lower().startswith(("http://", "https://")):
        return _mcp_source(url=source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if isinstance(source, str) and " " in source.strip() and not path.exists():
            raise ConfigError(
                f"extract: there is no graph file {source!r}; to start a memory server and "
                f"speak stdio to it, pass its command as a list: {_argv(source)!r}"
            )
        return FileSource(path)
    if isinstance(source, Sequence) and source and all(isinstance(a, str) for a in source):
        return _mcp_source(command=list(source))
    from amygdala.graph.mcp_source import McpGraphSource, McpOptions

    if isinstance(source, McpOptions):
        return McpGraphSource(source)
    if callable(getattr(source, "read", None)):
        return source  # type: ignore[return-value]
    raise TypeError(
        f"extract: cannot read a graph from {type(source).__name__} {source!r}; pass a graph "
        "file path, a memory server URL (http://…), a server command as a list of "
        "arguments, McpOptions, or an object with a read() method"
    )


def _argv(command: str) -> list[str]:
    try:
        return shlex.split(command)
    except ValueError:  # unbalanced quotes
        return command.split()


def _mcp_source(**where: Any) -> GraphSource:
    from amygdala.graph.mcp_source import McpGraphSource, McpOptions

    return McpGraphSource(McpOptions(**where, progress=False))


def train(
    *,
    model: StrPath | LoadedModel,
    training_data: TrainingData,
    output: StrPath,
    target_layers: str | Sequence[int | float] | None = None,
    **options: Unpack[TrainKeywords],
) -> TrainedArtifact:
    """Train readout vectors, write the artifact pair, and return it loaded.

    Args:
        model: a Hub id, a local model directory, `"minilm"` (the packaged MiniLM), or a
            model from `load_model` (reused, not loaded again).
        training_data: a training-data directory (`<emotion>.jsonl`) or stories corpus;
            or rows, each a dict with `emotion`, `polarity` (`"positive"`/`"negative"`),
            `text` and optionally `split` (`"train"`/`"heldout"`), checked like the rows
            of a file: a bad row is skipped and listed in `summary.corpus_problems`.
        output: the path of `readout.safetensors` (the manifest goes beside it as `.json`
            unless `manifest=` names another path).
        target_layers: the blocks to read: absolute indices `[3, 18]`, negative ones
            `[-1]`, fractions of depth `[0.5, 1.0]`, or a spec string such as `"all"`;
            by default TrainConfig's.
        options: any other `TrainConfig` field (`method=`, `batch_size=`, `device=` …);
            `progress` is off unless passed.

    Example:
        >>> rows = [{"emotion": "joy", "polarity": "positive", "text": "We won!"}, ...]  # doctest: +SKIP
        >>> art = train(model="minilm", training_data=rows, target_layers=[1, 3],
        ...             output="out/readout.safetensors")  # doctest: +SKIP
        >>> art.concepts, art.layers, art.summary.corpus_problems  # doctest: +SKIP
    """
    from amygdala.corpus import Corpus, corpus_from_rows
    from amygdala.models import LoadedModel
    from amygdala.train import TrainConfig
    from amygdala.train import train as run_training

    named: dict[str, Any] = {"output": output}
    named["model"] = model.model_id if isinstance(model, LoadedModel) else os.fspath(model)
    if target_layers is not None:
        named["target_layers"] = _layer_spec(target_layers)
    if isinstance(training_data, Mapping) or not isinstance(
        training_data, (str, os.PathLike, Corpus, Iterable)
    ):
        raise TypeError(
            f"train: training_data is {type(training_data).__name__}; pass a training-data "
            "directory, a stories corpus, or an iterable of row dicts "
            "({'emotion', 'polarity', 'text', optional 'split'})"
        )
    on_disk = isinstance(training_data, (str, os.PathLike))
    named["training_data_dir"] = training_data if on_disk else None
    config = _build(TrainConfig, {"progress": False, **options}, "train", named)
    corpus: Corpus | None = None
    if isinstance(training_data, Corpus):
        corpus = training_data
    elif not isinstance(training_data, (str, os.PathLike)):
        corpus = corpus_from_rows(training_data)
    lm = model if isinstance(model, LoadedModel) else None
    result = run_training(config, lm, corpus)
    art = load_artifact(result.vectors_path, result.manifest_path)
    return TrainedArtifact(vectors=art.vectors, manifest=art.manifest, summary=result)


def _layer_spec(layers: str | Sequence[int | float]) -> str:
    """`[1, -1, 0.5]` → `"1,-1,0.5"` (the `--target-layers` syntax: a float is a fraction)."""
    if isinstance(layers, str):
        return layers
    bad = [x for x in layers if isinstance(x, bool) or not isinstance(x, (int, float))]
    if bad or not layers:
        raise TypeError(
            f"train: target_layers {list(layers)!r}: pass block indices (ints, negative from "
            "the end) and/or fractions of depth (floats 0.0–1.0), e.g. [3, 18, -1]"
        )
    return ",".join(str(x) for x in layers)


def load_model(model: StrPath, **options: Unpack[ModelKeywords]) -> LoadedModel:
    """Load a model once for several `readout` (or `train`) calls.

    Args:
        model: a Hub id, a local model directory, or `"minilm"` (the packaged MiniLM).
        options: `device=`, `dtype=`, `revision=`, `blocks_path=`, `trust_remote_code=`,
            `device_map=` (see `amygdala.models.load_model`).

    Example:
        >>> lm = load_model("minilm", device="cpu")  # doctest: +SKIP
        >>> [readout(lm, art, t).top(k=1) for t in texts]  # doctest: +SKIP
    """
    from amygdala.models import load_model as run_load

    return run_load(os.fspath(model), **options)


def readout(
    model: StrPath | LoadedModel,
    artifact: Artifact | StrPath,
    text: str,
    **options: Unpack[ReadoutKeywords],
) -> Readout:
    """Per-token readouts of `text`: every token's projection on every concept and layer.

    Args:
        model: the model the artifact was trained on: a name or directory (loaded for this
            call) or a model from `load_model` (reuse it when reading many texts).
        artifact: an `Artifact` (what `train` and `load_artifact` return) or the path of
            its `readout.safetensors`.
        text: the text to read, tokenized as the trainer tokenizes.
        options: `max_length=`, and `device=` / `dtype=` when `model` is a name.

    Example:
        >>> ro = readout("minilm", "out/readout.safetensors", "I miss you.")  # doctest: +SKIP
        >>> ro.top(k=3)  # [(concept, z), …]  # doctest: +SKIP
    """
    from amygdala.models import LoadedModel
    from amygdala.readout import readout as run_readout

    art = artifact if isinstance(artifact, Artifact) else load_artifact(os.fspath(artifact))
    lm = model if isinstance(model, LoadedModel) else os.fspath(model)
    return run_readout(lm, art, text, **options)


def _build(
    cls: Any, options: dict[str, Any], call: str, named: Mapping[str, Any] | None = None
) -> Any:
    """`cls(**named, **options)`, with a TypeError naming the valid options otherwise."""
    named = named or {}
    valid = sorted(f.name for f in fields(cls) if f.init and f.name not in named)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise TypeError(
            f"{call}() got unexpected option(s) {', '.join(unknown)}; "
            f"its options are {', '.join(valid)}"
        )
    return cls(**named, **options)
