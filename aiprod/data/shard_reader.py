"""Reading a phase's samples from tar shards: which shards and how many clips (from index.json),
and the Ray Data datasource whose read tasks turn each shard into rows for the decoder.

One read task per shard, shards in shuffled order, rows shuffled in a local buffer (Ray issue
#44068 keeps us off read_webdataset); samples are filtered by the phase's levels and length from
their JSON before any decoding, and a video longer than a clip gives one row per window of it
(`aiprod.data.clips`), each naming its bucket.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import random
import tarfile
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from aiprod import storage
from aiprod.config import DataConfig, PhaseConfig
from aiprod.data import clips, shards
from aiprod.data.bad_samples import BadSamplesError

log = logging.getLogger(__name__)

READ_BLOCK_BYTES = 8 << 20  # a read task yields a block at this much video (or decode_batch_size rows)
UNTAGGED = 0  # `level` of samples without one level tag
WINDOW_MARK = "@w"  # KEY@w3: the clip of window 3 of a video that gives several per pass


# ----------------------------------------------------------------------------- eligibility


def _eligible(levels: list[int], phase_levels: set[int], untagged_all_phases: bool) -> bool:
    if not levels:
        return untagged_all_phases
    return bool(phase_levels.intersection(levels))


def _shard_eligible_count(record: dict[str, Any], phase: PhaseConfig, data: DataConfig) -> int:
    """Clips per pass a shard may give the phase: windows of the samples that pass the level filter
    (multi-tagged samples count as eligible). Shards written before index.json listed each sample's
    length count one clip per sample."""
    phase_levels, untagged_all_phases = set(phase.levels), data.untagged_all_phases
    if "videos" in record:
        buckets = clips.phase_buckets(phase)
        count = 0
        for levels, frames, fps, width, height in record["videos"]:
            if _eligible(levels, phase_levels, untagged_all_phases):
                shape = buckets[clips.nearest_bucket(width, height, buckets)]
                count += clips.window_count(frames, fps, shape.frames, phase.fps, data.max_windows)
        return count
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
    return [(uri, record) for uri, record in shards.shard_uris(str(data_uri).rstrip("/"), split)
            if _shard_eligible_count(record, phase, data) > 0]


def eligible_samples(data_uri: str, phase: PhaseConfig, data: DataConfig, split: str = "train") -> int:
    """The phase's clips per pass from index.json alone (an upper bound for shards that predate the
    per-sample lengths in index.json)."""
    return sum(_shard_eligible_count(r, phase, data) for _, r in phase_shards(data_uri, phase, data, split))


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
        self.eligible = _shard_eligible_count(record, phase, data)
        self.shard = uri.rstrip("/").rsplit("/", 1)[-1]
        self.levels = set(phase.levels)
        self.buckets, self.fps, self.max_windows = clips.phase_buckets(phase), phase.fps, data.max_windows
        self.untagged_all_phases = data.untagged_all_phases
        self.buffer_size = data.shuffle_buffer
        self.block_rows = data.decode_batch_size  # small blocks spread the decoding over the decode tasks
        self.seed = seed

    def _rows(self, key: str, parts: dict[str, bytes]) -> list[dict[str, Any]]:
        """The decoder's rows of one sample: one per window of the phase's clip in it (none when it
        is filtered out); an unusable sample gives one row that carries `error`."""
        row = {"key": key, "mp4": parts.get("mp4", b""), "caption": "", "language": "", "level": UNTAGGED,
               "shard": self.shard, "error": "", "bucket": 0, "start_s": -1.0, "slack_s": 0.0}
        try:
            meta = json.loads(parts["json"].decode("utf-8"))
            levels = [int(v) for v in meta.get("levels") or ([meta["level"]] if meta.get("level") else [])]
        except (KeyError, ValueError, TypeError, UnicodeDecodeError) as exc:
            row["error"] = f"unreadable sample JSON ({type(exc).__name__}: {exc})"
            return [row]
        if not _eligible(levels, self.levels, self.untagged_all_phases):
            return []
        bucket = clips.nearest_bucket(int(meta.get("width") or 0), int(meta.get("height") or 0), self.buckets)
        frames, fps = int(meta.get("frames") or 0), float(meta.get("fps") or 0)
        count = clips.window_count(frames, fps, self.buckets[bucket].frames, self.fps, self.max_windows)
        if count == 0:
            return []  # shorter than one clip of the phase
        row.update(caption=str(meta.get("caption") or ""), language=str(meta.get("language") or ""),
                   level=levels[0] if len(levels) == 1 else UNTAGGED, bucket=bucket)
        if not row["mp4"]:
            row["error"] = "no .mp4 member"
        if count == 1:
            return [row]  # start_s -1: anywhere in the video (data.start), as decode_clip places it
        needed = clips.needed_frames(self.buckets[bucket].frames, self.fps, fps)
        out = []
        for window in range(count):
            start_s, slack_s = clips.window_span(frames, fps, count, window, needed)
            out.append({**row, "key": f"{key}{WINDOW_MARK}{window}", "start_s": start_s, "slack_s": slack_s})
        return out

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
                for row in self._rows(key, parts):
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
                        ("error", pa.string()), ("bucket", pa.int32()), ("start_s", pa.float64()),
                        ("slack_s", pa.float64())])


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
