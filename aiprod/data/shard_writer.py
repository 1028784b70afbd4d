"""The shard builder: plans which samples go in which shard, makes them on a process pool and
writes the tars and index.json of a shard directory (the format is `aiprod.data.shards`).

Each shard's membership is planned before any work (input order, estimated sizes), so a re-run
finds the shards that are already complete (same plan, same bytes) and skips them. A shard is
written to a temp name and renamed (one PUT on S3): a crash never leaves half a shard.

The item sources call `build_shards` with a sample maker of their own: user videos
(`aiprod.data.ingest`) and synthetic clips (`aiprod.data.synthetic_shards`).
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import multiprocessing
import os
import tarfile
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aiprod import storage
from aiprod.config import DataConfig
from aiprod.data import caption_lengths, shards

JSON_OVERHEAD = 2048  # bytes per sample for KEY.json and the tar headers, in size estimates
SUBMIT_AHEAD = 4  # work items queued per process


# ----------------------------------------------------------------------------- items


@dataclass(frozen=True)
class Item:
    """One planned sample: a source video (local or s3://) or a synthetic clip spec."""

    key: str
    source: str | None = None
    caption: str | None = None
    language: str | None = None
    levels: tuple[int, ...] = ()
    emergency_type: str | None = None
    synthetic: tuple[int, int, int, int, int, float, str] | None = None  # level, seed, T, H, W, fps, lang
    size_estimate: int = 0


@dataclass(frozen=True)
class Settings:
    """How items become samples; part of each shard's plan fingerprint."""

    max_side: int | None = None
    crf: int = 23
    preset: str = "veryfast"
    clip_frames: int | None = None  # a video must hold a clip this long (at clip_fps) to be kept
    clip_fps: float | None = None


@dataclass(frozen=True)
class Rejected:
    """An input left out of the shards, and why (a line of rejected.jsonl)."""

    key: str
    source: str | None
    reason: str
    error: str


@dataclass
class Sample:
    """One sample of a shard: KEY.mp4 and the metadata of KEY.json."""

    key: str
    mp4: bytes
    meta: dict[str, Any]


@dataclass
class ShardPlan:
    """The items planned for one shard, and the fingerprint that says whether it is already written."""

    name: str
    split: str
    items: list[Item]
    plan_sha256: str = ""


SampleMaker = Callable[[Item, Settings], Sample | Rejected]  # a module-level function: worker processes import it


# ----------------------------------------------------------------------------- writing


def _write_shard(plan: ShardPlan, samples: list[Sample], out_uri: str) -> dict[str, Any]:
    """Write one tar to a temp name, then publish it by rename (local) or one PUT (S3)."""
    target = storage.join(out_uri, plan.name)
    local_dir = None if storage.is_s3(out_uri) else Path(out_uri)
    if local_dir is not None:
        local_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{plan.name}.", suffix=".tmp", dir=local_dir)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for sample in samples:
                    shards.add_sample(tar, sample.key, sample.meta, sample.mp4)
            raw.flush()
            os.fsync(raw.fileno())
        with open(tmp, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        size = os.path.getsize(tmp)
        if local_dir is not None:
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; shards are for every reader
            os.replace(tmp, target)
            storage.fsync_dir(local_dir)
        else:
            storage.put_file(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    levels = Counter(str(s.meta["level"]) if s.meta.get("level") else
                     ("untagged" if not s.meta.get("levels") else "multi") for s in samples)
    return {
        "name": plan.name,
        "samples": len(samples),
        "bytes": size,
        "sha256": digest.hexdigest(),
        "plan_sha256": plan.plan_sha256,
        "levels": dict(sorted(levels.items())),
        "tagged_levels": sorted({lv for s in samples for lv in s.meta.get("levels", [])}),
        "min_duration_s": min((s.meta["duration"] for s in samples), default=0.0),
        # per sample [levels, frames, fps, width, height]: clip windows and buckets per phase from index.json
        "videos": [[list(s.meta.get("levels") or []), int(s.meta.get("frames") or 0), float(s.meta.get("fps") or 0),
                    int(s.meta.get("width") or 0), int(s.meta.get("height") or 0)] for s in samples],
        "caption_tokens": caption_lengths.caption_token_lengths(samples),  # {tokenizer, lengths: {lang: {n: count}}}
        "rejected": [],
    }


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ----------------------------------------------------------------------------- planning


def _split(items: list[Item], heldout_fraction: float) -> tuple[list[Item], list[Item]]:
    """A stable held-out split: the round(n * fraction) items with the smallest key hashes."""
    count = round(len(items) * heldout_fraction)
    ranked = sorted(items, key=lambda it: hashlib.sha256(it.key.encode()).hexdigest())
    heldout_keys = {it.key for it in ranked[:count]}
    return [it for it in items if it.key not in heldout_keys], [it for it in items if it.key in heldout_keys]


def plan_shards(items: Sequence[Item], split: str, target_bytes: int, settings: Settings) -> list[ShardPlan]:
    """Greedy packing in input order by estimated size; each plan carries a fingerprint."""
    plans: list[ShardPlan] = []
    current: list[Item] = []
    size = 0
    for item in items:
        if current and size + item.size_estimate > target_bytes:
            plans.append(ShardPlan("", split, current))
            current, size = [], 0
        current.append(item)
        size += item.size_estimate
    if current:
        plans.append(ShardPlan("", split, current))
    fingerprint = json.dumps(asdict(settings), sort_keys=True)
    for i, plan in enumerate(plans):
        plan.name = shards.shard_name(split, i)
        body = json.dumps([fingerprint, [asdict(it) for it in plan.items]], sort_keys=True, default=list)
        plan.plan_sha256 = hashlib.sha256(body.encode("utf-8")).hexdigest()
    return plans


# ----------------------------------------------------------------------------- building


def _results(items: list[Item], make_sample: SampleMaker, settings: Settings, workers: int
             ) -> Iterator[Sample | Rejected]:
    """make_sample over items, in order, on a process pool with a bounded queue."""
    if workers <= 1 or len(items) <= 1:
        for item in items:
            yield make_sample(item, settings)
        return
    # spawn, not fork: the caller may be a Ray driver with threads of its own
    pool = cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        queue = iter(items)
        pending: deque[cf.Future] = deque()
        for item in queue:
            pending.append(pool.submit(make_sample, item, settings))
            if len(pending) >= workers * SUBMIT_AHEAD:
                break
        while pending:
            result = pending.popleft().result()
            following = next(queue, None)
            if following is not None:
                pending.append(pool.submit(make_sample, following, settings))
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def build_shards(
    items: list[Item],
    make_sample: SampleMaker,
    out_uri: str,
    settings: Settings,
    data: DataConfig,
    heldout_fraction: float | None = None,
    workers: int | None = None,
    source: dict[str, Any] | None = None,
    input_rejected: Sequence[Rejected] = (),
    progress: bool = False,
) -> dict[str, Any]:
    """Write the shards for `items` under `out_uri`, each sample made by `make_sample(item, settings)`
    in a worker process; returns the summary (also in index.json)."""
    from tqdm import tqdm

    started = time.monotonic()
    out_uri = str(out_uri).rstrip("/")
    fraction = data.heldout_fraction if heldout_fraction is None else heldout_fraction
    workers = workers if workers is not None else (data.shard_workers or os.cpu_count() or 1)
    target = int(data.shard_target_mb * (1 << 20))
    train, heldout = _split(items, fraction)
    plans = plan_shards(train, "train", target, settings) + plan_shards(heldout, "heldout", target, settings)

    previous = shards.read_index(out_uri) or {}
    done = {r["name"]: r for split in ("shards", "heldout") for r in previous.get(split, [])}
    sizes = shards.file_sizes(out_uri)
    records: dict[str, dict[str, Any]] = {}
    todo: list[ShardPlan] = []
    for plan in plans:
        record = done.get(plan.name)
        if record and record.get("plan_sha256") == plan.plan_sha256 and sizes.get(plan.name) == record["bytes"]:
            records[plan.name] = record
        else:
            todo.append(plan)

    def index_doc(complete: bool) -> dict[str, Any]:
        ordered = [records[p.name] for p in plans if p.name in records]
        return {
            "format": shards.FORMAT,
            "complete": complete,
            "source": source or {},
            "settings": asdict(settings),
            "heldout_fraction": fraction,
            "samples": sum(r["samples"] for r in ordered if r["name"].startswith("shard-")),
            "heldout_samples": sum(r["samples"] for r in ordered if r["name"].startswith("heldout-")),
            "shards": [r for r in ordered if r["name"].startswith("shard-")],
            "heldout": [r for r in ordered if r["name"].startswith("heldout-")],
            "input_rejected": [asdict(r) for r in input_rejected],
        }

    bar = tqdm(total=sum(len(p.items) for p in todo), unit="clip", desc="shards", disable=not progress)
    results = _results([it for p in todo for it in p.items], make_sample, settings, workers)
    try:
        for plan in todo:
            samples: list[Sample] = []
            rejected: list[Rejected] = []
            for _ in plan.items:
                result = next(results)
                (rejected if isinstance(result, Rejected) else samples).append(result)
                bar.update(1)
            record = _write_shard(plan, samples, out_uri)
            record["rejected"] = [asdict(r) for r in rejected]
            records[plan.name] = record
            storage.write_text_atomic(storage.join(out_uri, shards.INDEX),
                                      json.dumps(index_doc(False), ensure_ascii=False))
    finally:
        results.close()
        bar.close()

    planned = {p.name for p in plans}
    for name in sizes:  # shards of an earlier, different plan would confuse readers
        if shards.SHARD_NAME.match(name) and name not in planned:
            storage.delete(storage.join(out_uri, name))
    index = index_doc(True)
    all_rejected = list(index["input_rejected"]) + [r for rec in records.values() for r in rec["rejected"]]
    storage.write_text_atomic(storage.join(out_uri, shards.REJECTED),
                              "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in all_rejected))
    storage.write_text_atomic(storage.join(out_uri, shards.INDEX), json.dumps(index, ensure_ascii=False, indent=1))
    return {
        "out": out_uri,
        "inputs": len(items) + len(input_rejected),
        "samples": index["samples"],
        "heldout_samples": index["heldout_samples"],
        "rejected": len(all_rejected),
        "rejected_by_reason": dict(Counter(r["reason"] for r in all_rejected)),
        "shards": len(index["shards"]) + len(index["heldout"]),
        "shards_written": len(todo),
        "shards_skipped": len(plans) - len(todo),
        "caption_tokens": caption_lengths.shards_summary(index["shards"] + index["heldout"]),  # + a stderr line
        "bytes": sum(r["bytes"] for r in records.values()),
        "seconds": round(time.monotonic() - started, 2),
    }
