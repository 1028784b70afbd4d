"""The training data of one curriculum phase as a streaming Ray Dataset.

    ds = build_phase_dataset("s3://bucket/shards", cfg.curriculum.phases[2], cfg.data)
    for batch in ds.iter_torch_batches(batch_size=4, collate_fn=ModelBatchCollate()): ...
    # in Ray Train: TorchTrainer(datasets={"train": ds}); ray.train.get_dataset_shard("train")

Stages: read tar shards (our own datasource, one read task per shard, shards in shuffled order,
rows shuffled in a local buffer; Ray issue #44068 keeps us off read_webdataset) -> filter by the
phase's levels and by clip length from each sample's JSON, before any decoding -> decode clips in
`map_batches` on up to `data.decode_workers` tasks at once, each clip exactly the phase's (frames, H, W), so
every batch has one shape -> rows {key, frames uint8[T,H,W,3], caption, language, level}.

Samples that fail to decode are dropped, logged with their key and counted (`aiprod.data.bad_samples`);
once more than `data.max_bad_fraction` of the phase's samples have failed, the decode step raises
`BadSamplesError` naming the first bad keys, which stops the dataset and so the training workers
iterating it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import random
import tarfile
import uuid
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
from ray.data.collate_fn import NumpyBatchCollateFn

from aiprod import storage
from aiprod.config import DataConfig, PhaseConfig
from aiprod.data import shards, video
from aiprod.data.bad_samples import BadSamplesError, process_counter

log = logging.getLogger(__name__)

READ_BLOCK_BYTES = 8 << 20  # a read task yields a block at this much video (or decode_batch_size rows)
UNTAGGED = 0  # `level` of samples without one level tag


# ----------------------------------------------------------------------------- eligibility


def _eligible(levels: list[int], phase_levels: set[int], untagged_all_phases: bool) -> bool:
    if not levels:
        return untagged_all_phases
    return bool(phase_levels.intersection(levels))


def _shard_eligible_count(record: dict[str, Any], phase_levels: set[int], untagged_all_phases: bool) -> int:
    """Samples of a shard that may pass the level filter (multi-tagged ones count as eligible)."""
    count = 0
    for tag, n in record.get("levels", {}).items():
        if tag == "untagged":
            count += n if untagged_all_phases else 0
        elif tag == "multi":
            count += n
        elif int(tag) in phase_levels:
            count += n
    return count


def phase_shards(data_uri: str, phase: PhaseConfig, data: DataConfig, split: str = "train"
                 ) -> list[tuple[str, dict[str, Any]]]:
    """(shard URI, index record) of the shards holding samples eligible for the phase."""
    levels = set(phase.levels)
    return [(uri, record) for uri, record in shards.shard_uris(str(data_uri).rstrip("/"), split)
            if _shard_eligible_count(record, levels, data.untagged_all_phases) > 0]


def eligible_samples(data_uri: str, phase: PhaseConfig, data: DataConfig, split: str = "train") -> int:
    """An upper bound of the phase's samples from index.json alone (the length filter needs the data)."""
    levels = set(phase.levels)
    return sum(_shard_eligible_count(r, levels, data.untagged_all_phases)
               for _, r in phase_shards(data_uri, phase, data, split))


# ----------------------------------------------------------------------------- reading


class _ShardRows:
    """Reads one tar shard into Arrow blocks of filtered rows; runs inside a Ray read task.

    The shard is read whole and its sha256 checked against index.json first (once per shard per
    pass, on bytes read anyway); a shard that does not match or is not a readable tar is skipped,
    named in the log, and its samples are counted as bad (`data.max_bad_fraction` applies)."""

    def __init__(self, uri: str, record: dict[str, Any], phase: PhaseConfig, data: DataConfig, seed: int,
                 counting: tuple[Any, str, tuple[float, int, int]] | None = None):
        self.uri = uri
        self.record = record
        self.counting = counting
        self.eligible = _shard_eligible_count(record, set(phase.levels), data.untagged_all_phases)
        self.shard = uri.rstrip("/").rsplit("/", 1)[-1]
        self.levels = set(phase.levels)
        self.frames, self.fps = phase.frames, phase.fps
        self.untagged_all_phases = data.untagged_all_phases
        self.buffer_size = data.shuffle_buffer
        self.block_rows = data.decode_batch_size  # small blocks spread the decoding over the decode tasks
        self.seed = seed

    def _row(self, key: str, parts: dict[str, bytes]) -> dict[str, Any] | None:
        """A row for the decoder, None when filtered out; unusable samples carry `error`."""
        row = {"key": key, "mp4": parts.get("mp4", b""), "caption": "", "language": "", "level": UNTAGGED,
               "shard": self.shard, "error": ""}
        try:
            meta = json.loads(parts["json"].decode("utf-8"))
            levels = [int(v) for v in meta.get("levels") or ([meta["level"]] if meta.get("level") else [])]
        except (KeyError, ValueError, TypeError, UnicodeDecodeError) as exc:
            row["error"] = f"unreadable sample JSON ({type(exc).__name__}: {exc})"
            return row
        if not _eligible(levels, self.levels, self.untagged_all_phases):
            return None
        if meta.get("frames") and meta.get("fps"):
            info = video.VideoInfo(fps=float(meta["fps"]), frames=int(meta["frames"]), width=0, height=0,
                                   duration=0.0, rotation=0)
            if not video.fits_clip(info, self.frames, self.fps):
                return None
        row.update(caption=str(meta.get("caption") or ""), language=str(meta.get("language") or ""),
                   level=levels[0] if len(levels) == 1 else UNTAGGED)
        if not row["mp4"]:
            row["error"] = "no .mp4 member"
        return row

    def _bad_shard(self, reason: str, read: int) -> Iterator[pa.Table]:
        import ray

        log.warning("skipping shard %s: %s", self.uri, reason)
        if self.counting is None:
            raise BadSamplesError(f"shard {self.uri}: {reason}")
        counter, dataset_id, limits = self.counting
        bad = [(self.shard, reason)] * max(1, self.eligible - read)
        verdict = ray.get(counter.add.remote(dataset_id, limits, 0, bad))
        if verdict:
            raise BadSamplesError(verdict)
        return iter(())

    def __call__(self) -> Iterator[pa.Table]:
        rng = random.Random(self.seed)
        buffer: list[dict[str, Any]] = []
        block: list[dict[str, Any]] = []
        block_bytes = 0

        def flush() -> Iterator[pa.Table]:
            nonlocal block, block_bytes
            if block:
                yield pa.Table.from_pylist(block, schema=ROW_SCHEMA)
            block, block_bytes = [], 0

        try:
            data = storage.read_bytes(self.uri)
        except OSError as exc:
            yield from self._bad_shard(f"unreadable ({exc})", 0)
            return
        if self.record.get("sha256") and hashlib.sha256(data).hexdigest() != self.record["sha256"]:
            yield from self._bad_shard("sha256 does not match index.json (corrupt or replaced)", 0)
            return
        seen = 0
        try:
            for key, parts in shards.iter_tar_samples(io.BytesIO(data)):
                seen += 1
                row = self._row(key, parts)
                if row is None:
                    continue
                buffer.append(row)
                if len(buffer) <= self.buffer_size:
                    continue
                # local shuffle: emit a random row of the buffer
                out = buffer.pop(rng.randrange(len(buffer)))
                block.append(out)
                block_bytes += len(out["mp4"])
                if block_bytes >= READ_BLOCK_BYTES or len(block) >= self.block_rows:
                    yield from flush()
        except (tarfile.TarError, EOFError) as exc:  # a shard without a sha256 in index.json
            yield from self._bad_shard(f"not a readable tar after {seen} samples ({exc})", seen)
        rng.shuffle(buffer)
        for out in buffer:
            block.append(out)
            block_bytes += len(out["mp4"])
            if block_bytes >= READ_BLOCK_BYTES or len(block) >= self.block_rows:
                yield from flush()
        yield from flush()


ROW_SCHEMA = pa.schema([("key", pa.string()), ("mp4", pa.binary()), ("caption", pa.string()),
                        ("language", pa.string()), ("level", pa.int32()), ("shard", pa.string()),
                        ("error", pa.string())])


def _datasource(shard_list: list[tuple[str, dict[str, Any]]], phase: PhaseConfig, data: DataConfig,
                counting: tuple[Any, str, tuple[float, int, int]] | None = None):
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class ShardDatasource(Datasource):
        """One read task per tar shard."""

        def get_name(self) -> str:
            return "AIPRODShards"

        def estimate_inmemory_data_size(self) -> int:
            return sum(int(record["bytes"]) for _, record in shard_list)

        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                           data_context: Any = None) -> list[ReadTask]:
            tasks = []
            for i, (uri, record) in enumerate(shard_list):
                meta = BlockMetadata(num_rows=None, size_bytes=int(record["bytes"]), exec_stats=None,
                                     input_files=[uri])
                rows = _ShardRows(uri, record, phase, data, seed=data.seed * 1_000_003 + i, counting=counting)
                tasks.append(ReadTask(rows, meta, schema=ROW_SCHEMA, per_task_row_limit=per_task_row_limit))
            return tasks

    return ShardDatasource()


# ----------------------------------------------------------------------------- decoding


class DecodeClips:
    """map_batches UDF: mp4 bytes -> frames of exactly (T, H, W); bad samples dropped and counted.

    `windows` > 1 (latent caches) decodes that many windows of each clip, each from a seed of its
    own; window 0 is the one training online decodes."""

    def __init__(self, phase: PhaseConfig, data: DataConfig, counter: Any, dataset_id: str, expected: int,
                 windows: int = 1):
        self.phase, self.data, self.counter, self.dataset_id = phase, data, counter, dataset_id
        self.limits = (data.max_bad_fraction, expected, data.bad_keys_reported)
        self.windows = windows

    def _decode(self, key: str, mp4: bytes, window: int = 0) -> np.ndarray:
        phase, data = self.phase, self.data
        seed = zlib.crc32(f"{data.seed}:{key}".encode() if window == 0 else f"{data.seed}:{key}:{window}".encode())
        return video.decode_clip(mp4, phase.frames, phase.fps, phase.height, phase.width, start=data.start,
                                 seed=seed, threads=data.decode_threads, timeout_s=data.clip_timeout_s, name=key)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import ray

        keep: list[int] = []
        clips: list[np.ndarray] = []
        windows: list[int] = []
        bad: list[tuple[str, str]] = []
        for i, key in enumerate(batch["key"]):
            key = str(key)
            error = str(batch["error"][i])
            if not error:
                try:
                    decoded = [self._decode(key, bytes(batch["mp4"][i]), w) for w in range(self.windows)]
                    clips.extend(decoded)
                    keep.extend([i] * len(decoded))
                    windows.extend(range(len(decoded)))
                    continue
                except video.VideoError as exc:
                    error = f"{type(exc).__name__}: {exc}"
            log.warning("dropping bad sample %s: %s", key, error)
            bad.append((key, error))
        # waited for (a round trip per batch) so that the counts are complete when a pass ends
        verdict = ray.get(self.counter.add.remote(self.dataset_id, self.limits, len(keep), bad))
        if verdict:
            raise BadSamplesError(verdict)
        phase = self.phase
        frames = np.stack(clips) if clips else np.empty((0, phase.frames, phase.height, phase.width, 3), np.uint8)
        return {
            "key": np.asarray([str(batch["key"][i]) for i in keep], dtype=object),
            "frames": frames,
            "caption": np.asarray([str(batch["caption"][i]) for i in keep], dtype=object),
            "language": np.asarray([str(batch["language"][i]) for i in keep], dtype=object),
            "level": np.asarray([int(batch["level"][i]) for i in keep], dtype=np.int32),
            "shard": np.asarray([str(batch["shard"][i]) for i in keep], dtype=object),
            "window": np.asarray(windows, dtype=np.int32),
        }


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
    expected = sum(_shard_eligible_count(r, set(phase.levels), data.untagged_all_phases) for _, r in shard_list)
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
