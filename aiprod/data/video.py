"""Reading video with PyAV: probing, and clip decoding for training; the errors of every video reader.

    info = probe("clip.mp4")                               # VideoInfo(fps, frames, width, height, ...)
    clip = decode_clip("clip.mp4", frames=9, fps=8, height=64, width=64, start="center")

Every decoding failure is a `VideoError` subclass that says what is wrong with which source; its
`reason` is the short name rejected inputs are listed under. Writing MP4s: `aiprod.data.video_encode`.
"""

from __future__ import annotations

import io
import math
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import av
import numpy as np

from aiprod import storage

Source = str | os.PathLike | bytes | BinaryIO


# ----------------------------------------------------------------------------- errors


class VideoError(ValueError):
    """A video that cannot be used; the message names the source and the reason."""

    reason = "unreadable"

    def __init_subclass__(cls, reason: str, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.reason = reason


class TruncatedVideoError(VideoError, reason="truncated"):
    """The file or its stream ends before the data its header promises."""


class NoVideoStreamError(VideoError, reason="no_video_stream"):
    """A readable container without a video stream."""


class ZeroLengthVideoError(VideoError, reason="zero_length"):
    """An empty file, or a stream without a decodable frame."""


class TooShortVideoError(VideoError, reason="too_short"):
    """Fewer frames than the clip asked for needs."""


class DecodeTimeoutError(VideoError, reason="timeout"):
    """Decoding a clip took longer than its time limit."""


# ----------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class VideoInfo:
    fps: float
    frames: int
    width: int  # as displayed (rotation applied)
    height: int
    duration: float  # seconds
    rotation: int  # counter-clockwise degrees applied for display (0, 90, 180, 270)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def source_name(src: Source) -> str:
    """A name for a source in error messages: its path, or its size in bytes."""
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    if isinstance(src, (bytes, bytearray, memoryview)):
        return f"<{len(src)} bytes>"
    return getattr(src, "name", None) or f"<{type(src).__name__}>"


def _as_file(src: Source) -> BinaryIO:
    """A seekable binary file for any source; s3:// objects are read into memory."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(src))
    if isinstance(src, (str, os.PathLike)):
        if storage.is_s3(src):
            return io.BytesIO(storage.read_bytes(src))
        path = Path(src)
        if not path.is_file():
            raise FileNotFoundError(f"no such video file: {src}")
        return open(path, "rb")
    src.seek(0)
    return src


def _size(f: BinaryIO) -> int:
    position = f.tell()
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.seek(position)
    return size


def _iso_bmff_truncated(f: BinaryIO) -> str | None:
    """For MP4/MOV: the first top-level box that runs past the end of the file, if any."""
    size = _size(f)
    f.seek(0)
    head = f.read(8)
    if len(head) < 8 or head[4:8] != b"ftyp":
        f.seek(0)
        return None
    offset = 0
    while offset + 8 <= size:
        f.seek(offset)
        header = f.read(16)
        box_size = int.from_bytes(header[:4], "big")
        box_type = header[4:8].decode("latin-1")
        if box_size == 1 and len(header) == 16:
            box_size = int.from_bytes(header[8:16], "big")
        elif box_size == 0:  # box extends to the end of the file
            break
        if box_size < 8:
            f.seek(0)
            return f"box '{box_type}' at byte {offset} has an invalid size {box_size}"
        if offset + box_size > size:
            f.seek(0)
            return f"box '{box_type}' at byte {offset} needs {box_size} bytes, only {size - offset} present"
        offset += box_size
    f.seek(0)
    if 0 < size - offset < 8:
        return f"{size - offset} stray bytes at the end"
    return None


def _open_container(f: BinaryIO, name: str) -> av.container.InputContainer:
    if _size(f) == 0:
        raise ZeroLengthVideoError(f"{name}: empty file (0 bytes)")
    truncated = _iso_bmff_truncated(f)
    if truncated:
        raise TruncatedVideoError(f"{name}: truncated MP4: {truncated}")
    try:
        container = av.open(f, mode="r")
    except av.error.FFmpegError as exc:
        raise VideoError(f"{name}: not a readable video ({exc.strerror or exc})") from None
    if not container.streams.video:
        container.close()
        raise NoVideoStreamError(f"{name}: no video stream")
    return container


@contextmanager
def _open_video(src: Source, name: str
                ) -> Iterator[tuple[av.container.InputContainer, av.video.stream.VideoStream]]:
    """The container and first video stream of a source, closed (with a file opened here) on exit."""
    f = _as_file(src)
    try:
        with _open_container(f, name) as container:
            yield container, container.streams.video[0]
    finally:
        if f is not src:
            f.close()


def _shown_size(frame: av.VideoFrame) -> tuple[int, int]:
    """(width, height) of a frame as displayed: a rotation by 90 or 270 degrees swaps them."""
    return (frame.height, frame.width) if frame.rotation % 360 in (90, 270) else (frame.width, frame.height)


def _rate(stream: av.video.stream.VideoStream, name: str) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or rate <= 0:
        raise VideoError(f"{name}: video stream {stream.index} has no frame rate")
    return float(rate)


def _first_frame(container: av.container.InputContainer, stream, name: str) -> av.VideoFrame:
    try:
        for frame in container.decode(stream):
            return frame
    except av.error.FFmpegError as exc:
        raise VideoError(f"{name}: cannot decode ({exc.strerror or exc})") from None
    raise ZeroLengthVideoError(f"{name}: the video stream has no decodable frames")


def _count_packets(container: av.container.InputContainer, stream) -> int:
    count = 0
    for packet in container.demux(stream):
        if packet.size:
            count += 1
    return count


def probe(src: Source, count_frames: bool = False, name: str | None = None) -> VideoInfo:
    """fps, frame count, displayed size, duration and rotation of a video; decodes one frame.

    `count_frames` demuxes every packet (no decoding): exact counts where the header has none,
    and a truncated stream is caught (fewer packets than the header promises). `name` labels
    errors (default: the path, or the byte count).
    """
    name = name or source_name(src)
    try:
        with _open_video(src, name) as (container, stream):
            fps = _rate(stream, name)
            frame = _first_frame(container, stream, name)
            rotation = frame.rotation % 360
            width, height = _shown_size(frame)
            declared = stream.frames
            duration = 0.0
            if stream.duration is not None and stream.time_base:
                duration = float(stream.duration * stream.time_base)
            elif container.duration:
                duration = container.duration / av.time_base
            frames = declared or round(duration * fps)
            if count_frames or not frames:
                container.seek(0, stream=stream)
                counted = _count_packets(container, stream)
                if declared and counted < declared:
                    raise TruncatedVideoError(f"{name}: {counted} of {declared} frames present (truncated)")
                frames = counted
    except av.error.FFmpegError as exc:
        raise VideoError(f"{name}: cannot read ({exc.strerror or exc})") from None
    if frames <= 0:
        raise ZeroLengthVideoError(f"{name}: zero frames")
    return VideoInfo(fps=fps, frames=int(frames), width=width, height=height,
                     duration=duration or frames / fps, rotation=rotation)


def clip_span_s(frames: int, fps: float) -> float:
    """Seconds between the first and the last sampled frame of a clip."""
    return (frames - 1) / fps


def fits_clip(info: VideoInfo, frames: int, fps: float) -> bool:
    """Whether a video is long enough for a clip of `frames` frames at `fps` (checked before decoding)."""
    return info.frames >= math.floor(clip_span_s(frames, fps) * info.fps + 1e-6) + 1


def _resize_crop(frame: av.VideoFrame, height: int, width: int, threads: int) -> np.ndarray:
    """Resize so the displayed image covers height x width (short side first), then centre-crop."""
    rotation = frame.rotation % 360
    shown_w, shown_h = _shown_size(frame)
    scale = max(height / shown_h, width / shown_w)
    new_w, new_h = max(width, round(shown_w * scale)), max(height, round(shown_h * scale))
    stored_w, stored_h = (new_h, new_w) if rotation in (90, 270) else (new_w, new_h)
    # swscale widens the bilinear kernel when shrinking, so this filters like AREA at about 2x its speed
    image = frame.reformat(width=stored_w, height=stored_h, format="rgb24", interpolation="BILINEAR",
                           threads=threads or None).to_ndarray()
    if rotation:
        image = np.rot90(image, k=rotation // 90)
    top, left = (image.shape[0] - height) // 2, (image.shape[1] - width) // 2
    return image[top : top + height, left : left + width]


def decode_clip(
    src: Source,
    frames: int,
    fps: float,
    height: int,
    width: int,
    start: Literal["random", "center"] | float = "random",
    seed: int | None = None,
    threads: int = 1,
    timeout_s: float | None = None,
    name: str | None = None,
) -> np.ndarray:
    """`frames` frames at `fps` as uint8 [T, height, width, 3].

    Source frames are picked by time (stride = source fps / fps; nearest earlier frame), the clip
    starts at a random or centred offset (or at `start` seconds), decoding begins at the keyframe
    before the start, and each frame is resized (short side) and centre-cropped to height x width.
    """
    if frames < 1 or height < 1 or width < 1 or not fps > 0:
        raise ValueError(f"decode_clip: need frames, height, width >= 1 and fps > 0, got "
                         f"frames={frames} height={height} width={width} fps={fps}")
    if start not in ("random", "center") and not isinstance(start, (int, float)):
        raise ValueError(f"decode_clip: start must be 'random', 'center' or seconds, got {start!r}")
    name = name or source_name(src)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        with _open_video(src, name) as (container, stream):
            stream.thread_count = threads  # 0 = FFmpeg picks
            if threads != 1:
                stream.thread_type = "AUTO"
            return _decode(container, stream, name, frames, fps, height, width, start, seed, threads, deadline)
    except av.error.FFmpegError as exc:
        raise VideoError(f"{name}: cannot decode ({exc.strerror or exc})") from None


def _decode(container, stream, name, frames, fps, height, width, start, seed, threads, deadline) -> np.ndarray:
    src_fps = _rate(stream, name)
    src_frames = stream.frames
    if not src_frames:
        duration = (float(stream.duration * stream.time_base) if stream.duration
                    else (container.duration or 0) / av.time_base)
        src_frames = round(duration * src_fps)
    if src_frames <= 0:
        raise ZeroLengthVideoError(f"{name}: zero frames")
    needed = math.floor(clip_span_s(frames, fps) * src_fps + 1e-6) + 1
    if src_frames < needed:
        raise TooShortVideoError(
            f"{name}: {src_frames} frames at {src_fps:g} fps, a {frames}-frame clip at {fps:g} fps needs {needed}")
    slack_s = (src_frames - needed) / src_fps
    if start == "center":
        offset_s = slack_s / 2
    elif start == "random":
        offset_s = random.Random(seed).uniform(0.0, slack_s)
    else:
        offset_s = min(max(float(start), 0.0), slack_s)
    offset_s = math.floor(offset_s * src_fps + 1e-6) / src_fps  # start on a source frame
    t0 = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    half_frame = 0.5 / src_fps
    targets = [t0 + offset_s + i / fps for i in range(frames)]
    if offset_s > half_frame:
        container.seek(int((t0 + offset_s) / stream.time_base), stream=stream, backward=True, any_frame=False)

    out: list[np.ndarray] = []
    previous: av.VideoFrame | None = None
    previous_image: np.ndarray | None = None  # converted lazily: only picked frames are resized

    def emit() -> None:
        nonlocal previous_image
        if previous_image is None:
            previous_image = _resize_crop(previous, height, width, threads)
        out.append(previous_image)

    for frame in container.decode(stream):
        if deadline is not None and time.monotonic() > deadline:
            raise DecodeTimeoutError(f"{name}: decoding the clip took longer than its time limit")
        t = frame.time if frame.time is not None else (previous.time + 2 * half_frame if previous else t0)
        # targets earlier than this frame by more than half a frame take the previous frame
        while previous is not None and len(out) < frames and targets[len(out)] + half_frame < t:
            emit()
        if len(out) == frames:
            break
        previous, previous_image = frame, None
    else:
        # end of stream: the last frame lasts one frame period
        while previous is not None and len(out) < frames and targets[len(out)] <= previous.time + 2 * half_frame:
            emit()
    if len(out) < frames:
        last = f"{previous.time:.3f}s" if previous is not None else "none"
        raise TruncatedVideoError(
            f"{name}: stream ended early (last frame at {last}, clip needs {targets[-1]:.3f}s; header says "
            f"{src_frames} frames)")
    return np.stack(out)


@contextmanager
def display_frames(src: Source, max_side: int | None, name: str
                   ) -> Iterator[tuple[float, int, int, Iterator[np.ndarray]]]:
    """(fps, height, width, frames) of a video as displayed (rotation applied), scaled so that the longer
    side is at most `max_side` (even sizes); the frames are decoded as they are iterated."""
    with _open_video(src, name) as (container, stream):
        fps = _rate(stream, name)
        first = _first_frame(container, stream, name)
        shown_w, shown_h = _shown_size(first)
        scale = min(1.0, max_side / max(shown_w, shown_h)) if max_side else 1.0
        width = max(2, int(round(shown_w * scale / 2)) * 2)
        height = max(2, int(round(shown_h * scale / 2)) * 2)

        def frames() -> Iterator[np.ndarray]:
            yield _resize_crop(first, height, width, threads=1)
            for frame in container.decode(stream):
                yield _resize_crop(frame, height, width, threads=1)

        yield fps, height, width, frames()
