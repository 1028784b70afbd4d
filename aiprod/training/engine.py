"""DeepSpeed engine per phase: config from TrainConfig/PhaseConfig, warmup + cosine LR, weights in/out.

Only the phase's trained component is wrapped by the engine (and so partitioned by ZeRO and
given to the optimizer); frozen components stay plain modules on every rank. With no GPU,
DeepSpeed picks its CPU accelerator by itself and runs over the gloo group Ray Train created.
"""

from __future__ import annotations

import contextlib
import gc
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from aiprod.config import PhaseConfig, TrainConfig

# DeepSpeed logs a throughput line every `steps_per_print` steps; our own progress line replaces it.
_NEVER = 1 << 62
HALF_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def deepspeed_config(train: TrainConfig, phase: PhaseConfig, world_size: int) -> dict[str, Any]:
    """The DeepSpeed JSON config for one phase (ZeRO stage, offload, precision, clipping, AdamW)."""
    # contiguous_gradients copies every gradient into one bucket during backward to spare the GPU
    # allocator fragmentation; on CPU it is only an extra copy (and the bulk of ZeRO-2's step overhead).
    zero: dict[str, Any] = {"stage": train.zero_stage, "contiguous_gradients": torch.cuda.is_available()}
    if train.offload_optimizer:
        if train.zero_stage == 0:
            raise ValueError("train.offload_optimizer needs train.zero_stage >= 1")
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if train.offload_params:
        if train.zero_stage != 3:
            raise ValueError("train.offload_params needs train.zero_stage=3")
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if train.zero_stage == 3:
        # model.safetensors is written from gathered full-precision params, not DeepSpeed's 16-bit copy.
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": phase.batch_size,
        "gradient_accumulation_steps": phase.grad_accum,
        "train_batch_size": phase.batch_size * phase.grad_accum * world_size,
        "gradient_clipping": train.grad_clip,
        "zero_optimization": zero,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": phase.lr,
                "betas": list(train.betas),
                "weight_decay": train.weight_decay,
                # torch's AdamW unless offloading (then DeepSpeed's CPU Adam): no CUDA op build.
                "torch_adam": not train.offload_optimizer,
            },
        },
        "steps_per_print": _NEVER,
        "wall_clock_breakdown": False,
    }
    if train.offload_optimizer:
        # DeepSpeedCPUAdam only; ZeRO-Offload with a torch optimizer would be rejected.
        config["zero_force_ds_cpu_optimizer"] = True
    if train.precision == "bf16":
        config["bf16"] = {"enabled": True}
    elif train.precision == "fp16":
        config["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
    return config


@dataclass
class LRSchedule:
    """Linear warmup then cosine decay to `min_lr_ratio`, times `scale` (lowered by rollbacks and
    reduce-on-plateau). A callable object, so LambdaLR saves and restores it with the optimizer."""

    total_steps: int
    warmup_steps: int
    min_lr_ratio: float
    scale: float = 1.0
    time_fraction: float = 0.0  # a phase with a `minutes` cap: how much of it has passed

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            factor = (step + 1) / (self.warmup_steps + 1)
        else:
            span = max(1, self.total_steps - self.warmup_steps)
            progress = min(1.0, max((step - self.warmup_steps) / span, self.time_fraction))
            cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
            factor = self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine
        return factor * self.scale


def lr_schedule(phase: PhaseConfig, total_steps: int, scale: float = 1.0) -> LRSchedule:
    if phase.warmup_steps is not None:
        warmup = phase.warmup_steps
    else:
        warmup = int(round((phase.warmup_fraction or 0.0) * total_steps))
    return LRSchedule(total_steps=max(1, total_steps), warmup_steps=min(warmup, max(0, total_steps - 1)),
                      min_lr_ratio=phase.min_lr_ratio, scale=scale)


@dataclass
class PhaseEngine:
    engine: Any  # deepspeed.DeepSpeedEngine
    schedule: LRSchedule

    @property
    def lr(self) -> float:
        return float(self.engine.get_lr()[0])

    def set_lr_scale(self, scale: float) -> None:
        """Change the LR multiplier now (the scheduler applies it from the next step on)."""
        self.schedule.scale = scale
        scheduler = self.engine.lr_scheduler
        for group, base, fn in zip(self.engine.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["lr"] = base * fn(scheduler.last_epoch)


def skip_inference_allreduce_kernel() -> None:
    """Keep DeepSpeed's comm backend from JIT-compiling its shared-memory all-reduce kernel.

    On CPU, DeepSpeed's first init compiles that kernel with g++ (about 50 s on a fresh machine or
    venv, then a ninja check in every new worker process), yet only its inference/tensor-parallel
    all-reduce uses it: training collectives go through torch.distributed (gloo) either way."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def build_engine(
    module: nn.Module, train: TrainConfig, phase: PhaseConfig, world_size: int, total_steps: int,
    lr_scale: float = 1.0,
) -> PhaseEngine:
    """Wrap `module` (its trainable params only go to the optimizer) in a DeepSpeed engine."""
    import deepspeed

    skip_inference_allreduce_kernel()
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"phase '{phase.name}': the {phase.component} has no trainable parameters")
    config = deepspeed_config(train, phase, world_size)
    schedule = lr_schedule(phase, total_steps, lr_scale)

    def scheduler(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    engine, _, _, _ = deepspeed.initialize(
        model=module, model_parameters=params, config=config, lr_scheduler=scheduler, dist_init_required=False
    )
    if train.compile:
        engine.compile()
    return PhaseEngine(engine=engine, schedule=schedule)


def destroy_engine(phase_engine: PhaseEngine | None) -> None:
    if phase_engine is None:
        return
    with contextlib.suppress(Exception):  # best effort: the next phase builds a fresh model anyway
        phase_engine.engine.destroy()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _cpu_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu().clone() for k, v in state.items()}


def gathered_state_dict(phase_engine: PhaseEngine) -> dict[str, torch.Tensor]:
    """Full fp32 CPU copies of the engine module's params and buffers, on every rank.

    Collective under ZeRO-3 (params are partitioned: each rank must join the all-gather)."""
    engine = phase_engine.engine
    module = engine.module
    if engine.zero_optimization_partition_weights():
        import deepspeed

        params = list(module.parameters())
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            return _cpu_copy(module.state_dict())
    return _cpu_copy(module.state_dict())


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Mixed-precision forward for fp16/bf16 (DeepSpeed holds 16-bit weights; frozen parts stay fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=HALF_DTYPES[precision])


def worker_device(use_gpu: bool) -> torch.device:
    if use_gpu and torch.cuda.is_available():
        import ray.train.torch

        return ray.train.torch.get_device()
    return torch.device("cpu")
