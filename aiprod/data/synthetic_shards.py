"""Shards of procedural curriculum clips (`aiprod.data.synthetic`): clip specs cycling through
levels and languages, each clip rendered, encoded and captioned in a worker process.

    summary = build_synthetic_shards("out/shards/demo", 200, levels=[1, 2, 3, 4, 5], size=(64, 64),
                                     frames=9, fps=8.0, seed=0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from aiprod.config import DataConfig
from aiprod.data import captions as cap
from aiprod.data import video, video_encode
from aiprod.data.shard_writer import JSON_OVERHEAD, Item, Sample, Settings, build_shards
from aiprod.data.shards import ShardError
from aiprod.data.synthetic import LEVELS, make_clip

SYNTHETIC_ESTIMATE_CLIPS = 5  # clips encoded up front to estimate synthetic sample sizes


def synthetic_sample(item: Item, settings: Settings) -> Sample:
    """A planned clip spec as a shard sample: rendered, encoded, probed (runs in a worker process)."""
    level, seed, frames, height, width, fps, language = item.synthetic
    clip, truth = make_clip(level, seed, frames, height, width, fps, language)
    data = video_encode.encode_mp4(clip, fps, crf=settings.crf, preset=settings.preset)
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
            by_level[level] = len(synthetic_sample(item, settings).mp4) + JSON_OVERHEAD
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
    return build_shards(items, synthetic_sample, out_uri, settings, data, heldout_fraction, workers, source,
                        progress=progress)
