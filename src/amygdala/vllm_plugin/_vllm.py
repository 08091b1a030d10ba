"""Everything that depends on vLLM's internals, in one place (tested against 0.32).

What the plugin relies on, and where a new vLLM release should be checked first:

* `EngineArgs.create_engine_config` (wrapped in the process that parses the command
  line): after it, the model's hidden size and depth are known, so a misfitting artifact
  is refused before any process starts; here the compile cache is salted
  (`additional_config`) and the worker class is swapped for ours (`worker_cls`, the same
  field `--worker-cls` sets), a subclass of the one vLLM chose.
* The V1 worker's `load_model` / `execute_model` and its model runner's fields after a
  step: `input_batch.req_ids` / `num_reqs`, `query_start_loc.np`, `positions`,
  `requests[id].sampling_params.extra_args` and `.num_prompt_tokens`, `max_num_tokens`,
  `model`. The V2 model runner keeps these elsewhere; the plugin selects V1.
* Engine request ids: `[<choice>_]<external id>-<8 hex>`, where the external id is
  `cmpl-<base>-<prompt index>` for completions and `chatcmpl-<base>` for chat, and
  `<base>` is the `X-Request-Id` header or the body's `request_id`.
* The routes `POST /v1/completions` and `POST /v1/chat/completions`, whose endpoint
  functions the plugin's routes call.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from typing import TYPE_CHECKING, Any

from amygdala.errors import AmygdalaError, ConfigError
from amygdala.vllm_plugin.settings import (
    BASE_WORKER_ENV,
    SESSION_ENV,
    ReadoutSettings,
    ServedModel,
    check_fit,
    check_vllm_version,
    plugins_allow_endpoint,
)

if TYPE_CHECKING:
    from amygdala.vllm_plugin.tap import Mark, ReadoutTap, StepLayout

log = logging.getLogger("amygdala.vllm")

WORKER_CLS = "amygdala.vllm_plugin._vllm.ReadoutWorker"
SALT_KEY = "amygdala_readout"
# The request's sampling params carry these extra args to the worker.
XARG_KEY = "amygdala_key"
XARG_PID = "amygdala_pid"
XARG_PROMPT = "amygdala_prompt"
XARGS = (XARG_KEY, XARG_PID, XARG_PROMPT)

_installed = False


def refuse(message: str) -> SystemExit:
    """The one line a user sees when the server will not start with readouts (raised,
    it ends the process with that line on stderr and exit status 1)."""
    return SystemExit(f"amygdala readout: {message}")


def install(settings: ReadoutSettings) -> None:
    """Prepare this process (the general plugin, in every vLLM process; idempotent)."""
    global _installed
    if _installed:
        return
    import vllm

    try:
        warning = check_vllm_version(vllm.__version__)
    except ConfigError as exc:
        raise refuse(str(exc)) from None
    if warning:
        log.warning("amygdala readout: %s", warning)
    if not plugins_allow_endpoint():
        raise refuse(
            "VLLM_READOUT_VECTORS is set, but VLLM_PLUGINS does not name amygdala, so "
            "nothing would stream the readouts; start with VLLM_PLUGINS=amygdala"
        )
    os.environ.setdefault(SESSION_ENV, uuid.uuid4().hex[:12])
    # The worker reads the V1 model runner's batch layout; V2 keeps it elsewhere.
    os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")
    from vllm.engine.arg_utils import EngineArgs

    original = EngineArgs.create_engine_config

    def create_engine_config(self: Any, *args: Any, **kwargs: Any) -> Any:
        config = original(self, *args, **kwargs)
        prepare_config(config, settings)
        return config

    EngineArgs.create_engine_config = create_engine_config
    _installed = True


def served_model(config: Any) -> ServedModel:
    """What `check_fit` needs, read from a `VllmConfig`."""
    model = config.model_config
    return ServedModel(
        name=str(model.model),
        hidden_size=int(model.get_hidden_size()),
        n_layers=int(model.get_total_num_hidden_layers()),
        tensor_parallel=int(config.parallel_config.tensor_parallel_size),
        pipeline_parallel=int(config.parallel_config.pipeline_parallel_size),
        speculative=config.speculative_config is not None,
        model_runner_v2=bool(config.use_v2_model_runner),
    )


def prepare_config(config: Any, settings: ReadoutSettings) -> None:
    """Refuse a misfit, salt the compile cache, and put our worker class in place."""
    from amygdala.artifact import load_artifact

    if config.parallel_config.worker_cls == WORKER_CLS:
        return
    try:
        artifact = load_artifact(settings.vectors, settings.manifest)
        check_fit(artifact.meta, served_model(config))
        salt = settings.fingerprint()
    except (AmygdalaError, OSError) as exc:
        raise refuse(str(exc)) from None
    if not isinstance(config.additional_config, dict):
        raise refuse("--additional-config must be a JSON object for readouts to salt it")
    config.additional_config[SALT_KEY] = salt
    os.environ[BASE_WORKER_ENV] = config.parallel_config.worker_cls
    config.parallel_config.worker_cls = WORKER_CLS
    log.info(
        "amygdala readout: %d concepts x layers %s from %s",
        len(artifact.concepts),
        artifact.layers,
        settings.vectors,
    )


# ---- the worker ------------------------------------------------------------------------


class _ReadoutWorkerMixin:
    """Adds the readout to vLLM's worker: wrap the layers after loading, publish after
    each step. Mixed in front of the worker class vLLM chose for the platform."""

    model_runner: Any
    vllm_config: Any
    _amygdala_tap: ReadoutTap | None = None

    def load_model(self, *args: Any, **kwargs: Any) -> None:
        super().load_model(*args, **kwargs)  # type: ignore[misc]
        settings = ReadoutSettings.from_env()
        if settings is not None:
            self._amygdala_tap = build_tap(self.model_runner, settings, self.vllm_config)

    def execute_model(self, scheduler_output: Any, *args: Any, **kwargs: Any) -> Any:
        output = super().execute_model(scheduler_output, *args, **kwargs)  # type: ignore[misc]
        tap = self._amygdala_tap
        if tap is not None and scheduler_output.total_num_scheduled_tokens > 0:
            tap.publish(step_layout(self.model_runner))
        return output

    def shutdown(self) -> None:
        if self._amygdala_tap is not None:
            self._amygdala_tap.close()
            self._amygdala_tap = None
        parent = getattr(super(), "shutdown", None)
        if parent is not None:
            parent()


def __getattr__(name: str) -> Any:
    """`ReadoutWorker`: our mixin over the worker class vLLM chose (built on first use,
    in the worker process, from the name `prepare_config` left in the environment)."""
    if name != "ReadoutWorker":
        raise AttributeError(name)
    from vllm.utils.import_utils import resolve_obj_by_qualname

    base_name = os.environ.get(BASE_WORKER_ENV)
    if not base_name:
        raise RuntimeError(f"{BASE_WORKER_ENV} is not set; the readout plugin did not run")
    base = resolve_obj_by_qualname(base_name)
    cls = type("ReadoutWorker", (_ReadoutWorkerMixin, base), {"__module__": __name__})
    globals()["ReadoutWorker"] = cls
    return cls


def build_tap(runner: Any, settings: ReadoutSettings, config: Any) -> ReadoutTap:
    """Find the hooked decoder layers in the loaded model and wrap them."""
    from vllm.distributed import get_tensor_model_parallel_rank

    from amygdala.artifact import load_artifact
    from amygdala.blocks import find_blocks
    from amygdala.vllm_plugin.channel import Publisher
    from amygdala.vllm_plugin.tap import ReadoutTap

    artifact = load_artifact(settings.vectors, settings.manifest)
    check_fit(artifact.meta, served_model(config))
    _, blocks = find_blocks(runner.model)
    layers = artifact.layers
    if len(blocks) != served_model(config).n_layers:
        raise ConfigError(
            f"found {len(blocks)} decoder layers in {type(runner.model).__name__}, the "
            f"config says {served_model(config).n_layers}"
        )
    publisher = None
    if get_tensor_model_parallel_rank() == 0:  # every rank holds the full residual
        publisher = Publisher(os.environ[SESSION_ENV])
    tap = ReadoutTap(
        [blocks[layer] for layer in layers],
        [artifact.vectors[layer] for layer in layers],
        max_tokens=max_step_tokens(runner, config),
        device=runner.device,
        publisher=publisher,
    )
    tap.install()
    return tap


def max_step_tokens(runner: Any, config: Any) -> int:
    """The most tokens one forward pass can hold: the scheduler's budget, or a larger
    CUDA graph capture size (graphs run padded)."""
    capture = getattr(config.compilation_config, "max_cudagraph_capture_size", None) or 0
    return max(int(runner.max_num_tokens), int(capture))


def step_layout(runner: Any) -> StepLayout:
    """This step's batch layout, read from the V1 model runner right after the step."""
    from amygdala.vllm_plugin.tap import StepLayout

    n = int(runner.input_batch.num_reqs)
    request_ids = list(runner.input_batch.req_ids[:n])
    states = [runner.requests[rid] for rid in request_ids]
    return StepLayout(
        request_ids=request_ids,
        query_start=runner.query_start_loc.np[: n + 1].copy(),
        marks=[mark_of(state.sampling_params) for state in states],
        prompt_lens=[int(state.num_prompt_tokens) for state in states],
        positions=runner.positions,
    )


def mark_of(params: Any) -> Mark | None:
    """The readout request a sampling params carries (None: none, or malformed)."""
    from amygdala.vllm_plugin.tap import Mark

    extra = getattr(params, "extra_args", None) or {}
    key, pid = extra.get(XARG_KEY), extra.get(XARG_PID)
    if not isinstance(key, str) or not isinstance(pid, int) or isinstance(pid, bool):
        return None
    return Mark(key=key, pid=pid, prompt=bool(extra.get(XARG_PROMPT)))


# ---- the API server ---------------------------------------------------------------------


def request_base(raw_request: Any, body_request_id: str | None) -> str | None:
    """The id vLLM builds engine request ids from (`X-Request-Id` wins, as in vLLM)."""
    header = raw_request.headers.get("X-Request-Id") if raw_request is not None else None
    return header if header is not None else body_request_id


def choice_matcher(kind: str, base: str, n: int) -> Any:
    """A function engine request id → choice index (None: not this request's).

    Mirrors how vLLM numbers choices: `prompt index * n + child index`.
    """
    prefix = ("chatcmpl-" if kind == "chat" else "cmpl-") + base
    tail = re.compile(r"(?:_(\d+))?-[0-9a-f]{8}$" if kind == "chat" else r"-(\d+)-[0-9a-f]{8}$")

    def match(engine_id: str) -> int | None:
        child = 0
        if n > 1:
            head, sep, rest = engine_id.partition("_")
            if not (sep and head.isdigit()):
                return None
            child, engine_id = int(head), rest
        if not engine_id.startswith(prefix):
            return None
        found = tail.fullmatch(engine_id[len(prefix) :])
        if found is None:
            return None
        prompt = int(found.group(1)) if found.group(1) else 0
        return prompt * n + child

    return match


def find_endpoint(app: Any, path: str, method: str) -> Any:
    """The route vLLM registered for `method path` (raises when there is none)."""
    from fastapi.routing import APIRoute

    for route in app.routes:
        if isinstance(route, APIRoute) and route.path == path and method in route.methods:
            return route
    raise RuntimeError(f"vLLM registered no {method} {path}; cannot add readouts to it")
