"""Video I/O with PyAV: the one MP4 writer, probing, and clip decoding for training.

    write_mp4(frames, "clip.mp4", fps=8)                   # H.264, yuv420p, +faststart
    info = probe("clip.mp4")                               # VideoInfo(fps, frames, width, height, ...)
    clip = decode_clip("clip.mp4", frames=9, fps=8, height=64, width=64, start="center")

Every decoding failure is a `VideoError` subclass that says what is wrong with which source.
"""

from __future__ import annotations

import io
import math
import os
import random
import tempfile
import time
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO, Literal

import av
import numpy as np

from aiprod import storage

Source = str | os.PathLike | bytes | BinaryIO

FPS_MAX_DENOMINATOR = 1001  # NTSC rates (30000/1001) stay exact


# ----------------------------------------------------------------------------- errors


class VideoError(ValueError):
    """A video that cannot be used; the message names the source and the reason."""

    reason = "unreadable"


class TruncatedVideoError(VideoError):
    reason = "truncated"


class NoVideoStreamError(VideoError):
    reason = "no_video_stream"


class ZeroLengthVideoError(VideoError):
    reason = "zero_length"


class TooShortVideoError(VideoError):
    reason = "too_short"


class DecodeTimeoutError(VideoError):
    reason = "timeout"


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


def _describe(src: Source) -> str:
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
    name = name or _describe(src)
    f = _as_file(src)
    try:
        with _open_container(f, name) as container:
            stream = container.streams.video[0]
            fps = _rate(stream, name)
            frame = _first_frame(container, stream, name)
            rotation = frame.rotation % 360
            width, height = (frame.height, frame.width) if rotation in (90, 270) else (frame.width, frame.height)
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
    finally:
        if f is not src:
            f.close()
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
    shown_w, shown_h = (frame.height, frame.width) if rotation in (90, 270) else (frame.width, frame.height)
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
    name = name or _describe(src)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    f = _as_file(src)
    try:
        with _open_container(f, name) as container:
            stream = container.streams.video[0]
            stream.thread_count = threads  # 0 = FFmpeg picks
            if threads != 1:
                stream.thread_type = "AUTO"
            return _decode(container, stream, name, frames, fps, height, width, start, seed, threads, deadline)
    except av.error.FFmpegError as exc:
        raise VideoError(f"{name}: cannot decode ({exc.strerror or exc})") from None
    finally:
        if f is not src:
            f.close()


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


# ----------------------------------------------------------------------------- transcoding


def is_mp4(data: bytes) -> bool:
    """An ISO-BMFF file of an MP4 brand (QuickTime's 'qt  ' brand does not count)."""
    return len(data) >= 12 and data[4:8] == b"ftyp" and data[8:12] != b"qt  "


def transcode(src: Source, max_side: int | None = None, crf: int = 23, preset: str = "veryfast",
              name: str | None = None) -> bytes:
    """Re-encode a video as H.264 MP4 at its own fps, rotation applied, longer side <= max_side.

    Frames stream from decoder to encoder (a long video is never held in memory).
    """
    name = name or _describe(src)
    f = _as_file(src)
    try:
        with _open_container(f, name) as container:
            stream = container.streams.video[0]
            fps = _rate(stream, name)
            first = _first_frame(container, stream, name)
            rotation = first.rotation % 360
            shown_w, shown_h = (first.height, first.width) if rotation in (90, 270) else (first.width, first.height)
            scale = min(1.0, max_side / max(shown_w, shown_h)) if max_side else 1.0
            width = max(2, int(round(shown_w * scale / 2)) * 2)
            height = max(2, int(round(shown_h * scale / 2)) * 2)

            def frames() -> Iterator[np.ndarray]:
                yield _resize_crop(first, height, width, threads=1)
                for frame in container.decode(stream):
                    yield _resize_crop(frame, height, width, threads=1)

            buffer = io.BytesIO()
            _encode_to_temp(lambda out: _encode(frames(), height, width, out, fps, crf, preset), None,
                            lambda tmp: buffer.write(Path(tmp).read_bytes()))
            return buffer.getvalue()
    except av.error.FFmpegError as exc:
        raise VideoError(f"{name}: cannot transcode ({exc.strerror or exc})") from None
    finally:
        if f is not src:
            f.close()
