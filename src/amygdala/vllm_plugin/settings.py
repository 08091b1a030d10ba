"""What the vLLM plugin is asked to do, read from the environment, and whether it fits.

Everything here is plain Python (no vLLM import), so the rules are tested without a
vLLM install: the two variables, the supported versions, and the checks that refuse an
artifact that does not fit the served model before any weight is loaded.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amygdala.errors import ConfigError

if TYPE_CHECKING:
    from amygdala.artifact import Manifest

VECTORS_ENV = "VLLM_READOUT_VECTORS"
MANIFEST_ENV = "VLLM_READOUT_MANIFEST"
# Set by the first process that loads the plugin, inherited by every process vLLM starts
# after it: names the per-server side channel (see channel.py).
SESSION_ENV = "AMYGDALA_READOUT_SESSION"
# The worker class vLLM would have used; our worker subclasses it (see _vllm.py).
BASE_WORKER_ENV = "AMYGDALA_VLLM_BASE_WORKER"
# Lets a user try a vLLM release we have not tested (at their own risk).
ALLOW_UNTESTED_ENV = "AMYGDALA_VLLM_ALLOW_UNTESTED"
# Seconds a response waits for a token's readout before it is sent without one.
TIMEOUT_ENV = "AMYGDALA_READOUT_TIMEOUT"

# (major, minor) releases the plugin was built and tested against. The plugin reads a
# few fields of vLLM's model runner and request ids (all in _vllm.py); another release
# may have moved them.
SUPPORTED_VLLM: tuple[tuple[int, int], ...] = ((0, 32),)
SUPPORTED_TEXT = "0.32.x"


@dataclass(frozen=True)
class ReadoutSettings:
    """The artifact pair named by `VLLM_READOUT_VECTORS` and `VLLM_READOUT_MANIFEST`."""

    vectors: Path
    manifest: Path

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ReadoutSettings | None:
        """The pair, or None when neither variable is set (the plugin then does nothing).

        One variable without the other is a mistake, not a request to do nothing.
        """
        env = os.environ if environ is None else environ
        vectors, manifest = env.get(VECTORS_ENV, ""), env.get(MANIFEST_ENV, "")
        if not vectors and not manifest:
            return None
        if not vectors or not manifest:
            missing = VECTORS_ENV if not vectors else MANIFEST_ENV
            given = MANIFEST_ENV if not vectors else VECTORS_ENV
            raise ConfigError(
                f"{given} is set but {missing} is not; set both (e.g. "
                f"{VECTORS_ENV}=out/readout.safetensors {MANIFEST_ENV}=out/readout.json), "
                "or neither to serve without readouts"
            )
        return cls(Path(vectors).expanduser(), Path(manifest).expanduser())

    def fingerprint(self) -> str:
        """A digest of both files: salts vLLM's compile cache so a graph compiled without
        the readout op (or for other vectors) is never reused."""
        from amygdala import __version__

        h = hashlib.sha256(f"amygdala-readout {__version__}\n".encode())
        for path in (self.vectors, self.manifest):
            h.update(path.read_bytes())
        return h.hexdigest()[:32]


def plugins_allow_endpoint(environ: Mapping[str, str] | None = None) -> bool:
    """Whether `VLLM_PLUGINS` names `amygdala`: vLLM loads endpoint plugins only then."""
    env = os.environ if environ is None else environ
    value = env.get("VLLM_PLUGINS")
    return value is not None and "amygdala" in [p.strip() for p in value.split(",")]


def parse_version(text: str) -> tuple[int, int]:
    """`'0.32.0'`, `'0.32.1.dev3+cpu'` → (0, 32)."""
    match = re.match(r"^\s*(\d+)\.(\d+)", text)
    if match is None:
        raise ConfigError(f"cannot read the vLLM version {text!r}")
    return int(match.group(1)), int(match.group(2))


def check_vllm_version(text: str, environ: Mapping[str, str] | None = None) -> str | None:
    """None when `text` is a supported vLLM release; else a warning (when the user allowed
    untested releases). Raises `ConfigError` for an unsupported release otherwise."""
    env = os.environ if environ is None else environ
    if parse_version(text) in SUPPORTED_VLLM:
        return None
    message = (
        f"vLLM {text} is not a release the amygdala plugin supports (supported: "
        f"{SUPPORTED_TEXT}); install one of those"
    )
    if env.get(ALLOW_UNTESTED_ENV, "") == "1":
        return message + f"; continuing because {ALLOW_UNTESTED_ENV}=1"
    raise ConfigError(message + f", or set {ALLOW_UNTESTED_ENV}=1 to try it anyway")


@dataclass(frozen=True)
class ServedModel:
    """What the plugin needs to know about the model vLLM serves (from its config)."""

    name: str
    hidden_size: int
    n_layers: int
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    speculative: bool = False
    model_runner_v2: bool = False


def check_fit(manifest: Manifest | Mapping[str, Any], model: ServedModel) -> None:
    """Refuse, with one line that names the fix, an artifact or setup we cannot serve."""
    from amygdala.artifact import Manifest

    m = manifest if isinstance(manifest, Manifest) else Manifest.from_dict(manifest)
    if m.hidden_size != model.hidden_size:
        raise ConfigError(
            f"the readout vectors have hidden size {m.hidden_size}, but {model.name} has "
            f"{model.hidden_size}; serve the model the artifact was trained on "
            f"({m.model or 'unknown'}) or train vectors for this one"
        )
    layers = m.layers
    bad = [layer for layer in layers if not 0 <= layer < model.n_layers]
    if bad:
        raise ConfigError(
            f"the readout vectors are for layers {list(layers)}, but {model.name} has "
            f"{model.n_layers} decoder layers (0..{model.n_layers - 1}); layers {bad} "
            "do not exist: serve the model the artifact was trained on"
        )
    if model.pipeline_parallel > 1:
        raise ConfigError(
            "readouts with --pipeline-parallel-size > 1 are not supported (each stage "
            "holds only some layers); use tensor parallelism instead"
        )
    if model.speculative:
        raise ConfigError(
            "readouts with speculative decoding are not supported (drafted tokens have no "
            "single sampler position); drop --speculative-config"
        )
    if model.model_runner_v2:
        raise ConfigError(
            "readouts need vLLM's V1 model runner; unset VLLM_USE_V2_MODEL_RUNNER "
            "(the plugin selects the V1 runner by itself)"
        )
