"""How many training workers, and on what: `--workers auto|N` against what the cluster has.

    G GPUs                      -> G GPU workers with the preset's settings
    one GPU < small_gpu_gib     -> the GTX 1070 profile: 1 worker, fp32, ZeRO-2 + optimizer offload,
                                   activation checkpointing, the seed (gtx1070 preset) batch sizes
    no GPU                      -> train.cpu_workers CPU workers (gloo)

`choose_workers` is a pure function of its inputs; `cluster_gpus` asks Ray what is there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiprod.config import Config, load_config

GTX1070_PRESET = "gtx1070"


@dataclass
class WorkerPlan:
    num_workers: int
    use_gpu: bool
    profile: str  # "preset" | "gtx1070" | "cpu" | "explicit"
    overrides: list[str] = field(default_factory=list)  # key.path=value applied to the config
    reason: str = ""


def gtx1070_overrides(cfg: Config) -> list[str]:
    """The small-GPU profile as config overrides; phases take the seed batch size of the
    gtx1070 preset's phase of the same name, others the smallest seed batch size (if smaller)."""
    seed = load_config(GTX1070_PRESET)
    seed_batch = {p.name: p.batch_size for p in seed.curriculum.phases}
    smallest = min(seed_batch.values())
    out = [
        "train.workers=1", "train.use_gpu=true", "train.precision=fp32", "train.zero_stage=2",
        "train.offload_optimizer=true", "train.offload_params=false", "train.activation_checkpointing=true",
        f"train.tf32={str(seed.train.tf32).lower()}",
    ]
    for i, phase in enumerate(cfg.curriculum.phases):
        batch = seed_batch.get(phase.name, min(phase.batch_size, smallest))
        out.append(f"curriculum.phases.{i}.batch_size={batch}")
    return out


def choose_workers(cfg: Config, requested: int | str, gpu_memory_gib: list[float]) -> WorkerPlan:
    """Decide the workers from the request (`auto` or a count) and the cluster's GPUs (GiB each)."""
    gpus = len(gpu_memory_gib)
    use_gpu_cfg = cfg.train.use_gpu
    if requested != "auto":
        count = int(requested)
        if count < 1:
            raise ValueError(f"--workers must be 'auto' or a positive count, got {requested}")
        use_gpu = gpus > 0 if use_gpu_cfg == "auto" else bool(use_gpu_cfg)
        if use_gpu and gpus < count:
            raise ValueError(f"--workers {count} with GPUs needs {count} GPUs; the cluster has {gpus}")
        return WorkerPlan(count, use_gpu, "explicit", [f"train.workers={count}"],
                          f"{count} {'GPU' if use_gpu else 'CPU'} worker(s) as requested")
    if gpus == 0 or use_gpu_cfg is False:
        count = cfg.train.cpu_workers
        why = "no GPU in the cluster" if gpus == 0 else "train.use_gpu=false"
        return WorkerPlan(count, False, "cpu", [f"train.workers={count}", "train.use_gpu=false"],
                          f"{why}: {count} CPU workers (gloo)")
    if gpus == 1 and gpu_memory_gib[0] < cfg.train.small_gpu_gib:
        return WorkerPlan(1, True, "gtx1070", gtx1070_overrides(cfg),
                          f"one GPU with {gpu_memory_gib[0]:.1f} GiB < train.small_gpu_gib="
                          f"{cfg.train.small_gpu_gib}: GTX 1070 profile (1 worker, fp32, ZeRO-2 + "
                          "optimizer offload, activation checkpointing, seed batch sizes)")
    return WorkerPlan(gpus, True, "preset", [f"train.workers={gpus}", "train.use_gpu=true"],
                      f"{gpus} GPU(s): {gpus} GPU workers with the preset's settings")


def cluster_gpus() -> list[float]:
    """GiB of memory of each GPU in the running Ray cluster (asks one GPU task per GPU)."""
    import ray

    count = int(ray.cluster_resources().get("GPU", 0))
    if count == 0:
        return []

    @ray.remote(num_gpus=1)
    def gpu_gib() -> float:
        import torch

        return torch.cuda.get_device_properties(0).total_memory / 2**30

    return list(ray.get([gpu_gib.remote() for _ in range(count)]))
