"""The artifact format: round trip, golden bytes, and every corruption `validate` claims to catch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from amygdala.artifact import (
    load_artifact,
    save_artifact,
    validate_artifact,
)
from amygdala.cli import main
from amygdala.errors import ArtifactError

GOLDEN = Path(__file__).parent / "data" / "golden"


def golden_content() -> tuple[dict[int, torch.Tensor], dict[str, object]]:
    """What tests/data/golden/readout.* hold: 2 concepts x 2 layers, hidden 4."""
    vectors = {
        1: torch.tensor([[0.6, 0.8, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]),
        3: torch.tensor([[0.0, -0.6, 0.0, 0.8], [0.5, 0.5, 0.5, 0.5]]),
    }
    manifest = {
        "concepts": ["calm", "fear"],
        "layers": [1, 3],
        "hidden_size": 4,
        "dtype": "float16",
        "format": "amygdala-readout/1",
    }
    return vectors, manifest


def write_pair(tmp_path: Path, dtype: str = "float16") -> Path:
    vectors, manifest = golden_content()
    manifest = {**manifest, "dtype": dtype}
    path = tmp_path / "readout.safetensors"
    save_artifact(vectors, manifest, path)
    return path


def test_golden_file_loads_unchanged() -> None:
    art = load_artifact(GOLDEN / "readout.safetensors")
    vectors, manifest = golden_content()
    assert art.manifest == manifest
    assert art.concepts == ["calm", "fear"] and art.layers == [1, 3]
    for layer, expected in vectors.items():
        assert art.vectors[layer].dtype == torch.float16
        torch.testing.assert_close(art.vectors[layer].float(), expected, atol=1e-3, rtol=0)


def test_writer_reproduces_golden_bytes(tmp_path: Path) -> None:
    path = write_pair(tmp_path)
    assert path.read_bytes() == (GOLDEN / "readout.safetensors").read_bytes()
    assert json.loads(path.with_suffix(".json").read_text()) == json.loads(
        (GOLDEN / "readout.json").read_text()
    )


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_round_trip(tmp_path: Path, dtype: str) -> None:
    path = write_pair(tmp_path, dtype)
    art = load_artifact(path)
    assert art.manifest["dtype"] == dtype
    assert str(art.vectors[1].dtype) == f"torch.{dtype}"
    assert art.stacked().shape == (2, 2, 4)
    # the safetensors file describes itself: the manifest is embedded in its metadata
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        embedded = json.loads(fh.metadata()["amygdala_manifest"])
    assert embedded == art.manifest
    assert validate_artifact(path) == []
    assert main(["validate", str(path)]) == 0


def corrupt(path: Path, how: str) -> None:
    """Apply one corruption to a valid pair at `path`."""
    man = path.with_suffix(".json")
    m = json.loads(man.read_text())
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:-7])
    elif how == "garbage":
        path.write_bytes(b"\x00" * 3)
    elif how == "missing":
        path.unlink()
    elif how == "manifest-json":
        man.write_text("{not json")
    elif how in ("concepts", "layers", "hidden", "dtype", "dupes", "missing-field"):
        edit = {
            "concepts": ("concepts", ["calm", "fear", "joy"]),
            "layers": ("layers", [1, 2]),
            "hidden": ("hidden_size", 5),
            "dtype": ("dtype", "float32"),
            "dupes": ("concepts", ["calm", "calm"]),
        }
        if how == "missing-field":
            del m["hidden_size"]
        else:
            key, value = edit[how]
            m[key] = value
        man.write_text(json.dumps(m))
    else:
        tensors, meta = _raw(path)
        if how == "nan":
            tensors["layer_1.vectors"][0, 0] = float("nan")
        elif how == "norm":
            tensors["layer_3.vectors"][1] *= 2
        elif how == "shape":
            tensors["layer_3.vectors"] = tensors["layer_3.vectors"][:1]
        elif how == "extra-key":
            tensors["bias"] = torch.zeros(2)
        _write_raw(path, tensors, meta)


def _raw(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, fh.metadata()  # noqa: SIM118


def _write_raw(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=meta)


CORRUPTIONS = {
    "truncated": "not a readable safetensors file",
    "garbage": "not a readable safetensors file",
    "missing": "no such file",
    "manifest-json": "is not valid JSON",
    "concepts": "(n_concepts, hidden_size) (3, 4)",
    "layers": "manifest says [1, 2]",
    "hidden": "disagree on 'hidden_size'",
    "dtype": "tensor dtype torch.float16 but manifest says float32",
    "dupes": "duplicates",
    "missing-field": "manifest lacks 'hidden_size'",
    "nan": "NaN/Inf in rows [0]",
    "norm": "not unit-norm",
    "shape": "layer 3: vectors (1, 4) != (n_concepts, hidden_size) (2, 4)",
    "extra-key": "unexpected tensor 'bias'",
}


@pytest.mark.parametrize("how", list(CORRUPTIONS))
def test_validate_catches(tmp_path: Path, how: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_pair(tmp_path)
    corrupt(path, how)
    problems = validate_artifact(path)
    assert any(CORRUPTIONS[how] in p for p in problems), problems
    with pytest.raises(ArtifactError, match=r"readout\.safetensors"):
        load_artifact(path)
    assert main(["validate", str(path)]) == 1
    assert CORRUPTIONS[how] in capsys.readouterr().out


def test_sidecar_may_be_absent_when_embedded(tmp_path: Path) -> None:
    path = write_pair(tmp_path)
    path.with_suffix(".json").unlink()
    assert load_artifact(path).concepts == ["calm", "fear"]


def test_save_refuses_invalid_and_leaves_old_pair(tmp_path: Path) -> None:
    path = write_pair(tmp_path)
    before = path.read_bytes(), path.with_suffix(".json").read_bytes()
    vectors, manifest = golden_content()
    vectors[1] = vectors[1] * 3  # not unit norm
    with pytest.raises(ArtifactError, match="refusing to write"):
        save_artifact(vectors, manifest, path)
    assert (path.read_bytes(), path.with_suffix(".json").read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["readout.json", "readout.safetensors"]


def test_explicit_manifest_path(tmp_path: Path) -> None:
    vectors, manifest = golden_content()
    save_artifact(vectors, manifest, tmp_path / "v.safetensors", tmp_path / "meta" / "m.json")
    assert load_artifact(tmp_path / "v.safetensors", tmp_path / "meta" / "m.json").layers == [1, 3]
    shutil.rmtree(tmp_path / "meta")
    assert load_artifact(tmp_path / "v.safetensors").layers == [1, 3]


COMBINED = {
    "weights": [[1.0, 2.0], [0.5, -0.25]],
    "mean": [0.1, -0.2],
    "std": [1.5, 2.0],
    "unit": "token",
}
BAD_COMBINED = {
    "shape": (
        {"weights": [[1.0, 2.0]]},
        "combined weights is (1, 2), expected (n_layers, n_concepts) (2, 2)",
    ),
    "nan": ({"mean": [float("nan"), 0.0]}, "combined mean holds NaN/Inf"),
    "std": ({"std": [1.0, 0.0]}, "combined std must be > 0 (not for ['fear'])"),
    "missing": ({"std": None}, "manifest 'combined' lacks 'std'"),
    "text": ({"mean": ["a", "b"]}, "combined mean must be numbers"),
}


def test_combined_round_trip(tmp_path: Path) -> None:
    vectors, manifest = golden_content()
    path = tmp_path / "readout.safetensors"
    save_artifact(vectors, {**manifest, "combined": COMBINED}, path)
    art = load_artifact(path)
    assert art.manifest["combined"] == COMBINED
    assert validate_artifact(path) == []


@pytest.mark.parametrize("how", list(BAD_COMBINED))
def test_validate_catches_a_bad_combined_entry(
    tmp_path: Path, how: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_pair(tmp_path)
    man = path.with_suffix(".json")
    edit, message = BAD_COMBINED[how]
    entry = {k: v for k, v in {**COMBINED, **edit}.items() if v is not None}
    man.write_text(json.dumps({**json.loads(man.read_text()), "combined": entry}))
    assert any(message in p for p in validate_artifact(path)), validate_artifact(path)
    with pytest.raises(ArtifactError, match="delete 'combined'"):
        load_artifact(path)
    assert main(["validate", str(path)]) == 1
    assert message in capsys.readouterr().out
