"""Multi-process training: `torchrun --nproc-per-node N -m amygdala.train_steering_vectors …`.

Each rank captures its share of the unique texts (every N-th text of the run's fixed
order), accumulates running sums over that share, and the sums are added across ranks
with `all_reduce` — so N processes give the vectors one process gives. The same code
serves N GPUs on one machine (one per rank, NCCL) and several machines; on CPU it runs
with the gloo backend. Only rank 0 writes the artifact.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Dist:
    """This process's place in the job (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    comm_device: str = "cpu"  # where tensors go for all_reduce (cuda:N under NCCL)

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, rows: list[int]) -> list[int]:
        """This rank's part of `rows`: every `world`-th item, starting at `rank`."""
        return rows[self.rank :: self.world]

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Add `tensor` across ranks in place (a no-op in a single process)."""
        if self.active:
            import torch.distributed as td

            wire = tensor.to(self.comm_device)
            td.all_reduce(wire, op=td.ReduceOp.SUM)
            if wire is not tensor:
                tensor.copy_(wire)
        return tensor

    def sum_array(self, array: np.ndarray) -> np.ndarray:
        """`sum_` for numpy arrays (float64 on the wire, so sums stay exact enough)."""
        if not self.active:
            return array
        import torch

        t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64))
        return self.sum_(t).numpy()

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as td

            td.barrier()


def init_distributed(device: str | None) -> tuple[Dist, str | None]:
    """Join the torchrun job when launched by one; returns the rank and its device.

    With CUDA each rank takes GPU `LOCAL_RANK` (NCCL); otherwise gloo on the CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), device
    import torch
    import torch.distributed as td

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device not in ("cpu",)
    if not td.is_initialized():
        td.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    comm = f"cuda:{local}" if use_cuda else "cpu"
    return Dist(rank=rank, world=world, local_rank=local, comm_device=comm), device
