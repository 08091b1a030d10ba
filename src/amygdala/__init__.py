"""amygdala: concept-readout vectors for language models.

Importing the package does nothing but define names: torch and transformers load
only when a stage that needs them runs.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("amygdala")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
