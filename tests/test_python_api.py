"""The Python API (`import amygdala`): the README's "Python" section run as written, and
each call checked against the stage it fronts.

References: the README snippet runs in a fresh interpreter (a real subprocess), and its
artifact must pass `amygdala.artifact.validate_artifact`; training from in-memory rows
must give bit-identical vectors to training from the same rows written by this test as
`<emotion>.jsonl` files (and the same skipped-row reasons); `extract` from a graph file,
from `amygdala memory-server` over HTTP and from the same server started over stdio must
write byte-identical training data; and a fresh `import amygdala` must not load torch or
transformers.
"""

from __future__ import annotations

import ast
import importlib.resources
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import torch

import amygdala
from _memory_server import amygdala as amygdala_cli
from _memory_server import memory_server
from amygdala import pipeline
from amygdala.artifact import validate_artifact
from amygdala.corpus import corpus_from_rows, load_training_dir, read_paragraphs
from amygdala.errors import AmygdalaError, ConfigError, CorpusError

ROOT = Path(__file__).resolve().parents[1]
STORIES = ROOT / "tests" / "data" / "stories" / "stories"


def run_python(code: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
    )


# -- the package ----------------------------------------------------------------------


def test_import_loads_neither_torch_nor_transformers(tmp_path: Path) -> None:
    code = (
        "import sys, amygdala\n"
        "print(sorted(m for m in ('torch', 'transformers', 'numpy', 'mcp') if m in sys.modules))"
    )
    out = run_python(code, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_all_names_resolve_and_train_and_readout_stay_functions(tmp_path: Path) -> None:
    """`from amygdala.train import …` binds the submodule `amygdala.train` on the package
    by default; the API's `amygdala.train` must still be the function (fresh interpreter,
    submodules imported first)."""
    code = (
        "import amygdala.train, amygdala.readout\n"
        "from amygdala.readout import Readout\n"
        "import amygdala, amygdala.pipeline as p\n"
        "assert amygdala.train is p.train and amygdala.readout is p.readout, "
        "(amygdala.train, amygdala.readout)\n"
        "from amygdala import train, readout, TrainConfig\n"
        "assert train is p.train and readout is p.readout\n"
        "import importlib; assert importlib.import_module('amygdala.train').TrainConfig "
        "is TrainConfig\n"
        "print(sorted(n for n in amygdala.__all__ if getattr(amygdala, n) is None))"
    )
    out = run_python(code, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    assert sorted(amygdala.__all__) == sorted(["__version__", *amygdala._LAZY])
    assert set(amygdala.__all__) <= set(dir(amygdala))
    for name, module in amygdala._LAZY.items():
        assert getattr(amygdala, name) is getattr(sys.modules[module], name)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        amygdala.nope  # noqa: B018


def test_keyword_types_name_exactly_the_stage_options() -> None:
    """The TypedDicts type checkers read are the stages' own option names, no more."""
    from amygdala.graph.select import SelectionOptions
    from amygdala.models import load_model
    from amygdala.readout import readout
    from amygdala.train import TrainConfig

    def keyword_only(func: Callable[..., Any]) -> set[str]:
        import inspect

        params = inspect.signature(func).parameters.values()
        return {p.name for p in params if p.kind is p.KEYWORD_ONLY}

    named = {"model", "training_data_dir", "output", "target_layers"}
    train_fields = {f.name for f in fields(TrainConfig)} - named
    assert set(pipeline.TrainKeywords.__annotations__) == train_fields
    select_fields = {f.name for f in fields(SelectionOptions)}
    assert set(pipeline.SelectionKeywords.__annotations__) == select_fields
    assert set(pipeline.ModelKeywords.__annotations__) == keyword_only(load_model)
    assert set(pipeline.ReadoutKeywords.__annotations__) == keyword_only(readout)


class Where:
    """A PathLike that is not a Path."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __fspath__(self) -> str:
        return self.path


def test_train_config_takes_string_and_pathlike_paths(tmp_path: Path) -> None:
    from amygdala.train import TrainConfig, check_output

    config = TrainConfig(
        model="minilm",
        training_data_dir=str(tmp_path / "data"),
        output=str(tmp_path / "out" / "readout.safetensors"),
        manifest=Where(tmp_path / "m.json"),  # type: ignore[arg-type]
        cache_dir=str(tmp_path / "cache"),
        neutral=str(tmp_path / "neutral.txt"),
        report_dir=Where(tmp_path / "report"),  # type: ignore[arg-type]
    )
    for name in ("training_data_dir", "output", "manifest", "cache_dir", "neutral", "report_dir"):
        assert isinstance(getattr(config, name), Path), name
    assert config.output == tmp_path / "out" / "readout.safetensors"
    assert config.manifest_path == tmp_path / "m.json"
    check_output(config)  # was: AttributeError: 'str' object has no attribute 'is_dir'
    (tmp_path / "dir.safetensors").mkdir()
    with pytest.raises(AmygdalaError, match="is a directory"):
        check_output(TrainConfig("minilm", "data", str(tmp_path / "dir.safetensors")))  # type: ignore[arg-type]


# -- the README's Python section, as written ------------------------------------------


def readme_python_block() -> str:
    """The first ```python block under the README's `## Python` heading."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = re.search(r"^## Python\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert section, "README.md has no '## Python' section"
    block = re.search(r"^```python\n(.*?)^```", section.group(1), re.S | re.M)
    assert block, "the README's '## Python' section has no ```python block"
    return block.group(1)


SAMPLE_LINES = 200


@pytest.mark.slow
def test_readme_python_section_runs_as_written(
    tmp_path: Path, tiny_model_dirs: Callable[[str], Path]
) -> None:
    """One substitution: the tiny random Llama stands in for `"minilm"` (far faster here).
    `graph.jsonl` in the working directory is the first SAMPLE_LINES records of the
    sample graph that ships in the package (11 emotions; the whole graph takes twice as
    long and tests nothing more). The snippet must print nothing but its own result:
    stages return summaries, they do not write to stdout or stderr."""
    code = readme_python_block()
    assert code.count('"minilm"') >= 1
    code = code.replace('"minilm"', repr(str(tiny_model_dirs("llama"))))
    sample = importlib.resources.files("amygdala") / "data" / "sample_graph.jsonl"
    lines = sample.read_text(encoding="utf-8").splitlines(keepends=True)
    (tmp_path / "graph.jsonl").write_text("".join(lines[:SAMPLE_LINES]), encoding="utf-8")
    # transformers' own weight-loading bar would be the only other output
    out = run_python(code, tmp_path, HF_HUB_DISABLE_PROGRESS_BARS="1")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stderr == ""
    vectors = tmp_path / "out" / "readout.safetensors"
    assert validate_artifact(vectors) == []
    manifest = json.loads(vectors.with_suffix(".json").read_text())
    training = json.loads((tmp_path / "training-data" / "manifest.json").read_text())
    assert manifest["concepts"] == sorted(training["emotions"])
    assert manifest["layers"] == [1, 3]
    top = ast.literal_eval(out.stdout.strip())
    assert len(top) == 3 and all(c in manifest["concepts"] for c, _ in top)
    assert [z for _, z in top] == sorted((z for _, z in top), reverse=True)


# -- train: in-memory rows against the same rows in a directory -------------------------

CONCEPTS = ("calm", "fear", "joy")
BAD_ROWS: list[dict[str, Any]] = [
    {"emotion": "joy", "polarity": "maybe", "text": "It was fine."},
    {"emotion": "joy", "polarity": "positive", "text": "  "},
    {"emotion": "no way!", "polarity": "negative", "text": "A bad concept name."},
    {"emotion": "joy", "polarity": "positive", "text": "Wrong split.", "split": "test"},
]


def story_rows() -> dict[str, list[dict[str, Any]]]:
    """Per concept: its stories as positives, the other two concepts' as negatives, every
    fourth story held out; the bad rows sit in joy's list."""
    stories = {c: read_paragraphs(STORIES / f"{c}.txt") for c in CONCEPTS}
    rows: dict[str, list[dict[str, Any]]] = {}
    for concept in CONCEPTS:
        rows[concept] = [
            {
                "emotion": concept,
                "polarity": "positive" if other == concept else "negative",
                "text": text,
                "split": "heldout" if i % 4 == 3 else "train",
            }
            for other in CONCEPTS
            for i, text in enumerate(stories[other])
        ]
    rows["joy"] += BAD_ROWS
    return rows


@pytest.mark.slow
def test_rows_in_memory_train_the_same_vectors_as_rows_on_disk(
    tmp_path: Path, tiny_model_dirs: Callable[[str], Path]
) -> None:
    by_concept = story_rows()
    data = tmp_path / "data"
    data.mkdir()
    for concept, rows in by_concept.items():
        lines = [json.dumps(row) for row in rows]
        (data / f"{concept}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    flat = [row for concept in sorted(by_concept) for row in by_concept[concept]]
    model = str(tiny_model_dirs("llama"))
    common: dict[str, Any] = {"target_layers": [1, -1], "min_examples": 4, "batch_size": 8}

    from_disk = amygdala.train(
        model=model, training_data=str(data), output=str(tmp_path / "disk.safetensors"), **common
    )
    lm = amygdala.load_model(Path(model), device="cpu")  # PathLike; reused, not reloaded
    from_rows = amygdala.train(
        model=lm, training_data=iter(flat), output=str(tmp_path / "rows.safetensors"), **common
    )

    assert isinstance(from_rows, amygdala.Artifact) and from_rows.layers == [1, 3]
    assert from_rows.concepts == from_disk.concepts == list(CONCEPTS)
    for layer in from_disk.layers:
        assert torch.equal(from_rows.vectors[layer], from_disk.vectors[layer]), layer
    same = {k: v for k, v in from_disk.manifest.items() if k != "training_data"}
    assert {k: v for k, v in from_rows.manifest.items() if k != "training_data"} == same
    assert from_rows.manifest["training_data"] == "rows"
    assert amygdala.load_artifact(tmp_path / "rows.safetensors").manifest == from_rows.manifest

    # skipped rows: counted and explained the same way, located by list index / file line
    disk_problems, row_problems = (
        from_disk.summary.corpus_problems,
        from_rows.summary.corpus_problems,
    )
    first_bad = len(flat) - len(BAD_ROWS)
    n_joy = len(by_concept["joy"]) - len(BAD_ROWS)
    assert [p.split(": ", 1)[0] for p in row_problems] == [
        f"rows[{first_bad + i}]" for i in range(len(BAD_ROWS))
    ]
    assert [p.split(": ", 1)[0] for p in disk_problems] == [
        f"joy.jsonl:{n_joy + 1 + i}" for i in range(len(BAD_ROWS))
    ]
    assert [p.split(": ", 1)[1] for p in row_problems] == [
        p.split(": ", 1)[1] for p in disk_problems
    ]

    # readout: by path and by name equals by loaded model and Artifact
    text = "The storm passed and we laughed in the kitchen."
    by_name = amygdala.readout(model, str(tmp_path / "rows.safetensors"), text)
    by_object = amygdala.readout(lm, from_rows, text)
    assert isinstance(by_name, amygdala.Readout)
    torch.testing.assert_close(by_name.raw, by_object.raw, rtol=0, atol=0)


def test_rows_are_checked_like_file_rows(tmp_path: Path) -> None:
    rows = story_rows()["joy"]
    (tmp_path / "joy.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    from_file = load_training_dir(tmp_path)
    from_rows = corpus_from_rows([*rows, 7, "text"])
    assert (from_rows.texts, from_rows.concepts) == (from_file.texts, from_file.concepts)
    assert (from_rows.train == from_file.train).all()
    assert (from_rows.heldout == from_file.heldout).all()
    assert from_rows.problems[-2:] == (
        f"rows[{len(rows)}]: not a dict (got int), skipped",
        f"rows[{len(rows) + 1}]: not a dict (got str), skipped",
    )
    with pytest.raises(CorpusError, match=r"^rows: no usable rows \(2 rows skipped\): rows\[0\]: "):
        corpus_from_rows(BAD_ROWS[:2])
    with pytest.raises(CorpusError, match=r"no usable rows$"):
        corpus_from_rows([])


def test_train_refuses_what_it_cannot_use(tmp_path: Path) -> None:
    out = str(tmp_path / "readout.safetensors")
    with pytest.raises(TypeError, match=r"unexpected option\(s\) batchsize; its options are "):
        amygdala.train(model="m", training_data=str(tmp_path), output=out, batchsize=4)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"unexpected option.* training_data_dir"):
        amygdala.train(model="m", training_data=[], output=out, training_data_dir="d")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="training_data is dict"):
        amygdala.train(model="m", training_data={"text": "a"}, output=out)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="target_layers"):
        amygdala.train(model="m", training_data=str(tmp_path), output=out, target_layers=["x"])  # type: ignore[list-item]
    assert not Path(out).exists()


# -- extract: a file, a server URL, a server command ------------------------------------


def small_graph(path: Path) -> Path:
    lines = []
    for i in range(40):
        tags = "warmth:9 fear:1" if i % 2 else "fear:9 warmth:2"
        text = f"Entry {i}: we walked along the harbour wall talking about day {i} of the move."
        lines.append(json.dumps({"key": f"journal#j-{i:03d}", "content": f"{text}\n{tags}"}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_extract_reads_a_file_a_server_url_and_a_server_command(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    graph = small_graph(tmp_path / "graph.jsonl")
    options: dict[str, Any] = {"min_positives": 5, "emotions": ["warmth", "fear"]}
    by_file = amygdala.extract(str(graph), str(tmp_path / "file"), **options)
    with memory_server(graph) as running:
        by_url = amygdala.extract(running.base_url, tmp_path / "url", **options)
    command = amygdala_cli("memory-server", "--graph", str(graph), "--stdio")
    by_command = amygdala.extract(command, tmp_path / "command", **options)

    assert isinstance(by_file, amygdala.ExtractSummary)
    assert by_file.source == f"file:{graph}"
    assert by_url.source.startswith("mcp:http://127.0.0.1:")
    assert by_command.source.startswith("mcp:stdio:")
    for summary in (by_file, by_url, by_command):
        assert summary.selection.nodes_used == 40
        written = sorted(p.name for p in summary.output_dir.iterdir())
        assert written == ["fear.jsonl", "manifest.json", "warmth.jsonl"]
        for name in ("fear.jsonl", "warmth.jsonl"):
            assert (summary.output_dir / name).read_bytes() == (
                tmp_path / "file" / name
            ).read_bytes()
    assert capfd.readouterr() == ("", "")  # no progress bars, no notes: summaries only

    with pytest.raises(TypeError, match=r"unexpected option.* min_positive;"):
        amygdala.extract(str(graph), str(tmp_path / "x"), min_positive=3)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="cannot read a graph from int"):
        amygdala.extract(5, str(tmp_path / "x"))  # type: ignore[arg-type]
    hint = r"no graph file 'my-server --stdio'; .* as a list: \['my-server', '--stdio'\]$"
    with pytest.raises(ConfigError, match=hint):
        amygdala.extract("my-server --stdio", str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()
