"""Stage 1 under torch.distributed (torchrun, srun, any launcher that sets RANK and WORLD_SIZE).

Each rank embeds the missing texts whose key falls in its part (``shard_of(key, world) == rank``)
and writes its own shards into the shared store; no file is shared between ranks. The process
group (NCCL on GPUs, gloo on CPU) only carries a barrier and the summed counts that rank 0 prints.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_env() -> DistInfo | None:
    """The launcher's ranks when WORLD_SIZE > 1 (torchrun sets RANK, WORLD_SIZE, LOCAL_RANK)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    return DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


@contextmanager
def process_group(device: str):
    import torch.distributed as dist

    backend = "nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(backend=backend)
    try:
        yield dist
        dist.barrier()  # every rank done with the last collective before any tears the group down
    finally:
        dist.destroy_process_group()


def all_sum(dist, values: list[int], device: str) -> list[int]:
    import torch

    t = torch.tensor(values, dtype=torch.float64, device=device if device.startswith("cuda") else "cpu")
    dist.all_reduce(t)
    return [int(x) for x in t.tolist()]
