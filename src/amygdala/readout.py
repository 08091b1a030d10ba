"""Per-token readout: project each token's residual stream onto every concept vector.

The readout of token *t* at layer *l* is `h_l[t] · vectors[l]ᵀ` — the output of block
*l* (the same blocks the trainer hooks, `LoadedModel.blocks`) at the position of token
*t*, dotted with every concept's unit vector, in fp32. Mean pooling is linear, so the
mean of these per-token values over the positions the trainer pools (real, non-special
tokens) equals the projection of the trainer's pooled activation: the per-token view and
the trained vectors describe the same numbers.

z-scores use the manifest's `calibration`: `z = (raw - mean) / std`, where mean and std
are those of single-token projections over reference text (the trainer samples a few
tokens of every reference text), so a token's z says how unusual that token is. A
manifest without calibration gives raw values only (`z is None`), never an error.

The combined score reads all layers at once: with the manifest's `combined` entry,
`combined[t, c] = Σ_l weights[l][c] · raw[t, l, c]` and `combined_z = (combined − mean) /
std` (`Combination`; fitted at training time, see `amygdala.combine`). Wherever a layer
is chosen, `"combined"` is a choice, and the default when the manifest has it.

The server (`amygdala.serve`) uses the same `ResidualRecorder` and `Projector`, so a
streamed token's readout is this module's value for the same token ids.

Example:
    from amygdala.artifact import load_artifact
    from amygdala.readout import readout
    ro = readout("minilm", load_artifact("out/readout.safetensors"), "I miss you.")
    ro.raw.shape            # [tokens, layers, concepts]
    ro.top(k=3)             # the combined score when the manifest has it, else the deepest layer
    ro.combined.shape       # [tokens, concepts], or None without a combined entry
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import torch
from torch import Tensor, nn

from amygdala._defaults import DTYPE, READOUT_MAX_LENGTH, DType
from amygdala.capture import (
    BlockHooks,
    forward_kwargs,
    hooked,
    token_limit,
    tokenize,
    truncation_note,
)
from amygdala.errors import ArtifactError, ConfigError

if TYPE_CHECKING:
    from amygdala.artifact import Artifact
    from amygdala.models import LoadedModel

__all__ = [
    "COMBINED",
    "AttachedHooks",
    "Calibration",
    "Combination",
    "LayerChoice",
    "Projector",
    "Readout",
    "ResidualRecorder",
    "readout",
    "readout_ids",
]


COMBINED: Literal["combined"] = "combined"
LayerChoice = int | Literal["combined"]  # an absolute layer index, or the combined score


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Per layer and concept mean and std of the reference projections (manifest order)."""

    reference: str  # "negatives" or "neutral"
    mean: Tensor  # [n_layers, n_concepts] fp32
    std: Tensor  # [n_layers, n_concepts] fp32

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> Calibration | None:
        """The manifest's calibration; None when it has none (an older manifest)."""
        cal = manifest.get("calibration")
        if cal is None:
            return None
        from amygdala.artifact import check_calibration

        problems = check_calibration(manifest)
        if problems:
            raise ArtifactError("; ".join(problems))
        mean = torch.tensor(cal["mean"], dtype=torch.float32)
        std = torch.tensor(cal["std"], dtype=torch.float32)
        return cls(reference=str(cal.get("reference", "")), mean=mean, std=std)


@dataclasses.dataclass(frozen=True)
class Combination:
    """The manifest's combined score over all layers (`amygdala.combine`).

    `combined_raw[c] = Σ_l weights[l][c] · raw[l][c]`; `combined_z = (combined_raw − mean)
    / std`, with mean and std of single reference tokens like the per-layer calibration.
    """

    weights: Tensor  # [n_layers, n_concepts] fp32
    mean: Tensor  # [n_concepts] fp32
    std: Tensor  # [n_concepts] fp32, > 0

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> Combination | None:
        """The manifest's `combined` entry; None when it has none (an older manifest)."""
        if "combined" not in manifest:
            return None
        from amygdala.artifact import check_combined

        problems = check_combined(manifest)
        if problems:
            raise ArtifactError("; ".join(problems))
        entry = manifest["combined"]
        return cls(
            weights=torch.tensor(entry["weights"], dtype=torch.float32),
            mean=torch.tensor(entry["mean"], dtype=torch.float32),
            std=torch.tensor(entry["std"], dtype=torch.float32),
        )

    def raw(self, raw: Tensor) -> Tensor:
        """`[..., L, C]` per-layer raw readouts → `[..., C]` combined raw values."""
        return (raw.to(torch.float32) * self.weights.to(raw.device)).sum(dim=-2)

    def z(self, combined: Tensor) -> Tensor:
        """Combined raw values `[..., C]` → their z-scores."""
        return (combined - self.mean.to(combined.device)) / self.std.to(combined.device)


class Projector:
    """Turns recorded block outputs into `[positions, layers, concepts]` fp32 readouts.

    All layers go through one batched matmul (`[L, n, H] @ [L, H, C]`), and the z-scores
    are one fused multiply-add on its result (`raw · 1/std − mean/std`), so a decode
    step pays a fixed handful of kernels whatever the number of layers, and a single
    host copy. Decoding is memory-bound: the vectors are read once per step, in fp32.
    A concept whose reference std is 0 gets z = 0 (no spread to measure against).
    """

    def __init__(self, artifact: Artifact, device: torch.device | str = "cpu") -> None:
        self.concepts: tuple[str, ...] = tuple(artifact.concepts)
        self.layers: tuple[int, ...] = tuple(artifact.layers)
        self.calibration = Calibration.from_manifest(artifact.manifest)
        self.combination = Combination.from_manifest(artifact.manifest)
        weight_t = artifact.stacked(torch.float32).transpose(1, 2)  # [L, H, C]
        self._weight_t = weight_t.contiguous().to(device)
        self._inv_std: Tensor | None = None
        self._shift: Tensor | None = None
        if self.calibration is not None:
            std = self.calibration.std
            inv_std = torch.where(std > 0, 1.0 / std.clamp_min(1e-30), torch.zeros_like(std))
            self._inv_std = inv_std[:, None, :].to(device)  # [L, 1, C]
            self._shift = (-self.calibration.mean * inv_std)[:, None, :].to(device)

    @property
    def calibrated(self) -> bool:
        return self.calibration is not None

    def project_stacked(self, hidden: Sequence[Tensor]) -> Tensor:
        """`hidden[i]` is `[n, H]` for `self.layers[i]`; returns `[k, n, L, C]` fp32,
        contiguous: k = 2 (raw, then z) when calibrated, else 1 (raw)."""
        device = self._weight_t.device
        stacked = torch.stack([h.to(device) for h in hidden]).to(torch.float32)
        raw = torch.bmm(stacked, self._weight_t)  # [L, n, C]
        parts = [raw]
        if self._inv_std is not None and self._shift is not None:
            parts.append(torch.addcmul(self._shift, raw, self._inv_std))
        return torch.stack(parts).transpose(1, 2).contiguous()

    def project(self, hidden: Sequence[Tensor]) -> tuple[Tensor, Tensor | None]:
        """`(raw, z or None)`, each `[n, L, C]` fp32."""
        out = self.project_stacked(hidden)
        return out[0], (out[1] if len(out) > 1 else None)


class ResidualRecorder:
    """Forward hooks that keep the block outputs of a forward pass, per layer.

    The hooked outputs are kept by reference (no copy, no host sync), and
    `stop_after_deepest` ends the forward pass after the deepest recorded block when
    nothing later (logits, the cache of later layers) is needed. `record()` hooks one
    forward pass inside a `with`; `attach()` keeps hooks on for a loop of many passes
    (the server's decode loop) and hands back a handle whose `remove()` is idempotent.
    Both are the package's one hook mechanism, `amygdala.capture.BlockHooks`.
    """

    def __init__(self, blocks: nn.ModuleList, layers: Sequence[int]) -> None:
        if not layers:
            raise ConfigError("no layers to record")
        bad = [layer for layer in layers if not 0 <= layer < len(blocks)]
        if bad:
            raise ConfigError(
                f"artifact layers {bad} do not exist on a model with "
                f"{len(blocks)} blocks; was the artifact trained on this model?"
            )
        self.blocks = blocks
        self.layers = tuple(layers)
        self.deepest = max(layers)

    def attach(self) -> AttachedHooks:
        """Hooks that stay on the blocks until `remove()`; see `AttachedHooks.run`."""
        return AttachedHooks(self)

    @contextlib.contextmanager
    def record(self, *, stop_after_deepest: bool = False) -> Iterator[list[Tensor]]:
        """Yield a list that holds, after the forward pass, one output per layer (in order).

        Example:
            with recorder.record(stop_after_deepest=True) as outs:
                model(input_ids=ids)
            raw, z = projector.project([o[0] for o in outs])  # batch row 0
        """
        slot: dict[int, Tensor] = {}
        outs: list[Tensor] = []
        with hooked(
            self.blocks, self.layers, slot.__setitem__, stop_after_deepest=stop_after_deepest
        ):
            yield outs
        outs.extend(_in_order(slot, self.layers))


def _in_order(slot: dict[int, Tensor], layers: Sequence[int]) -> list[Tensor]:
    """The recorded outputs in the order of `layers`; every layer must have one."""
    missing = [layer for layer in layers if layer not in slot]
    if missing:
        raise RuntimeError(
            f"layers {missing} produced no output: the forward pass never reached them"
        )
    return [slot[layer] for layer in layers]


T = TypeVar("T")


class AttachedHooks:
    """Hooks on the recorded blocks that record only between `begin()` and `end()`.

    Outside a recording they return at once, so a forward pass that wants no readout
    pays almost nothing; `remove()` takes exactly these hooks off, and may be called
    any number of times.
    """

    def __init__(self, recorder: ResidualRecorder) -> None:
        self._layers = recorder.layers
        self._slot: dict[int, Tensor] = {}
        self._hooks = BlockHooks(recorder.blocks, recorder.layers, self._slot.__setitem__)
        self._hooks.enabled = False

    def begin(self, stop_after_deepest: bool = False) -> None:
        """Record the next forward pass into a fresh slot."""
        self._slot.clear()
        self._hooks.stop_after_deepest = stop_after_deepest
        self._hooks.enabled = True

    def end(self) -> list[Tensor]:
        """Stop recording; the recorded outputs in layer order."""
        self._hooks.enabled = self._hooks.stop_after_deepest = False
        outs = dict(self._slot)
        self._slot.clear()
        return _in_order(outs, self._layers)

    def run(
        self, forward: Callable[[], T], *, stop_after_deepest: bool = False
    ) -> tuple[T | None, list[Tensor]]:
        """`(forward()'s result, or None when stopped early; outputs per layer)`."""
        self.begin(stop_after_deepest)
        try:
            result = self._hooks.run(forward)
        except BaseException:
            self._hooks.enabled = self._hooks.stop_after_deepest = False
            self._slot.clear()
            raise
        return result, self.end()

    def remove(self) -> None:
        """Take the hooks off (idempotent)."""
        self._hooks.remove()
        self._hooks.enabled = False
        self._slot.clear()


@dataclasses.dataclass(frozen=True)
class Readout:
    """Per-token readouts of one text.

    `raw[t, i, c]` is token t's projection at layer `layers[i]` onto `concepts[c]`;
    `z` is the same shape, or None when the manifest has no calibration. `keep[t]`
    marks the positions mean pooling uses (real, non-special tokens). `combined[t, c]`
    is `Σ_i weights[i][c] · raw[t, i, c]` with the manifest's combined weights, and
    `combined_z` its z-score; both None when the manifest has no `combined` entry.
    """

    tokens: tuple[str, ...]
    token_ids: tuple[int, ...]
    keep: tuple[bool, ...]
    raw: Tensor  # [T, L, C] fp32, cpu
    z: Tensor | None  # [T, L, C] fp32, cpu
    concepts: tuple[str, ...]
    layers: tuple[int, ...]
    truncated: bool = False
    truncation: str = ""  # when truncated: what cut it ("cut to --max-length 64 tokens", …)
    combined: Tensor | None = None  # [T, C] fp32, cpu
    combined_z: Tensor | None = None  # [T, C] fp32, cpu

    def __post_init__(self) -> None:
        shape = (len(self.token_ids), len(self.layers), len(self.concepts))
        if tuple(self.raw.shape) != shape:
            raise ValueError(f"raw {tuple(self.raw.shape)} != (tokens, layers, concepts) {shape}")
        if self.z is not None and tuple(self.z.shape) != shape:
            raise ValueError(f"z {tuple(self.z.shape)} != (tokens, layers, concepts) {shape}")
        for name in ("combined", "combined_z"):
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != (shape[0], shape[2]):
                raise ValueError(
                    f"{name} {tuple(value.shape)} != (tokens, concepts) {(shape[0], shape[2])}"
                )
        if not len(self.tokens) == len(self.keep) == len(self.token_ids):
            raise ValueError("tokens, token_ids and keep must have one entry per token")

    @property
    def default_layer(self) -> LayerChoice:
        """`"combined"` when the manifest has a combined score, else the deepest layer."""
        return COMBINED if self.combined is not None else self.layers[-1]

    def layer_index(self, layer: int) -> int:
        """Position of absolute block index `layer` in `self.layers`."""
        if layer not in self.layers:
            raise ConfigError(
                f"layer {layer} is not in the artifact; it has layers {list(self.layers)}"
            )
        return self.layers.index(layer)

    def pooled(self, values: Tensor | None = None, *, layer: LayerChoice | None = None) -> Tensor:
        """Mean over the kept positions (the trainer's mean-pooled projection).

        Without `layer`: the mean of `values` (by default `raw`: `[L, C]`; any `[T, …]`
        works). With a layer index: that layer's `[C]`. With `layer="combined"`: `[C]`,
        the mean of `values` `[T, C]` (by default `combined`), which equals
        `Σ_l weights[l] · pooled()[l]`.
        """
        if layer == COMBINED:
            values = self._combined() if values is None else values
        elif values is None:
            values = self.raw
        keep = torch.tensor(self.keep, dtype=torch.bool)
        if not bool(keep.any()):
            out = torch.full(values.shape[1:], float("nan"))
        else:
            out = values[keep].mean(dim=0)
        return out[self.layer_index(layer)] if isinstance(layer, int) else out

    def pooled_z(self, *, layer: LayerChoice | None = None) -> Tensor | None:
        """The mean of the per-token z-scores over the pooled tokens (z of the pooled raw);
        `[L, C]`, or `[C]` for one layer or `"combined"`; None when uncalibrated."""
        if layer == COMBINED:
            return None if self.combined_z is None else self.pooled(self.combined_z, layer=layer)
        return None if self.z is None else self.pooled(self.z, layer=layer)

    def top(
        self, layer: LayerChoice | None = None, k: int = 5, *, use_z: bool = True
    ) -> list[tuple[str, float]]:
        """The text's `k` strongest concepts at `layer` (z when calibrated, else raw); by
        default the combined score when the manifest has it, else the deepest layer."""
        layer = self.default_layer if layer is None else layer
        row = self.pooled_z(layer=layer) if use_z else None
        if row is None:
            row = self.pooled(layer=layer)
        order = torch.argsort(row, descending=True)[:k].tolist()
        return [(self.concepts[c], float(row[c])) for c in order]

    def _combined(self) -> Tensor:
        if self.combined is None:
            raise ConfigError(
                "no combined score: the manifest has no 'combined' entry (trained before it "
                f"existed, or with --no-combined); retrain, or pick a layer {list(self.layers)}"
            )
        return self.combined

    def records(self) -> Iterator[dict[str, Any]]:
        """One JSON-ready dict per token: `raw[layer][concept]`, `z` when calibrated, and
        `combined[concept]` / `combined_z[concept]` when the manifest has them."""
        raw = self.raw.tolist()
        z = None if self.z is None else self.z.tolist()
        combined = None if self.combined is None else self.combined.tolist()
        combined_z = None if self.combined_z is None else self.combined_z.tolist()
        for t, token in enumerate(self.tokens):
            rec: dict[str, Any] = {
                "position": t,
                "token_id": self.token_ids[t],
                "token": token,
                "pooled": self.keep[t],
                "raw": _named(raw[t], self),
            }
            if z is not None:
                rec["z"] = _named(z[t], self)
            if combined is not None:
                rec["combined"] = dict(zip(self.concepts, combined[t]))
            if combined_z is not None:
                rec["combined_z"] = dict(zip(self.concepts, combined_z[t]))
            yield rec


def _named(values: list[list[float]], ro: Readout) -> dict[str, dict[str, float]]:
    return {str(layer): dict(zip(ro.concepts, row)) for layer, row in zip(ro.layers, values)}


def check_compatible(lm: LoadedModel, artifact: Artifact) -> None:
    """The artifact must fit this model: same hidden size, layers that exist."""
    hidden = artifact.meta.hidden_size
    if hidden != lm.hidden_size:
        raise ConfigError(
            f"the artifact's vectors have hidden size {hidden}, the model "
            f"{lm.model_id!r} has {lm.hidden_size}; load the model the "
            f"artifact was trained on ({artifact.meta.model or '?'})"
        )
    too_deep = [layer for layer in artifact.layers if layer >= lm.n_layers]
    if too_deep:
        raise ConfigError(
            f"artifact layers {too_deep} do not exist on {lm.model_id!r} "
            f"({lm.n_layers} blocks); load the model it was trained on"
        )


def token_strings(tokenizer: Any, ids: Sequence[int]) -> tuple[str, ...]:
    """Each token decoded on its own (special tokens shown as such)."""
    return tuple(
        tokenizer.batch_decode(
            [[i] for i in ids], skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
    )


def _as_loaded(model: LoadedModel | str, device: str | None, dtype: DType | str) -> LoadedModel:
    if isinstance(model, str):
        from amygdala.models import load_model

        return load_model(model, device=device, dtype=dtype)
    return model


def readout_ids(
    model: LoadedModel | str,
    artifact: Artifact,
    ids: Sequence[int],
    *,
    keep: Sequence[bool] | bytes | None = None,
    device: str | None = None,
    dtype: DType | str = DTYPE,
) -> Readout:
    """Per-token readouts of a token id sequence (one forward pass, no cache).

    Args:
        model: a `LoadedModel`, or a name for `load_model`.
        artifact: the loaded vectors and manifest.
        ids: token ids as the model sees them (special tokens included).
        keep: which positions count as real text for `Readout.pooled`; by default
            every position whose id is not a special token.
    """
    lm = _as_loaded(model, device, dtype)
    check_compatible(lm, artifact)
    if not ids:
        raise ConfigError("nothing to read: the text has no tokens")
    special = set(getattr(lm.tokenizer, "all_special_ids", ()))
    keep = [i not in special for i in ids] if keep is None else [bool(k) for k in keep]
    cut = ""
    if lm.max_positions is not None and len(ids) > lm.max_positions:  # would index past
        cut = (  # the position table (GPT-2, BERT) or beyond what the model was trained on
            f"cut to {lm.max_positions} tokens, the most {lm.model_id!r} supports "
            f"({len(ids)} token ids given)"
        )
        ids, keep = ids[: lm.max_positions], keep[: lm.max_positions]
    projector = Projector(artifact, lm.device)
    recorder = ResidualRecorder(lm.blocks, projector.layers)
    input_ids = torch.tensor([[int(i) for i in ids]], dtype=torch.long, device=lm.device)
    mask = torch.ones_like(input_ids)
    with torch.inference_mode():
        with recorder.record(stop_after_deepest=True) as outs:
            lm.model(**forward_kwargs(lm, input_ids, mask))
        raw, z = projector.project([o[0] for o in outs])
    combined = combined_z = None
    if projector.combination is not None:
        combined = projector.combination.raw(raw).cpu()
        combined_z = projector.combination.z(combined)
    return Readout(
        tokens=token_strings(lm.tokenizer, ids),
        token_ids=tuple(int(i) for i in ids),
        keep=tuple(bool(k) for k in keep),
        raw=raw.cpu(),
        z=None if z is None else z.cpu(),
        concepts=projector.concepts,
        layers=projector.layers,
        combined=combined,
        combined_z=combined_z,
        truncated=bool(cut),
        truncation=cut,
    )


def readout(
    model: LoadedModel | str,
    artifact: Artifact,
    text: str,
    *,
    max_length: int = READOUT_MAX_LENGTH,
    device: str | None = None,
    dtype: DType | str = DTYPE,
) -> Readout:
    """Per-token readouts of `text`, tokenized as the trainer tokenizes it.

    Special tokens (BOS, [CLS] …) are read too but marked `keep=False`, so
    `Readout.pooled()` averages exactly the positions the trainer's mean pooling does.
    Texts longer than `max_length` tokens, or than the model's positions when those are
    fewer, are cut (`Readout.truncated`; `Readout.truncation` says to what and why).
    Lone surrogates in `text` read as U+FFFD (`amygdala.capture.tokenize`).

    Example:
        ro = readout(lm, artifact, "The lights went out.")
        ro.pooled()  # [L, C]: equals vectors · the trainer's pooled activation
    """
    lm = _as_loaded(model, device, dtype)
    tok = tokenize(lm.tokenizer, [text], max_length=token_limit(lm, max_length))[0]
    result = readout_ids(lm, artifact, tok.ids, keep=tok.keep)
    if tok.truncated:
        note = truncation_note(lm, max_length)
        return dataclasses.replace(result, truncated=True, truncation=note)
    return result
