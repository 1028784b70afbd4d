"""Encode video shards into a latent cache once, for denoiser phases to train from (Ray Data).

    python jobs/encode_latents.py --data out/shards/demo --vae out/runs/r1/final --out out/latents/r1
    python jobs/encode_latents.py --data s3://b/shards --vae s3://b/runs/r1/final --out s3://b/latents/r1 \
        --preset cluster --windows 4
    python jobs/curriculum.py --preset learn --data out/shards/demo --latents out/latents/r1 \
        --run-name r2 train.init_from=out/runs/r1/final --start-phase 1

The buckets (frames x height x width at fps) and levels come from the denoiser phases of the
config stored with the VAE weights, or of --preset/--config. Run it again to resume an interrupted
encode; a finished cache of the same VAE is reused, another VAE's is refused.
"""

from __future__ import annotations

import argparse
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
    p.add_argument("--data", required=True, help="shard dir or s3:// prefix holding index.json")
    p.add_argument("--vae", required=True, help="weights dir with the VAE: a run's final/, a checkpoint, a registry entry")
    p.add_argument("--out", required=True, help="latent cache dir or s3:// prefix")
    p.add_argument("--windows", type=int, help="clip windows encoded per clip (default data.latent_windows)")
    p.add_argument("--shards-per-pass", type=int, default=8, help="video shards per resumable pass")
    p.add_argument("--ray-address", help="Ray address; 'local' starts a new local cluster")
    args = p.parse_args(argv)
    if args.windows is not None and args.windows < 1:
        p.error(f"--windows must be >= 1, got {args.windows}")
    if args.shards_per_pass < 1:
        p.error(f"--shards-per-pass must be >= 1, got {args.shards_per_pass}")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    from aiprod import storage
    from aiprod.data import latent_cache as lc
    from aiprod.data.latent_encode import cache_phases, encode_cache, weights_config

    try:
        if not storage.exists(storage.join(args.data, "index.json")):
            raise FileNotFoundError(f"--data: no index.json in {args.data} (build shards with jobs/make_shards.py)")
        if not storage.exists(storage.join(args.vae, "model.safetensors")):
            raise FileNotFoundError(f"--vae: no model.safetensors in {args.vae}")
        base = args.config or args.preset
        cfg = (load_config(base, overrides_from_args(args)) if base
               else weights_config(args.vae, overrides_from_args(args)))
        phases = [p for _, p in cache_phases(cfg, 0, len(cfg.curriculum.phases) - 1)]
        if not phases:
            raise ConfigError("config: no denoiser phase in curriculum.phases: nothing to encode for")
        if cfg.diffusion.latents != "mean":
            raise ConfigError(f"config: diffusion.latents={cfg.diffusion.latents!r}: a latent cache holds posterior "
                              "means (diffusion.latents=mean)")
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 2
    init_ray(cfg.data.decode_workers + cfg.data.read_workers + 1, args.ray_address)
    import ray

    try:
        index = encode_cache(args.data, args.vae, args.out, phases, cfg.data,
                             windows=args.windows or cfg.data.latent_windows,
                             shards_per_pass=args.shards_per_pass,
                             use_gpu=ray.cluster_resources().get("GPU", 0) > 0)
    except lc.LatentCacheError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"latent cache: {args.out} ({index['counts']['clips']} clips, {index['counts']['bad']} bad, "
          f"buckets {', '.join(index['buckets'])}, VAE sha256 {index['vae_sha256'][:12]})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
