"""The collectives the training ranks agree through (gloo or NCCL; no-ops on one rank).

Every decision of the loop (end of a pass, bad data, NaN skip, rollback, plateau, stop) is taken on
values these return, so the ranks stay in lock-step and call `ray.train.report` equally often.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def _many_ranks() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


def all_reduce(values: list[float], op: str = "sum") -> list[float]:
    """The sum (or max) of `values` over the ranks, in float64."""
    tensor = torch.tensor(values, dtype=torch.float64)
    if _many_ranks():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return tensor.tolist()


def all_gather(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order."""
    if not _many_ranks():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if not _many_ranks():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
