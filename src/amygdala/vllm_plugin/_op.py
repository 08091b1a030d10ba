"""The readout as a torch custom op, so it survives vLLM's compilation and CUDA graphs.

vLLM compiles the model (Dynamo traces it once, Inductor compiles the graph, CUDA graphs
replay it on GPUs). A Python forward hook fires while Dynamo traces and then never again,
silently. An opaque custom op called inside the decoder layer's forward is instead part of
the graph: it runs on every step, compiled or replayed, and writes `h @ Vᵀ` for every
token of the step into a persistent buffer whose address never changes — which is what
CUDA graphs need. Its fake implementation tells the compiler it returns nothing and only
mutates `out`.

The op is registered straight on a `torch.library.Library` (as vLLM registers its own),
not with `torch.library.custom_op`, whose dispatch wrapper costs ~3x more per call from a
compiled graph. Importing this module registers `torch.ops.amygdala.readout_project`.
"""

from __future__ import annotations

import torch
from torch import Tensor

SCHEMA = (
    "readout_project(Tensor hidden, Tensor? residual, Tensor weight_t, Tensor(a!) out, "
    "int slot) -> ()"
)


def readout_project(
    hidden: Tensor, residual: Tensor | None, weight_t: Tensor, out: Tensor, slot: int
) -> None:
    """`out[slot, :n] = (hidden + residual) @ weight_t` for the n tokens of this step.

    Args:
        hidden: `[n, H]` the decoder layer's output hidden states.
        residual: `[n, H]` the residual it hands on (vLLM's fused-norm layers), or None
            for layers that return the residual stream itself (GPT-2).
        weight_t: `[H, C]` fp32 concept vectors of this layer, transposed.
        out: `[L, max_tokens, C]` fp32 persistent buffer; row `slot` is this layer's.
        slot: this layer's index among the hooked layers.
    """
    h = hidden if residual is None else hidden + residual
    n = h.shape[0]
    if n > out.shape[1]:
        raise RuntimeError(f"amygdala readout: {n} tokens in one step, buffer holds {out.shape[1]}")
    torch.mm(h.to(weight_t.dtype), weight_t, out=out[slot, :n])


def _fake(
    hidden: Tensor, residual: Tensor | None, weight_t: Tensor, out: Tensor, slot: int
) -> None:
    return None


_LIB = torch.library.Library("amygdala", "FRAGMENT")  # kept alive: the op lives with it
_LIB.define(SCHEMA)
_LIB.impl("readout_project", readout_project, "CompositeExplicitAutograd")
torch.library.register_fake("amygdala::readout_project", _fake, lib=_LIB)
