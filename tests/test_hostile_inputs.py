"""Hostile inputs through the real command line (issue 12: text, reading, pathological
input, misleading messages).

Every case runs `python -m amygdala …` as a subprocess and asserts the exact exit code,
no traceback, a message that names the cause, and that every file the case started with
is byte-identical afterwards (nothing an input-reading failure does may touch a file).
Where a run can go on, what it computed is compared with an independent reference: the
readout of a text with invalid bytes equals the readout of the text Python's own
`decode(errors="replace")` gives, and a text cut to the model's positions has exactly
as many tokens as the model's config.json allows.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from _training_rows import jsonl_files

pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="FIFOs, byte arguments"),
    pytest.mark.slow,  # ~40 CLI subprocesses
]

Argv = list[str | bytes | Path]
LONG_TEXT = "the quick brown fox jumps over the lazy dog " * 120  # > 256 tokens anywhere
DEEP = b"[" * 100_000 + b"]" * 100_000


def training_rows(polarity: Callable[[str, str], str] | None = None) -> dict[str, bytes]:
    """`<emotion>.jsonl` contents: each emotion's texts positive, the other's negative."""
    return jsonl_files(polarity=polarity)


def write_training_data(root: Path, **extra_lines: bytes) -> Path:
    """The good rows, plus `extra_lines[emotion]` appended to that emotion's file."""
    root.mkdir(parents=True, exist_ok=True)
    for emotion, content in training_rows().items():
        (root / f"{emotion}.jsonl").write_bytes(content + extra_lines.get(emotion, b""))
    return root


def memory_graph(path: Path, extra: list[dict[str, str]] | None = None) -> Path:
    """60 tagged nodes (warmth and calm, 30 positives each) plus `extra` records."""
    lines = []
    for i in range(60):
        emotion, other = ("warmth", "calm") if i % 2 else ("calm", "warmth")
        body = f"Day {i}: at the station I felt {emotion} all the way home, slowly."
        lines.append({"key": f"j-{i:03d}", "content": f"{body}\n{emotion}:9 {other}:1"})
    text = "".join(json.dumps(r) + "\n" for r in [*lines, *(extra or [])])
    path.write_text(text)
    return path


def amygdala(
    *args: str | bytes | Path, stdin: bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m amygdala ARGS` (arguments may be raw bytes), with a hang guard."""
    done = subprocess.run(
        [sys.executable, "-m", "amygdala", *[a if isinstance(a, bytes) else str(a) for a in args]],
        input=stdin,
        capture_output=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})},
    )
    out = done.stdout.decode("utf-8", "replace")
    err = done.stderr.decode("utf-8", "replace")
    return subprocess.CompletedProcess(done.args, done.returncode, out, err)


def snapshot(root: Path) -> dict[str, bytes]:
    """Every regular file under `root` with its bytes (FIFOs and folders by name only)."""
    files = {}
    for path in sorted(root.rglob("*")):
        mode = path.lstat().st_mode
        rel = str(path.relative_to(root))
        files[rel] = path.read_bytes() if stat.S_ISREG(mode) else stat.filemode(mode).encode()
    return files


def train_args(model: Path, data: Path, out: Path, *extra: str) -> Argv:
    return [
        "train",
        "--model",
        model,
        "--training-data-dir",
        data,
        "--output",
        out,
        "--target-layers",
        "1,3",
        "--min-examples",
        "3",
        "--no-cache",
        "--no-progress",
        "--device",
        "cpu",
        *extra,
    ]


def readout_args(model: Path, vectors: Path, *extra: str | bytes | Path) -> Argv:
    return ["readout", "--model", model, "--vectors", vectors, "--device", "cpu", *extra]


@dataclass(frozen=True)
class Setup:
    """Tiny models and one trained artifact per architecture, shared by the module."""

    models: dict[str, Path]
    artifacts: dict[str, Path]
    data: Path


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dirs: Callable[[str], Path]
) -> Setup:
    root = tmp_path_factory.mktemp("hostile-inputs")
    data = write_training_data(root / "data")
    models = {arch: tiny_model_dirs(arch) for arch in ("llama", "gpt2", "bert")}
    artifacts = {}
    for arch in ("gpt2", "bert"):
        out = root / arch / "readout.safetensors"
        done = amygdala(*train_args(models[arch], data, out))
        assert done.returncode == 0, done.stderr
        artifacts[arch] = out
    return Setup(models, artifacts, data)


def assert_clean_failure(done: subprocess.CompletedProcess[str], code: int, message: str) -> None:
    text = done.stdout + done.stderr
    assert done.returncode == code, text
    assert "Traceback" not in text, text
    assert message in text, text


def token_ids(jsonl: Path) -> list[int]:
    return [json.loads(line)["token_id"] for line in jsonl.read_text().splitlines()]


# --- text: lone surrogates and undecodable bytes read as U+FFFD ------------------------


def test_undecodable_argument_bytes_read_as_replacement_characters(
    setup: Setup, tmp_path: Path
) -> None:
    raw = b"caf\xe9 and \xff\xfe at the fair"
    model, vectors = setup.models["gpt2"], setup.artifacts["gpt2"]
    got = amygdala(*readout_args(model, vectors, "--jsonl", tmp_path / "got.jsonl", raw))
    assert got.returncode == 0 and "Traceback" not in got.stderr, got.stderr
    reference = raw.decode("utf-8", "replace")  # Python's own decoder, not ours
    assert reference.count("\ufffd") == 3
    want = amygdala(*readout_args(model, vectors, "--jsonl", tmp_path / "want.jsonl", reference))
    assert want.returncode == 0, want.stderr
    assert token_ids(tmp_path / "got.jsonl") == token_ids(tmp_path / "want.jsonl")


def test_lone_surrogates_from_stdin_read_as_replacement_characters(
    setup: Setup, tmp_path: Path
) -> None:
    raw = b"\xed\xa0\x80 lone surrogate and caf\xe9 from a pipe"
    model, vectors = setup.models["gpt2"], setup.artifacts["gpt2"]
    got = amygdala(
        *readout_args(model, vectors, "--jsonl", tmp_path / "got.jsonl", "-"),
        stdin=raw,
        env={"PYTHONIOENCODING": "utf-8:surrogateescape"},
    )
    assert got.returncode == 0 and "Traceback" not in got.stderr, got.stderr
    reference = raw.decode("utf-8", "surrogateescape")  # what the CLI reads: surrogates
    reference = "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in reference)
    want = amygdala(*readout_args(model, vectors, "--jsonl", tmp_path / "want.jsonl", reference))
    assert want.returncode == 0, want.stderr
    assert token_ids(tmp_path / "got.jsonl") == token_ids(tmp_path / "want.jsonl")


def test_surrogate_escape_in_a_training_row_is_skipped_and_reported(
    setup: Setup, tmp_path: Path
) -> None:
    row = b'{"emotion": "joy", "polarity": "positive", "text": "\\ud800 half an emoji"}\n'
    data = write_training_data(tmp_path / "data", joy=row)
    out = tmp_path / "out" / "readout.safetensors"
    done = amygdala(*train_args(setup.models["llama"], data, out))
    assert done.returncode == 0, done.stderr
    assert "skipped 1 unusable training rows" in done.stderr
    assert "joy.jsonl:9: 'text' holds a lone surrogate" in done.stderr
    counts = json.loads(out.with_suffix(".json").read_text())["counts"]
    assert counts == {"fear": {"positive": 4, "negative": 4}, "joy": {"positive": 4, "negative": 4}}


# --- text: longer than the model's positions --------------------------------------------


def model_positions(model: Path) -> int:
    """The position limit, read from config.json directly (not through amygdala)."""
    config = json.loads((model / "config.json").read_text())
    return int(config.get("n_positions") or config["max_position_embeddings"])


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_readout_cuts_a_long_text_to_the_model_positions(
    setup: Setup, tmp_path: Path, arch: str
) -> None:
    model, jsonl = setup.models[arch], tmp_path / "tokens.jsonl"
    done = amygdala(*readout_args(model, setup.artifacts[arch], "--jsonl", jsonl, LONG_TEXT))
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "warning: the text was cut" in done.stderr
    assert len(token_ids(jsonl)) == model_positions(model) == 256  # default --max-length 2048
    short = amygdala(
        *readout_args(
            model, setup.artifacts[arch], "--max-length", "40", "--jsonl", jsonl, LONG_TEXT
        )
    )
    assert short.returncode == 0 and len(token_ids(jsonl)) == 40


def test_training_cuts_long_texts_to_the_model_positions(setup: Setup, tmp_path: Path) -> None:
    row = json.dumps({"emotion": "joy", "polarity": "positive", "text": LONG_TEXT}).encode()
    data = write_training_data(tmp_path / "data", joy=row + b"\n")
    out = tmp_path / "out" / "readout.safetensors"
    done = amygdala(*train_args(setup.models["gpt2"], data, out, "--max-length", "4096"))
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "truncated to 256 tokens (the model's limit, below --max-length): 1" in done.stderr


# --- reading: things named like files that are not, nesting, garbage manifests ----------


@dataclass
class Case:
    """A directory with the inputs of one case, and the command line to run on it."""

    root: Path
    setup: Setup

    def train(self, data: Path, *extra: str) -> Argv:
        out = self.root / "out" / "readout.safetensors"
        return train_args(self.setup.models["llama"], data, out, *extra)

    def artifact(self) -> Path:
        """A copy of the gpt2 artifact pair in this case's directory."""
        (self.root / "art").mkdir(exist_ok=True)
        for name in ("readout.safetensors", "readout.json"):
            shutil.copy(self.setup.artifacts["gpt2"].with_name(name), self.root / "art" / name)
        return self.root / "art" / "readout.safetensors"

    def edit_manifest(self, change: Callable[[dict[str, object]], None]) -> Path:
        vectors = self.artifact()
        manifest = json.loads(vectors.with_suffix(".json").read_text())
        change(manifest)
        vectors.with_suffix(".json").write_text(json.dumps(manifest))
        return vectors


def _folder_named_jsonl(c: Case) -> Argv:
    data = write_training_data(c.root / "data")
    (data / "anger.jsonl").mkdir()
    return c.train(data)


def _folder_named_txt(c: Case) -> Argv:
    (c.root / "stories" / "stories" / "joy.txt").mkdir(parents=True)
    (c.root / "stories" / "stories" / "fear.txt").write_text("A scream in the night.\n")
    return c.train(c.root / "stories")


def _fifo_jsonl(c: Case) -> Argv:
    data = write_training_data(c.root / "data")
    os.mkfifo(data / "anger.jsonl")  # reading it would block forever
    return c.train(data)


def _data_dir_is_a_file(c: Case) -> Argv:
    return c.train(write_training_data(c.root / "data") / "joy.jsonl")


def _graph_folder(c: Case) -> Argv:
    (c.root / "graph.jsonl").mkdir()
    return ["extract", "--graph", c.root / "graph.jsonl", "--output-dir", c.root / "td"]


def _graph_fifo(c: Case) -> Argv:
    os.mkfifo(c.root / "graph.jsonl")
    return ["extract", "--graph", c.root / "graph.jsonl", "--output-dir", c.root / "td"]


def _graph_deep_array(c: Case) -> Argv:
    (c.root / "graph.json").write_bytes(DEEP)
    return ["extract", "--graph", c.root / "graph.json", "--output-dir", c.root / "td"]


def _manifest_folder(c: Case, command: str) -> Argv:
    vectors = c.artifact()
    vectors.with_suffix(".json").unlink()
    vectors.with_suffix(".json").mkdir()
    return _use(c, command, vectors)


def _manifest_deep(c: Case, command: str) -> Argv:
    vectors = c.artifact()
    vectors.with_suffix(".json").write_bytes(DEEP)
    return _use(c, command, vectors)


def _use(c: Case, command: str, vectors: Path) -> Argv:
    if command == "validate":
        return ["validate", vectors]
    return readout_args(c.setup.models["gpt2"], vectors, "a text")


def _all_rows_bad_polarity(c: Case) -> Argv:
    data = c.root / "data"
    data.mkdir()
    for emotion, content in training_rows(lambda e, o: "pos" if o == e else "neg").items():
        (data / f"{emotion}.jsonl").write_bytes(content)
    return c.train(data)


def _model_json_nested(name: str) -> Callable[[Case], Argv]:
    def build(c: Case) -> Argv:
        model = c.root / "model"
        shutil.copytree(c.setup.models["llama"], model)
        (model / name).write_bytes(b'{"a":' * 100_000 + b"1" + b"}" * 100_000)
        return train_args(model, write_training_data(c.root / "data"), c.root / "out" / "r.st")

    return build


def _pickled_weights(c: Case) -> Argv:
    import torch
    from safetensors.torch import load_file

    model = c.root / "pickled-model"
    shutil.copytree(c.setup.models["llama"], model)
    state: dict[str, object] = dict(load_file(model / "model.safetensors"))
    state["optimizer_note"] = Path("not a tensor")  # any non-tensor object: a real pickle
    (model / "model.safetensors").unlink()
    torch.save(state, model / "pytorch_model.bin")
    data = write_training_data(c.root / "data")
    return train_args(model, data, c.root / "out" / "readout.safetensors")


FATAL: dict[str, tuple[Callable[[Case], Argv], int, str]] = {
    "jsonl-named-folder": (
        _folder_named_jsonl,
        2,
        "anger.jsonl is a directory, not a file; a training-data "
        "directory holds <emotion>.jsonl files",
    ),
    "txt-named-folder": (_folder_named_txt, 2, "joy.txt is a directory, not a file"),
    "jsonl-fifo": (_fifo_jsonl, 2, "anger.jsonl is not a regular file (a FIFO, device or socket)"),
    "data-dir-is-a-file": (_data_dir_is_a_file, 2, "joy.jsonl is a file, not a directory"),
    "graph-named-folder": (
        _graph_folder,
        2,
        "graph.jsonl is a directory, not a file; pass the export file",
    ),
    "graph-fifo": (_graph_fifo, 2, "graph.jsonl is not a regular file"),
    "graph-nested-100000": (_graph_deep_array, 2, "nested too deeply: more than 100 levels"),
    "validate-manifest-folder": (
        lambda c: _manifest_folder(c, "validate"),
        1,
        "readout.json is a directory, not a file",
    ),
    "readout-manifest-folder": (
        lambda c: _manifest_folder(c, "readout"),
        2,
        "readout.json is a directory, not a file",
    ),
    "validate-manifest-nested": (
        lambda c: _manifest_deep(c, "validate"),
        1,
        "readout.json is not valid JSON (nested too deeply",
    ),
    "readout-manifest-nested": (
        lambda c: _manifest_deep(c, "readout"),
        2,
        "readout.json is not valid JSON (nested too deeply",
    ),
    "all-rows-bad-polarity": (
        _all_rows_bad_polarity,
        2,
        "no usable rows in any *.jsonl file (16 rows skipped): "
        "'polarity' must be \"positive\" or \"negative\", got 'neg' (8 rows, first "
        "fear.jsonl:1); 'polarity' must be \"positive\" or \"negative\", got 'pos' (8 rows, "
        "first fear.jsonl:5)",
    ),
    "pool-start-beyond-every-text": (
        lambda c: c.train(write_training_data(c.root / "data"), "--pool-start", "1000"),
        2,
        "every training text has nothing to pool: --pool-start 1000 skips all of their real tokens",
    ),
    "model-config-nested": (
        _model_json_nested("config.json"),
        2,
        "cannot load model config for '{root}/model': one of its JSON files is nested too "
        "deeply to read",
    ),
    "tokenizer-json-nested": (
        _model_json_nested("tokenizer_config.json"),
        2,
        "cannot load a tokenizer for '{root}/model': one of its JSON files is nested too "
        "deeply to read",
    ),
    "pickled-weights": (
        _pickled_weights,
        2,
        "its pickle checkpoint (pytorch_model.bin) holds objects other "
        "than tensors, which torch's weights-only loader refuses",
    ),
}


@pytest.mark.parametrize("name", list(FATAL))
def test_unreadable_input_gives_one_clear_error(setup: Setup, tmp_path: Path, name: str) -> None:
    build, code, message = FATAL[name]
    case = Case(tmp_path, setup)
    argv = build(case)
    before = snapshot(tmp_path)
    done = amygdala(*argv)
    assert_clean_failure(done, code, message.format(root=tmp_path))
    assert snapshot(tmp_path) == before  # nothing written, nothing touched
    if name == "pool-start-beyond-every-text":
        assert "fp16" not in done.stderr  # an fp32 run is not told about fp16 overflow
    if name == "pickled-weights":
        assert "truncated or corrupt" not in done.stderr


def test_validate_on_a_folder_names_the_file_inside(setup: Setup, tmp_path: Path) -> None:
    vectors = Case(tmp_path, setup).artifact()
    done = amygdala("validate", vectors.parent)
    assert_clean_failure(done, 1, f"{vectors.parent} is a directory, not a file; pass {vectors}")
    assert "does not exist" not in done.stdout


def _set_calibration(key: str, value: object) -> Callable[[dict[str, object]], None]:
    def change(manifest: dict[str, object]) -> None:
        manifest["calibration"][key] = value  # type: ignore[index]

    return change


GARBAGE_MANIFESTS: dict[str, tuple[Callable[[dict[str, object]], None], str]] = {
    "bool-layer": (
        lambda m: m.update(layers=[True, 3]),
        "manifest 'layers' must be a list of non-negative integers, got [true, 3]",
    ),
    "bool-hidden": (
        lambda m: m.update(hidden_size=True),
        "manifest 'hidden_size' must be a positive integer, got true",
    ),
    "dtype-list": (
        lambda m: m.update(dtype=["float16"]),
        "manifest 'dtype' [\"float16\"] is not one of",
    ),
    "calibration-shape": (
        _set_calibration("mean", [[0.0, 0.0]]),
        "manifest calibration mean is (1, 2), expected (n_layers, n_concepts) (2, 2)",
    ),
    "calibration-ragged": (
        _set_calibration("std", [[1.0, 1.0], [1.0]]),
        "manifest calibration std has rows of different lengths",
    ),
    "calibration-strings": (
        _set_calibration("mean", [["0", "1"], ["2", "3"]]),
        "manifest calibration mean must be numbers, as a list of lists",
    ),
    "calibration-bools": (
        _set_calibration("std", [[True, True], [True, True]]),
        "manifest calibration std must be numbers",
    ),
    "calibration-nan": (
        _set_calibration("mean", [[float("nan"), 0.0], [0.0, 0.0]]),
        "manifest calibration mean holds NaN/Inf",
    ),
    "calibration-negative-std": (
        _set_calibration("std", [[1.0, -2.0], [1.0, 1.0]]),
        "manifest calibration std must be >= 0 (not for ['joy'])",
    ),
    "calibration-missing-std": (
        lambda m: m["calibration"].pop("std"),  # type: ignore[attr-defined]
        "manifest 'calibration' lacks 'std'",
    ),
    "calibration-not-object": (
        lambda m: m.update(calibration=[1, 2]),
        "manifest 'calibration' must be an object",
    ),
}


@pytest.mark.parametrize("name", list(GARBAGE_MANIFESTS))
def test_validate_rejects_garbage_manifests(setup: Setup, tmp_path: Path, name: str) -> None:
    change, message = GARBAGE_MANIFESTS[name]
    vectors = Case(tmp_path, setup).edit_manifest(change)
    before = snapshot(tmp_path)
    assert_clean_failure(amygdala("validate", vectors), 1, f"invalid: {message}")
    if name == "calibration-nan":  # and what validate rejects, readout refuses to load
        done = amygdala(*readout_args(setup.models["gpt2"], vectors, "a text"))
        assert_clean_failure(done, 2, message)
    assert snapshot(tmp_path) == before


def test_a_zero_std_stays_valid(setup: Setup, tmp_path: Path) -> None:
    """No spread in a concept's reference is a state readout handles (z = 0), not garbage."""
    vectors = Case(tmp_path, setup).edit_manifest(_set_calibration("std", [[0.0, 1.0]] * 2))
    done = amygdala("validate", vectors)
    assert done.returncode == 0 and done.stdout.startswith("ok:"), done.stdout


def test_rows_nested_too_deeply_are_skipped_with_the_reason(setup: Setup, tmp_path: Path) -> None:
    data = write_training_data(tmp_path / "data", joy=DEEP + b"\n" + b"1" * 5000 + b"\n")
    out = tmp_path / "out" / "readout.safetensors"
    done = amygdala(*train_args(setup.models["llama"], data, out))
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "joy.jsonl:9: not valid JSON (nested too deeply: more than 100 levels)" in done.stderr
    assert "joy.jsonl:10: not valid JSON (Exceeds the limit (4300 digits)" in done.stderr

    graph = memory_graph(tmp_path / "graph.jsonl")
    with graph.open("ab") as fh:
        fh.write(DEEP + b"\n")
    done = amygdala("extract", "--graph", graph, "--output-dir", tmp_path / "td")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "line 61: not valid JSON (nested too deeply: more than 100 levels), skipped" in (
        done.stderr
    )


# --- pathological input stays bounded ---------------------------------------------------

N_TAGS = 200_000


@pytest.mark.parametrize("score", ["9", "eleven"])
def test_a_node_with_200000_tags_gives_counts_and_a_few_examples(
    tmp_path: Path, score: str
) -> None:
    tags = " ".join(f"e{i:07d}:{score}" for i in range(N_TAGS))
    body = "A long day by the sea, with the wind and the gulls and the tide going out."
    graph = memory_graph(tmp_path / "graph.jsonl", [{"key": "huge", "content": f"{body}\n{tags}"}])
    done = amygdala("extract", "--graph", graph, "--output-dir", tmp_path / "td")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.splitlines()) <= 20, done.stderr[:2000]
    manifest_bytes = (tmp_path / "td" / "manifest.json").read_bytes()
    assert len(manifest_bytes) < 64_000
    summary = json.loads(manifest_bytes)["summary"]
    assert sorted(json.loads(manifest_bytes)["emotions"]) == ["calm", "warmth"]
    if score == "9":  # 200,000 emotions with one positive each: counted, 100 named
        assert summary["left_out_emotions"] == N_TAGS
        assert len(summary["left_out"]) == 100
        assert f"… {N_TAGS - 5} more emotions left out (100 listed in manifest.json)" in (
            done.stderr
        )
    else:  # 200,000 malformed tokens: counted, 20 examples
        assert summary["malformed_tags"]["tokens"] == N_TAGS
        assert len(summary["malformed_tags"]["examples"]) == 20
        assert f"malformed tags: {N_TAGS} tokens in 1 nodes" in done.stderr
