"""Encoding video with PyAV: the one MP4 writer (H.264, yuv420p, +faststart), and re-encoding any
readable video as such an MP4.

    write_mp4(frames, "clip.mp4", fps=8)                   # local or s3://, written atomically
    data = encode_mp4(frames, fps=8)                       # the same, into memory
    data = transcode(source_bytes, max_side=512)           # rotation applied, longer side <= 512
"""

from __future__ import annotations

import io
import math
import os
import tempfile
from collections.abc import Callable, Iterable
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO

import av
import numpy as np

from aiprod import storage
from aiprod.data import video
from aiprod.data.video import Source, VideoError

FPS_MAX_DENOMINATOR = 1001  # NTSC rates (30000/1001) stay exact


# ----------------------------------------------------------------------------- writer


def _check_frames(frames: Any) -> np.ndarray:
    if not isinstance(frames, np.ndarray):
        raise TypeError(f"write_mp4: frames must be a numpy array, got {type(frames).__name__}")
    if frames.dtype != np.uint8:
        raise ValueError(f"write_mp4: frames must be uint8, got {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"write_mp4: frames must be [T, H, W, 3], got shape {tuple(frames.shape)}")
    if 0 in frames.shape:
        raise ValueError(f"write_mp4: frames must be non-empty, got shape {tuple(frames.shape)}")
    return frames


def _pad_to_even(frames: np.ndarray) -> np.ndarray:
    """yuv420p needs even sizes: repeat the last row/column where H or W is odd."""
    _, h, w, _ = frames.shape
    if h % 2 == 0 and w % 2 == 0:
        return frames
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def _encode(frames: Iterable[np.ndarray], height: int, width: int, out: Any, fps: float, crf: int,
            preset: str) -> int:
    """Encode RGB frames (each [height, width, 3] uint8, even sizes) to an MP4 at `out`; frame count."""
    rate = Fraction(fps).limit_denominator(FPS_MAX_DENOMINATOR)
    count = 0
    with av.open(out, mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": preset}
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            container.mux(stream.encode(frame))
            count += 1
        container.mux(stream.encode(None))
    return count


def write_mp4(
    frames: np.ndarray,
    path_or_file: str | os.PathLike | BinaryIO,
    fps: float,
    crf: int = 23,
    preset: str = "medium",
) -> None:
    """Encode uint8 [T, H, W, 3] RGB frames as H.264 (yuv420p, +faststart) MP4.

    A path (local or s3://) is written atomically: encoded into a temp file, then renamed (local)
    or sent as one PUT (S3). A writable, seekable binary file object receives the bytes directly.
    Odd heights/widths are padded to even by repeating the last row/column (yuv420p needs even).
    """
    frames = _pad_to_even(_check_frames(frames))
    _, h, w, _ = frames.shape
    if not (isinstance(fps, (int, float, Fraction)) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"write_mp4: fps must be a positive number, got {fps!r}")
    if not 0 <= int(crf) <= 51:
        raise ValueError(f"write_mp4: crf must be within 0..51, got {crf}")
    if isinstance(path_or_file, (str, os.PathLike)) and not storage.is_s3(path_or_file):
        target = Path(path_or_file)
        target.parent.mkdir(parents=True, exist_ok=True)
        _encode_to_temp(lambda out: _encode(frames, h, w, out, fps, crf, preset), target.parent,
                        lambda tmp: _publish(tmp, target))
        storage.fsync_dir(target.parent)
        return

    def deliver(tmp: str) -> None:
        if isinstance(path_or_file, (str, os.PathLike)):
            storage.put_file(tmp, path_or_file)
        else:
            with open(tmp, "rb") as f:
                while chunk := f.read(1 << 20):
                    path_or_file.write(chunk)

    _encode_to_temp(lambda out: _encode(frames, h, w, out, fps, crf, preset), None, deliver)


def _publish(tmp: str, target: Path) -> None:
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600
    os.replace(tmp, target)


def _encode_to_temp(encode: Callable[[str], Any], directory: Path | None, deliver: Callable[[str], Any]) -> None:
    # The +faststart pass re-opens the output by name, so FFmpeg must write a real file.
    fd, tmp = tempfile.mkstemp(prefix=".aiprod-", suffix=".tmp.mp4", dir=directory)
    os.close(fd)
    try:
        encode(tmp)
        if directory is not None:  # about to be renamed into place: make it durable first
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        deliver(tmp)
    finally:
        Path(tmp).unlink(missing_ok=True)


def encode_mp4(frames: np.ndarray, fps: float, crf: int = 23, preset: str = "medium") -> bytes:
    """`write_mp4` into memory: the MP4 file's bytes."""
    buffer = io.BytesIO()
    write_mp4(frames, buffer, fps, crf=crf, preset=preset)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- transcoding


def is_mp4(data: bytes) -> bool:
    """An ISO-BMFF file of an MP4 brand (QuickTime's 'qt  ' brand does not count)."""
    return len(data) >= 12 and data[4:8] == b"ftyp" and data[8:12] != b"qt  "


def transcode(src: Source, max_side: int | None = None, crf: int = 23, preset: str = "veryfast",
              name: str | None = None) -> bytes:
    """Re-encode a video as H.264 MP4 at its own fps, rotation applied, longer side <= max_side.

    Frames stream from decoder to encoder (a long video is never held in memory).
    """
    name = name or video.source_name(src)
    try:
        with video.display_frames(src, max_side, name) as (fps, height, width, frames):
            buffer = io.BytesIO()
            _encode_to_temp(lambda out: _encode(frames, height, width, out, fps, crf, preset), None,
                            lambda tmp: buffer.write(Path(tmp).read_bytes()))
            return buffer.getvalue()
    except av.error.FFmpegError as exc:
        raise VideoError(f"{name}: cannot transcode ({exc.strerror or exc})") from None
