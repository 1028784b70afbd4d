"""How a video becomes training clips: windows over its length, and a bucket for its shape.

    shapes = phase_buckets(phase)                        # [ClipShape(9, 64, 64), ClipShape(9, 48, 80)]
    b = nearest_bucket(1280, 720, shapes)                # the bucket nearest 16:9 -> index 1
    n = window_count(video_frames=300, video_fps=30, frames=9, fps=8, max_windows=0)   # 10 s -> 10
    start_s, slack_s = window_span(300, 30, n, 3, needed_frames(9, 8, 30))

A video longer than a clip gives several clips per pass: its length is cut into `n` equal
segments, each at least one clip long, and each pass takes one clip from each segment (a random
offset inside it, or its centre). So windows never overlap, and together they cover the video.

A phase may list buckets (frames x height x width, e.g. "9x48x80"); each video goes to the bucket
nearest its aspect ratio (then it is resized to cover the bucket and centre-cropped: the smallest
crop). Every batch holds one bucket's clips (aiprod.training.batches).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

BUCKET = re.compile(r"^\s*(\d+)\s*x\s*(\d+)\s*x\s*(\d+)\s*$")


@dataclass(frozen=True, order=True)
class ClipShape:
    """A training clip's shape: frames x height x width (a bucket of a phase)."""

    frames: int
    height: int
    width: int

    @property
    def name(self) -> str:
        return f"{self.frames}x{self.height}x{self.width}"

    @property
    def aspect(self) -> float:
        return self.width / self.height


def parse_bucket(text: str) -> ClipShape:
    """ "9x48x80" (frames x height x width) -> ClipShape(9, 48, 80)."""
    match = BUCKET.match(str(text))
    if not match or min(int(v) for v in match.groups()) < 1:
        raise ValueError(f"a bucket is FRAMESxHEIGHTxWIDTH with positive numbers, e.g. '9x48x80'; got {text!r}")
    return ClipShape(*(int(v) for v in match.groups()))


def phase_buckets(phase) -> list[ClipShape]:
    """The shapes a phase trains on: its `buckets`, or its one (frames, height, width)."""
    if getattr(phase, "buckets", None):
        return [parse_bucket(b) for b in phase.buckets]
    return [ClipShape(phase.frames, phase.height, phase.width)]


def nearest_bucket(width: int, height: int, buckets: list[ClipShape]) -> int:
    """Index of the bucket whose aspect ratio is nearest the video's (in log ratio; the first on a tie).
    A video of unknown size (0) goes to the first bucket."""
    if len(buckets) == 1 or width <= 0 or height <= 0:
        return 0
    aspect = math.log(width / height)
    return min(range(len(buckets)), key=lambda i: abs(math.log(buckets[i].aspect) - aspect))


def smaller_than(width: int, height: int, bucket: ClipShape) -> bool:
    """Whether a video is smaller than a bucket on either side (it would be upscaled to fit it)."""
    return 0 < width < bucket.width or 0 < height < bucket.height


def needed_frames(frames: int, fps: float, video_fps: float) -> int:
    """Source frames one clip of `frames` frames at `fps` spans in a video at `video_fps`."""
    return math.floor((frames - 1) / fps * video_fps + 1e-6) + 1


def window_count(video_frames: int, video_fps: float, frames: int, fps: float, max_windows: int = 0) -> int:
    """Clips per pass a video gives: one per whole clip span in it (0 when it is shorter than one),
    at most `max_windows` (0 = no cap)."""
    if video_frames <= 0 or video_fps <= 0:
        return 1  # length unknown: one clip, as decode_clip finds it
    count = video_frames // needed_frames(frames, fps, video_fps)
    return min(count, max_windows) if max_windows else count


def window_span(video_frames: int, video_fps: float, count: int, window: int, needed: int) -> tuple[float, float]:
    """(start, slack) in seconds of window `window` of `count`: its clip starts within
    [start, start + slack]."""
    segment = video_frames / count
    first = math.ceil(window * segment - 1e-9)
    last_start = min(math.floor((window + 1) * segment + 1e-9), video_frames) - needed
    return first / video_fps, max(0, last_start - first) / video_fps
