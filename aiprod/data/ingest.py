"""User videos into shards: captions files (JSONL or CSV), sidecar captions, the videos of a
directory (local or s3://), and each video checked, re-encoded where needed, into a sample.

    summary = build_video_shards("s3://bucket/shards", "s3://bucket/videos", "captions.jsonl")

Inputs that cannot be used are left out with a reason (rejected.jsonl), never fail the build.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow.fs as pafs

from aiprod import storage
from aiprod.config import DataConfig
from aiprod.data import captions as cap
from aiprod.data import video, video_encode
from aiprod.data.clips import ClipShape, nearest_bucket, phase_buckets, smaller_than
from aiprod.data.shard_writer import JSON_OVERHEAD, Item, Rejected, Sample, Settings, build_shards
from aiprod.data.shards import ShardError


@dataclass(frozen=True)
class VideoSettings(Settings):
    """Settings of user videos: also the buckets a video must not be smaller than (see `too_small`)."""

    min_buckets: tuple[tuple[tuple[int, int], ...], ...] = ()  # per phase, its buckets' (height, width)


def parse_min_size(text: str) -> tuple[tuple[tuple[int, int], ...], ...]:
    """`--min-size`: "HxW" or "HxW,HxW,..." (one phase's buckets) -> min_buckets; "0"/"none" -> ()."""
    if str(text).strip().lower() in ("", "0", "none", "off"):
        return ()
    sizes = []
    for part in str(text).split(","):
        match = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", part)
        if not match or min(int(v) for v in match.groups()) < 1:
            raise ValueError(f"--min-size must be HEIGHTxWIDTH[,HEIGHTxWIDTH...] (e.g. 64x64,48x80) or 0, got {text!r}")
        sizes.append((int(match.group(1)), int(match.group(2))))
    return (tuple(sizes),)


def phases_min_buckets(phases: Sequence[Any]) -> tuple[tuple[tuple[int, int], ...], ...]:
    """min_buckets of curriculum phases: each phase's buckets (or its one height x width)."""
    return tuple(tuple((b.height, b.width) for b in phase_buckets(p)) for p in phases)


def too_small(width: int, height: int, min_buckets: Sequence[Sequence[tuple[int, int]]]) -> ClipShape | None:
    """The bucket a video (displayed size) is too small for, or None: in each phase the video goes
    to the bucket nearest its aspect ratio; it is too small when it is smaller (on either side)
    than the smallest of those buckets, so it would be upscaled in every phase."""
    picks = []
    for sizes in min_buckets:
        shapes = [ClipShape(1, h, w) for h, w in sizes]
        if shapes:
            picks.append(shapes[nearest_bucket(width, height, shapes)])
    if not picks:
        return None
    smallest = min(picks, key=lambda b: (b.height * b.width, b.height))
    return smallest if smaller_than(width, height, smallest) else None


def _needs_transcode(data: bytes, info: video.VideoInfo, settings: Settings) -> bool:
    too_big = settings.max_side is not None and max(info.width, info.height) > settings.max_side
    return too_big or not video_encode.is_mp4(data)


def video_sample(item: Item, settings: Settings) -> Sample | Rejected:
    """A planned video as a shard sample, or why it is left out (runs in a worker process)."""
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
        floor = too_small(info.width, info.height, getattr(settings, "min_buckets", ()))
        if floor is not None:
            return Rejected(item.key, item.source, "too_small",
                            f"{item.source}: shown {info.width}x{info.height} (WxH, rotation {info.rotation}), "
                            f"smaller than the {floor.height}x{floor.width} (HxW) bucket it would train in")
        if _needs_transcode(data, info, settings):
            data = video_encode.transcode(data, settings.max_side, settings.crf, settings.preset, name=item.source)
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
        if not text and "caption" in row:
            rejected.append(Rejected(key, uri, "no_caption",
                                     f"{row['_where']}: empty caption for {row.get('path')} (and no sidecar .txt)"))
            continue
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
    min_buckets: Sequence[Sequence[tuple[int, int]]] = (),
) -> dict[str, Any]:
    """Shards of user videos with captions; rejects are listed in rejected.jsonl.

    Videos whose longer side passes `max_side` (default data.shard_max_side), or that are not MP4,
    are re-encoded; with `clip_frames`, videos too short for a clip that long (at `clip_fps`, default
    the video's own fps) are rejected; with `min_buckets` (per phase, its buckets' (height, width):
    `phases_min_buckets`, `parse_min_size`), videos smaller than their bucket (`too_small`) are."""
    data = data or DataConfig()
    items, rejected = video_items(videos, captions_file, data)
    settings = Settings(max_side=max_side or data.shard_max_side, crf=data.encode_crf, preset=data.encode_preset,
                        clip_frames=clip_frames, clip_fps=clip_fps)
    floors = tuple(tuple((int(h), int(w)) for h, w in sizes) for sizes in min_buckets if sizes)
    if floors:  # plain Settings otherwise: the shard plans' fingerprints stay as they were
        settings = VideoSettings(**asdict(settings), min_buckets=floors)
    source = {"videos": str(videos), "captions": captions_file}
    return build_shards(items, video_sample, out_uri, settings, data, heldout_fraction, workers, source, rejected,
                        progress)
