"""The continuous fine-tuning cycle (thin CLI over aiprod.finetune): fine-tune the registry's
production on new shards, evaluate the candidate beside production, publish it as the next version
with that report, and promote it only if it passes the gates and is not worse on the judge.

    python jobs/finetune.py --registry out/registry --data out/shards/new --mode lora
    python jobs/finetune.py --registry s3://b/registry --data s3://b/shards/2026-12 --storage s3://b/runs \
        --ab 0.1 finetune.margin=0.05 curriculum.phases.5.steps=2000
    ray job submit --working-dir . -- python jobs/finetune.py --registry s3://... --data s3://... ...

The config is production's own (its config.yaml in the registry) unless --preset/--config names
another with the same model section; `key.path=value` overrides apply on top. Rerunning the same
command does nothing new (it resumes a crashed run, finds a published candidate) and prints the
same line. The last line printed is JSON: {"status": "promoted"|"kept"|"ab", "candidate", "base",
"production", "ab", "mode", "key", "run", "report", "gates_passed", "reasons", "judge"}.

Exit status: 0 done (promoted, kept or A/B), 2 bad input (nothing trained: no production, no
index.json, a bad config), 3 bad training data (fix it and rerun: the run resumes), 1 other failures.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiprod.config import ConfigError, add_config_arguments, overrides_from_args  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--registry", required=True, help="registry root, local dir or s3:// prefix")
    p.add_argument("--data", required=True, help="the new shards: dir or s3:// prefix holding index.json")
    p.add_argument("--storage", help="runs root, local or s3:// (default: train.storage)")
    add_config_arguments(p)
    p.add_argument("--mode", choices=("full", "lora", "dora"), help="what to train (default: finetune.mode)")
    p.add_argument("--ab", type=float, metavar="FRACTION",
                   help="send this share of Serve's traffic to the candidate instead of promoting it")
    p.add_argument("--start-phase", type=int, help="first phase trained (default: the first denoiser phase)")
    p.add_argument("--end-phase", type=int, help="last phase trained (default: the last denoiser phase)")
    p.add_argument("--workers", default="auto", help="'auto' or a worker count")
    p.add_argument("--device", default="cpu", help="torch device of the evaluation, e.g. cuda")
    p.add_argument("--ray-address", help="Ray address; 'local' starts a new local cluster (default: "
                   "RAY_ADDRESS, else a running local cluster, else a new one)")
    args = p.parse_args(argv)
    if args.workers != "auto" and not args.workers.isdigit():
        p.error(f"--workers must be 'auto' or a positive count, got {args.workers!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    from aiprod.data.bad_samples import TrainingDataError
    from aiprod.finetune import CycleInputError, CycleOptions, plan_cycle, run_cycle
    from aiprod.ray_local import init_ray
    from aiprod.training.run_options import cpus_needed

    opts = CycleOptions(registry=args.registry, data=args.data, storage=args.storage,
                        base=args.config or args.preset, overrides=overrides_from_args(args), mode=args.mode,
                        ab=args.ab, start_phase=args.start_phase, end_phase=args.end_phase,
                        workers=args.workers if args.workers == "auto" else int(args.workers), device=args.device)
    try:
        plan = plan_cycle(opts)
    except (CycleInputError, ConfigError, FileNotFoundError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 2
    import ray

    started = []  # Ray is started (or joined) only when there is training to do

    def start_ray(cfg) -> None:
        if not ray.is_initialized():
            init_ray(cpus_needed(cfg), args.ray_address)
            started.append(True)

    try:
        result = run_cycle(plan, start_ray=start_ray)
    except ConfigError as exc:  # the runner's pre-flight checks (phases, data): nothing trained
        print(exc, file=sys.stderr)
        return 2
    except TrainingDataError as exc:
        print(exc, file=sys.stderr)
        return 3
    if started:
        ray.shutdown()  # its workers' last log lines come before the JSON line, which ends the output
    print(json.dumps(result, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
