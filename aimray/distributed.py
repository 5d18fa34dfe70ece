"""Data parallelism for the continual loop over torch.distributed (gloo on CPU, nccl on GPU).

Every rank holds the same adapter and draws the same batches; each computes its shard of a batch and the
gradients, losses and scores are summed across ranks. So every rank sees the same signals and takes the
same controller decisions: merges and bursts happen identically everywhere. With one rank (the default)
every method is a no-op. Ray Train sets up the process group; nothing here imports ray.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as tdist


class Dist:
    def __init__(self, rank: int = 0, world: int = 1, device: torch.device | str = "cpu") -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in a world of {world}")
        self.rank, self.world, self.device = rank, world, torch.device(device)

    @classmethod
    def from_process_group(cls, device: torch.device | str = "cpu") -> Dist:
        """The ranks of the initialised default process group, or a single rank when there is none."""
        if tdist.is_available() and tdist.is_initialized():
            return cls(tdist.get_rank(), tdist.get_world_size(), device)
        return cls(0, 1, device)

    @property
    def main(self) -> bool:
        """Rank 0 writes events, manifests and checkpoints."""
        return self.rank == 0

    def shard(self, items: Sequence) -> list:
        """This rank's share of a batch: items rank, rank + world, ... (may be empty for tiny batches)."""
        return list(items[self.rank :: self.world])

    def sum(self, value: float) -> float:
        """The sum of a number over ranks (float64), identical on every rank."""
        if self.world == 1:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        tdist.all_reduce(t)
        return float(t.item())

    def sum_grads(self, params: Sequence[torch.Tensor]) -> None:
        """Sum the gradients of `params` over ranks in place, in one flat all-reduce."""
        if self.world == 1:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        tdist.all_reduce(flat)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p))
            offset += n


LOCAL = Dist()
