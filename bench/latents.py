"""Denoiser samples/s from a latent cache against decode + encode online: same phase, same workers.

    python bench/latents.py                      # the `learn` preset's denoiser phase, 2 minutes each way
    python bench/latents.py --minutes 3 --out out/bench-latents
    python bench/latents.py --out out/bench-latents-64 curriculum.phases.1.height=64 curriculum.phases.1.width=64

1. Synthetic shards at the quality benchmark's size (32x32, 9 frames) in OUT/data.
2. A VAE weights dir (the preset's VAE, untrained: speed does not depend on what it learnt).
3. jobs/encode_latents.py's encode (Ray Data) into OUT/latents, timed.
4. The preset's last denoiser phase through the real curriculum (Ray Train + DeepSpeed, the preset's
   workers) twice from those weights: online (shards -> decode -> VAE encode per step) and from the
   cache; steady-state samples/s from each run's metrics (the first 20% of steps left out).

Prints both side by side and, last, one JSON line with `cache_vs_online`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiprod import storage  # noqa: E402
from aiprod.config import load_config  # noqa: E402

LEVEL_MIX = (1, 1, 1, 1, 2, 3, 4, 5)  # as bench/quality.py builds its data


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--minutes", type=float, default=2.0, help="training minutes of each run")
    p.add_argument("--out", default="out/bench-latents")
    p.add_argument("--preset", default="learn")
    p.add_argument("--clips", type=int, default=2000, help="synthetic clips to build")
    p.add_argument("overrides", nargs="*", help="key.path=value for the preset, e.g. a larger clip of its denoiser phase")
    args = p.parse_args(argv)
    if args.minutes <= 0:
        p.error(f"--minutes must be > 0, got {args.minutes}")
    return args


def steady_samples_per_s(run: str, phase_index: int, samples_per_step: int) -> tuple[float, int]:
    """(samples/s over the phase's steps after the first 20%, steps taken)."""
    records = [json.loads(line) for line in storage.read_text(storage.join(run, "metrics.jsonl")).splitlines()]
    steps = [r for r in records if "event" not in r and r.get("phase") == phase_index and "loss" in r]
    if len(steps) < 10:
        raise SystemExit(f"{run}: only {len(steps)} steps; give the runs more --minutes")
    first = steps[len(steps) // 5]
    last = steps[-1]
    return (last["step"] - first["step"]) * samples_per_step / (last["time"] - first["time"]), last["step"]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(args.preset, args.overrides)
    index = max(i for i, p in enumerate(cfg.curriculum.phases) if p.component == "denoiser")
    phase = cfg.curriculum.phases[index]
    data, weights, cache, runs = (str(out / d) for d in ("data", "weights", "latents", "runs"))

    from aiprod.data.synthetic_shards import build_synthetic_shards
    from aiprod.ray_local import init_ray

    if not storage.exists(storage.join(data, "index.json")):
        print(f"data: {args.clips} synthetic clips ({phase.height}x{phase.width}, {phase.frames} frames) -> {data}")
        build_synthetic_shards(data, args.clips, levels=LEVEL_MIX, size=(phase.height, phase.width),
                               frames=phase.frames, fps=phase.fps, seed=cfg.data.seed, data=cfg.data)
    write_weights(cfg, weights)
    workers = cfg.train.workers if isinstance(cfg.train.workers, int) else 2
    init_ray(workers * cfg.train.cpus_per_worker + cfg.data.decode_workers + cfg.data.read_workers + 1, "local")

    from aiprod.data.latent_encode import encode_cache
    from aiprod.training.runner import RunOptions, run_curriculum

    storage.delete(cache)
    started = time.monotonic()
    encoded = encode_cache(data, weights, cache, [phase], cfg.data)
    encode_s = time.monotonic() - started

    overrides = [f"curriculum.phases.{index}.minutes={args.minutes}", f"curriculum.phases.{index}.steps=1000000",
                 f"train.init_from={weights}", "train.cache_latents=false", "checkpoint.every_steps=1000000",
                 "train.progress_every_s=30"]
    rates = {}
    for name, latents in (("online", None), ("cache", cache)):
        run_cfg = load_config(args.preset, [*args.overrides, *overrides])
        storage.delete(storage.join(runs, name))
        summary = run_curriculum(run_cfg, RunOptions(data=data, storage=runs, run_name=name, start_phase=index,
                                                     end_phase=index, latents=latents))
        per_step = phase.batch_size * phase.grad_accum * summary["workers"]
        rates[name] = steady_samples_per_s(storage.join(runs, name), index, per_step)

    ratio = rates["cache"][0] / rates["online"][0]
    clips = encoded["counts"]["clips"]
    result = {
        "preset": args.preset, "phase": phase.name, "workers": workers, "batch_size": phase.batch_size,
        "clip": f"{phase.frames}x{phase.height}x{phase.width}",
        "online_samples_per_s": round(rates["online"][0], 2), "cache_samples_per_s": round(rates["cache"][0], 2),
        "online_steps": rates["online"][1], "cache_steps": rates["cache"][1],
        "cache_vs_online": round(ratio, 3),
        "encode_s": round(encode_s, 1), "encode_clips": clips, "encode_clips_per_s": round(clips / encode_s, 1),
        # online samples/s the encode costs once: after this many samples the cache has paid for itself
        "break_even_samples": round(encode_s / (1 / rates["online"][0] - 1 / rates["cache"][0])) if ratio > 1 else None,
        "goal": 3.0, "machine": machine(), "overrides": args.overrides,
    }
    print(f"\n{'':<10}{'samples/s':>10}{'steps':>8}")
    print(f"{'online':<10}{result['online_samples_per_s']:>10.1f}{result['online_steps']:>8}")
    print(f"{'cache':<10}{result['cache_samples_per_s']:>10.1f}{result['cache_steps']:>8}")
    print(f"cache / online: {ratio:.2f}x (goal 3); encode {clips} clips in {encode_s:.0f}s "
          f"({result['encode_clips_per_s']} clips/s)")
    print(json.dumps(result))
    return 0


def write_weights(cfg, weights: str) -> None:
    """The preset's model, untrained, with unit latent statistics, as a weights dir."""
    import torch

    from aiprod.diffusion.pipeline import VideoPipeline
    from aiprod.models import build_model

    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model)
    channels = cfg.model.vae.latent_channels
    model.vae.set_latent_stats(torch.zeros(channels), torch.ones(channels))
    storage.delete(weights)
    VideoPipeline(cfg, model).save_pretrained(weights)


def machine() -> str:
    import os
    import platform

    return f"{os.cpu_count()} CPU cores, {platform.machine()}, no GPU" if not _gpu() else f"GPU: {_gpu()}"


def _gpu() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


if __name__ == "__main__":
    sys.exit(main())
