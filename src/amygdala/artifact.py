"""The readout artifact: `readout.safetensors` + `readout.json`, as runtimes load it.

`readout.safetensors` holds one tensor per hooked layer, key `layer_<idx>.vectors`,
shape `[n_concepts, hidden_size]`, unit-norm rows (float16 by default). The manifest
`readout.json` always has `concepts`, `layers`, `hidden_size`, `dtype` — the fields a
vLLM runtime reads — plus provenance and counts; the same JSON sits in the safetensors
metadata under `amygdala_manifest`, so the tensor file describes itself and a pair
whose halves come from different runs is caught.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor

from amygdala._defaults import (
    MAX_LENGTH,
    POOL_START,
    POOLING,
    POOLINGS,
    VECTORS_DTYPES,
    Pooling,
    VectorsDtype,
)
from amygdala._io import atomic_write_files, json_bytes
from amygdala._text import JSONError, parse_json, read_file_bytes, read_json_file
from amygdala.errors import ArtifactError

FORMAT = "amygdala-readout/1"
METADATA_KEY = "amygdala_manifest"
RUNTIME_FIELDS = ("concepts", "layers", "hidden_size", "dtype")
VECTOR_DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in VECTORS_DTYPES}
_KEY_RE = re.compile(r"^layer_(\d+)\.vectors$")


def tensor_key(layer: int) -> str:
    return f"layer_{layer}.vectors"


def default_manifest_path(vectors_path: str | Path) -> Path:
    """`readout.safetensors` → `readout.json` (same directory, same stem)."""
    return Path(vectors_path).with_suffix(".json")


def norm_tolerance(dtype: str) -> float:
    """How far a stored row's norm may be from 1 (rounding of the storage dtype)."""
    return {"float32": 1e-4, "float16": 2e-3, "bfloat16": 1.6e-2}.get(dtype, 1e-2)


def _optional(check: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda value: value is None or check(value)


# The manifest's optional fields: how each must look, and what it should be when it does
# not (null always passes: "not recorded"). `check_fields` reports the rest.
_FIELD_RULES: dict[str, tuple[Callable[[object], bool], str]] = {
    "format": (_optional(lambda v: isinstance(v, str)), "a string"),
    "model": (_optional(lambda v: isinstance(v, str)), "a string"),
    "model_revision": (_optional(lambda v: isinstance(v, str)), "a string"),
    "model_kind": (_optional(lambda v: isinstance(v, str)), "a string"),
    "model_layers": (_optional(lambda v: _is_int(v) and cast(int, v) >= 1), "a positive integer"),
    "blocks_path": (_optional(lambda v: isinstance(v, str)), "a string"),
    "pooling": (_optional(lambda v: v in POOLINGS), f"one of {', '.join(POOLINGS)}"),
    "pool_start": (_optional(lambda v: _is_int(v) and cast(int, v) >= 0), "an integer >= 0"),
    "max_length": (_optional(lambda v: _is_int(v) and cast(int, v) >= 1), "a positive integer"),
    "method": (_optional(lambda v: isinstance(v, str)), "a string"),
    "model_dtype": (_optional(lambda v: isinstance(v, str)), "a string"),
    "training_data": (_optional(lambda v: isinstance(v, str)), "a string"),
    "counts": (_optional(lambda v: isinstance(v, dict)), "an object"),
    "skipped_concepts": (_optional(lambda v: isinstance(v, dict)), "an object"),
    "amygdala_version": (_optional(lambda v: isinstance(v, str)), "a string"),
    "denoise": (_optional(lambda v: isinstance(v, dict)), "an object"),
}


@dataclass(frozen=True)
class Manifest:
    """`readout.json`, typed: what the trainer wrote, with one attribute per field.

    The four runtime fields always exist; every other field is None when the manifest
    does not record it (an older or hand-written one), and the `capture_*` properties
    fill in the defaults the trainer used before it recorded them. `calibration` and
    `combined` stay JSON objects (`amygdala.readout` turns them into tensors after
    `check_calibration` / `check_combined`). Keys this class does not name are kept in
    `extra`, and `to_dict()` gives back the JSON object it was read from, key order
    included, so a manifest read and written again is the same file.

    Example:
        m = Manifest.from_dict(json.loads(Path("out/readout.json").read_text()))
        m.hidden_size, m.capture_pooling  # (384, 'mean')
    """

    concepts: tuple[str, ...]
    layers: tuple[int, ...]
    hidden_size: int
    dtype: VectorsDtype
    format: str | None = None
    model: str | None = None  # what --model was: a Hub id, a directory, `minilm`
    model_revision: str | None = None
    model_kind: str | None = None  # decoder or encoder
    model_layers: int | None = None  # blocks of the model the vectors come from
    blocks_path: str | None = None
    pooling: Pooling | None = None
    pool_start: int | None = None
    max_length: int | None = None
    method: str | None = None
    model_dtype: str | None = None  # the model's compute dtype, as torch names it
    training_data: str | None = None
    counts: dict[str, Any] | None = None  # concept -> {"positive", "negative"}
    skipped_concepts: dict[str, Any] | None = None  # concept -> why it was left out
    amygdala_version: str | None = None
    calibration: dict[str, Any] | None = None  # per-layer z-score reference (mean, std)
    combined: dict[str, Any] | None = None  # the combined score over all layers
    denoise: dict[str, Any] | None = None  # neutral principal components projected out
    extra: dict[str, Any] = field(default_factory=dict)  # keys not named above, as read
    key_order: tuple[str, ...] = field(default=(), repr=False)  # the JSON's keys, as read

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Manifest:
        """A manifest from its JSON object; `ArtifactError` lists every field that is
        missing or of the wrong kind (`check_pair` says the same when validating)."""
        problems = manifest_problems(data)
        if problems:
            raise ArtifactError("; ".join(problems))
        known = {f.name for f in dataclasses.fields(cls)} - {"extra", "key_order"}
        values = {k: v for k, v in data.items() if k in known}
        return cls(
            **{
                **values,
                "concepts": tuple(data["concepts"]),
                "layers": tuple(data["layers"]),
            },
            extra={k: v for k, v in data.items() if k not in known},
            key_order=tuple(data),
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: the keys read, in their order, then any field set since."""
        values = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("extra", "key_order")
        }
        values["concepts"], values["layers"] = list(self.concepts), list(self.layers)
        order = [*self.key_order, *(k for k in values if k not in self.key_order)]
        out: dict[str, Any] = {}
        for key in order:
            if key in self.extra:
                out[key] = self.extra[key]
            elif key in values and (key in self.key_order or values[key] is not None):
                out[key] = values[key]
        return {**out, **{k: v for k, v in self.extra.items() if k not in out}}

    @property
    def capture_pooling(self) -> Pooling:
        """How texts were pooled (`mean` in manifests that predate the field)."""
        return self.pooling or POOLING

    @property
    def capture_pool_start(self) -> int:
        return POOL_START if self.pool_start is None else self.pool_start

    @property
    def capture_max_length(self) -> int:
        return self.max_length or MAX_LENGTH


def manifest_problems(manifest: Mapping[str, Any]) -> list[str]:
    """Every problem with a manifest on its own (`check_pair` adds the vectors')."""
    missing = [f"manifest lacks {f!r}" for f in RUNTIME_FIELDS if f not in manifest]
    if missing:
        return missing
    return (
        _check_runtime(manifest)
        + check_fields(manifest)
        + check_calibration(manifest)
        + check_combined(manifest)
    )


def check_fields(manifest: Mapping[str, Any]) -> list[str]:
    """Problems with the optional provenance fields (a wrong kind of value), one line each."""
    return [
        f"manifest {key!r} must be {kind}, got {_short(manifest[key])}"
        for key, (ok, kind) in _FIELD_RULES.items()
        if key in manifest and not ok(manifest[key])
    ]


@dataclass(frozen=True)
class Artifact:
    """A loaded pair: `vectors[layer]` is `[n_concepts, hidden]`, rows in manifest order.

    `manifest` is the JSON object as read (serve it, copy it); `meta` is the same,
    typed (`Manifest`).
    """

    vectors: dict[int, Tensor]
    manifest: dict[str, Any]

    @functools.cached_property
    def meta(self) -> Manifest:
        return Manifest.from_dict(self.manifest)

    @property
    def concepts(self) -> list[str]:
        return list(self.meta.concepts)

    @property
    def layers(self) -> list[int]:
        return list(self.meta.layers)

    def stacked(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """`[n_layers, n_concepts, hidden]` in manifest layer order."""
        return torch.stack([self.vectors[layer].to(dtype) for layer in self.layers])


def save_artifact(
    vectors: Mapping[int, Tensor],
    manifest: Mapping[str, Any] | Manifest,
    path: str | Path,
    manifest_path: str | Path | None = None,
) -> tuple[Path, Path]:
    """Write the pair; each file is written atomically (temp file, fsync, rename).

    The safetensors file is written first and carries the manifest in its metadata,
    so a crash between the two renames leaves a pair that `load_artifact` reports
    as mismatched instead of silently mixing two runs.

    Example:
        save_artifact({18: v18}, {"concepts": ["warmth"], "layers": [18],
                      "hidden_size": 4096, "dtype": "float16"}, "out/readout.safetensors")
    """
    from safetensors.torch import save

    vec_path = Path(path)
    man_path = Path(manifest_path) if manifest_path else default_manifest_path(vec_path)
    if vec_path.resolve() == man_path.resolve():
        raise ArtifactError(f"--manifest {man_path} would overwrite the vectors file")
    manifest = manifest.to_dict() if isinstance(manifest, Manifest) else dict(manifest)
    problems = check_pair({int(k): v for k, v in vectors.items()}, manifest)
    if problems:
        raise ArtifactError("refusing to write an invalid artifact: " + "; ".join(problems))
    storage = VECTOR_DTYPES[manifest["dtype"]]
    tensors = {
        tensor_key(int(layer)): v.detach().to("cpu", storage).contiguous()
        for layer, v in vectors.items()
    }
    blob = save(tensors, metadata={METADATA_KEY: json.dumps(manifest, sort_keys=True)})
    atomic_write_files([(vec_path, blob), (man_path, json_bytes(manifest))])  # both or neither
    return vec_path, man_path


def check_pair(vectors: Mapping[int, Tensor], manifest: Mapping[str, Any]) -> list[str]:
    """Every problem with a vectors/manifest pair, one readable line each (empty: valid)."""
    problems = [f"manifest lacks {f!r}" for f in RUNTIME_FIELDS if f not in manifest]
    if problems:
        return problems
    problems = _check_runtime(manifest)
    concepts, layers = manifest["concepts"], manifest["layers"]
    hidden, dtype = manifest["hidden_size"], manifest["dtype"]
    concepts = concepts if _is_concept_list(concepts) else []
    dtype = dtype if isinstance(dtype, str) and dtype in VECTOR_DTYPES else None
    if _is_layer_list(layers):  # garbage is listed above; comparing with it says nothing
        if set(vectors) != set(layers):
            problems.append(
                f"vectors hold layers {sorted(vectors)}, manifest says {sorted(layers)}"
            )
        for layer in sorted(set(vectors) & set(layers)):
            problems.extend(_check_layer(layer, vectors[layer], len(concepts), hidden, dtype))
    return (
        problems + check_fields(manifest) + check_calibration(manifest) + check_combined(manifest)
    )


def _is_concept_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(c, str) and c for c in value)


def _is_layer_list(value: object) -> bool:
    return isinstance(value, list) and all(_is_int(x) and x >= 0 for x in value)


def _check_runtime(manifest: Mapping[str, Any]) -> list[str]:
    """Problems with the four runtime fields, which must all be present."""
    problems = []
    concepts, layers = manifest["concepts"], manifest["layers"]
    hidden, dtype = manifest["hidden_size"], manifest["dtype"]
    if not _is_concept_list(concepts):
        problems.append("manifest 'concepts' must be a list of non-empty strings")
    elif len(set(concepts)) != len(concepts):
        dupes = sorted({c for c in concepts if concepts.count(c) > 1})
        problems.append(f"manifest 'concepts' has duplicates: {dupes}")
    if not _is_layer_list(layers):
        problems.append(
            f"manifest 'layers' must be a list of non-negative integers, got {_short(layers)}"
        )
    elif len(set(layers)) != len(layers):
        problems.append(f"manifest 'layers' has duplicates: {layers}")
    if not _is_int(hidden) or hidden < 1:
        problems.append(f"manifest 'hidden_size' must be a positive integer, got {_short(hidden)}")
    if not isinstance(dtype, str) or dtype not in VECTOR_DTYPES:
        problems.append(
            f"manifest 'dtype' {_short(dtype)} is not one of {', '.join(VECTOR_DTYPES)}"
        )
    return problems


def _is_int(value: object) -> bool:
    """A JSON integer: `True` is an `int` in Python, but `layers: [true, 3]` is garbage."""
    return isinstance(value, int) and not isinstance(value, bool)


def _short(value: object, limit: int = 60) -> str:
    """`value` as the JSON the user wrote (`true`, not `True`), cut to `limit` characters."""
    text = json.dumps(value, default=repr)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _numbers(value: object, ndim: int) -> np.ndarray | str:
    """`value` as a float64 array when it is (nested) lists of JSON numbers (not bools,
    not strings), else why not (completing "manifest calibration mean …")."""

    def numbers(v: object) -> bool:
        if isinstance(v, list):
            return all(numbers(x) for x in v)  # depth bounded by MAX_JSON_DEPTH
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if not isinstance(value, list) or not numbers(value):
        return "must be numbers, as a list" + (" of lists" if ndim == 2 else "")
    try:
        return np.asarray(value, dtype=np.float64)
    except ValueError:
        return "has rows of different lengths"
    except OverflowError:
        return "holds a number too large for a float"


def _check_stats(
    entry: Mapping[str, Any],
    what: str,
    shapes: dict[str, tuple[tuple[int, ...], str]],
    fix: str,
    concepts: list[Any],
    *,
    std_zero_ok: bool,
) -> list[str]:
    """Problems with the number lists of a calibration-like manifest entry: each
    `entry[key]` has exactly `shapes[key]` (shape, how it is named), finite numbers, and
    `std` is > 0 (>= 0 with `std_zero_ok`)."""
    problems = []
    for key, (shape, names) in shapes.items():
        if key not in entry:
            problems.append(f"manifest {what!r} lacks {key!r}{fix}")
            continue
        values = _numbers(entry[key], len(shape))
        if isinstance(values, str):
            problems.append(f"manifest {what} {key} {values}{fix}")
        elif values.shape != shape:
            problems.append(
                f"manifest {what} {key} is {values.shape}, expected {names} {shape}{fix}"
            )
        elif not np.isfinite(values).all():
            problems.append(f"manifest {what} {key} holds NaN/Inf{fix}")
        elif key == "std":
            bad_mask = values < 0 if std_zero_ok else values <= 0
            if bad_mask.any():
                cols = sorted(set(np.nonzero(bad_mask)[-1].tolist()))
                bad = [concepts[c] for c in cols if c < len(concepts)]
                bound = ">= 0" if std_zero_ok else "> 0"
                problems.append(f"manifest {what} std must be {bound} (not for {bad}){fix}")
    return problems


def _runtime_sizes(manifest: Mapping[str, Any]) -> tuple[int, int, list[Any]]:
    """(n_layers, n_concepts, concepts) as far as the manifest says (0 / [] when garbage)."""
    layers, concepts = manifest.get("layers"), manifest.get("concepts")
    n_layers = len(layers) if isinstance(layers, list) else 0
    names = concepts if isinstance(concepts, list) else []
    return n_layers, len(names), names


def check_calibration(manifest: Mapping[str, Any]) -> list[str]:
    """Problems with the optional `calibration` entry (empty when absent or valid): `mean`
    and `std` `[n_layers][n_concepts]`, finite numbers, std >= 0 (a concept whose
    reference has no spread reads z = 0, see `amygdala.readout.Projector`)."""
    entry = manifest.get("calibration")
    if entry is None:  # absent (or null): raw values only
        return []
    fix = "; retrain, or delete 'calibration' from the manifest for raw values only"
    if not isinstance(entry, Mapping):
        return [f"manifest 'calibration' must be an object{fix}"]
    n_layers, n_concepts, concepts = _runtime_sizes(manifest)
    shape = ((n_layers, n_concepts), "(n_layers, n_concepts)")
    return _check_stats(
        entry, "calibration", {"mean": shape, "std": shape}, fix, concepts, std_zero_ok=True
    )


def check_combined(manifest: Mapping[str, Any]) -> list[str]:
    """Problems with the optional `combined` entry (empty when absent or valid): weights
    `[n_layers][n_concepts]`, mean and std `[n_concepts]`, all finite, std > 0."""
    if "combined" not in manifest:
        return []
    entry = manifest["combined"]
    fix = "; retrain, or delete 'combined' from the manifest to read layers only"
    if not isinstance(entry, Mapping):
        return [f"manifest 'combined' must be an object{fix}"]
    n_layers, n_concepts, concepts = _runtime_sizes(manifest)
    problems = _check_stats(
        entry,
        "combined",
        {
            "weights": ((n_layers, n_concepts), "(n_layers, n_concepts)"),
            "mean": ((n_concepts,), "(n_concepts,)"),
            "std": ((n_concepts,), "(n_concepts,)"),
        },
        fix,
        concepts,
        std_zero_ok=False,
    )
    if entry.get("unit", "token") != "token":
        problems.append(f"manifest combined unit {entry.get('unit')!r}: only 'token' is known")
    return problems


def _check_layer(layer: int, v: Tensor, n_concepts: int, hidden: Any, dtype: Any) -> list[str]:
    problems = []
    if tuple(v.shape) != (n_concepts, hidden):
        problems.append(
            f"layer {layer}: vectors {tuple(v.shape)} != "
            f"(n_concepts, hidden_size) ({n_concepts}, {hidden})"
        )
    if dtype in VECTOR_DTYPES and v.dtype != VECTOR_DTYPES[dtype] and v.dtype != torch.float32:
        problems.append(f"layer {layer}: tensor dtype {v.dtype} but manifest says {dtype}")
    v32 = v.to(torch.float32)
    bad = ~torch.isfinite(v32).all(dim=-1) if v32.ndim == 2 else torch.tensor([])
    if bad.any():
        problems.append(f"layer {layer}: NaN/Inf in rows {bad.nonzero().flatten().tolist()}")
    elif v32.ndim == 2 and v32.shape[0]:
        tol = norm_tolerance(dtype if isinstance(dtype, str) else "")
        norms = v32.norm(dim=-1)
        off = (norms - 1).abs() > tol
        if off.any():
            rows = off.nonzero().flatten().tolist()
            problems.append(
                f"layer {layer}: rows {rows[:10]} are not unit-norm "
                f"(norms {[round(float(norms[r]), 4) for r in rows[:3]]})"
            )
    return problems


def inspect_artifact(
    path: str | Path, manifest_path: str | Path | None = None
) -> tuple[Artifact | None, list[str]]:
    """Read a pair and list every problem with it, one line each (never raises).

    The artifact is None only when a file cannot be read at all.
    """
    vec_path = Path(path)
    man_path = Path(manifest_path) if manifest_path else default_manifest_path(vec_path)
    try:
        tensors, embedded = _read_safetensors(vec_path)
        manifest = _read_manifest(man_path) if man_path.exists() else embedded
    except ArtifactError as exc:
        return None, [str(exc)]
    if manifest is None:
        return None, [
            f"{man_path} does not exist and {vec_path.name} carries no embedded "
            "manifest; pass the manifest path (--manifest)"
        ]
    vectors, problems = _vectors_by_layer(tensors)
    if embedded is not None and man_path.exists():
        problems.extend(_compare_manifests(embedded, manifest, vec_path.name, man_path.name))
    problems.extend(check_pair(vectors, manifest))
    return Artifact(vectors=vectors, manifest=manifest), problems


def load_artifact(path: str | Path, manifest_path: str | Path | None = None) -> Artifact:
    """Read and check a pair; `ArtifactError` lists every problem.

    Example:
        art = load_artifact("out/readout.safetensors")
        art.vectors[18].shape  # torch.Size([n_concepts, hidden])
    """
    artifact, problems = inspect_artifact(path, manifest_path)
    if problems or artifact is None:
        text = "; ".join(problems)  # a reading problem names the path already
        raise ArtifactError(text if text.startswith(str(path)) else f"{path}: {text}")
    return artifact


def validate_artifact(path: str | Path, manifest_path: str | Path | None = None) -> list[str]:
    """All problems with a pair, as lines; an empty list means valid."""
    return inspect_artifact(path, manifest_path)[1]


def _folder_hint(path: Path, name: str) -> str:
    inside = path / name
    return f"; pass {inside}" if inside.is_file() else f"; pass the {name} file"


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    data = read_file_bytes(
        path, error=ArtifactError, folder_hint=_folder_hint(path, "readout.safetensors")
    )
    try:
        tensors = load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = parse_json(data[8 : 8 + header_len].decode("utf-8"))
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ArtifactError(
            f"{path} is not a readable safetensors file ({exc}); it may be "
            "truncated or corrupt: retrain or copy it again"
        ) from None
    meta = (header.get("__metadata__") if isinstance(header, dict) else None) or {}
    embedded: object = None
    if METADATA_KEY in meta:
        try:
            embedded = parse_json(meta[METADATA_KEY])
        except (JSONError, TypeError):
            raise ArtifactError(f"{path}: embedded manifest is not valid JSON") from None
        if not isinstance(embedded, dict):
            raise ArtifactError(f"{path}: embedded manifest is not a JSON object")
        return tensors, embedded
    return tensors, None


def _read_manifest(path: Path) -> dict[str, Any]:
    hint = _folder_hint(path, "readout.json")
    if not (path / "readout.json").is_file():
        hint = "; the manifest is a JSON file: remove or rename the folder"
    manifest = read_json_file(path, error=ArtifactError, folder_hint=hint)
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path} must hold a JSON object")
    return manifest


def _vectors_by_layer(tensors: dict[str, Tensor]) -> tuple[dict[int, Tensor], list[str]]:
    vectors, problems = {}, []
    for key, tensor in tensors.items():
        match = _KEY_RE.match(key)
        if match is None:
            problems.append(f"unexpected tensor {key!r} (expected layer_<idx>.vectors)")
            continue
        vectors[int(match.group(1))] = tensor
    return vectors, problems


def _compare_manifests(
    embedded: dict[str, Any], sidecar: dict[str, Any], vec_name: str, man_name: str
) -> list[str]:
    problems = []
    for key in RUNTIME_FIELDS:
        if embedded.get(key) != sidecar.get(key):
            problems.append(
                f"{man_name} and {vec_name} disagree on {key!r} "
                "(the two files come from different runs?)"
            )
    return problems
