"""Errors a user can act on.

Every stage raises a subclass of `AmygdalaError` with a message that names the thing,
what was tried and the fix; the CLI prints that one line and exits non-zero instead of
a traceback. Anything else that escapes is a bug and keeps its traceback.
"""


class AmygdalaError(Exception):
    """Base class: the message is meant for the user, as is."""

    exit_code = 2


class ConfigError(AmygdalaError):
    """Flags or arguments that cannot work together (bad layer list, unknown method …)."""


class CorpusError(AmygdalaError):
    """Training data that cannot be read or holds nothing usable."""


class ModelLoadError(AmygdalaError):
    """A model or tokenizer that cannot be loaded, or whose blocks cannot be found."""


class CaptureError(AmygdalaError):
    """The forward pass produced something unusable (NaN/Inf activations …)."""


class ArtifactError(AmygdalaError):
    """A readout.safetensors / readout.json pair that is missing, corrupt or inconsistent."""


class GraphError(AmygdalaError):
    """A memory graph source (file export or MCP server) that cannot be read."""


class OutputError(AmygdalaError):
    """An output path that cannot be written: a directory where a file is needed, a device,
    a read-only or full file system, a name too long, or one of the run's own inputs."""
