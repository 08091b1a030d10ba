"""Hostile inputs across the pipeline, tried systematically.

Each case builds one bad input and runs the real command line. Where the run cannot go
on, it must exit non-zero with one specific `error:` line; where it can, it must skip,
count and report. Either way no partial file may appear at an output path, and an
artifact already there must survive untouched.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from _training_rows import write_training_dir
from amygdala.cli import main


def good_dir(root: Path) -> Path:
    return write_training_dir(root)


def append(path: Path, raw: bytes) -> None:
    with open(path, "ab") as fh:
        fh.write(raw + b"\n")


@dataclass
class Env:
    tmp: Path
    model: Path
    data: Path
    out: Path

    def args(self, *extra: str, model: Path | None = None, data: Path | None = None) -> list[str]:
        return [
            "train",
            "--model",
            str(model or self.model),
            "--training-data-dir",
            str(data or self.data),
            "--output",
            str(self.out),
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


@pytest.fixture
def env(tmp_path: Path, tiny_model_dirs: Callable[[str], Path]) -> Env:
    return Env(
        tmp_path,
        tiny_model_dirs("llama"),
        good_dir(tmp_path / "data"),
        tmp_path / "out" / "readout.safetensors",
    )


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def no_partial_output(env: Env) -> None:
    parent = env.out.parent
    leftovers = [p.name for p in parent.iterdir()] if parent.exists() else []
    assert leftovers == [], f"partial output left behind: {leftovers}"


# --- training rows: skipped, counted, reported with file and line ----------------------

ROW_CASES = {
    "malformed-json": (b'{"emotion": "joy", "polarity": "positive", "text": "x"', "not valid JSON"),
    "invalid-utf8": (
        b'{"emotion": "joy", "polarity": "positive", "text": "\xff\xfe"}',
        "not valid UTF-8",
    ),
    "nan-score": (
        b'{"emotion": "joy", "polarity": "positive", "text": "t", "score": NaN}',
        "non-finite 'score'",
    ),
    "empty-text": (
        b'{"emotion": "joy", "polarity": "positive", "text": ""}',
        "missing or empty 'text'",
    ),
    "whitespace-text": (
        b'{"emotion": "joy", "polarity": "positive", "text": " \\n\\t "}',
        "missing or empty 'text'",
    ),
    "missing-polarity": (b'{"emotion": "joy", "text": "a fine text"}', "'polarity' must be"),
    "missing-text": (b'{"emotion": "joy", "polarity": "negative"}', "missing or empty 'text'"),
    "bad-emotion-name": (
        b'{"emotion": "../../etc", "polarity": "positive", "text": "t"}',
        "bad 'emotion'",
    ),
    "not-an-object": (b'["joy", "positive", "text"]', "not a JSON object"),
    "bad-split": (
        b'{"emotion": "joy", "polarity": "positive", "text": "t", "split": "dev"}',
        "'split' must be",
    ),
    "polarity-number": (b'{"emotion": "joy", "polarity": 1, "text": "t"}', "'polarity' must be"),
}


@pytest.mark.parametrize("case", list(ROW_CASES))
def test_bad_training_row_is_skipped_and_reported(
    env: Env, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    raw, message = ROW_CASES[case]
    append(env.data / "joy.jsonl", raw)
    code, text = run(env.args(), capsys)
    assert code == 0, text
    assert "skipped 1 unusable training rows" in text
    assert f"joy.jsonl:9: {message}" in text, text
    assert env.out.exists()


def test_duplicate_rows_count_once(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    line = (env.data / "joy.jsonl").read_bytes().splitlines()[0]
    append(env.data / "joy.jsonl", line)
    append(env.data / "joy.jsonl", line)
    code, _ = run(env.args(), capsys)
    assert code == 0
    counts = json.loads(env.out.with_suffix(".json").read_text())["counts"]
    assert counts["joy"] == {"positive": 4, "negative": 4}


def test_huge_node_is_truncated_and_counted(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    huge = "the quick brown fox jumps over the lazy dog " * 120_000  # ~5 MB
    assert len(huge) > 5_000_000
    append(
        env.data / "joy.jsonl",
        json.dumps({"emotion": "joy", "polarity": "positive", "text": huge}).encode(),
    )
    code, text = run(env.args("--max-length", "64"), capsys)
    assert code == 0, text
    assert "truncated to --max-length: 1" in text


def test_text_of_only_special_tokens_is_skipped(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    append(env.data / "joy.jsonl", b'{"emotion": "joy", "polarity": "positive", "text": "<s>"}')
    code, text = run(env.args(), capsys)
    assert code == 0, text
    assert "skipped 1 texts with NaN/Inf activations" in text and "only special tokens" in text
    counts = json.loads(env.out.with_suffix(".json").read_text())["counts"]
    assert counts["joy"]["positive"] == 4


# --- runs that cannot go on: one clear error, exit 2, no partial output ----------------


def _garbage_config(env: Env) -> list[str]:
    bad = env.tmp / "bad-model"
    bad.mkdir()
    (bad / "config.json").write_text("{this is not json")
    return env.args(model=bad)


def _truncated_weights(env: Env) -> list[str]:
    import shutil

    bad = env.tmp / "trunc-model"
    shutil.copytree(env.model, bad)
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return env.args(model=bad)


def _unknown_architecture(env: Env) -> list[str]:
    return env.args("--blocks-path", "model.not_here")


def _empty_dir(env: Env) -> list[str]:
    empty = env.tmp / "empty"
    empty.mkdir()
    return env.args(data=empty)


def _only_bad_rows(env: Env) -> list[str]:
    bad = env.tmp / "bad"
    bad.mkdir()
    (bad / "joy.jsonl").write_bytes(b"{nope\n\xff\n")
    return env.args(data=bad)


def _stories_bad_utf8(env: Env) -> list[str]:
    stories = env.tmp / "stories-corpus"
    (stories / "stories").mkdir(parents=True)
    (stories / "stories" / "joy.txt").write_bytes(b"caf\xe9 au lait\n")
    return env.args(data=stories)


def _output_is_directory(env: Env) -> list[str]:
    env.out.mkdir(parents=True)
    return env.args()


FATAL_CASES: dict[str, tuple[Callable[[Env], list[str]], str]] = {
    "missing-model-dir": (lambda e: e.args(model=e.tmp / "nope"), "cannot load model config"),
    "model-dir-without-config": (lambda e: e.args(model=e.data), "has no config.json"),
    "garbage-config": (_garbage_config, "cannot load model config"),
    "truncated-weights": (_truncated_weights, "cannot load model weights"),
    "unknown-blocks-path": (_unknown_architecture, "no block list at 'model.not_here'"),
    "layer-out-of-range": (
        lambda e: e.args("--target-layers", "1,12"),
        "layer 12 is out of range; this model has 4 blocks",
    ),
    "layer-garbage": (lambda e: e.args("--target-layers", "one"), "'one' is not a layer index"),
    "missing-data-dir": (lambda e: e.args(data=e.tmp / "nothing"), "does not exist"),
    "empty-data-dir": (_empty_dir, "holds neither <emotion>.jsonl files"),
    "only-bad-rows": (_only_bad_rows, "no usable rows in any *.jsonl file (2 rows skipped)"),
    "stories-invalid-utf8": (_stories_bad_utf8, "not valid UTF-8"),
    "too-few-examples": (lambda e: e.args("--min-examples", "40"), "no concept in"),
    "output-is-directory": (_output_is_directory, "is a directory"),
    "manifest-equals-output": (
        lambda e: e.args("--manifest", str(e.out)),
        "--manifest must differ from --output",
    ),
    "missing-neutral": (lambda e: e.args("--neutral", str(e.tmp / "none.txt")), "--neutral"),
    "bad-device": (lambda e: e.args()[:-2] + ["--device", "tpu9"], "--device 'tpu9'"),
}


@pytest.mark.parametrize("case", list(FATAL_CASES))
def test_fatal_input_gives_one_clear_error(
    env: Env, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    build, message = FATAL_CASES[case]
    argv = build(env)
    code, text = run(argv, capsys)
    assert code == 2, text
    assert message in text, text
    assert "Traceback" not in text
    if case != "output-is-directory":
        no_partial_output(env)


def test_failed_run_leaves_existing_artifact_untouched(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(env.args(), capsys)[0] == 0
    before = env.out.read_bytes(), env.out.with_suffix(".json").read_bytes()
    code, _ = run(env.args("--target-layers", "99"), capsys)
    assert code == 2
    assert (env.out.read_bytes(), env.out.with_suffix(".json").read_bytes()) == before
    assert sorted(p.name for p in env.out.parent.iterdir()) == [
        "readout.json",
        "readout.safetensors",
    ]


# --- fp16 overflow: NaN/Inf activations -------------------------------------------------


@pytest.fixture(scope="module")
def overflow_model(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dirs: Callable[[str], Path]
) -> Path:
    """A tiny Llama whose fp16 residual overflows on texts containing the token 'O'."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dirs("llama"))
    with torch.no_grad():
        model.model.embed_tokens.weight[49] = 65504.0  # token 49 is "O" in the test tokenizer
        model.model.layers[0].self_attn.v_proj.weight.fill_(1.0)
        model.model.layers[0].self_attn.o_proj.weight.fill_(1.0)
    out = tmp_path_factory.mktemp("overflow-model")
    model.save_pretrained(out)
    import shutil

    for f in tiny_model_dirs("llama").glob("tokenizer*"):
        shutil.copy(f, out)
    return out


def test_fp16_overflow_rows_are_skipped_and_counted(
    env: Env, overflow_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    append(env.data / "joy.jsonl", b'{"emotion": "joy", "polarity": "positive", "text": "OOO"}')
    code, text = run(env.args("--dtype", "fp16", model=overflow_model), capsys)
    assert code == 0, text
    assert "skipped 1 texts with NaN/Inf activations (fp16 overflow: try --dtype bf16" in text
    from amygdala.artifact import validate_artifact

    assert validate_artifact(env.out) == []
    code32, text32 = run(env.args("--dtype", "fp32", model=overflow_model), capsys)
    assert code32 == 0 and "NaN/Inf" not in text32


def test_fp16_overflow_everywhere_is_an_error(
    env: Env, overflow_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = env.tmp / "all-overflow"
    bad.mkdir()
    for emotion in ("joy", "fear"):
        rows = [
            {"emotion": emotion, "polarity": p, "text": f"O {emotion} {p} {i}"}
            for p in ("positive", "negative")
            for i in range(4)
        ]
        (bad / f"{emotion}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, text = run(env.args("--dtype", "fp16", model=overflow_model, data=bad), capsys)
    assert code == 2
    assert "every training text gave NaN/Inf activations with --dtype fp16" in text
    no_partial_output(env)


# --- artifacts: truncated, tampered, disagreeing ---------------------------------------


@pytest.fixture
def trained(env: Env, capsys: pytest.CaptureFixture[str]) -> Env:
    assert run(env.args(), capsys)[0] == 0
    return env


def test_truncated_artifact(trained: Env, capsys: pytest.CaptureFixture[str]) -> None:
    trained.out.write_bytes(trained.out.read_bytes()[:-100])
    code, text = run(["validate", str(trained.out)], capsys)
    assert code == 1 and "truncated or corrupt" in text


def test_tampered_artifact(trained: Env, capsys: pytest.CaptureFixture[str]) -> None:
    blob = bytearray(trained.out.read_bytes())
    blob[-40:-20] = b"\x00\x5c" * 10  # overwrite vector bytes with fp16 256.0
    trained.out.write_bytes(bytes(blob))
    code, text = run(["validate", str(trained.out)], capsys)
    assert code == 1 and "not unit-norm" in text


def test_manifest_disagrees_with_vectors(trained: Env, capsys: pytest.CaptureFixture[str]) -> None:
    man = trained.out.with_suffix(".json")
    m = json.loads(man.read_text())
    m["concepts"] = list(reversed(m["concepts"])) + ["extra"]
    man.write_text(json.dumps(m))
    code, text = run(["validate", str(trained.out)], capsys)
    assert code == 1
    assert "disagree on 'concepts'" in text and "(n_concepts, hidden_size) (3, 64)" in text


def test_no_pickle_anywhere_in_the_package() -> None:
    """safetensors and JSON only: no pickle, no unguarded torch.load."""
    src = Path(__file__).parents[1] / "src" / "amygdala"
    for path in src.rglob("*.py"):
        code = path.read_text()
        assert "import pickle" not in code and "cloudpickle" not in code, path
        for line in code.splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{path}: {line.strip()}"


def test_trust_remote_code_is_off_by_default() -> None:
    help_text = " ".join(
        subprocess.run(
            [sys.executable, "-m", "amygdala", "train", "--help"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    )
    assert "--trust-remote-code" in help_text and "off by default" in help_text
    from amygdala.train import TrainConfig

    assert TrainConfig.__dataclass_fields__["trust_remote_code"].default is False
