"""Exponential moving average of a phase's trained weights, kept where the weights are.

Each rank averages what it holds of every trainable parameter: the whole tensor under ZeRO 0-2
(weights are replicated) and only its own partition (`param.ds_tensor`) under ZeRO-3, so the EMA
costs one fp32 copy of a rank's share, not of the model; with ZeRO-Offload (`offload=True`) that copy
lives in CPU memory beside the optimizer state, sparing a small GPU the room. Mid-phase checkpoints keep every rank's
shards (`ema/rank0000.pt`, resumed exactly: same world size and stage); a phase end gathers them
into `ema.safetensors` (full tensors, VideoModel keys), which the next denoiser phase starts from
and final/ exports (train.export_ema).

The decay warms up as min(decay, (1 + n) / (10 + n)) over the n updates so far, so a short phase's
average is not dominated by its starting weights.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

EMA_DIR = "ema"
EMA_WEIGHTS = "ema.safetensors"


class ShardedEMA:
    def __init__(self, engine: Any, decay: float, offload: bool = False):
        self.decay = decay
        self.device = torch.device("cpu") if offload else None
        self.updates = 0
        self.zero3 = bool(engine.zero_optimization_partition_weights())
        named = [(n, p) for n, p in engine.module.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.shadow = [self._local(p).detach().float().to(self.device or self._local(p).device).clone()
                       for p in self.params]

    def _local(self, param: torch.Tensor) -> torch.Tensor:
        return param.ds_tensor if self.zero3 else param.data

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        """After an optimizer step: shadow <- d·shadow + (1 - d)·weights."""
        weight = 1.0 - self.current_decay()
        for shadow, param in zip(self.shadow, self.params):
            shadow.lerp_(self._local(param).float().to(shadow.device), weight)
        self.updates += 1

    # ----------------------------------------------------------------- this rank's shards

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "zero3": self.zero3,
                "shadow": {n: s.cpu() for n, s in zip(self.names, self.shadow)}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        shadow = state["shadow"]
        if list(shadow) != self.names or state["zero3"] != self.zero3:
            raise ValueError("checkpoint's EMA shards do not fit this engine (another mode, ZeRO stage or model)")
        for mine, (name, saved) in zip(self.shadow, shadow.items()):
            if mine.shape != saved.shape:
                raise ValueError(f"checkpoint's EMA shard of {name} is {tuple(saved.shape)}, this rank holds "
                                 f"{tuple(mine.shape)} (another world size?)")
            mine.copy_(saved)
        self.updates = int(state["updates"])

    # ------------------------------------------------------------------- full tensors

    @contextlib.contextmanager
    def _swapped_in(self):
        """The EMA values in the parameters' own storage for the duration (then the weights back)."""
        saved = [self._local(p).detach().clone() for p in self.params]
        with torch.no_grad():
            for shadow, param in zip(self.shadow, self.params):
                local = self._local(param)
                local.copy_(shadow.to(local.device))
        try:
            yield
        finally:
            with torch.no_grad():
                for value, param in zip(saved, self.params):
                    self._local(param).copy_(value)

    def full_state(self) -> dict[str, torch.Tensor]:
        """Full fp32 CPU EMA tensors under VideoModel keys, on every rank (collective under ZeRO-3)."""
        with self._swapped_in():
            if self.zero3:
                import deepspeed

                with deepspeed.zero.GatheredParameters(self.params, modifier_rank=None):
                    return {n: p.detach().float().cpu().clone() for n, p in zip(self.names, self.params)}
            return {n: p.detach().float().cpu().clone() for n, p in zip(self.names, self.params)}

    @torch.no_grad()
    def start_from(self, full: dict[str, torch.Tensor]) -> int:
        """Start the average from full tensors (the previous phase's EMA) where the keys match; the
        number taken. Under ZeRO-3 each rank takes its partition: the flattened tensor, zero-padded
        to a multiple of the world size, split evenly in rank order (DeepSpeed's layout)."""
        import torch.distributed as dist

        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        taken = 0
        for i, name in enumerate(self.names):
            value = full.get(name)
            if value is None:
                continue
            if self.zero3:
                size = self.shadow[i].numel()
                flat = value.float().flatten()[rank * size:(rank + 1) * size]
                self.shadow[i].zero_()
                self.shadow[i].view(-1)[:flat.numel()].copy_(flat)
            elif value.shape == self.shadow[i].shape:
                self.shadow[i].copy_(value)
            else:
                continue
            taken += 1
        return taken
