"""The training data of one curriculum phase as a streaming Ray Dataset.

    ds = build_phase_dataset("s3://bucket/shards", cfg.curriculum.phases[2], cfg.data)
    for batch in ds.iter_torch_batches(batch_size=4, collate_fn=ModelBatchCollate()): ...
    # in Ray Train: TorchTrainer(datasets={"train": ds}); ray.train.get_dataset_shard("train")

Stages: read tar shards (`aiprod.data.shard_reader`: one read task per shard; samples filtered by
the phase's levels and length before any decoding; one row per clip window of a long video) ->
decode clips in `map_batches` on up to `data.decode_workers` tasks at once, each clip exactly its
bucket's (frames, H, W) -> rows {key, frames uint8[T,H,W,3], caption, language, level, shard,
window}. A phase of several buckets gives frames of several shapes and each clip's bucket, and
`bucket_batches` makes batches of one bucket each on the worker.

Samples that fail to decode are dropped, logged with their key and counted (`aiprod.data.bad_samples`);
once more than `data.max_bad_fraction` of the phase's samples have failed, the decode step raises
`BadSamplesError` naming the first bad keys, which stops the dataset and so the training workers
iterating it.
"""

from __future__ import annotations

import logging
import random
import uuid
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
from ray.data.collate_fn import NumpyBatchCollateFn

from aiprod.config import DataConfig, PhaseConfig
from aiprod.data import clips, video
from aiprod.data.bad_samples import BadSamplesError, process_counter
from aiprod.data.shard_reader import (  # noqa: F401 - phase_shards, eligible_samples, WINDOW_MARK: used from here
    WINDOW_MARK, _datasource, _shard_eligible_count, eligible_samples, phase_shards)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- decoding


class DecodeClips:
    """map_batches UDF: mp4 bytes -> frames of exactly its bucket's (T, H, W); bad samples dropped and
    counted.

    A phase of one bucket gives `frames` uint8 [B, T, H, W, 3]. A phase of several gives `frames` as
    a variable-shaped tensor column and each clip's `bucket`: Ray Data may join the blocks of
    different buckets into one batch (`bucket_batches` makes batches of one bucket of them on the
    worker).

    `windows` > 1 (latent caches) decodes that many windows of each clip, each from a seed of its
    own; window 0 is the one training online decodes."""

    def __init__(self, phase: PhaseConfig, data: DataConfig, counter: Any, dataset_id: str, expected: int,
                 windows: int = 1):
        self.phase, self.data, self.counter, self.dataset_id = phase, data, counter, dataset_id
        self.limits = (data.max_bad_fraction, expected, data.bad_keys_reported)
        self.windows = windows
        self.buckets = clips.phase_buckets(phase)

    def _decode(self, key: str, mp4: bytes, window: int, bucket: int, start_s: float, slack_s: float) -> np.ndarray:
        phase, data = self.phase, self.data
        seed = zlib.crc32(f"{data.seed}:{key}".encode() if window == 0 else f"{data.seed}:{key}:{window}".encode())
        if start_s >= 0:  # one window of a longer video
            start = start_s + (slack_s / 2 if data.start == "center" else random.Random(seed).uniform(0.0, slack_s))
        else:
            start = data.start
        shape = self.buckets[bucket]
        return video.decode_clip(mp4, shape.frames, phase.fps, shape.height, shape.width, start=start,
                                 seed=seed, threads=data.decode_threads, timeout_s=data.clip_timeout_s, name=key)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import ray

        keep: list[int] = []
        decoded: list[np.ndarray] = []
        windows: list[int] = []
        bad: list[tuple[str, str]] = []
        for i, key in enumerate(batch["key"]):
            key = str(key)
            error = str(batch["error"][i])
            if not error:
                try:
                    where = (int(batch["bucket"][i]), float(batch["start_s"][i]), float(batch["slack_s"][i]))
                    got = [self._decode(key, bytes(batch["mp4"][i]), w, *where) for w in range(self.windows)]
                    decoded.extend(got)
                    keep.extend([i] * len(got))
                    windows.extend(range(len(got)))
                    continue
                except video.VideoError as exc:
                    error = f"{type(exc).__name__}: {exc}"
            log.warning("dropping bad sample %s: %s", key, error)
            bad.append((key, error))
        # waited for (a round trip per batch) so that the counts are complete when a pass ends
        verdict = ray.get(self.counter.add.remote(self.dataset_id, self.limits, len(keep), bad))
        if verdict:
            raise BadSamplesError(verdict)
        out = {
            "key": np.asarray([str(batch["key"][i]) for i in keep], dtype=object),
            "caption": np.asarray([str(batch["caption"][i]) for i in keep], dtype=object),
            "language": np.asarray([str(batch["language"][i]) for i in keep], dtype=object),
            "level": np.asarray([int(batch["level"][i]) for i in keep], dtype=np.int32),
            "shard": np.asarray([str(batch["shard"][i]) for i in keep], dtype=object),
            "window": np.asarray(windows, dtype=np.int32),
        }
        if len(self.buckets) > 1:  # a variable-shaped tensor column (Ray Data joins it with fixed-shape ones)
            out["bucket"] = np.asarray([int(batch["bucket"][i]) for i in keep], dtype=np.int32)
            out["frames"] = np.empty(len(decoded), dtype=object)
            for i, clip in enumerate(decoded):  # one by one: a slice assignment would broadcast same-shape clips
                out["frames"][i] = clip
            return out
        shape = self.buckets[0]
        empty = (0, shape.frames, shape.height, shape.width, 3)
        out["frames"] = np.stack(decoded) if decoded else np.empty(empty, np.uint8)
        return out


def bucket_batches(batches: Iterator[dict[str, np.ndarray]], phase: PhaseConfig, batch_size: int
                   ) -> Iterator[dict[str, np.ndarray]]:
    """Batches of `batch_size` clips of one bucket each, from the rows of a several-bucket phase
    (`frames` of several shapes, `bucket`); a bucket's last partial batch of the pass is dropped."""
    pending: dict[int, list[dict[str, Any]]] = {}
    for batch in batches:
        for i in range(len(batch["key"])):
            rows = pending.setdefault(int(batch["bucket"][i]), [])
            rows.append({name: values[i] for name, values in batch.items()})
            if len(rows) == batch_size:
                yield {name: np.stack([r[name] for r in rows]) if name == "frames" else np.asarray([r[name] for r in rows])
                       for name in rows[0]}
                rows.clear()


def _decode_batch(batch: dict[str, np.ndarray], decode: DecodeClips) -> dict[str, np.ndarray]:
    return decode(batch)


# ----------------------------------------------------------------------------- the dataset


def build_phase_dataset(data_uri: str, phase: PhaseConfig, data: DataConfig, split: str = "train",
                        windows: int = 1, shard_list: list[tuple[str, dict[str, Any]]] | None = None):
    """A streaming ray.data.Dataset of the phase's clips: rows {key, frames, caption, language, level,
    shard, window} (`windows` per clip; `shard_list` narrows the read to those shards).

    Nothing is read until the dataset is iterated. Its bad samples are counted by this process's
    counter actor under an id of its own: see `bad_samples.bad_sample_stats(dataset)`.
    """
    import ray
    import ray.data

    data_uri = str(data_uri).rstrip("/")
    shard_list = phase_shards(data_uri, phase, data, split) if shard_list is None else list(shard_list)
    if not shard_list:
        raise ValueError(f"no {split} shards in {data_uri} hold samples for phase '{phase.name}' "
                         f"(levels {phase.levels}, data.untagged_all_phases={data.untagged_all_phases})")
    if data.shuffle_files:
        random.Random(data.seed).shuffle(shard_list)
    expected = sum(_shard_eligible_count(r, phase, data) for _, r in shard_list)
    dataset_id = uuid.uuid4().hex[:12]
    counter = process_counter()

    counting = (counter, dataset_id, (data.max_bad_fraction, expected, data.bad_keys_reported))
    ds = ray.data.read_datasource(_datasource(shard_list, phase, data, counting), concurrency=data.read_workers,
                                  override_num_blocks=len(shard_list))
    # Tasks rather than an actor pool: Ray reuses idle worker processes across tasks and epochs,
    # where every execution of an actor pool would start fresh processes.
    decode = DecodeClips(phase, data, counter, dataset_id, expected, windows)
    ds = ds.map_batches(_decode_batch, fn_args=(decode,), batch_size=data.decode_batch_size,
                        batch_format="numpy", compute=ray.data.TaskPoolStrategy(size=data.decode_workers),
                        zero_copy_batch=True)
    ds.bad_sample_counter = (counter, dataset_id)
    return ds


def to_model_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """Rows -> the model's batch: `video` float32 [B, 3, T, H, W] in [-1, 1], `caption` list[str], ...

    Works on `iter_batches()` output and as `iter_torch_batches(collate_fn=ModelBatchCollate())`.
    """
    import torch

    if "latent" in batch:  # a latent cache's rows (aiprod.data.latent_cache)
        latents = batch["latent"]
        latents = latents.float() if isinstance(latents, torch.Tensor) else torch.from_numpy(np.array(latents, np.float32))
        return {"latents": latents, **_labels(batch)}
    frames = batch["frames"]
    frames = frames if isinstance(frames, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(frames))
    if frames.dtype != torch.uint8 or frames.ndim != 5 or frames.shape[-1] != 3:
        raise ValueError(f"to_model_batch: frames must be uint8 [B, T, H, W, 3], got {frames.dtype} "
                         f"{tuple(frames.shape)}")
    video_batch = frames.permute(0, 4, 1, 2, 3).float().div_(127.5).sub_(1.0).contiguous()

    return {"video": video_batch, **_labels(batch)}


def _labels(batch: dict[str, Any]) -> dict[str, Any]:
    import torch

    def strings(name: str) -> list[str]:
        values = batch.get(name)
        return [] if values is None else [v.decode() if isinstance(v, bytes) else str(v) for v in values]

    level = batch.get("level")
    return {
        "caption": strings("caption"),
        "language": strings("language"),
        "key": strings("key"),
        "level": torch.as_tensor(np.asarray(level, dtype=np.int64)) if level is not None else None,
    }


class ModelBatchCollate(NumpyBatchCollateFn):
    """`iter_torch_batches(collate_fn=ModelBatchCollate())`: the class form Ray 2.47+ prefers."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        return to_model_batch(batch)
