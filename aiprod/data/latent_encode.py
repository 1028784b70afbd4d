"""Encode video shards into a latent cache with Ray Data (what jobs/encode_latents.py runs).

    index = encode_cache("out/shards/demo", "out/runs/r1/final", "out/latents/r1", phases, cfg.data)

Ray Data reads and decodes the shards as training does (the same filters, windows and bad-sample
counting), a frozen VAE encodes them (one GPU actor per GPU when the cluster has GPUs, CPU tasks
otherwise) and the driver writes one latent shard per video shard and bucket. Shards go in passes
of `shards_per_pass`; every finished latent shard is recorded under parts/, so an interrupted
encode resumes where it stopped. index.json is written last (see aiprod.data.latent_cache).
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from aiprod import storage
from aiprod.config import Config, DataConfig, PhaseConfig
from aiprod.data import latent_cache as lc

_ENCODERS: dict[tuple, Any] = {}  # per worker process: Ray reuses processes across tasks


def weights_config(weights_dir: str, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The config stored with a weights dir (local or s3://), plus overrides (model_dir.read_config)."""
    from aiprod import model_dir

    if not storage.exists(storage.join(weights_dir, model_dir.CONFIG)):
        raise FileNotFoundError(f"--vae: no {model_dir.CONFIG} in {weights_dir} (expected a run's final/ or a "
                                f"checkpoint)")
    return model_dir.read_config(weights_dir, overrides)


def load_vae(weights_dir: str, device: str = "cpu"):
    """(config, VideoVAE in eval mode, fingerprint) from a run's final/, a checkpoint or a registry entry."""
    from aiprod import model_dir
    from aiprod.models.vae import VideoVAE

    cfg = weights_config(weights_dir)
    state = model_dir.read_weights(weights_dir)
    vae = VideoVAE(cfg.model.vae)
    vae.load_state_dict({k[len("vae."):]: v for k, v in state.items() if k.startswith("vae.")}, strict=True)
    return cfg, vae.to(device).eval(), lc.vae_fingerprint(state)


class EncodeLatents:
    """map_batches UDF: decoded clips -> raw posterior-mean latents (float32), frames dropped.
    The driver normalises them (it may have to measure the statistics on them first)."""

    def __init__(self, weights_dir: str, use_gpu: bool = False):
        import torch

        self.device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        _, self.vae, _ = load_vae(weights_dir, self.device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from aiprod.data.dataset import to_model_batch
        from aiprod.diffusion.latents import raw_latents

        out = {k: v for k, v in batch.items() if k != "frames"}
        if len(batch["key"]) == 0:
            return {**out, "latent": np.empty((0,), dtype=np.float32)}
        video = to_model_batch(batch)["video"].to(self.device)
        with torch.no_grad():
            latents = raw_latents(self.vae, video, "mean")
        return {**out, "latent": latents.float().cpu().numpy()}


def _encode_task(batch: dict[str, np.ndarray], weights_dir: str) -> dict[str, np.ndarray]:
    if weights_dir not in _ENCODERS:
        _ENCODERS.clear()
        _ENCODERS[weights_dir] = EncodeLatents(weights_dir)
    return _ENCODERS[weights_dir](batch)


def buckets_of(phases: list[PhaseConfig]) -> dict[lc.Bucket, PhaseConfig]:
    """One reading phase per bucket: the union of the levels of the phases that share it."""
    out: dict[lc.Bucket, PhaseConfig] = {}
    for phase in phases:
        if phase.buckets and len(phase.buckets) > 1:
            raise lc.LatentCacheError(f"phase '{phase.name}' lists {len(phase.buckets)} buckets: a latent cache "
                                      "holds one clip shape per phase")
        bucket = lc.Bucket.of(phase)
        if bucket in out:
            levels = sorted(set(out[bucket].levels) | set(phase.levels))
            out[bucket] = out[bucket].model_copy(update={"levels": levels})
        else:
            out[bucket] = phase.model_copy(update={"name": f"cache-{bucket.name}"})
    return out


def _known_stats(out_uri: str, vae, sha: str) -> tuple[list, list] | None:
    """The statistics to normalise with when known before encoding: the VAE's own, or the ones an
    interrupted encode of the same VAE measured (stats.json)."""
    if vae.calibrated:
        return vae.latent_shift.tolist(), (1.0 / vae.latent_scale).tolist()
    source = storage.join(out_uri, lc.STATS)
    if storage.exists(source):
        saved = json.loads(storage.read_text(source))
        if saved.get("vae_sha256") == sha:
            return saved["mean"], saved["std"]
    return None


def _measured_stats(out_uri: str, latents: list[np.ndarray], channels: int, sha: str) -> tuple[list, list]:
    """An uncalibrated VAE: per-channel statistics of the first pass's raw latents, kept in stats.json."""
    import torch

    from aiprod.diffusion.latents import LatentStats

    stats = LatentStats(channels)
    for z in latents:
        stats.add(torch.from_numpy(z[None]))
    if stats.count < 2:
        raise lc.LatentCacheError(f"no clips in the first encoding pass of {out_uri} to measure latent statistics on")
    mean, std = (t.tolist() for t in stats.mean_std())
    storage.write_text_atomic(storage.join(out_uri, lc.STATS), json.dumps({"vae_sha256": sha, "mean": mean, "std": std}))
    return mean, std


def _check_target(out_uri: str, sha: str, windows: int) -> dict[str, Any] | None:
    """The finished index at `out_uri` when it is this VAE's; refuses another VAE's cache or parts."""
    index = lc.read_index(out_uri)
    if index is not None:
        if index["vae_sha256"] != sha:
            raise lc.LatentCacheMismatch(lc.mismatch_message(out_uri, index["vae_sha256"], sha)
                                         + " (or choose another --out)")
        if index.get("windows") != windows:
            raise lc.LatentCacheError(f"latent cache {out_uri} holds {index.get('windows')} window(s) per clip, "
                                      f"not {windows}: choose another --out")
        return index
    source = storage.join(out_uri, lc.STATS)
    if storage.exists(source) and json.loads(storage.read_text(source)).get("vae_sha256") != sha:
        raise lc.LatentCacheMismatch(f"{out_uri} holds an unfinished cache of another VAE: choose another --out")
    return None


def encode_cache(data_uri: str, weights_dir: str, out_uri: str, phases: list[PhaseConfig], data: DataConfig,
                 *, windows: int = 1, shards_per_pass: int = 8, use_gpu: bool = False,
                 progress: bool = True) -> dict[str, Any]:
    """Encode the shards `phases` read into a latent cache at `out_uri`; its index. A finished
    cache of the same VAE that already holds every bucket is reused as it is."""
    import ray.data

    from aiprod.data.bad_samples import bad_sample_stats
    from aiprod.data.dataset import build_phase_dataset, phase_shards

    data_uri, out_uri = str(data_uri).rstrip("/"), str(out_uri).rstrip("/")
    started = time.monotonic()
    cfg, vae, sha = load_vae(weights_dir)
    existing = _check_target(out_uri, sha, windows)
    by_bucket = buckets_of(phases)
    if existing is not None and all(b.name in existing["buckets"] for b in by_bucket):
        _say(progress, f"encode: reusing the latent cache {out_uri} (VAE sha256 {sha[:12]})")
        return existing
    data = data.model_copy(update={"shuffle_files": False})
    stats = _known_stats(out_uri, vae, sha)
    done = lc.finished_parts(out_uri) if stats is not None else {}
    records, buckets, bad, bad_keys = [], {}, 0, []
    for bucket, phase in by_bucket.items():
        with_clips = [(uri, r) for uri, r in phase_shards(data_uri, phase, data)]
        todo = [(uri, r) for uri, r in with_clips if lc.shard_name(uri, bucket) not in done]
        records += [done[lc.shard_name(uri, bucket)] for uri, _ in with_clips if lc.shard_name(uri, bucket) in done]
        shape = None
        for start in range(0, len(todo), shards_per_pass):
            group = todo[start:start + shards_per_pass]
            decoded = build_phase_dataset(data_uri, phase, data, windows=windows, shard_list=group)
            if use_gpu:
                ds = decoded.map_batches(EncodeLatents, fn_constructor_args=(weights_dir, True),
                                    batch_size=data.decode_batch_size * 4, batch_format="numpy", num_gpus=1,
                                    compute=ray.data.ActorPoolStrategy(size=max(1, int(ray.cluster_resources().get("GPU", 1)))))
            else:
                ds = decoded.map_batches(_encode_task, fn_args=(weights_dir,), batch_size=data.decode_batch_size,
                                    batch_format="numpy", compute=ray.data.TaskPoolStrategy(size=data.decode_workers))
            rows: dict[str, dict[str, list]] = {lc.shard_name(uri, bucket): _empty_rows() for uri, _ in group}
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for i, source in enumerate(batch["shard"]):
                    target = rows[lc.shard_name(str(source), bucket)]
                    for column in ("key", "caption", "language"):
                        target[column].append(str(batch[column][i]))
                    target["level"].append(int(batch["level"][i]))
                    target["window"].append(int(batch["window"][i]))
                    target["latent"].append(batch["latent"][i])
            if stats is None:
                stats = _measured_stats(out_uri, [z for r in rows.values() for z in r["latent"]],
                                        vae.cfg.latent_channels, sha)
            mean, std = (np.asarray(v, np.float32).reshape(-1, 1, 1, 1) for v in stats)
            for uri, _ in group:
                name = lc.shard_name(uri, bucket)
                part = rows[name]
                latents = (np.stack(part.pop("latent")) - mean) / std if part["latent"] else np.empty((0,), lc.DTYPE)
                shape = list(latents.shape[1:]) if len(latents) else shape
                records.append(lc.write_shard(out_uri, name, lc.encode_table(part, latents), uri.rsplit("/", 1)[-1],
                                              bucket))
            tally = bad_sample_stats(decoded)
            bad, bad_keys = bad + tally["bad"], (bad_keys + tally["bad_keys"])[: data.bad_keys_reported]
            clips = sum(r["clips"] for r in records)
            elapsed = time.monotonic() - started
            left = len(todo) - start - len(group)
            _say(progress, f"encode {bucket.name}: {start + len(group)}/{len(todo)} shards, {clips} clips, "
                           f"{clips / max(elapsed, 1e-6):.1f} clips/s, {bad} bad, "
                           f"ETA {elapsed / (start + len(group)) * left:.0f}s")
        shape = shape or _latent_shape(vae, bucket)
        buckets[bucket.name] = {"frames": bucket.frames, "height": bucket.height, "width": bucket.width,
                                "fps": bucket.fps, "levels": sorted(phase.levels), "latent_shape": shape}
    index = {
        "format": lc.FORMAT, "vae_sha256": sha, "vae": str(weights_dir), "data": data_uri,
        "latent": {"source": "mean", "mean": list(stats[0]), "std": list(stats[1]), "dtype": np.dtype(lc.DTYPE).name},
        "windows": windows, "buckets": buckets, "shards": records,
        "counts": {"clips": sum(r["clips"] for r in records), "bad": bad, "bad_keys": bad_keys},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "encode_s": round(time.monotonic() - started, 2),  # this call's (a resumed encode: its last part)
        "config_hash": cfg.hash(),
    }
    storage.write_text_atomic(storage.join(out_uri, lc.INDEX), json.dumps(index, indent=1))
    _say(progress, f"encode: {index['counts']['clips']} latent clips ({bad} bad) in {len(records)} shards -> "
                   f"{out_uri} in {time.monotonic() - started:.0f}s")
    return index


def _latent_shape(vae, bucket: lc.Bucket) -> list[int]:
    """[C, t, h, w] of the bucket's latents (for a bucket without a single clip)."""
    import torch

    with torch.no_grad():
        zeros = torch.zeros(1, 3, bucket.frames, bucket.height, bucket.width, device=vae.latent_shift.device)
        return list(vae.encode(zeros).mean.shape[1:])


def _empty_rows() -> dict[str, list]:
    return {"key": [], "caption": [], "language": [], "level": [], "window": [], "latent": []}


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, flush=True)


def cache_phases(cfg: Config, first: int, last: int) -> list[tuple[int, PhaseConfig]]:
    """(index, phase) of the denoiser phases in first..last: the ones a latent cache feeds."""
    return [(i, p) for i, p in enumerate(cfg.curriculum.phases) if first <= i <= last and p.component == "denoiser"]
