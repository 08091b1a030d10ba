"""Defaults and closed vocabularies, each written once.

The config dataclasses (`TrainConfig`, `ReportConfig` …), the functions they feed and
the command line's flags (their defaults, `choices` and help text) all read these
names, so changing a default is one edit here and `--help` says the new value. A
closed vocabulary is a `Literal` alias plus the tuple of its values, taken from the
alias so the two cannot drift apart.

This module imports nothing heavy (no torch, no numpy): `amygdala --help` builds every
flag from it and must stay instant.

Example:
    >>> from amygdala._defaults import POOLINGS, BATCH_SIZE
    >>> POOLINGS, BATCH_SIZE
    (('mean', 'last'), 16)
"""

from __future__ import annotations

from typing import Literal, get_args

# -- vocabularies ------------------------------------------------------------------------

Pooling = Literal["mean", "last"]  # mean over real tokens, or the last real token
DType = Literal["auto", "bf16", "fp16", "fp32"]  # the model's compute dtype (--dtype)
VectorsDtype = Literal["float16", "bfloat16", "float32"]  # storage of the vectors
PaddingSide = Literal["left", "right"]

POOLINGS: tuple[Pooling, ...] = get_args(Pooling)
DTYPES: tuple[DType, ...] = get_args(DType)
VECTORS_DTYPES: tuple[VectorsDtype, ...] = get_args(VectorsDtype)
PADDING_SIDES: tuple[PaddingSide, ...] = get_args(PaddingSide)

# -- capture and training ----------------------------------------------------------------

POOLING: Pooling = "mean"
DTYPE: DType = "auto"  # bf16 on CUDA GPUs that support it, fp32 elsewhere
VECTORS_DTYPE: VectorsDtype = "float16"
BATCH_SIZE = 16  # texts per forward pass
MAX_LENGTH = 512  # tokens per training text; longer texts are truncated and counted
POOL_START = 0  # mean pooling skips this many leading real tokens
MIN_EXAMPLES = 8  # concepts with fewer train positives or negatives are left out
METHOD = "whitened"  # the fitting method (amygdala.fit.FIT_METHODS)

# -- readout and report ------------------------------------------------------------------

READOUT_MAX_LENGTH = 2048  # tokens `amygdala readout` reads; longer texts are cut
MAX_COHERENCE = 500  # train positives per concept used for the report's coherence
MIN_TRAIN = 20  # the report flags concepts with fewer train positives or negatives
MIN_HELDOUT = 10  # … and with fewer held-out positives or negatives

# -- serving -----------------------------------------------------------------------------

HOST = "127.0.0.1"  # servers listen on this machine only unless told otherwise
SERVE_PORT = 8000  # `amygdala serve`
API_KEY_ENV = "AMYGDALA_API_KEY"  # environment variable holding the serving Bearer key
MAX_CONCURRENCY = 4  # sequences `amygdala serve` decodes at once (round-robin)
MEMORY_PORT = 7777  # `amygdala memory-server`
MCP_PATH = "/mcp"  # the memory MCP endpoint's path
MEMORY_TOKEN_ENV = "AMYGDALA_MEMORY_TOKEN"  # environment variable holding its bearer token
