"""Per-token concept readouts inside an unmodified vLLM server.

Start vLLM's own server with the artifact and the plugin named:

    VLLM_READOUT_VECTORS=out/readout.safetensors VLLM_READOUT_MANIFEST=out/readout.json \\
    VLLM_PLUGINS=amygdala vllm serve MODEL

Two entry points, both named `amygdala` (pyproject.toml):

* `vllm.general_plugins` → `register`: vLLM calls it in every process it starts. Without
  the two variables it returns at once and changes nothing. With them it checks the vLLM
  version and prepares the process (`_vllm.install`): the process that reads the command
  line refuses an artifact that does not fit the model, and vLLM's workers compute every
  token's readout inside the compiled model (`tap.py`, `_op.py`) and push the rows to the
  API server (`channel.py`).
* `vllm.endpoint_plugins` → `endpoint_plugin`: vLLM loads it in the API server process
  only when `VLLM_PLUGINS` names `amygdala`; it adds the readout fields to every streamed
  chunk and the manifest route (`api.py`, `stream.py`, `inbox.py`).

Importing this package imports nothing from vLLM or torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["endpoint_plugin", "register"]


def register() -> None:
    """The general plugin: inert unless `VLLM_READOUT_VECTORS` is set; idempotent."""
    from amygdala.errors import ConfigError
    from amygdala.vllm_plugin.settings import ReadoutSettings

    try:
        settings = ReadoutSettings.from_env()
    except ConfigError as exc:
        from amygdala.vllm_plugin._vllm import refuse

        raise refuse(str(exc)) from None
    if settings is None:
        return
    from amygdala.vllm_plugin import _vllm

    _vllm.install(settings)


def endpoint_plugin() -> Any:
    """The endpoint plugin factory vLLM calls (an `EndpointPlugin`)."""
    from amygdala.vllm_plugin.api import ReadoutEndpoints

    return ReadoutEndpoints()
