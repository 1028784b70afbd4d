"""PyAV video I/O: the shared MP4 writer, probing, clip decoding and its specific errors."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
import pytest

from aiprod.data import video, video_encode


def grey_ramp(frames: int, height: int = 24, width: int = 32) -> np.ndarray:
    """Frame i is uniformly grey at 4*i: the decoded value says which source frame it was."""
    return np.repeat(np.arange(frames, dtype=np.uint8)[:, None, None, None] * 4, height * width * 3).reshape(
        frames, height, width, 3)


def frame_ids(clip: np.ndarray) -> list[int]:
    return [round(v / 4) for v in clip[:, clip.shape[1] // 2, clip.shape[2] // 2, 0].astype(float)]


def test_write_mp4_reads_back_as_h264_yuv420p_with_faststart(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (9, 32, 48, 3), dtype=np.uint8)
    path = tmp_path / "clip.mp4"
    video_encode.write_mp4(frames, path, fps=8)
    data = path.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")  # +faststart: the index comes first
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        assert stream.average_rate == 8 and (stream.width, stream.height) == (48, 32)
        assert len(list(container.decode(stream))) == 9
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]  # no temp file left behind


def test_write_mp4_pads_odd_sizes_keeps_ntsc_rates_and_writes_file_objects():
    frames = np.zeros((5, 31, 33, 3), np.uint8)
    buffer = io.BytesIO()
    video_encode.write_mp4(frames, buffer, fps=30000 / 1001)
    with av.open(io.BytesIO(buffer.getvalue())) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (34, 32)
        assert stream.average_rate == Fraction(30000, 1001) and stream.frames == 5


def test_write_mp4_rejects_bad_frames_by_name(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        video_encode.write_mp4(np.zeros((2, 8, 8, 3), np.float32), tmp_path / "a.mp4", 8)
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        video_encode.write_mp4(np.zeros((8, 8, 3), np.uint8), tmp_path / "a.mp4", 8)
    with pytest.raises(ValueError, match="fps"):
        video_encode.write_mp4(np.zeros((2, 8, 8, 3), np.uint8), tmp_path / "a.mp4", 0)
    assert not list(tmp_path.iterdir())


def test_probe_reports_fps_frames_size_duration():
    info = video.probe(video_encode.encode_mp4(grey_ramp(20, 24, 40), fps=10))
    assert info == video.VideoInfo(fps=10.0, frames=20, width=40, height=24, duration=2.0, rotation=0)


def test_decode_clip_strides_by_source_fps_and_starts_centred_or_at_a_time():
    data = video_encode.encode_mp4(grey_ramp(40), fps=10, crf=0)
    assert frame_ids(video.decode_clip(data, 5, 5.0, 16, 16, start=0.0)) == [0, 2, 4, 6, 8]
    assert frame_ids(video.decode_clip(data, 5, 10.0, 16, 16, start="center")) == [17, 18, 19, 20, 21]
    assert frame_ids(video.decode_clip(data, 4, 2.5, 16, 16, start=1.0)) == [10, 14, 18, 22]
    random_a = video.decode_clip(data, 5, 10.0, 16, 16, start="random", seed=3)
    assert np.array_equal(random_a, video.decode_clip(data, 5, 10.0, 16, 16, start="random", seed=3))
    ids = frame_ids(random_a)
    assert ids == list(range(ids[0], ids[0] + 5))


def test_decode_clip_seeks_to_a_keyframe_and_still_picks_the_right_frames():
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:  # a keyframe every 10 frames
        stream = container.add_stream("libx264", rate=10, options={"crf": "0", "g": "10", "keyint_min": "10"})
        stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv420p"
        for image in grey_ramp(60):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    assert frame_ids(video.decode_clip(buffer.getvalue(), 4, 10.0, 8, 8, start=4.3)) == [43, 44, 45, 46]


def test_decode_clip_resizes_short_side_then_centre_crops():
    frames = np.zeros((3, 40, 80, 3), np.uint8)
    frames[:, :, :20] = 255  # a white band on the left quarter
    clip = video.decode_clip(video_encode.encode_mp4(frames, fps=8), 3, 8.0, 20, 20, start=0.0)
    assert clip.shape == (3, 20, 20, 3) and clip.dtype == np.uint8
    # 40x80 -> 20x40, centre 20 columns are cols 10..29 of the resized: the band (cols 0..9) is cropped away
    assert clip[:, :, :].max() < 60


def test_rotation_is_reported_and_applied():
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 16, "yuv420p"
        stream.set_display_rotation(90)
        image = np.zeros((16, 32, 3), np.uint8)
        image[:, :8] = 255  # white on the stored image's left
        for _ in range(3):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    info = video.probe(buffer.getvalue())
    assert (info.rotation, info.width, info.height) == (90, 16, 32)
    clip = video.decode_clip(buffer.getvalue(), 2, 8.0, 32, 16, start=0.0)
    assert clip.shape == (2, 32, 16, 3)
    # a 90 degree counter-clockwise turn puts the stored left edge at the bottom
    assert clip[0, -4:].mean() > 200 and clip[0, :4].mean() < 60


def test_specific_errors(tmp_path):
    good = video_encode.encode_mp4(grey_ramp(30), fps=10)
    with pytest.raises(video.TruncatedVideoError, match="truncated"):
        video.probe(good[: len(good) // 2])
    text = tmp_path / "notes.mp4"
    text.write_text("this is a text file, not a video")
    with pytest.raises(video.VideoError, match="notes.mp4: not a readable video"):
        video.probe(text)
    with pytest.raises(video.ZeroLengthVideoError, match="empty"):
        video.probe(b"")
    with pytest.raises(video.TooShortVideoError, match="needs 41"):
        video.decode_clip(good, 41, 10.0, 8, 8)
    with pytest.raises(video.DecodeTimeoutError):
        video.decode_clip(good, 5, 10.0, 8, 8, timeout_s=0.0)
    audio = io.BytesIO()
    with av.open(audio, "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with pytest.raises(video.NoVideoStreamError, match="no video stream"):
        video.probe(audio.getvalue())
    assert all(issubclass(e, video.VideoError) for e in (
        video.TruncatedVideoError, video.NoVideoStreamError, video.ZeroLengthVideoError, video.TooShortVideoError))


def test_transcode_caps_the_longer_side():
    data = video_encode.transcode(video_encode.encode_mp4(grey_ramp(6, 120, 200), fps=12), max_side=64)
    info = video.probe(data)
    assert (info.width, info.height, info.frames, info.fps) == (64, 38, 6, 12.0)
