"""Clip loading throughput: a raw single-process PyAV loop vs the Ray Data pipeline on all cores.

    python bench/data.py [--clips 320] [--size 256] [--frames 16] [--fps 8] [--cores N]
    python bench/data.py --buckets [--clips 240]   # long videos of three aspect ratios, in buckets

Builds synthetic shards (256x256, 16-frame clips) in a temp dir, then decodes every clip to the
same clip spec (a phase of frames x size x size at fps) twice: (a) one process reading the tars
and calling decode_clip, (b) build_phase_dataset with decode_workers = cores; two passes of each, interleaved, best of
each (the machine may be shared). The pipeline rate is measured from its first batch to its last;
the first pass's start-up (Ray starting its worker processes) is reported apart. Also the decode fps of
a 1280x720 clip. Prints a table; the last line is JSON
{raw_clips_s, pipeline_clips_s, ratio, cores, ...}.

With --buckets the shards hold videos 4 clips long in three aspect ratios (wide, square, portrait),
and the phase lists a bucket for each: (a) decodes every window of every video to its bucket in one
process, (b) is the training pipeline, batches of one bucket each (`bucket_batches`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import av  # noqa: E402
import numpy as np  # noqa: E402

from aiprod import storage  # noqa: E402
from aiprod.config import DataConfig, PhaseConfig  # noqa: E402
from aiprod.data import clips, shards, synthetic_shards, video, video_encode  # noqa: E402
from aiprod.data.synthetic import make_clip  # noqa: E402

HD_NOISE_SIGMA = 6.0


WINDOWS_PER_VIDEO = 4


def tar_samples(uri: str):
    """(key, {extension: bytes}) of every training sample, shard by shard, in this process."""
    for shard, _ in shards.shard_uris(uri, "train"):
        fs, path = storage.open_fs(shard)
        with fs.open_input_stream(path) as stream:
            yield from shards.iter_tar_samples(stream)


def raw_loop(uri: str, phase: PhaseConfig, data: DataConfig) -> tuple[int, float]:
    """Read every shard and decode every clip in this one process."""
    if phase.buckets:
        return raw_bucket_loop(uri, phase, data)
    start = time.perf_counter()
    count = 0
    for key, parts in tar_samples(uri):
        seed = zlib.crc32(f"{data.seed}:{key}".encode())
        clip = video.decode_clip(parts["mp4"], phase.frames, phase.fps, phase.height, phase.width,
                                 start=data.start, seed=seed, threads=data.decode_threads,
                                 timeout_s=data.clip_timeout_s, name=key)
        assert clip.shape == (phase.frames, phase.height, phase.width, 3)
        count += 1
    return count, time.perf_counter() - start


def raw_bucket_loop(uri: str, phase: PhaseConfig, data: DataConfig) -> tuple[int, float]:
    """Every window of every video decoded to its bucket's shape, in this one process."""
    buckets = clips.phase_buckets(phase)
    start = time.perf_counter()
    count = 0
    for key, parts in tar_samples(uri):
        meta = json.loads(parts["json"])
        shape = buckets[clips.nearest_bucket(meta["width"], meta["height"], buckets)]
        n = clips.window_count(meta["frames"], meta["fps"], shape.frames, phase.fps)
        needed = clips.needed_frames(shape.frames, phase.fps, meta["fps"])
        for w in range(n):
            begin, slack = clips.window_span(meta["frames"], meta["fps"], n, w, needed)
            clip = video.decode_clip(parts["mp4"], shape.frames, phase.fps, shape.height, shape.width,
                                     start=begin + slack / 2, threads=data.decode_threads, name=key)
            assert clip.shape == (shape.frames, shape.height, shape.width, 3)
            count += 1
    return count, time.perf_counter() - start


def build_bucket_shards(uri: str, clip_count: int, size: int, frames: int, fps: float, data: DataConfig,
                        workers: int) -> tuple[dict, list[str]]:
    """Videos of WINDOWS_PER_VIDEO clips in three aspect ratios (about 16:7, 1:1, 3:5), made into
    shards through make_shards' path; the buckets that match them."""
    from aiprod.data.ingest import build_video_shards

    side = lambda x: max(8, round(size * x / 8) * 8)  # noqa: E731
    buckets = [f"{frames}x{size}x{size}", f"{frames}x{side(0.75)}x{side(1.75)}", f"{frames}x{side(1.25)}x{side(0.75)}"]
    length = WINDOWS_PER_VIDEO * clips.needed_frames(frames, fps, fps)
    videos = Path(uri).parent / "videos"
    for i in range(max(3, clip_count // WINDOWS_PER_VIDEO)):
        shape = clips.parse_bucket(buckets[i % 3])
        # a little larger than the bucket: the pipeline resizes, as it would real footage
        pixels, _ = make_clip(3, i, length, shape.height * 9 // 8 // 2 * 2, shape.width * 9 // 8 // 2 * 2, fps)
        video_encode.write_mp4(pixels, videos / f"v{i:04d}.mp4", fps, preset="veryfast")
        (videos / f"v{i:04d}.txt").write_text(f"video {i}")
    return build_video_shards(uri, str(videos), None, data, heldout_fraction=0.0, workers=workers), buckets


def pipeline(uri: str, phase: PhaseConfig, data: DataConfig, batch_size: int) -> tuple[int, float, float, int]:
    """(clips after the first batch, seconds from the first batch to the end, seconds to the first
    batch, clips in the first batch)."""
    from aiprod.data.dataset import bucket_batches, build_phase_dataset

    start = time.perf_counter()
    ds = build_phase_dataset(uri, phase, data)
    count = 0
    first = None
    first_count = 0

    def decoded():  # the clock starts at the first decoded batch, before any batching by bucket
        nonlocal first, first_count
        for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy", prefetch_batches=2):
            if first is None:
                first, first_count = time.perf_counter(), len(batch["key"])
            yield batch

    for batch in bucket_batches(decoded(), phase, batch_size) if phase.buckets else decoded():
        count += len(batch["key"])
    end = time.perf_counter()
    return count - first_count, end - first, first - start, first_count


def _best_rate(count_fn, repeats: int) -> float:
    """Items per second of the fastest of `repeats` runs (the machine may be shared)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        n = count_fn()
        best = min(best, time.perf_counter() - start)
    return n / best


def hd_decode(seconds: float, fps: float, repeats: int) -> dict[str, float]:
    """Decode fps of a 1280x720 H.264 clip: decoder only (1 thread and auto), to RGB, to a 256 clip.

    The clip is a textured level-3 scene plus mild sensor noise, so that its bitrate is closer to
    camera footage than flat synthetic colours would be.
    """
    frames, _ = make_clip(3, 0, int(seconds * fps), 720, 1280, fps)
    noise = np.random.default_rng(0).normal(0.0, HD_NOISE_SIGMA, frames.shape)
    frames = np.clip(frames + noise, 0, 255).astype(np.uint8)
    data = video_encode.encode_mp4(frames, fps, crf=23, preset="veryfast")

    def decode(threads: int, rgb: bool = False) -> int:
        with av.open(video._as_file(data)) as container:
            stream = container.streams.video[0]
            stream.thread_count = threads
            if threads != 1:
                stream.thread_type = "AUTO"
            return sum(1 for f in container.decode(stream) if not rgb or f.to_ndarray(format="rgb24") is not None)

    return {
        "hd_decode_fps_1thread": _best_rate(lambda: decode(1), repeats),
        "hd_decode_fps_auto": _best_rate(lambda: decode(0), repeats),
        "hd_decode_rgb_fps": _best_rate(lambda: decode(1, rgb=True), repeats),
        "hd_decode_clip_256_fps": _best_rate(
            lambda: len(video.decode_clip(data, len(frames), fps, 256, 256, start=0.0)), repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--clips", type=int, default=320)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--fps", type=float, default=8.0)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--hd-seconds", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=3, help="1280x720 timings: best of this many runs")
    parser.add_argument("--passes", type=int, default=2, help="raw and pipeline passes, interleaved; best of each")
    parser.add_argument("--keep", help="build the shards here instead of a temp dir (reused if present)")
    parser.add_argument("--buckets", action="store_true",
                        help=f"videos {WINDOWS_PER_VIDEO} clips long in three aspect ratios, trained in buckets")
    args = parser.parse_args()

    import ray

    phase = PhaseConfig(name="bench", component="denoiser", frames=args.frames, height=args.size, width=args.size,
                        fps=args.fps, steps=1)
    data = DataConfig(decode_workers=args.cores, read_workers=max(1, args.cores // 2), decode_threads=1,
                      decode_batch_size=args.batch_size, shuffle_buffer=0, shard_target_mb=4.0, start="center")
    with tempfile.TemporaryDirectory(prefix="aiprod-bench-data-") as tmp:
        uri = args.keep or str(Path(tmp) / "shards")
        start = time.perf_counter()
        if args.buckets:
            built, buckets = build_bucket_shards(uri, args.clips, args.size, args.frames, args.fps, data, args.cores)
            phase = phase.model_copy(update={"buckets": buckets})
        else:
            built = synthetic_shards.build_synthetic_shards(uri, args.clips, size=(args.size, args.size),
                                                            frames=args.frames, fps=args.fps, heldout_fraction=0.0,
                                                            data=data, workers=args.cores)
        build_s = time.perf_counter() - start

        # passes interleaved, best of each: the machine may be shared and its load drift. The first
        # raw pass runs before Ray starts, so Ray's idle processes cannot slow every raw pass.
        raw = [raw_loop(uri, phase, data)]
        pipe = []
        ray.init(address="local", num_cpus=args.cores, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
        try:
            ray.data.DataContext.get_current().enable_progress_bars = False
            for i in range(args.passes):
                pipe.append(pipeline(uri, phase, data, args.batch_size))
                if i + 1 < args.passes:
                    raw.append(raw_loop(uri, phase, data))
        finally:
            ray.shutdown()
    raw_n, raw_s = min(raw, key=lambda r: r[1] / r[0])
    pipe_n, pipe_s, _, _ = min(pipe, key=lambda r: r[1] / r[0])
    _, _, startup_s, first_n = pipe[0]  # the first pass starts Ray's worker processes
    hd = hd_decode(args.hd_seconds, 24.0, args.repeats)

    raw_rate, pipe_rate = raw_n / raw_s, pipe_n / pipe_s
    pipe_total_rate = (pipe[0][0] + first_n) / (pipe[0][1] + startup_s)
    rows = [
        ("shards built", f"{built['samples']} {'videos in ' + ', '.join(phase.buckets) if phase.buckets else 'clips'} "
                         f"{args.size}x{args.size}x{args.frames}, "
                         f"{built['bytes'] / 1e6:.1f} MB, {build_s:.1f}s on {args.cores} processes"),
        ("(a) raw PyAV loop, 1 process", f"{raw_rate:8.1f} clips/s  ({raw_n} clips in {raw_s:.2f}s)"),
        (f"(b) Ray Data, {args.cores} decode tasks", f"{pipe_rate:8.1f} clips/s  ({pipe_n} clips in {pipe_s:.2f}s)"),
        ("ratio (b)/(a)", f"{pipe_rate / raw_rate:8.2f}"),
        ("(b) first pass incl. start-up", f"{pipe_total_rate:8.1f} clips/s  ({startup_s:.1f}s to its first batch)"),
        ("1280x720 decode, 1 thread", f"{hd['hd_decode_fps_1thread']:8.1f} fps"),
        ("1280x720 decode, auto threads", f"{hd['hd_decode_fps_auto']:8.1f} fps"),
        ("1280x720 decode + RGB", f"{hd['hd_decode_rgb_fps']:8.1f} fps"),
        ("1280x720 -> 256x256 decode_clip", f"{hd['hd_decode_clip_256_fps']:8.1f} fps"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(json.dumps({"raw_clips_s": round(raw_rate, 2), "pipeline_clips_s": round(pipe_rate, 2),
                      "ratio": round(pipe_rate / raw_rate, 3), "cores": args.cores, "buckets": phase.buckets,
                      "pipeline_startup_s": round(startup_s, 2),
                      "pipeline_clips_s_with_startup": round(pipe_total_rate, 2), "clips": raw_n,
                      **{k: round(v, 1) for k, v in hd.items()}}))


if __name__ == "__main__":
    main()
