"""The latent cache: the denoiser's inputs encoded once by a frozen VAE (one home of the format).

    CACHE/index.json                                  written last: the cache is complete
    CACHE/stats.json                                  the latent shift/scale it was normalised with
    CACHE/parts/<shard>.json                          one per finished latent shard (resume)
    CACHE/<source shard stem>.<bucket>.parquet        rows {key, caption, language, level, window, latent}

`latent` is the normalised posterior mean (the denoiser's x0) as float16 bytes of the bucket's
`latent_shape` [C, t, h, w]. index.json names the VAE by `vae_sha256` (its weights without the
latent statistics, see `vae_fingerprint`), the statistics, the buckets, the windows and the counts.
A run whose VAE has another fingerprint refuses the cache (`LatentCacheMismatch`, naming both).

Reading (`build_latent_dataset`): one Ray read task per latent shard of the phase's bucket; a
shard whose bytes do not match its sha256 or that cannot be parsed is skipped, and its clips are
counted as bad samples by the same counter (and the same `data.max_bad_fraction`) as video.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from aiprod import storage
from aiprod.config import DataConfig, PhaseConfig
from aiprod.data.bad_samples import BadSamplesError, process_counter
from aiprod.data.versioned_index import read_versioned_index

log = logging.getLogger(__name__)

FORMAT = "aiprod-latents/1"
INDEX = "index.json"
STATS = "stats.json"
PARTS = "parts"
DTYPE = np.float16
SCHEMA = pa.schema([("key", pa.string()), ("caption", pa.string()), ("language", pa.string()),
                    ("level", pa.int32()), ("window", pa.int32()), ("latent", pa.binary())])


class LatentCacheError(ValueError):
    """A latent cache that cannot be used: missing, incomplete, or not for this phase."""


class LatentCacheMismatch(LatentCacheError):
    """A latent cache made by another VAE (or other latent statistics) than the run's."""


@dataclass(frozen=True)
class Bucket:
    """The clip shape a phase trains on; a cache holds latents per bucket."""

    frames: int
    height: int
    width: int
    fps: float

    @property
    def name(self) -> str:
        return f"{self.frames}x{self.height}x{self.width}-{self.fps:g}fps"

    @classmethod
    def of(cls, phase: PhaseConfig) -> Bucket:
        from aiprod.data.clips import phase_buckets

        shape = phase_buckets(phase)[0]  # a cached phase has one (runner.check_config)
        return cls(shape.frames, shape.height, shape.width, float(phase.fps))


def vae_fingerprint(state: dict[str, Any]) -> str:
    """sha256 of the VAE's weights (`vae.*` keys of a VideoModel state, or a VideoVAE's own), without
    the latent statistics: a cache encoded before the statistics were stored still matches."""
    import torch

    from aiprod.diffusion.latents import STAT_KEYS

    digest = hashlib.sha256()
    prefixed = any(k.startswith("vae.") for k in state)
    for key in sorted(state):
        name = key if not prefixed else key[len("vae."):] if key.startswith("vae.") else None
        if name is None or f"vae.{name}" in STAT_KEYS:
            continue
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def shard_name(source_shard: str, bucket: Bucket) -> str:
    stem = source_shard.rsplit("/", 1)[-1].removesuffix(".tar")
    return f"{stem}.{bucket.name}.parquet"


def read_index(uri: str) -> dict[str, Any] | None:
    """The index.json of a latent cache, None when it has none (not written yet: the cache is incomplete)."""
    return read_versioned_index(storage.join(uri, INDEX), FORMAT, LatentCacheError, f"latent cache {uri}: {INDEX}")


def check_cache(uri: str, vae_sha256: str | None, phases: list[tuple[int, PhaseConfig]],
                source: str = "mean") -> list[str]:
    """Problems that stop `phases` (index, config) training from the cache at `uri`; [] when none.
    `vae_sha256` None: the run's VAE is not known yet (checked again when the phase starts)."""
    try:
        index = read_index(uri)
    except LatentCacheError as exc:
        return [str(exc)]
    if index is None:
        return [f"data.latents: no {INDEX} in {uri} (build it with jobs/encode_latents.py, or an interrupted "
                "encode has not finished: run it again to resume)"]
    problems = []
    if source != "mean":
        problems.append(f"diffusion.latents={source!r}: a latent cache holds posterior means; use "
                        "diffusion.latents=mean or train without data.latents")
    if vae_sha256 is not None and vae_sha256 != index["vae_sha256"]:
        problems.append(mismatch_message(uri, index["vae_sha256"], vae_sha256))
    for i, phase in phases:
        bucket = Bucket.of(phase)
        if bucket.name not in index["buckets"]:
            problems.append(f"curriculum.phases.{i} '{phase.name}': the latent cache {uri} has no clips of "
                            f"{bucket.name} (it has {', '.join(index['buckets']) or 'none'})")
    return problems


def mismatch_message(uri: str, cache_sha: str, run_sha: str) -> str:
    return (f"the latent cache {uri} was encoded by the VAE with sha256 {cache_sha}, but this run's VAE has "
            f"sha256 {run_sha}: encode a cache with this run's VAE (jobs/encode_latents.py --vae ...) or "
            "train with train.cache_latents=true")


def apply_stats(vae, index: dict[str, Any], uri: str) -> None:
    """Give `vae` the statistics the cache was normalised with; a VAE that has others refuses."""
    import torch

    mean = torch.tensor(index["latent"]["mean"], dtype=torch.float32)
    std = torch.tensor(index["latent"]["std"], dtype=torch.float32)
    if vae.calibrated:
        if not (torch.allclose(vae.latent_shift.cpu(), mean, rtol=1e-4, atol=1e-5)
                and torch.allclose(vae.latent_scale.cpu(), 1.0 / std, rtol=1e-4, atol=1e-5)):
            raise LatentCacheMismatch(f"the latent cache {uri} was normalised with latent statistics other than "
                                      "the ones stored with this run's VAE weights")
        return
    vae.set_latent_stats(mean.to(vae.latent_shift.device), std.to(vae.latent_scale.device))


# ----------------------------------------------------------------------------- writing


def encode_table(rows: dict[str, list], latents: np.ndarray) -> pa.Table:
    """One latent shard's rows; latents float [N, C, t, h, w], stored as float16."""
    blobs = [np.ascontiguousarray(z, dtype=DTYPE).tobytes() for z in latents]
    return pa.table({"key": rows["key"], "caption": rows["caption"], "language": rows["language"],
                     "level": pa.array(rows["level"], pa.int32()), "window": pa.array(rows["window"], pa.int32()),
                     "latent": pa.array(blobs, pa.binary())}, schema=SCHEMA)


def write_shard(uri: str, name: str, table: pa.Table, source: str, bucket: Bucket) -> dict[str, Any]:
    """Write one latent shard and then its parts/ record (atomically, in that order); the record."""
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    data = sink.getvalue()
    storage.write_bytes_atomic(storage.join(uri, name), data)
    levels: dict[str, int] = {}
    for level in table.column("level").to_pylist():
        levels[str(level)] = levels.get(str(level), 0) + 1
    record = {"name": name, "source": source, "bucket": bucket.name, "clips": table.num_rows, "levels": levels,
              "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    storage.write_text_atomic(storage.join(uri, PARTS, name.removesuffix(".parquet") + ".json"), json.dumps(record))
    return record


def finished_parts(uri: str) -> dict[str, dict[str, Any]]:
    """parts/ records of latent shards an earlier (perhaps interrupted) encode finished, by name."""
    out = {}
    for file in storage.list_files(storage.join(uri, PARTS)):
        try:
            record = json.loads(storage.read_text(file))
        except (ValueError, UnicodeDecodeError):
            continue  # a torn record: that shard is encoded again
        if storage.exists(storage.join(uri, record["name"])):
            out[record["name"]] = record
    return out


# ----------------------------------------------------------------------------- reading


def decode_latents_column(blobs: list[bytes], shape: list[int]) -> np.ndarray:
    return np.stack([np.frombuffer(b, dtype=DTYPE).reshape(shape) for b in blobs]).astype(np.float32)


class _LatentShardRows:
    """Reads one latent shard (sha256 checked) into shuffled rows; runs inside a Ray read task."""

    def __init__(self, uri: str, record: dict[str, Any], shape: list[int], levels: set[int], seed: int,
                 counter: Any, dataset_id: str, limits: tuple[float, int, int]):
        self.uri, self.record, self.shape, self.levels, self.seed = uri, record, shape, levels, seed
        self.counter, self.dataset_id, self.limits = counter, dataset_id, limits

    def _bad(self, reason: str) -> Iterator[pa.Table]:
        import ray

        log.warning("skipping latent shard %s: %s", self.uri, reason)
        bad = [(self.record["name"], reason)] * int(self.record["clips"])
        verdict = ray.get(self.counter.add.remote(self.dataset_id, self.limits, 0, bad))
        if verdict:
            raise BadSamplesError(verdict)
        return iter(())

    def __call__(self) -> Iterator[dict[str, Any]]:
        import ray

        try:
            data = storage.read_bytes(self.uri)
        except OSError as exc:
            yield from self._bad(f"unreadable ({exc})")
            return
        if hashlib.sha256(data).hexdigest() != self.record["sha256"]:
            yield from self._bad("sha256 does not match index.json (corrupt or replaced)")
            return
        try:
            table = pq.read_table(io.BytesIO(data))
            rows = table.to_pydict()
            latents = decode_latents_column(rows["latent"], self.shape)
        except (pa.ArrowException, ValueError, KeyError) as exc:
            yield from self._bad(f"unreadable parquet ({type(exc).__name__}: {exc})")
            return
        keep = [i for i, level in enumerate(rows["level"]) if level in self.levels]
        random.Random(self.seed).shuffle(keep)
        ray.get(self.counter.add.remote(self.dataset_id, self.limits, len(keep), []))
        if keep:
            yield {"key": np.asarray([rows["key"][i] for i in keep], dtype=object),
                   "latent": latents[keep],
                   "caption": np.asarray([rows["caption"][i] for i in keep], dtype=object),
                   "language": np.asarray([rows["language"][i] for i in keep], dtype=object),
                   "level": np.asarray([rows["level"][i] for i in keep], dtype=np.int32)}


def _datasource(tasks: list[_LatentShardRows]):
    from ray.data.block import BlockAccessor, BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class LatentShardDatasource(Datasource):
        def get_name(self) -> str:
            return "AIPRODLatents"

        def estimate_inmemory_data_size(self) -> int:
            return sum(int(t.record["bytes"]) * 2 for t in tasks)

        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                           data_context: Any = None) -> list[ReadTask]:
            def read(task: _LatentShardRows):
                return lambda: (BlockAccessor.batch_to_block(rows) for rows in task())

            return [ReadTask(read(t), BlockMetadata(num_rows=None, size_bytes=int(t.record["bytes"]) * 2,
                                                    exec_stats=None, input_files=[t.uri]),
                             per_task_row_limit=per_task_row_limit) for t in tasks]

    return LatentShardDatasource()


def build_latent_dataset(uri: str, phase: PhaseConfig, data: DataConfig):
    """A ray.data.Dataset of the phase's cached latents: rows {key, latent float32 [C,t,h,w],
    caption, language, level}. Bad shards are counted: see `bad_samples.bad_sample_stats`."""
    import ray.data

    uri = str(uri).rstrip("/")
    index = read_index(uri)
    if index is None:
        raise LatentCacheError(f"data.latents: no {INDEX} in {uri}")
    bucket = Bucket.of(phase)
    if bucket.name not in index["buckets"]:
        raise LatentCacheError(f"latent cache {uri} has no {bucket.name} clips for phase '{phase.name}'")
    levels = set(phase.levels)
    records = [r for r in index["shards"] if r["bucket"] == bucket.name
               and any(int(k) in levels for k in r["levels"])]
    if not records:
        raise LatentCacheError(f"latent cache {uri} has no clips of levels {phase.levels} for phase '{phase.name}'")
    if data.shuffle_files:
        random.Random(data.seed).shuffle(records)
    expected = sum(n for r in records for k, n in r["levels"].items() if int(k) in levels)
    dataset_id, counter = uuid.uuid4().hex[:12], process_counter()
    limits = (data.max_bad_fraction, expected, data.bad_keys_reported)
    shape = index["buckets"][bucket.name]["latent_shape"]
    tasks = [_LatentShardRows(storage.join(uri, r["name"]), r, shape, levels, data.seed * 1_000_003 + i,
                              counter, dataset_id, limits) for i, r in enumerate(records)]
    ds = ray.data.read_datasource(_datasource(tasks), concurrency=data.read_workers, override_num_blocks=len(tasks))
    ds.bad_sample_counter = (counter, dataset_id)
    return ds
