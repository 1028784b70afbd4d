"""Train the curriculum on Ray Train + DeepSpeed (thin CLI over aiprod.training.runner).

    python jobs/curriculum.py --demo --storage out/runs --run-name demo
    python jobs/curriculum.py --preset cluster --data s3://bucket/shards --storage s3://bucket/runs \
        --run-name r1 train.zero_stage=3 curriculum.phases.3.lr=5e-5
    python jobs/curriculum.py --run-name r1 --storage s3://bucket/runs --resume
    python jobs/curriculum.py --preset learn --data DIR --run-name r2 --latents out/latents/r1 \
        --start-phase 1 train.init_from=out/runs/r1/final
    ray job submit --working-dir . -- python jobs/curriculum.py --preset cluster ...

Exit status: 0 done, 2 a config or usage error (nothing started), 3 bad training data (the
message names it; fix it and continue with --resume).

Starts a local Ray, or joins the one at RAY_ADDRESS / a running local cluster (`--ray-address`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiprod import storage  # noqa: E402
from aiprod.config import ConfigError, add_config_arguments, overrides_from_args  # noqa: E402
from aiprod.ray_local import init_ray  # noqa: E402

DEMO_SHARDS = "out/shards/demo"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    add_config_arguments(p)
    p.add_argument("--data", help="shard dir or s3:// prefix holding index.json (default: data.uri)")
    p.add_argument("--latents", help="latent cache (jobs/encode_latents.py) the denoiser phases read "
                   "(default: data.latents)")
    p.add_argument("--storage", help="run outputs root, local or s3:// (default: train.storage)")
    p.add_argument("--run-name", help="run directory name under --storage")
    p.add_argument("--start-phase", type=int, default=0)
    p.add_argument("--end-phase", type=int)
    p.add_argument("--resume", action="store_true", help="continue the named run from its last good checkpoint")
    p.add_argument("--resume-phase", type=int, help="with --resume: restart at this phase, keeping the weights")
    p.add_argument("--workers", default="auto", help="'auto' or a worker count")
    p.add_argument("--demo", action="store_true",
                   help=f"tiny preset; builds synthetic shards in {DEMO_SHARDS} when --data is not given")
    p.add_argument("--ray-address", help="Ray address; 'local' starts a new local cluster (default: "
                   "RAY_ADDRESS, else a running local cluster, else a new one)")
    args = p.parse_args(argv)
    if args.resume_phase is not None:
        args.resume = True
    if args.workers != "auto" and not args.workers.isdigit():
        p.error(f"--workers must be 'auto' or a positive count, got {args.workers!r}")
    return args


def load(args: argparse.Namespace):
    from aiprod.training.run_options import resolve_run

    return resolve_run(args.config or args.preset or ("tiny" if args.demo else None), overrides_from_args(args),
                       args.run_name, args.storage, args.data, args.resume, DEMO_SHARDS if args.demo else None,
                       start_phase=args.start_phase, end_phase=args.end_phase, resume_phase=args.resume_phase,
                       workers=args.workers, latents=args.latents)


def build_demo_shards(cfg, uri: str) -> None:
    from aiprod.data.synthetic_shards import build_synthetic_shards

    if storage.exists(storage.join(uri, "index.json")):
        return
    phases = cfg.curriculum.phases
    size = (max(p.height for p in phases), max(p.width for p in phases))
    print(f"demo: building {cfg.train.demo_clips} synthetic clips in {uri}", flush=True)
    build_synthetic_shards(uri, cfg.train.demo_clips, levels=(1, 2, 3, 4, 5), size=size,
                           frames=max(p.frames for p in phases), fps=phases[0].fps, seed=cfg.data.seed,
                           data=cfg.data, progress=True)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    try:
        cfg, opts = load(args)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.demo and args.data is None:
        build_demo_shards(cfg, opts.data)
    from aiprod.data.bad_samples import TrainingDataError, data_error_message
    from aiprod.data.latent_cache import LatentCacheError
    from aiprod.training.run_options import RunExistsError, cpus_needed
    from aiprod.training.runner import run_curriculum

    init_ray(cpus_needed(cfg), args.ray_address)
    try:
        summary = run_curriculum(cfg, opts)
    except (ConfigError, RunExistsError, FileNotFoundError, LatentCacheError) as exc:
        print(exc, file=sys.stderr)
        return 2
    except TrainingDataError as exc:
        print(exc, file=sys.stderr)
        return 3
    except Exception as exc:  # bad data met by the driver itself (encoding a latent cache)
        message = data_error_message(exc)
        if message is None:
            raise
        print(f"bad training data: {message}", file=sys.stderr)
        return 3
    last = summary["phases"][-1] if summary["phases"] else {}
    print(f"done: {summary['global_step']} steps in {len(summary['phases'])} phases, last loss "
          f"{last.get('last_loss')}; outputs in {summary['run']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
