"""Defaults and vocabularies in one place, the typed manifest, and the small fixes that
came with them (issue 14, items 3 and 4).

* A command run with no optional flag builds the same config as the library does with no
  keyword: `TrainConfig`, `ReportConfig`/`Thresholds`, `McpOptions`, `ServeConfig`,
  `Engine` and `readout` are the references, and `--help` prints their values.
* `Manifest.from_dict(d).to_dict()` gives back `d` — key order and unknown keys
  included — for the checked-in golden manifest and for one `amygdala train` wrote; a
  provenance field of the wrong kind is an `amygdala validate` problem, one line.
* Through real subprocesses of the CLI: `--emotions @FIFO` and `serve --chat-template
  FIFO` are one error line, never a hang; the memory server's exposure warning lands on
  stderr and its ready line on stdout; `amygdala readout` says what cut a long text
  (the model's positions, read from its config.json, or `--max-length`).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from _memory_server import amygdala as amygdala_argv
from _memory_server import clean_env, spawn
from _training_rows import write_training_dir
from amygdala.cli import build_parser

GOLDEN = Path(__file__).parent / "data" / "golden" / "readout.json"
LONG_TEXT = "the quick brown fox jumps over the lazy dog " * 120  # > 256 tokens


def cli(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`python -m amygdala ARGS` with a hang guard (a FIFO read would block forever)."""
    return subprocess.run(
        [sys.executable, "-m", "amygdala", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
    )


def parse(*argv: str | Path) -> argparse.Namespace:
    return build_parser().parse_args([str(a) for a in argv])


def one_line(text: str) -> str:
    """`--help` text with argparse's line wrapping undone."""
    return " ".join(text.split())


def default_of(function: Callable[..., Any], name: str) -> Any:
    return inspect.signature(function).parameters[name].default


# -- the flags' defaults are the library's ------------------------------------------------


@pytest.mark.parametrize("command", ["train", "run"])
def test_train_flags_left_out_build_the_library_default_config(
    command: str, tmp_path: Path
) -> None:
    from amygdala.cli.train import config_from_args
    from amygdala.train import TrainConfig

    data, out = tmp_path / "data", tmp_path / "out" / "readout.safetensors"
    if command == "train":
        args = parse("train", "--model", "m", "--training-data-dir", data, "--output", out)
    else:
        args = parse("run", "--model", "m", "--output", out)
    assert config_from_args(args, training_data_dir=data) == TrainConfig(
        model="m", training_data_dir=data, output=out
    )


def test_train_help_prints_the_library_defaults() -> None:
    from amygdala.train import TrainConfig

    done = cli("train", "--help")
    assert done.returncode == 0, done.stderr
    text = one_line(done.stdout)
    d = TrainConfig(model="m", training_data_dir=None, output=Path("o"))
    assert f"texts per forward pass; default {d.batch_size}" in text
    assert f"truncated and counted; default {d.max_length}" in text
    assert f"negatives; default {d.min_examples}" in text
    assert f"storage dtype of the vectors; default {d.vectors_dtype}" in text
    assert f"last real non-special token; default {d.pooling}" in text
    assert f"memory); default {d.method}" in text
    assert "--pooling {mean,last}" in text and "--padding-side {left,right}" in text
    assert "--vectors-dtype {float16,bfloat16,float32}" in text


def test_report_flags_left_out_are_the_report_defaults(tmp_path: Path) -> None:
    from amygdala.evaluate import Thresholds
    from amygdala.report import ReportConfig

    args = parse("report", "--vectors", tmp_path / "r.safetensors", "--training-data-dir", tmp_path)
    config = ReportConfig(tmp_path / "r.safetensors", tmp_path, tmp_path)
    assert (args.batch_size, args.max_coherence, args.dtype) == (
        config.batch_size,
        config.max_coherence,
        config.dtype,
    )
    assert (args.min_train, args.min_heldout) == (Thresholds().min_train, Thresholds().min_heldout)
    text = one_line(cli("report", "--help").stdout)
    assert f"texts per forward pass; default {config.batch_size}" in text
    assert f"coherence; default {config.max_coherence}" in text
    assert "--dtype {bf16,fp16,fp32}" in text  # no `auto`: by default the one training used


def test_mcp_flags_left_out_build_the_default_mcp_options(tmp_path: Path) -> None:
    from amygdala.cli._mcp_options import mcp_source_from_args
    from amygdala.graph.mcp_source import McpOptions

    for command in ("extract", "run"):
        argv = [command, "--memory-mcp-url", "http://localhost:7777", "--output-dir", tmp_path]
        source = mcp_source_from_args(parse(*argv))
        assert source.options == McpOptions(url="http://localhost:7777")


def test_server_and_readout_flags_left_out_are_the_library_defaults(tmp_path: Path) -> None:
    from amygdala.graph.server import ServeConfig
    from amygdala.readout import readout
    from amygdala.serve.engine import Engine

    serve = parse("serve", "--model", "m")
    assert serve.max_concurrency == default_of(Engine, "max_concurrency")
    memory = parse("memory-server", "--graph", tmp_path / "g.jsonl")
    config = ServeConfig(graph=tmp_path / "g.jsonl")
    assert (memory.path, memory.token_env, memory.render_delay) == (
        config.path,
        config.token_env,
        config.render_delay,
    )
    assert f"0 picks a free one; default {config.port}" in one_line(
        cli("memory-server", "--help").stdout
    )
    ro = parse("readout", "--model", "m", "--vectors", tmp_path / "r.safetensors", "text")
    assert ro.max_length == default_of(readout, "max_length")
    assert ro.dtype == default_of(readout, "dtype")


# -- the typed manifest -----------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(
    tiny_model_dirs: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """An artifact `amygdala train` wrote for the tiny GPT-2 (256 positions)."""
    root = tmp_path_factory.mktemp("trained")
    write_training_dir(root / "data")
    out = root / "out" / "readout.safetensors"
    done = cli(
        "train",
        "--model",
        tiny_model_dirs("gpt2"),
        "--training-data-dir",
        root / "data",
        "--output",
        out,
        "--target-layers",
        "1,3",
        "--min-examples",
        "3",
        "--max-length",
        "64",
        "--no-cache",
        "--no-progress",
        "--device",
        "cpu",
    )
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.parametrize("which", ["golden", "trained"])
def test_manifest_round_trips_to_the_same_json(which: str, request: pytest.FixtureRequest) -> None:
    from amygdala._io import json_bytes
    from amygdala.artifact import Manifest

    path = GOLDEN if which == "golden" else request.getfixturevalue("trained").with_suffix(".json")
    raw = path.read_bytes()
    data = json.loads(raw)
    again = Manifest.from_dict(data).to_dict()
    assert list(again.items()) == list(data.items())  # values and key order
    if which == "trained":
        assert json_bytes(again) == raw  # the writer's own bytes


def test_manifest_fields_are_what_the_trainer_was_told(trained: Path) -> None:
    from amygdala.artifact import load_artifact

    meta = load_artifact(trained).meta
    assert (meta.layers, meta.concepts, meta.max_length, meta.pooling) == (
        (1, 3),
        ("fear", "joy"),
        64,
        "mean",
    )
    assert meta.hidden_size == json.loads(trained.with_suffix(".json").read_text())["hidden_size"]


def test_manifest_keeps_unknown_keys_in_place_and_adds_set_fields_at_the_end() -> None:
    from amygdala.artifact import Manifest

    data = {
        "x_first": [1, {"a": None}],
        **json.loads(GOLDEN.read_text()),
        "model_revision": None,
        "x_last": "kept",
    }
    manifest = Manifest.from_dict(data)
    assert manifest.extra == {"x_first": [1, {"a": None}], "x_last": "kept"}
    assert list(manifest.to_dict().items()) == list(data.items())
    changed = dataclasses.replace(manifest, model="m", pool_start=2).to_dict()
    assert list(changed)[-2:] == ["model", "pool_start"]
    assert changed["model_revision"] is None  # a recorded null stays recorded


def test_a_provenance_field_of_the_wrong_kind_is_one_validate_line(tmp_path: Path) -> None:
    import shutil

    vectors = tmp_path / "readout.safetensors"
    shutil.copy(GOLDEN.with_suffix(".safetensors"), vectors)
    data = json.loads(GOLDEN.read_text())
    (tmp_path / "readout.json").write_text(json.dumps({**data, "pooling": "sum", "max_length": 0}))
    done = cli("validate", vectors, "--manifest", tmp_path / "readout.json")
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        "invalid: manifest 'pooling' must be one of mean, last, got \"sum\"",
        "invalid: manifest 'max_length' must be a positive integer, got 0",
    ]


# -- FIFOs are refused, never read --------------------------------------------------------


def test_emotions_fifo_is_one_error_line(tmp_path: Path) -> None:
    graph = tmp_path / "graph.jsonl"
    graph.write_text('{"key": "a", "content": "A calm day.\\ncalm:9"}\n')
    fifo = tmp_path / "emotions.txt"
    os.mkfifo(fifo)  # reading it would block forever
    done = cli(
        "extract",
        "--graph",
        graph,
        "--emotions",
        f"@{fifo}",
        "--output-dir",
        tmp_path / "o",
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr == (
        f"error: --emotions @{fifo} is not a regular file (a FIFO, device or socket); pass a file\n"
    )
    assert not (tmp_path / "o").exists()


def test_chat_template_fifo_is_one_error_line(tmp_path: Path) -> None:
    fifo = tmp_path / "template.jinja"
    os.mkfifo(fifo)
    done = cli(
        "serve",
        "--model",
        tmp_path / "no-model",
        "--chat-template",
        fifo,
        "--port",
        "0",
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr == (
        f"error: --chat-template {fifo} is not a regular file (a FIFO, device or socket); "
        "pass a file\n"
    )


# -- the command line prints what the library logs or returns -----------------------------


def test_memory_server_warns_on_stderr_and_announces_on_stdout(tmp_path: Path) -> None:
    graph = tmp_path / "graph.jsonl"
    graph.write_text('{"key": "a", "content": "A calm day.\\ncalm:9"}\n')
    server = spawn(
        amygdala_argv("memory-server", "--graph", str(graph), "--host", "0.0.0.0", "--port", "0"),
        env=clean_env(),
    )
    try:
        ready = server.wait_for(r"^serving 1 nodes from .* on http://127\.0\.0\.1:\d+/mcp$")
        assert ready.startswith(f"serving 1 nodes from {graph} on ")
        assert server.stderr == [
            "warning: serving on 0.0.0.0 without a token: anyone who can reach this port "
            "can read the graph; set $AMYGDALA_MEMORY_TOKEN to require one\n"
        ]
    finally:
        server.stop()


@pytest.mark.parametrize("max_length", [None, 8])
def test_readout_warning_names_what_cut_the_text(
    trained: Path, tiny_model_dirs: Callable[[str], Path], tmp_path: Path, max_length: int | None
) -> None:
    model = tiny_model_dirs("gpt2")
    positions = json.loads((model / "config.json").read_text())["n_positions"]
    flags = [] if max_length is None else ["--max-length", str(max_length)]
    jsonl = tmp_path / "tokens.jsonl"
    done = cli(
        "readout",
        "--model",
        model,
        "--vectors",
        trained,
        "--device",
        "cpu",
        "--jsonl",
        jsonl,
        *flags,
        LONG_TEXT,
    )
    assert done.returncode == 0, done.stderr
    if max_length is None:
        expected = (
            f"warning: the text was cut to {positions} tokens, the most {str(model)!r} "
            f"supports (max positions {positions}; --max-length 2048 asks for more)"
        )
    else:
        expected = f"warning: the text was cut to --max-length {max_length} tokens"
    assert expected in done.stderr.splitlines()
    tokens = len(jsonl.read_text().splitlines())
    assert tokens == (positions if max_length is None else max_length)


def test_engine_refuses_prompts_past_the_models_positions(
    tiny_model_dirs: Callable[[str], Path],
) -> None:
    from amygdala.errors import ConfigError
    from amygdala.models import load_model
    from amygdala.serve.engine import Engine

    model = tiny_model_dirs("gpt2")
    positions = json.loads((model / "config.json").read_text())["n_positions"]
    engine = Engine(load_model(str(model), device="cpu"))
    engine.check_prompt([1] * (positions - 1))
    with pytest.raises(ConfigError, match=f"takes at most {positions} positions"):
        engine.check_prompt([1] * positions)
