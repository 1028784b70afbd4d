"""Training-step time of each DeepSpeed ZeRO stage on N local ranks, against plain DDP: which
`train.zero_stage` a preset should use on a machine.

    python bench/zero_stages.py [--preset tiny] [--phase 1] [--ranks N] [--stages 0 1 2 3] [--batch N]
                                [--rounds 30] [--window 5] [--threads N] [key.path=value ...]

Each rank is a process of its own (gloo on CPU; with CUDA, NCCL and one GPU per rank), set up as the
curriculum's workers are (prepare_training_process, train.cpus_per_worker torch threads on CPU). Each
rank builds the phase's module once per contender: (a) torch DistributedDataParallel + AdamW (+ grad
clipping), the baseline, then one DeepSpeed engine per stage, built as the curriculum builds it for
`--ranks` workers. They take turns, one `--window`-step window each per round behind a barrier, so the
machine's drift hits all alike. Seconds/step are rank 0's medians over rounds (collectives keep the
ranks in step); `zero<k>_vs_ddp` is the median of per-round DDP time / stage time (above 1: faster than
DDP). The stages trade memory for communication; this measures only their time. Last line: JSON
{ddp_step_ms, zero<k>_step_ms, zero<k>_vs_ddp, fastest_stage, ...}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from train_step import deepspeed_step_fn, free_port, init_rank, plain_step_fn, timed, warm_up  # noqa: E402

from aiprod.config import Config, load_config  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--preset", default="tiny")
    p.add_argument("--phase", type=int, default=1, help="curriculum phase whose component is trained")
    p.add_argument("--ranks", type=int, help="processes (default: the GPUs, else train.workers)")
    p.add_argument("--stages", type=int, nargs="+", default=[0, 1, 2, 3], choices=[0, 1, 2, 3])
    p.add_argument("--batch", type=int, help="per-rank batch (default: the phase's batch_size)")
    p.add_argument("--rounds", type=int, default=30, help="turns of every contender")
    p.add_argument("--window", type=int, default=5, help="steps timed per turn")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per contender first")
    p.add_argument("--threads", type=int, help="CPU only: torch threads per rank (default: train.cpus_per_worker)")
    p.add_argument("overrides", nargs="*")
    return p.parse_args()


def stage_config(args: argparse.Namespace, stage: int) -> Config:
    overrides = [*args.overrides, f"train.zero_stage={stage}"]
    if not torch.cuda.is_available():
        overrides.append("train.precision=fp32")  # as bench/train_step.py: no fp16/bf16 speed on CPU
    return load_config(args.preset, overrides)


def run_rank(rank: int, args: argparse.Namespace, port: int, results) -> None:
    """One rank: join the group, build every contender, time the rounds; rank 0 puts them in `results`."""
    import torch.distributed as dist

    from aiprod.training.process import prepare_training_process

    cuda = torch.cuda.is_available()
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(args.threads)
    prepare_training_process()
    init_rank("nccl" if cuda else "gloo", rank, args.ranks, port)
    contenders = {"ddp": plain_step_fn(stage_config(args, 1), args.phase, args.batch, device, ddp=True)}
    for stage in args.stages:
        contenders[f"zero{stage}"] = deepspeed_step_fn(stage_config(args, stage), args.phase, args.batch, device,
                                                       world_size=args.ranks)
    for step in contenders.values():
        warm_up(step, args.warmup)
    rounds: list[dict[str, float]] = []
    for r in range(args.rounds):
        times = {}
        for name, step in contenders.items():
            dist.barrier()
            times[name] = timed(step, args.window, device)
        rounds.append(times)
        if rank == 0:
            line = ", ".join(f"{name} {t * 1e3:.1f}" for name, t in times.items())
            print(f"round {r + 1}/{args.rounds} (ms/step): {line}", flush=True)
    if rank == 0:
        results.put(rounds)
    dist.destroy_process_group()


def summarize(rounds: list[dict[str, float]], batch: int, ranks: int) -> dict:
    median = statistics.median
    names = list(rounds[0])
    out: dict = {f"{n}_step_ms": round(median(t[n] for t in rounds) * 1e3, 2) for n in names}
    out.update({f"{n}_samples_s": round(batch * ranks / median(t[n] for t in rounds), 2) for n in names})
    stages = [n for n in names if n != "ddp"]
    out.update({f"{n}_vs_ddp": round(median(t["ddp"] / t[n] for t in rounds), 3) for n in stages})
    out["fastest_stage"] = int(min(stages, key=lambda n: out[f"{n}_step_ms"])[4:]) if stages else None
    return out


def main() -> int:
    import torch.multiprocessing as mp

    args = parse_args()
    cfg = stage_config(args, 1)
    phase = cfg.curriculum.phases[args.phase]
    args.batch = args.batch or phase.batch_size
    args.ranks = args.ranks or torch.cuda.device_count() or cfg.train.workers
    args.threads = args.threads or max(1, int(cfg.train.cpus_per_worker))
    if torch.cuda.is_available() and args.ranks > torch.cuda.device_count():
        raise SystemExit(f"--ranks {args.ranks}: only {torch.cuda.device_count()} GPUs here")
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(f"preset {args.preset}, phase {args.phase} '{phase.name}' ({phase.component}), {args.ranks} ranks on "
          f"{device}, batch {args.batch} per rank, {cfg.train.precision}, ZeRO stages {args.stages} vs DDP, "
          f"{args.rounds} rounds of {args.window} steps", flush=True)
    results = mp.get_context("spawn").SimpleQueue()
    mp.spawn(run_rank, args=(args, free_port(), results), nprocs=args.ranks, join=True)
    out = summarize(results.get(), args.batch, args.ranks)
    print(f"{'contender':<14}{'ms/step':>10}{'samples/s':>12}{'vs DDP':>9}")
    for name in ["ddp", *(f"zero{s}" for s in args.stages)]:
        ratio = out.get(f"{name}_vs_ddp", 1.0)
        print(f"{name:<14}{out[f'{name}_step_ms']:>10.1f}{out[f'{name}_samples_s']:>12.2f}{ratio:>9.3f}")
    print(f"fastest: ZeRO-{out['fastest_stage']} (the preset has train.zero_stage={load_config(args.preset).train.zero_stage})")
    print(json.dumps({**out, "device": device, "ranks": args.ranks, "threads": args.threads, "preset": args.preset,
                      "phase": args.phase, "batch": args.batch, "precision": cfg.train.precision}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
