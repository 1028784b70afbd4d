"""Real footage the project can make: camera moves (pan, zoom: Ken Burns) over a real photograph
that a package ships (matplotlib's grace_hopper.jpg), rendered as MP4 videos of any size.

    frames = camera_move(photo(), width=176, height=144, frames=24, move="zoom_in")
    write_photo_video("v.mp4", width=176, height=144, seconds=3, fps=8, move="pan_right")
    rows = write_photo_videos("out/footage", FOOTAGE_SET)    # DIR/*.mp4 + DIR/captions.jsonl

    python jobs/make_shards.py --videos out/footage --captions out/footage/captions.jsonl --out S

Each frame is a crop of the photograph (a window of the video's aspect ratio, moving and growing
or shrinking between a start and an end rectangle) resized to the video's size: real image
statistics (a face, fabric, hair, a flag's stripes), not synthetic shapes. Everything is
deterministic: the same arguments give the same frames. `rotation` (90 or 270) writes a video
stored sideways with a display rotation, as phones record portrait video.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from aiprod import storage
from aiprod.data import video_encode

__all__ = ["FOOTAGE_SET", "MOVES", "Footage", "camera_move", "photo", "varied_footage", "write_photo_video",
           "write_photo_videos"]

# (start, end) windows as (centre x, centre y, zoom) in units of the photo; zoom 1 = the largest
# window of the video's aspect ratio that fits, 2 = half that size
MOVES: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "zoom_in": ((0.5, 0.5, 1.0), (0.5, 0.38, 2.2)),
    "zoom_out": ((0.5, 0.38, 2.2), (0.5, 0.5, 1.0)),
    "pan_right": ((0.3, 0.45, 1.8), (0.7, 0.45, 1.8)),
    "pan_left": ((0.7, 0.45, 1.8), (0.3, 0.45, 1.8)),
    "pan_down": ((0.5, 0.3, 1.8), (0.5, 0.7, 1.8)),
    "pan_up": ((0.5, 0.7, 1.8), (0.5, 0.3, 1.8)),
}
CAPTIONS = {
    "zoom_in": "a portrait photograph of Grace Hopper in uniform, the camera slowly zooms in on her face",
    "zoom_out": "a portrait photograph of Grace Hopper in uniform, the camera slowly zooms out",
    "pan_right": "a portrait photograph of Grace Hopper in uniform, the camera pans to the right",
    "pan_left": "a portrait photograph of Grace Hopper in uniform, the camera pans to the left",
    "pan_down": "a portrait photograph of Grace Hopper in uniform, the camera tilts down",
    "pan_up": "a portrait photograph of Grace Hopper in uniform, the camera tilts up",
}


@dataclass(frozen=True)
class Footage:
    """One video to make: its file name, displayed size, length and camera move."""

    name: str
    width: int
    height: int
    seconds: float = 2.0
    fps: float = 8.0
    move: str = "zoom_in"
    rotation: int = 0  # 90 / 270: stored sideways, shown as width x height (a phone's portrait video)


# Small by default (seconds of CPU to make): landscape, wide (640x272-like), square-ish, portrait
# (stored upright and stored sideways with a rotation), one long video (several clips per pass).
FOOTAGE_SET: tuple[Footage, ...] = (
    Footage("wide_pan_right.mp4", 160, 68, 2.0, 8.0, "pan_right"),
    Footage("hd_zoom_in.mp4", 128, 72, 2.0, 8.0, "zoom_in"),
    Footage("qcif_pan_left.mp4", 176, 144, 2.0, 8.0, "pan_left"),
    Footage("square_zoom_out.mp4", 96, 96, 2.0, 8.0, "zoom_out"),
    Footage("portrait_pan_down.mp4", 72, 128, 2.0, 8.0, "pan_down"),
    Footage("portrait_phone_pan_up.mp4", 72, 128, 2.0, 8.0, "pan_up", rotation=90),
    Footage("long_hd_pan_left.mp4", 128, 72, 6.0, 8.0, "pan_left"),
    Footage("wide_zoom_out.mp4", 160, 68, 2.0, 8.0, "zoom_out"),
)


def varied_footage(count: int, seconds: float = 2.0, fps: float = 8.0) -> list[Footage]:
    """`count` videos cycling through FOOTAGE_SET's sizes (landscape, wide, square, portrait, a phone's
    rotated portrait) and every camera move, each pairing once before any repeats."""
    sizes = list(dict.fromkeys((f.width, f.height, f.rotation) for f in FOOTAGE_SET))
    moves = sorted(MOVES)
    out = []
    for i in range(count):
        width, height, rotation = sizes[i % len(sizes)]
        move = moves[(i + i // len(sizes)) % len(moves)]
        shape = "portrait" if height > width else "landscape" if width > height else "square"
        name = f"{i:03d}_{shape}_{width}x{height}{f'_rot{rotation}' if rotation else ''}_{move}.mp4"
        out.append(Footage(name, width, height, seconds, fps, move, rotation))
    return out


def photo(name: str = "grace_hopper.jpg") -> np.ndarray:
    """A photograph matplotlib ships (mpl-data/sample_data), uint8 [H, W, 3]."""
    from matplotlib import cbook
    from PIL import Image

    with cbook.get_sample_data(name) as f, Image.open(f) as image:
        return np.asarray(image.convert("RGB"))


def _window(image_w: int, image_h: int, aspect: float, cx: float, cy: float, zoom: float) -> tuple[float, ...]:
    """(left, top, right, bottom) of a window of `aspect` (w/h) inside the image, kept inside it."""
    w = min(image_w, image_h * aspect) / zoom
    h = w / aspect
    left = min(max(cx * image_w - w / 2, 0.0), image_w - w)
    top = min(max(cy * image_h - h / 2, 0.0), image_h - h)
    return left, top, left + w, top + h


def camera_move(image: np.ndarray, width: int, height: int, frames: int, move: str = "zoom_in") -> np.ndarray:
    """`frames` frames of a camera move over `image`, each `height` x `width`: uint8 [T, H, W, 3]."""
    from PIL import Image

    if move not in MOVES:
        raise ValueError(f"move must be one of {sorted(MOVES)}, got {move!r}")
    if min(width, height, frames) < 1:
        raise ValueError(f"width, height and frames must be positive, got {width}x{height}, {frames} frames")
    start, end = MOVES[move]
    source = Image.fromarray(np.ascontiguousarray(image))
    out = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        a = t / max(frames - 1, 1)
        a = a * a * (3 - 2 * a)  # ease in and out, as a camera operator would
        cx, cy, zoom = (s + (e - s) * a for s, e in zip(start, end))
        box = _window(source.width, source.height, width / height, cx, cy, zoom)
        out[t] = np.asarray(source.resize((width, height), Image.BICUBIC, box=box))
    return out


def _encode_rotated(frames: np.ndarray, fps: float, rotation: int, crf: int) -> bytes:
    """MP4 of frames stored turned by -rotation, with a display rotation that shows them upright."""
    import av

    stored = np.ascontiguousarray(np.rot90(frames, k=-(rotation // 90), axes=(1, 2)))
    stored = video_encode._pad_to_even(stored)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = stored.shape[2], stored.shape[1], "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        stream.set_display_rotation(rotation)
        for image in stored:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def write_photo_video(path: str | os.PathLike, width: int, height: int, seconds: float = 2.0, fps: float = 8.0,
                      move: str = "zoom_in", rotation: int = 0, crf: int = 18,
                      image: np.ndarray | None = None) -> np.ndarray:
    """Write a camera move over the photograph as an MP4 shown at `width` x `height` (local or
    s3://); returns its frames as shown."""
    if rotation % 360 not in (0, 90, 180, 270):
        raise ValueError(f"rotation must be 0, 90, 180 or 270, got {rotation}")
    frames = camera_move(photo() if image is None else image, width, height, max(1, round(seconds * fps)), move)
    if rotation % 360:
        storage.write_bytes_atomic(path, _encode_rotated(frames, fps, rotation % 360, crf))
    else:
        video_encode.write_mp4(frames, path, fps=fps, crf=crf, preset="veryfast")
    return frames


def write_photo_videos(out_dir: str | os.PathLike, footage: tuple[Footage, ...] | list[Footage] = FOOTAGE_SET,
                       captions_name: str = "captions.jsonl") -> list[dict[str, str]]:
    """Write each video of `footage` into `out_dir` and a captions JSONL (`path`, `caption`) naming
    them; returns the caption rows."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    image = photo()
    rows = []
    for item in footage:
        write_photo_video(out / item.name, item.width, item.height, item.seconds, item.fps, item.move,
                          item.rotation, image=image)
        rows.append({"path": item.name, "caption": CAPTIONS[item.move], "language": "en"})
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    storage.write_text_atomic(out / captions_name, text)
    return rows


if __name__ == "__main__":
    import sys

    # python -m aiprod.data.photo_footage [OUT_DIR [COUNT [SECONDS]]]: FOOTAGE_SET, or COUNT varied videos
    target = sys.argv[1] if len(sys.argv) > 1 else "out/footage"
    chosen = varied_footage(int(sys.argv[2]), float(sys.argv[3]) if len(sys.argv) > 3 else 2.0) \
        if len(sys.argv) > 2 else FOOTAGE_SET
    made = write_photo_videos(target, chosen)
    print(f"{len(made)} videos + captions.jsonl -> {target}")
