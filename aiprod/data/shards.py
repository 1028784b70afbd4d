"""WebDataset tar shards: build them from videos + captions or from synthetic clips, and check them.

    summary = build_synthetic_shards("out/shards/demo", 200, levels=[1, 2, 3, 4, 5], size=(64, 64),
                                     frames=9, fps=8.0, seed=0)
    problems = check_shards("out/shards/demo")          # [] when every shard matches index.json

Layout of a shard directory (local or s3://):
    shard-000000.tar ...     training samples: KEY.json then KEY.mp4
    heldout-000000.tar ...   the held-out split, for evaluation
    index.json               shards with sample counts, bytes, sha256, level histograms
    rejected.jsonl           inputs left out, with the reason

Each shard's membership is planned before any work (input order, estimated sizes), so a re-run
finds the shards that are already complete (same plan, same bytes) and skips them. A shard is
written to a temp name and renamed (one PUT on S3): a crash never leaves half a shard.
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import hashlib
import io
import json
import logging
import multiprocessing
import os
import re
import tarfile
import tempfile
import time
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow.fs as pafs

from aiprod import storage
from aiprod.config import DataConfig
from aiprod.data import captions as cap
from aiprod.data import video

log = logging.getLogger(__name__)

INDEX = "index.json"
REJECTED = "rejected.jsonl"
FORMAT = "aiprod-shards/1"
SPLIT_PREFIX = {"train": "shard", "heldout": "heldout"}
SHARD_NAME = re.compile(r"^(shard|heldout)-\d{6}\.tar$")
JSON_OVERHEAD = 2048  # bytes per sample for KEY.json and the tar headers, in size estimates
SYNTHETIC_ESTIMATE_CLIPS = 5  # clips encoded up front to estimate synthetic sample sizes
SUBMIT_AHEAD = 4  # work items queued per process


class ShardError(ValueError):
    """Bad input to the shard builder (a captions file, a directory), named in the message."""


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
    key: str
    source: str | None
    reason: str
    error: str


@dataclass
class Sample:
    key: str
    mp4: bytes
    meta: dict[str, Any]


@dataclass
class ShardPlan:
    name: str
    split: str
    items: list[Item]
    plan_sha256: str = ""


# ----------------------------------------------------------------------------- samples


def _synthetic_sample(item: Item, settings: Settings) -> Sample:
    from aiprod.data.synthetic import make_clip

    level, seed, frames, height, width, fps, language = item.synthetic
    clip, truth = make_clip(level, seed, frames, height, width, fps, language)
    data = video.encode_mp4(clip, fps, crf=settings.crf, preset=settings.preset)
    info = video.probe(data)
    meta = {
        "key": item.key,
        "caption": truth["caption"],
        "language": language,
        "level": level,
        "levels": [level],
        "emergency_type": None,
        **info.to_dict(),
        "source": "synthetic",
        "truth": truth,
    }
    return Sample(item.key, data, meta)


def _needs_transcode(data: bytes, info: video.VideoInfo, settings: Settings) -> bool:
    too_big = settings.max_side is not None and max(info.width, info.height) > settings.max_side
    return too_big or not video.is_mp4(data)


def _video_sample(item: Item, settings: Settings) -> Sample | Rejected:
    if not item.caption:
        return Rejected(item.key, item.source, "no_caption",
                        f"{item.source}: no caption (not in the captions file, no sidecar .txt)")
    try:
        data = storage.read_bytes(item.source)
    except (OSError, FileNotFoundError) as exc:
        return Rejected(item.key, item.source, "missing_file", f"{item.source}: {exc}")
    try:
        info = video.probe(data, count_frames=True, name=item.source)
        if settings.clip_frames and not video.fits_clip(info, settings.clip_frames, settings.clip_fps or info.fps):
            raise video.TooShortVideoError(
                f"{item.source}: {info.frames} frames at {info.fps:g} fps, shorter than a clip of "
                f"{settings.clip_frames} frames at {settings.clip_fps or info.fps:g} fps")
        if _needs_transcode(data, info, settings):
            data = video.transcode(data, settings.max_side, settings.crf, settings.preset, name=item.source)
            info = video.probe(data, count_frames=True, name=item.source)
    except video.VideoError as exc:
        return Rejected(item.key, item.source, exc.reason, str(exc))
    meta = {
        "key": item.key,
        "caption": item.caption,
        "language": item.language or cap.detect_language(item.caption),
        "level": item.levels[0] if len(item.levels) == 1 else None,
        "levels": list(item.levels),
        "emergency_type": item.emergency_type,
        **info.to_dict(),
        "source": item.source,
    }
    return Sample(item.key, data, meta)


def make_sample(item: Item, settings: Settings) -> Sample | Rejected:
    """Turn one planned item into a shard sample, or say why it is left out (runs in a worker)."""
    if item.synthetic is not None:
        return _synthetic_sample(item, settings)
    return _video_sample(item, settings)


# ----------------------------------------------------------------------------- tar I/O


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0  # deterministic bytes: the same inputs give the same shard
    tar.addfile(info, io.BytesIO(data))


def sample_json(meta: dict[str, Any]) -> bytes:
    return json.dumps(meta, ensure_ascii=False, sort_keys=True).encode("utf-8")


def iter_tar_samples(stream: BinaryIO) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample of a tar stream (read sequentially, never seeks).

    WebDataset convention: the key is the member name up to its first dot; a sample's members
    are adjacent.
    """
    current: str | None = None
    parts: dict[str, bytes] = {}
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            base = member.name.rsplit("/", 1)[-1]
            key, _, ext = base.partition(".")
            if key != current and current is not None:
                yield current, parts
                parts = {}
            current = key
            parts[ext] = tar.extractfile(member).read()
    if current is not None:
        yield current, parts


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
                    _add_member(tar, f"{sample.key}.json", sample_json(sample.meta))
                    _add_member(tar, f"{sample.key}.mp4", sample.mp4)
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
        plan.name = f"{SPLIT_PREFIX[split]}-{i:06d}.tar"
        body = json.dumps([fingerprint, [asdict(it) for it in plan.items]], sort_keys=True, default=list)
        plan.plan_sha256 = hashlib.sha256(body.encode("utf-8")).hexdigest()
    return plans


# ----------------------------------------------------------------------------- building


def _results(items: list[Item], settings: Settings, workers: int) -> Iterator[Sample | Rejected]:
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


def read_index(uri: str) -> dict[str, Any] | None:
    path = storage.join(uri, INDEX)
    if not storage.exists(path):
        return None
    try:
        index = json.loads(storage.read_text(path))
    except json.JSONDecodeError as exc:
        raise ShardError(f"{path}: not valid JSON ({exc})") from None
    if index.get("format") != FORMAT:
        raise ShardError(f"{path}: unknown format {index.get('format')!r}, expected {FORMAT!r}")
    return index


def _file_sizes(uri: str) -> dict[str, int]:
    fs, path = storage.open_fs(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return {}
    return {Path(i.path).name: i.size for i in fs.get_file_info(pafs.FileSelector(path))
            if i.type == pafs.FileType.File}


def build_shards(
    items: list[Item],
    out_uri: str,
    settings: Settings,
    data: DataConfig,
    heldout_fraction: float | None = None,
    workers: int | None = None,
    source: dict[str, Any] | None = None,
    input_rejected: Sequence[Rejected] = (),
    progress: bool = False,
) -> dict[str, Any]:
    """Write the shards for `items` under `out_uri`; returns the summary (also in index.json)."""
    from tqdm import tqdm

    started = time.monotonic()
    out_uri = str(out_uri).rstrip("/")
    fraction = data.heldout_fraction if heldout_fraction is None else heldout_fraction
    workers = workers if workers is not None else (data.shard_workers or os.cpu_count() or 1)
    target = int(data.shard_target_mb * (1 << 20))
    train, heldout = _split(items, fraction)
    plans = plan_shards(train, "train", target, settings) + plan_shards(heldout, "heldout", target, settings)

    previous = read_index(out_uri) or {}
    done = {r["name"]: r for split in ("shards", "heldout") for r in previous.get(split, [])}
    sizes = _file_sizes(out_uri)
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
            "format": FORMAT,
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
    results = _results([it for p in todo for it in p.items], settings, workers)
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
            storage.write_text_atomic(storage.join(out_uri, INDEX), json.dumps(index_doc(False), ensure_ascii=False))
    finally:
        results.close()
        bar.close()

    planned = {p.name for p in plans}
    for name in sizes:  # shards of an earlier, different plan would confuse readers
        if SHARD_NAME.match(name) and name not in planned:
            storage.delete(storage.join(out_uri, name))
    index = index_doc(True)
    all_rejected = list(index["input_rejected"]) + [r for rec in records.values() for r in rec["rejected"]]
    storage.write_text_atomic(storage.join(out_uri, REJECTED),
                              "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in all_rejected))
    storage.write_text_atomic(storage.join(out_uri, INDEX), json.dumps(index, ensure_ascii=False, indent=1))
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
        "bytes": sum(r["bytes"] for r in records.values()),
        "seconds": round(time.monotonic() - started, 2),
    }


# ----------------------------------------------------------------------------- synthetic


def _size_hw(size: int | Sequence[int] | str) -> tuple[int, int]:
    if isinstance(size, str):
        parts = size.lower().split("x")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise ShardError(f"size must look like HEIGHTxWIDTH (e.g. 64x64), got {size!r}")
        return int(parts[0]), int(parts[1])
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def synthetic_items(n: int, levels: Sequence[int], size: int | Sequence[int] | str, frames: int, fps: float,
                    seed: int, languages: Sequence[str] = cap.LANGUAGES) -> list[Item]:
    """n clip specs cycling through levels, then languages (so every level gets every language)."""
    from aiprod.data.synthetic import LEVELS

    if n < 1:
        raise ShardError(f"synthetic: need at least one clip, got n={n}")
    bad = [lv for lv in levels if lv not in LEVELS]
    if not levels or bad:
        raise ShardError(f"synthetic: levels must be a non-empty subset of {list(LEVELS)}, got {list(levels)}")
    height, width = _size_hw(size)
    items = []
    for i in range(n):
        level = int(levels[i % len(levels)])
        language = languages[(i // len(levels)) % len(languages)]
        spec = (level, seed + i, frames, height, width, float(fps), language)
        items.append(Item(key=f"syn-{i:07d}", caption=None, language=language, levels=(level,), synthetic=spec))
    return items


def _estimate_synthetic(items: list[Item], settings: Settings) -> list[Item]:
    """Size estimates from encoding the first clip of up to a few levels (deterministic)."""
    by_level: dict[int, int] = {}
    for item in items:
        level = item.synthetic[0]
        if level not in by_level and len(by_level) < SYNTHETIC_ESTIMATE_CLIPS:
            by_level[level] = len(_synthetic_sample(item, settings).mp4) + JSON_OVERHEAD
    mean = sum(by_level.values()) // len(by_level)
    return [replace(it, size_estimate=by_level.get(it.synthetic[0], mean)) for it in items]


def build_synthetic_shards(
    out_uri: str,
    n: int,
    levels: Sequence[int] = (1, 2, 3, 4, 5),
    size: int | Sequence[int] | str = (64, 64),
    frames: int = 9,
    fps: float = 8.0,
    seed: int = 0,
    data: DataConfig | None = None,
    heldout_fraction: float | None = None,
    workers: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Shards of n synthetic clips (levels cycled, languages cycled) under out_uri; the summary."""
    data = data or DataConfig()
    settings = Settings(crf=data.encode_crf, preset=data.encode_preset)
    items = _estimate_synthetic(synthetic_items(n, levels, size, frames, fps, seed), settings)
    height, width = _size_hw(size)
    source = {"synthetic": {"n": n, "levels": list(levels), "height": height, "width": width,
                            "frames": frames, "fps": fps, "seed": seed}}
    return build_shards(items, out_uri, settings, data, heldout_fraction, workers, source, progress=progress)


# ----------------------------------------------------------------------------- user videos


def _parse_levels(raw: Any, where: str) -> tuple[int, ...]:
    """A `phase`/`level` tag: 3, "3", "1,2", "level3" or empty (untagged)."""
    if raw is None or raw == "" or raw == []:
        return ()
    values = raw if isinstance(raw, list) else str(raw).replace(";", ",").split(",")
    levels = []
    for value in values:
        text = str(value).strip().lower().removeprefix("level").removeprefix("phase").strip()
        if not text.isdigit() or int(text) not in range(1, 6):
            raise ShardError(f"{where}: phase/level tag must be 1..5 (or a list like '1,2'), got {raw!r}")
        levels.append(int(text))
    return tuple(sorted(set(levels)))


def read_captions(path: str) -> list[dict[str, Any]]:
    """Rows of a JSONL or CSV captions file (`path`, `caption`, optional language/phase/emergency_type)."""
    text = storage.read_text(path).lstrip("\ufeff")
    is_jsonl = path.endswith((".jsonl", ".json", ".ndjson")) or (not path.endswith(".csv") and text.lstrip()[:1] == "{")
    rows: list[dict[str, Any]] = []
    if is_jsonl:
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ShardError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise ShardError(f"{path}:{number}: each line must be a JSON object")
            rows.append({**row, "_where": f"{path}:{number}"})
    else:
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise ShardError(f"{path}: the CSV header must have a 'path' column, got {reader.fieldnames}")
        for number, row in enumerate(reader, 2):
            rows.append({**row, "_where": f"{path}:{number}"})
    for row in rows:
        if not str(row.get("path") or "").strip():
            raise ShardError(f"{row['_where']}: missing 'path'")
    return rows


def _key_for(relative: str, taken: set[str]) -> str:
    stem = relative.rsplit(".", 1)[0] if "." in relative.rsplit("/", 1)[-1] else relative
    key = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_") or "video"
    candidate, n = key, 1
    while candidate in taken:
        n += 1
        candidate = f"{key}_{n}"
    taken.add(candidate)
    return candidate


def _sidecar_caption(video_uri: str) -> str | None:
    base = video_uri.rsplit(".", 1)[0]
    for sidecar in (base + ".txt", video_uri + ".txt"):
        if storage.exists(sidecar):
            return storage.read_text(sidecar).strip() or None
    return None


def _list_videos(videos: str, extensions: Sequence[str]) -> dict[str, int]:
    fs, path = storage.open_fs(videos)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.Directory and not (storage.is_s3(videos) and info.type == pafs.FileType.NotFound):
        raise ShardError(f"--videos: {videos} is not a directory")
    prefix = "s3://" if storage.is_s3(videos) else ""
    exts = tuple(e.lower() for e in extensions)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return {prefix + i.path: i.size for i in infos if i.type == pafs.FileType.File and i.path.lower().endswith(exts)}


def video_items(videos: str, captions_file: str | None, data: DataConfig) -> tuple[list[Item], list[Rejected]]:
    """Plan items for the videos in a directory (local or s3://) and their captions."""
    base = str(videos).rstrip("/")
    found = _list_videos(base, data.video_extensions)
    entries: dict[str, dict[str, Any]] = {}
    rejected: list[Rejected] = []
    if captions_file:
        for row in read_captions(captions_file):
            raw = str(row["path"]).strip()
            uri = storage.absolute(raw if storage.is_s3(raw) or os.path.isabs(raw) else storage.join(base, raw))
            if uri in entries:
                rejected.append(Rejected(raw, uri, "duplicate",
                                         f"{row['_where']}: {raw} is already listed at {entries[uri]['_where']}"))
                continue
            entries[uri] = row
    for uri in found:
        entries.setdefault(uri, {"_where": uri})

    items: list[Item] = []
    taken: set[str] = set()
    for uri in sorted(entries):
        row = entries[uri]
        relative = uri[len(base) + 1:] if uri.startswith(base + "/") else uri.rsplit("/", 1)[-1]
        key = _key_for(relative, taken)
        try:
            levels = _parse_levels(row.get("phase", row.get("level")), row["_where"])
        except ShardError as exc:
            rejected.append(Rejected(key, uri, "bad_tag", str(exc)))
            continue
        if uri not in found and not storage.exists(uri):
            rejected.append(Rejected(key, uri, "missing_file", f"{row['_where']}: no video at {uri}"))
            continue
        text = (row.get("caption") or "").strip() or _sidecar_caption(uri)
        language = (row.get("language") or "").strip() or None
        items.append(Item(key=key, source=uri, caption=text, language=language, levels=levels,
                          emergency_type=(row.get("emergency_type") or "").strip() or None,
                          size_estimate=found.get(uri, 0) + JSON_OVERHEAD))
    return items, rejected


def build_video_shards(
    out_uri: str,
    videos: str,
    captions_file: str | None,
    data: DataConfig | None = None,
    max_side: int | None = None,
    clip_frames: int | None = None,
    clip_fps: float | None = None,
    heldout_fraction: float | None = None,
    workers: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Shards of user videos with captions; rejects are listed in rejected.jsonl."""
    data = data or DataConfig()
    items, rejected = video_items(videos, captions_file, data)
    settings = Settings(max_side=max_side or data.shard_max_side, crf=data.encode_crf, preset=data.encode_preset,
                        clip_frames=clip_frames, clip_fps=clip_fps)
    source = {"videos": str(videos), "captions": captions_file}
    return build_shards(items, out_uri, settings, data, heldout_fraction, workers, source, rejected, progress)


# ----------------------------------------------------------------------------- checking


def shard_uris(uri: str, split: str = "train", index: dict[str, Any] | None = None) -> list[tuple[str, dict]]:
    """(shard URI, index record) for a split ('train' or 'heldout')."""
    index = index or read_index(uri)
    if index is None:
        raise FileNotFoundError(f"no {INDEX} in {uri} (build shards with jobs/make_shards.py)")
    if split not in SPLIT_PREFIX:
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    records = index["shards"] if split == "train" else index["heldout"]
    return [(storage.join(uri, r["name"]), r) for r in records]


def check_shards(uri: str) -> list[str]:
    """Re-read every shard: sha256, byte count, sample count, sample JSON. Problems, or []."""
    uri = str(uri).rstrip("/")
    try:
        index = read_index(uri)
    except ShardError as exc:
        return [str(exc)]
    if index is None:
        return [f"{storage.join(uri, INDEX)}: missing"]
    problems: list[str] = []
    if not index.get("complete"):
        problems.append(f"{INDEX}: the build did not finish (complete=false); re-run make_shards")
    listed = set()
    for split in ("train", "heldout"):
        for shard, record in shard_uris(uri, split, index):
            listed.add(record["name"])
            problems.extend(_check_one(shard, record))
    sizes = _file_sizes(uri)
    problems.extend(f"{name}: shard not listed in {INDEX}" for name in sorted(sizes)
                    if SHARD_NAME.match(name) and name not in listed)
    return problems


def _check_one(shard: str, record: dict[str, Any]) -> list[str]:
    name = record["name"]
    try:
        data = storage.read_bytes(shard)
    except FileNotFoundError:
        return [f"{name}: missing"]
    problems = []
    if len(data) != record["bytes"]:
        problems.append(f"{name}: {len(data)} bytes, index says {record['bytes']}")
    if hashlib.sha256(data).hexdigest() != record["sha256"]:
        problems.append(f"{name}: sha256 mismatch")
    count = 0
    try:
        for key, parts in iter_tar_samples(io.BytesIO(data)):
            if set(parts) != {"json", "mp4"}:
                problems.append(f"{name}: sample {key} has members {sorted(parts)}, expected json + mp4")
                continue
            meta = json.loads(parts["json"].decode("utf-8"))
            if not isinstance(meta, dict) or not meta.get("caption"):
                problems.append(f"{name}: sample {key} has no caption in its JSON")
            count += 1
    except (tarfile.TarError, json.JSONDecodeError, UnicodeDecodeError, EOFError) as exc:
        problems.append(f"{name}: unreadable ({type(exc).__name__}: {exc})")
    if count != record["samples"]:
        problems.append(f"{name}: {count} samples, index says {record['samples']}")
    return problems
