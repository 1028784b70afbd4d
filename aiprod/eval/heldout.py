"""The held-out reference clips: what evaluation (VAE reconstruction, Fréchet distance) and the Tune
objective both compare a model with.

    heldout = read_heldout("out/shards/demo", 8, clip_spec(cfg), seed=cfg.data.seed)

One deterministic read: the `heldout` split of a shard directory (the train split when it has
none), shards in index.json order and samples in shard order; each sample's clip is its centred
`spec.frames` frames at `spec.fps`, resized and centre-cropped to `spec.height` x `spec.width` (or,
given `buckets`, to the bucket nearest the video's aspect ratio, from the width/height in its sample
JSON, as training does: aiprod.data.clips). The same data, size and seed give the same clips, so a
count of N is the first N clips of any larger one. Samples too short, undecodable or without
readable JSON are skipped and named.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aiprod import storage
from aiprod.data import shards, video
from aiprod.data.clips import ClipShape, nearest_bucket
from aiprod.eval.settings import ClipSpec

__all__ = ["HeldOut", "HeldOutClip", "read_heldout"]


@dataclass(frozen=True)
class HeldOutClip:
    key: str
    frames: np.ndarray  # uint8 [T, H, W, 3]
    caption: str
    language: str | None
    width: int = 0  # the video's displayed size, from its sample JSON (0: unknown)
    height: int = 0
    bucket: str = ""  # FRAMESxHEIGHTxWIDTH the clip was read at


@dataclass
class HeldOut:
    uri: str
    split: str
    clips: list[HeldOutClip] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "KEY: why" per sample left out

    def frames(self) -> list[np.ndarray]:
        return [c.frames for c in self.clips]

    def summary(self) -> dict[str, Any]:
        return {"uri": self.uri, "split": self.split, "clips": len(self.clips), "skipped": self.skipped}


def _clip(key: str, parts: dict[str, bytes], spec: ClipSpec, seed: int,
          buckets: Sequence[ClipShape] | None) -> HeldOutClip:
    meta = json.loads(parts["json"].decode("utf-8"))
    width, height = int(meta.get("width") or 0), int(meta.get("height") or 0)
    shape = buckets[nearest_bucket(width, height, list(buckets))] if buckets else \
        ClipShape(spec.frames, spec.height, spec.width)
    frames = video.decode_clip(parts["mp4"], shape.frames, spec.fps, shape.height, shape.width, start="center",
                               seed=seed, name=key)
    return HeldOutClip(key, frames, str(meta.get("caption") or ""), meta.get("language"), width, height, shape.name)


def read_heldout(data_uri: str, count: int, spec: ClipSpec, seed: int = 0,
                 buckets: Sequence[ClipShape] | None = None) -> HeldOut:
    """Up to `count` held-out clips of the shard directory `data_uri` (see the module docstring)."""
    index = shards.read_index(data_uri)
    if index is None:
        raise FileNotFoundError(f"--data {data_uri}: no {shards.INDEX} (build shards with jobs/make_shards.py)")
    heldout = HeldOut(str(data_uri), "heldout" if index.get("heldout") else "train")
    for shard, _ in shards.shard_uris(data_uri, heldout.split, index):
        if len(heldout.clips) >= count:
            break
        for key, parts in shards.iter_tar_samples(io.BytesIO(storage.read_bytes(shard))):
            try:
                heldout.clips.append(_clip(key, parts, spec, seed, buckets))
            except (video.VideoError, KeyError, ValueError) as exc:  # ValueError: unreadable JSON
                heldout.skipped.append(f"{key}: {exc}")
            if len(heldout.clips) >= count:
                break
    return heldout
