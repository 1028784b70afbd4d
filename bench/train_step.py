"""Training-step throughput: plain PyTorch vs the DeepSpeed engine vs Ray Train + DeepSpeed.

    python bench/train_step.py [--preset tiny] [--phase 1] [--batch N] [--rounds 40] [--window 5]
                               [--threads N] [--no-ray] [key.path=value ...]

The same model (the phase's trained component: the denoiser + text encoder for a denoiser phase,
with the frozen VAE encoding the clips), the same fixed batch and the same precision, trained by
(a) a plain PyTorch loop with torch.optim.AdamW (+ grad clipping), (b) the DeepSpeed engine built
exactly as the curriculum builds it (one rank, train.zero_stage), (c) Ray Train's TorchTrainer with
one worker running (b) inside. They take turns: each round times a `--window`-step window of (a),
then of (b), then of (c) in the Ray worker (a baton actor passes the turn), so the machine's drift
hits all three alike; samples/s are medians over rounds, the ratios medians of per-round ratios.
Ray's start-up is outside the windows (reported as ray_fit_wall_s). Each contender's minor page faults
per step are reported too (fresh pages the kernel maps in; see aiprod/training/process.py). Where Ray is
not installed (or with --no-ray) (c) is skipped and its fields are null. With a GPU it also reports the
denoiser's MFU in bf16, eager and torch.compile (`--mfu-preset cluster`), and the gtx1070 preset's
first denoiser phase under an 8 GiB memory cap, fp32, TF32 off (peak memory). Last line: JSON
{plain_samples_s, deepspeed_samples_s, ray_samples_s, deepspeed_vs_plain, ray_vs_deepspeed, ...}.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from aiprod.config import Config, load_config  # noqa: E402

H100_BF16_DENSE_TFLOPS = 989.0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--preset", default="tiny")
    p.add_argument("--phase", type=int, default=1, help="curriculum phase whose component is trained")
    p.add_argument("--batch", type=int, help="per-step batch (default: the phase's batch_size)")
    p.add_argument("--rounds", type=int, default=40, help="turns of (a), (b), (c)")
    p.add_argument("--window", type=int, default=5, help="steps timed per turn")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per contender first")
    p.add_argument("--threads", type=int, help="torch CPU threads of all three (default: train.cpus_per_worker, "
                   "as the curriculum's workers run)")
    p.add_argument("--no-ray", dest="with_ray", action="store_false",
                   help="skip (c) (also skipped, with a note, where Ray is not installed)")
    p.add_argument("--mfu-preset", default="cluster", help="GPU only: preset whose denoiser MFU is reported")
    p.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS, help="GPU bf16 dense peak")
    p.add_argument("overrides", nargs="*")
    return p.parse_args()


# ------------------------------------------------------------------------------ setup


def setup(cfg: Config, phase_index: int, batch: int, device: torch.device, seed: int = 0):
    """(PhaseModule, video, captions) on `device`, identical for every contender."""
    from aiprod.models import build_model
    from aiprod.training.phase_module import PhaseModule, set_trainable

    phase = cfg.curriculum.phases[phase_index]
    torch.manual_seed(seed)
    model = build_model(cfg.model)
    model.denoiser.set_activation_checkpointing(
        cfg.train.activation_checkpointing or cfg.model.denoiser.activation_checkpointing)
    model.to(device)
    set_trainable(model, phase.component)
    video = torch.rand(batch, 3, phase.frames, phase.height, phase.width, generator=torch.Generator().manual_seed(1))
    captions = [f"a red circle moving right, clip {i}" for i in range(batch)]
    return PhaseModule(model, phase, cfg), (video * 2 - 1).to(device), captions


def warm_up(step, steps: int) -> None:
    """Untimed steps first (allocator, oneDNN/cuDNN kernel choice, DeepSpeed's first-step set-up)."""
    for _ in range(steps):
        step()


def minor_page_faults() -> int:
    """This process's minor page faults so far (fresh pages the kernel had to map and zero)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def timed(step, steps: int, device: torch.device) -> float:
    """Seconds per step over `steps` steps."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def timed_window(step, steps: int, device: torch.device) -> tuple[float, float]:
    """(seconds per step, minor page faults per step) over `steps` steps."""
    before = minor_page_faults()
    seconds = timed(step, steps, device)
    return seconds, (minor_page_faults() - before) / steps


def plain_step_fn(cfg: Config, phase_index: int, batch: int, device: torch.device, ddp: bool = False):
    """(a): the phase's module trained by a plain loop: torch AdamW, grad clipping as configured
    (`ddp`: wrapped in DistributedDataParallel, which all-reduces the gradients across ranks)."""
    from aiprod.training.engine import autocast

    module, video, captions = setup(cfg, phase_index, batch, device)
    params = [p for p in module.parameters() if p.requires_grad]
    if ddp:
        module = torch.nn.parallel.DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None)
    phase = cfg.curriculum.phases[phase_index]
    optimizer = torch.optim.AdamW(params, lr=phase.lr, betas=tuple(cfg.train.betas),
                                  weight_decay=cfg.train.weight_decay)
    generator = torch.Generator(device=device).manual_seed(0)

    def step() -> None:
        with autocast(cfg.train.precision, device):
            loss, _ = module(video, captions, generator)
        loss.backward()
        if cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def deepspeed_step_fn(cfg: Config, phase_index: int, batch: int, device: torch.device, world_size: int = 1):
    """(b): a DeepSpeed engine as the curriculum builds it (`world_size` ranks), and its step function."""
    from aiprod.training.engine import autocast, build_engine

    module, video, captions = setup(cfg, phase_index, batch, device)
    phase = cfg.curriculum.phases[phase_index].model_copy(update={"batch_size": batch, "grad_accum": 1})
    pe = build_engine(module, cfg.train, phase, world_size=world_size, total_steps=1_000_000)
    generator = torch.Generator(device=device).manual_seed(0)

    def step() -> None:
        with autocast(cfg.train.precision, device):
            loss, _ = pe.engine(video, captions, generator)
        pe.engine.backward(loss)
        pe.engine.step()

    return step


# ------------------------------------------------------------- (c), in turns with (a) and (b)
#
# The machine's speed drifts (shared host, other processes), so the three never run apart in time:
# each round times one window of (a), one of (b), then hands a baton to the Ray Train worker for
# one window of (c). Ratios are medians of the per-round ratios, so a slow spell hits both sides.


def make_baton():
    import asyncio

    import ray

    @ray.remote(num_cpus=0)
    class Baton:
        """Whose turn it is: 'worker' (start-up, then (c)), 'driver' ((a) and (b)); 'stop' ends the worker."""

        def __init__(self) -> None:
            self.holder = "worker"
            self.changed = asyncio.Event()

        async def take(self, who: str) -> str:
            while self.holder not in (who, "stop"):
                await self.changed.wait()
            return self.holder

        async def give(self, to: str) -> None:
            self.holder = to
            self.changed.set()
            self.changed = asyncio.Event()

    return Baton.remote()


def _ray_worker(config: dict) -> None:
    import tempfile

    import ray
    import ray.train

    from aiprod.config import validate
    from aiprod.training.engine import worker_device
    from aiprod.training.process import prepare_training_process

    prepare_training_process()  # as the curriculum's workers do, and as main() does for (a) and (b)
    torch.set_num_threads(config["threads"])
    cfg = validate(config["cfg"])
    device = worker_device(cfg.train.use_gpu is True)
    step = deepspeed_step_fn(cfg, config["phase"], config["batch"], device)
    warm_up(step, config["warmup"])
    baton, windows, faults = config["baton"], [], []
    ray.get(baton.give.remote("driver"))  # ready: the driver's rounds start now, not during our start-up
    while ray.get(baton.take.remote("worker")) == "worker":
        seconds, per_step = timed_window(step, config["window"], device)
        windows.append(seconds)
        faults.append(per_step)
        ray.get(baton.give.remote("driver"))
    # Ray Train V2 keeps the metrics of checkpointed reports in Result.metrics: report a tiny one.
    with tempfile.TemporaryDirectory() as tmp:
        ray.train.report({"windows": windows, "faults": faults}, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def start_ray_worker(cfg: Config, phase_index: int, batch: int, use_gpu: bool, window: int, warmup: int,
                     threads: int, baton):
    """fit() of a one-worker TorchTrainer running _ray_worker, in a thread; returns (thread, result box)."""
    import threading

    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"use_gpu": use_gpu})})
    trainer = TorchTrainer(
        _ray_worker,
        train_loop_config={"cfg": cfg.to_dict(), "phase": phase_index, "batch": batch, "window": window,
                           "warmup": warmup, "threads": threads, "baton": baton},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=1, use_gpu=use_gpu,
                                               resources_per_worker={"CPU": threads}),
        run_config=ray.train.RunConfig(storage_path=str(Path("/tmp") / "aiprod-bench"), name=f"bench-{os.getpid()}"),
    )
    box: dict = {}

    def fit() -> None:
        try:
            box["result"] = trainer.fit()
        except BaseException as exc:  # noqa: BLE001 - reported by the driver
            box["error"] = exc

    thread = threading.Thread(target=fit, daemon=True)
    thread.start()
    return thread, box


def take_turn(baton, thread, box, timeout_s: float = 600.0) -> None:
    """Wait for the baton to come back to the driver; fail loudly if the Ray worker died."""
    import ray

    ref = baton.take.remote("driver")
    deadline = time.monotonic() + timeout_s
    while True:
        ready, _ = ray.wait([ref], timeout=1.0)
        if ready:
            return
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the Ray Train worker stopped before its turn: {box.get('error', 'timed out')}")


def compare(cfg: Config, phase_index: int, batch: int, device: torch.device, args: argparse.Namespace) -> dict:
    """Per-round seconds/step of (a), (b) and, with Ray, (c); medians and per-round ratios."""
    import statistics

    if args.with_ray:
        import ray

        if not ray.is_initialized():
            ray.init(num_cpus=args.threads + 1, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
        baton = make_baton()
        started = time.perf_counter()
        thread, box = start_ray_worker(cfg, phase_index, batch, device.type == "cuda", args.window, args.warmup,
                                       args.threads, baton)
        take_turn(baton, thread, box)  # the worker has built its engine and warmed up
    contenders = {"plain": plain_step_fn(cfg, phase_index, batch, device),
                  "deepspeed": deepspeed_step_fn(cfg, phase_index, batch, device)}
    for step in contenders.values():
        warm_up(step, args.warmup)
    rounds: list[dict[str, float]] = []
    faults: dict[str, list[float]] = {name: [] for name in contenders}
    for r in range(args.rounds):
        times = {}
        for name, step in contenders.items():
            times[name], per_step = timed_window(step, args.window, device)
            faults[name].append(per_step)
        if args.with_ray:
            ray.get(baton.give.remote("worker"))
            take_turn(baton, thread, box)
        rounds.append(times)
        print(f"round {r + 1}/{args.rounds}: plain {times['plain'] * 1e3:.1f} ms, deepspeed "
              f"{times['deepspeed'] * 1e3:.1f} ms per step", flush=True)
    extra: dict[str, float] = {}
    if args.with_ray:
        ray.get(baton.give.remote("stop"))
        thread.join()
        if "error" in box:
            raise RuntimeError(f"Ray Train worker failed: {box['error']}") from box["error"]
        for times, ray_s in zip(rounds, box["result"].metrics["windows"]):
            times["ray"] = ray_s
        faults["ray"] = box["result"].metrics["faults"]
        extra["ray_fit_wall_s"] = time.perf_counter() - started
    median = statistics.median
    names, ran = ("plain", "deepspeed", "ray"), set(faults)  # what was not timed (no Ray) is None
    paired = {f"{b}_vs_{a}": [t[a] / t[b] for t in rounds] if b in ran else None
              for a, b in (("plain", "deepspeed"), ("deepspeed", "ray"))}
    return {
        **{f"{n}_samples_s": batch / median(t[n] for t in rounds) if n in ran else None for n in names},
        **{key: median(values) if values else None for key, values in paired.items()},
        **{f"{key}_range": [min(values), max(values)] if values else None for key, values in paired.items()},
        **{f"{n}_page_faults_per_step": median(faults[n]) if n in ran else None for n in names},
        **extra,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_rank(backend: str, rank: int = 0, world_size: int = 1, port: int | None = None) -> None:
    """Join a process group on loopback as DeepSpeed expects it (rank env vars set)."""
    import torch.distributed as dist

    os.environ.update({"LOCAL_RANK": str(rank), "RANK": str(rank), "WORLD_SIZE": str(world_size),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port or free_port())})
    dist.init_process_group(backend, rank=rank, world_size=world_size)


def main() -> int:
    args = parse_args()
    if args.with_ray and importlib.util.find_spec("ray") is None:
        print("Ray is not installed here: (c) Ray Train + DeepSpeed is skipped, c/b not measured", flush=True)
        args.with_ray = False
    from aiprod.training.process import prepare_training_process

    prepare_training_process()
    cuda = torch.cuda.is_available()
    cfg = load_config(args.preset, args.overrides)
    if not cuda and cfg.train.precision == "fp16":
        cfg = load_config(args.preset, [*args.overrides, "train.precision=fp32"])
    device = torch.device("cuda" if cuda else "cpu")
    args.threads = args.threads or max(1, int(cfg.train.cpus_per_worker))
    torch.set_num_threads(args.threads)
    phase = cfg.curriculum.phases[args.phase]
    batch = args.batch or phase.batch_size
    init_rank("nccl" if cuda else "gloo")
    print(f"preset {args.preset}, phase {args.phase} '{phase.name}' ({phase.component}), batch {batch}, "
          f"{phase.frames}x{phase.height}x{phase.width}, {cfg.train.precision}, ZeRO-{cfg.train.zero_stage}, "
          f"{device}, {args.threads} threads, {args.rounds} rounds of {args.window} steps each", flush=True)
    measured = compare(cfg, args.phase, batch, device, args)
    result = {
        **{k: [round(x, 3) for x in v] if isinstance(v, list) else v if v is None else round(v, 3)
           for k, v in measured.items()},
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "threads": args.threads, "preset": args.preset, "phase": args.phase, "batch": batch,
        "precision": cfg.train.precision, "zero_stage": cfg.train.zero_stage,
    }
    if cuda:
        from gpu_extras import denoiser_mfu, gtx1070_peak_gib

        result.update({k: round(v, 4) for k, v in denoiser_mfu(args.mfu_preset, args.peak_tflops, 10, 3).items()})
        result["gtx1070_peak_gib"] = round(gtx1070_peak_gib(steps=3), 2)
    print(f"{'contender':<28}{'samples/s':>12}{'page faults/step':>18}")
    for name, key in (("(a) plain PyTorch + AdamW", "plain"), ("(b) DeepSpeed engine", "deepspeed"),
                      ("(c) Ray Train + DeepSpeed", "ray")):
        if measured[key + "_samples_s"] is not None:
            print(f"{name:<28}{measured[key + '_samples_s']:>12.2f}{measured[key + '_page_faults_per_step']:>18.0f}")
    for label, key, goal in (("b/a", "deepspeed_vs_plain", 0.95), ("c/b", "ray_vs_deepspeed", 0.97)):
        if result[key] is not None:
            low, high = result[key + "_range"]
            print(f"{label} = {result[key]} (median of {args.rounds} rounds, {low}-{high}; goal >= {goal})")
    print(json.dumps(result), flush=True)
    if args.with_ray:
        import ray

        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
