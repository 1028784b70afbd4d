"""Search the learning rate and λ with Ray Tune + Optuna (TPE) + ASHA (thin CLI over aiprod.tuning).

    python tune/search.py --preset tiny --data out/shards/demo --storage out/tune --name s1 --samples 4
    python tune/search.py --preset tiny --data out/shards/demo --storage out/tune --name s1 --resume
    ray job submit --working-dir . -- python tune/search.py --preset cluster --data s3://... \
        --storage s3://aiprod-runs/tune --name lr-lambda --samples 16

Writes STORAGE/NAME/{trials.csv, best.yaml, objective.png, importances.*, summary.json};
best.yaml feeds `python jobs/curriculum.py --overrides-file best.yaml`. Starts a local Ray, or joins
the one at RAY_ADDRESS / a running local cluster.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiprod.config import ConfigError, add_config_arguments, load_config, overrides_from_args  # noqa: E402
from aiprod.ray_local import init_ray  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    add_config_arguments(p)
    p.add_argument("--data", help="shard dir or s3:// prefix with index.json and a held-out split (default: data.uri)")
    p.add_argument("--storage", help="searches root, local or s3:// (default: <train.storage>/../tune)")
    p.add_argument("--name", required=True, help="search directory name under --storage")
    p.add_argument("--samples", type=int, help="trials (default: tune.num_samples)")
    p.add_argument("--max-concurrent", default="auto",
                   help="trials at once (default: tune.max_concurrent, 'auto' = what the cluster holds)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted search (Tuner.restore)")
    p.add_argument("--ray-address", help="Ray address; 'local' starts a new local cluster")
    args = p.parse_args(argv)
    if args.max_concurrent != "auto" and not (args.max_concurrent.isdigit() and int(args.max_concurrent) > 0):
        p.error(f"--max-concurrent must be 'auto' or a positive count, got {args.max_concurrent!r}")
    if args.samples is not None and args.samples < 1:
        p.error(f"--samples must be >= 1, got {args.samples}")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    from aiprod.tuning.search import SearchOptions, local_cluster_cpus, run_search

    try:
        overrides = overrides_from_args(args)
        cfg = load_config(args.config or args.preset or "tiny", overrides)
        data = args.data or cfg.data.uri
        if data is None:
            raise ConfigError("config: no data: pass --data URI or set data.uri")
        storage_root = args.storage or cfg.train.storage.rstrip("/").rsplit("/", 1)[0] + "/tune"
        opts = SearchOptions(data=data, storage=storage_root, name=args.name, samples=args.samples,
                             max_concurrent=args.max_concurrent, resume=args.resume)
        init_ray(local_cluster_cpus(cfg, args.max_concurrent), args.ray_address)
        summary = run_search(cfg, opts)
    except (ConfigError, FileNotFoundError) as exc:
        print(exc, file=sys.stderr)
        return 2
    print(json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
