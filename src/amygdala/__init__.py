"""amygdala: concept-readout vectors for language models.

The whole pipeline from Python (see `amygdala.pipeline`):

    import amygdala
    amygdala.extract("graph.jsonl", "training-data")
    art = amygdala.train(model="minilm", training_data="training-data",
                         target_layers=[1, 3], output="out/readout.safetensors")
    print(amygdala.readout("minilm", art, "I miss you.").top(k=3))

Importing the package does nothing but define names: each name below is imported on
first use, so torch and transformers load only when a stage that needs them runs.
"""

from __future__ import annotations

import sys
import types
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

try:
    __version__ = version("amygdala")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

# public name → the module that defines it
_LAZY = {
    "extract": "amygdala.pipeline",
    "train": "amygdala.pipeline",
    "readout": "amygdala.pipeline",
    "load_model": "amygdala.pipeline",
    "load_artifact": "amygdala.artifact",
    "TrainConfig": "amygdala.train",
    "Artifact": "amygdala.artifact",
    "TrainedArtifact": "amygdala.pipeline",
    "TrainResult": "amygdala.train",
    "ExtractSummary": "amygdala.graph.extract",
    "McpOptions": "amygdala.graph.mcp_source",
    "LoadedModel": "amygdala.models",
    "Readout": "amygdala.readout",
}

__all__ = [  # the names of _LAZY (tests/test_python_api.py checks), spelled out for linters
    "Artifact",
    "ExtractSummary",
    "LoadedModel",
    "McpOptions",
    "Readout",
    "TrainConfig",
    "TrainResult",
    "TrainedArtifact",
    "__version__",
    "extract",
    "load_artifact",
    "load_model",
    "readout",
    "train",
]

if TYPE_CHECKING:
    from amygdala.artifact import Artifact, load_artifact
    from amygdala.graph.extract import ExtractSummary
    from amygdala.graph.mcp_source import McpOptions
    from amygdala.models import LoadedModel
    from amygdala.pipeline import TrainedArtifact, extract, load_model, readout, train
    from amygdala.readout import Readout
    from amygdala.train import TrainConfig, TrainResult


def __getattr__(name: str) -> object:
    """Import a public name on first use (PEP 562), then keep it in the namespace."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'amygdala' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


class _Package(types.ModuleType):
    """The package's module type: `amygdala.train` and `amygdala.readout` stay the API's
    functions after the submodules of the same names are imported.

    Importing `amygdala.train` (which `from amygdala.train import …` does) makes the
    import system set the attribute `train` on the package to that submodule, hiding
    the function; this refuses exactly that. The submodules stay importable as ever.
    """

    def __setattr__(self, name: str, value: object) -> None:
        if name in _LAZY and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
