"""Find the list of transformer blocks whose outputs are the residual stream.

Layer *i* in every file we write is the output of block *i* of this list (docs/architecture.md,
"Layer index"), so finding it must be exact and must fail loudly when it cannot.
"""

from __future__ import annotations

from torch import nn

from amygdala.errors import ModelLoadError

# Attribute paths tried in order; the first that resolves to an nn.ModuleList wins.
BLOCK_PATHS: tuple[str, ...] = (
    "model.layers",  # Llama, Qwen2/3, Mistral, Gemma … (…ForCausalLM)
    "layers",  # the same families loaded as the bare base model
    "model.language_model.layers",  # multimodal wrappers (Qwen3.5, Gemma3 …)
    "language_model.layers",
    "model.model.layers",  # nested wrappers (PEFT, some VLMs)
    "model.language_model.model.layers",
    "language_model.model.layers",  # vLLM's multimodal wrappers (Qwen3.5 …)
    "transformer.h",  # GPT-2, GPT-J, Falcon, Bloom
    "h",  # GPT-2 base model
    "gpt_neox.layers",  # Pythia / GPT-NeoX
    "model.decoder.layers",  # OPT
    "decoder.layers",
    "transformer.blocks",  # MPT
    "encoder.layer",  # BERT, RoBERTa, MiniLM (base model)
    "bert.encoder.layer",
    "roberta.encoder.layer",
    "transformer.layer",  # DistilBERT
)


def resolve_path(root: nn.Module, path: str) -> nn.Module | None:
    """The submodule at dotted `path`, or None when any step is missing."""
    obj: object = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj if isinstance(obj, nn.Module) else None


def find_blocks(model: nn.Module, path: str | None = None) -> tuple[str, nn.ModuleList]:
    """Return `(path, blocks)` for `model`'s residual-stream blocks.

    Args:
        model: a loaded Hugging Face model (any head).
        path: an explicit dotted attribute path; by default the usual paths in
            `BLOCK_PATHS` are tried in order.

    Example:
        >>> path, blocks = find_blocks(model)  # doctest: +SKIP
        >>> path, len(blocks)  # doctest: +SKIP
        ('model.layers', 32)
    """
    tried = (path,) if path else BLOCK_PATHS
    for candidate in tried:
        found = resolve_path(model, candidate)
        if isinstance(found, nn.ModuleList) and len(found) > 0:
            return candidate, found
    kind = type(model).__name__
    if path:
        raise ModelLoadError(
            f"no block list at {path!r} on {kind}; pass the dotted path of the "
            "nn.ModuleList that holds the transformer blocks to --blocks-path"
        )
    raise ModelLoadError(
        f"no decoder/encoder blocks found on {kind}; tried {', '.join(BLOCK_PATHS)}; "
        "pass the dotted path of its nn.ModuleList of blocks with --blocks-path"
    )
