"""Users' own videos: a long video gives one clip per window of its length each pass, and videos of
mixed aspect ratios train in buckets, each batch of one shape (on a real local Ray cluster)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from aiprod.config import DataConfig, PhaseConfig, load_config
from aiprod.data import clips
from aiprod.data.dataset import WINDOW_MARK, bucket_batches, build_phase_dataset, eligible_samples, to_model_batch
from aiprod.data.ingest import build_video_shards
from aiprod.data.video_encode import write_mp4

FPS = 8.0
SECONDS = 16
# (name, width, height): wide, square and portrait, as users bring them
VIDEOS = [("wide", 112, 48), ("square", 64, 64), ("portrait", 48, 80)]
BUCKETS = ["9x32x32", "9x24x56", "9x40x24"]  # nearest: square, wide, portrait
EXPECTED_BUCKET = {"wide": 1, "square": 0, "portrait": 2}


def moving_pattern(width: int, height: int, frames: int, seed: int) -> np.ndarray:
    """A textured pattern drifting right, so that every window of the video differs."""
    rng = np.random.default_rng(seed)
    tile = rng.integers(0, 255, size=(height, width + frames, 3), dtype=np.uint8)
    return np.stack([tile[:, t:t + width] for t in range(frames)])


@pytest.fixture(scope="module")
def long_videos(tmp_path_factory) -> str:
    """Three 16-second videos of three aspect ratios, captioned in a JSONL file, made into shards."""
    root = tmp_path_factory.mktemp("own-videos")
    videos = root / "videos"
    lines = []
    for i, (name, width, height) in enumerate(VIDEOS):
        write_mp4(moving_pattern(width, height, int(SECONDS * FPS), i), videos / f"{name}.mp4", FPS, preset="ultrafast")
        lines.append(json.dumps({"path": f"{name}.mp4", "caption": f"a {name} broadcast", "language": "en"}))
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    out = root / "shards"
    summary = build_video_shards(str(out), str(videos), str(root / "captions.jsonl"), DataConfig(),
                                 heldout_fraction=0.0, workers=1)
    assert summary["samples"] == 3 and summary["rejected"] == 0
    return str(out)


def phase(**kw) -> PhaseConfig:
    return PhaseConfig(**{"name": "p", "component": "vae", "frames": 9, "height": 32, "width": 32, "fps": FPS,
                          "steps": 1, **kw})


def test_a_long_video_is_cut_into_windows_that_do_not_overlap_and_cover_it():
    needed = clips.needed_frames(9, FPS, 30.0)
    assert needed == 31
    count = clips.window_count(300, 30.0, 9, FPS)
    assert count == 300 // 31 == 9
    spans = [clips.window_span(300, 30.0, count, w, needed) for w in range(count)]
    for (start, slack), (following, _) in zip(spans, spans[1:]):
        assert start + slack + (needed - 1) / 30.0 < following  # the latest clip of a window ends before the next
    assert spans[0][0] == 0 and spans[-1][0] + spans[-1][1] + needed / 30.0 == pytest.approx(10.0, abs=0.04)
    assert clips.window_count(300, 30.0, 9, FPS, max_windows=2) == 2
    assert clips.window_count(20, 30.0, 9, FPS) == 0  # shorter than a clip


def test_each_video_goes_to_the_bucket_nearest_its_aspect_ratio():
    shapes = [clips.parse_bucket(b) for b in BUCKETS]
    assert [clips.nearest_bucket(w, h, shapes) for _, w, h in VIDEOS] == [EXPECTED_BUCKET[n] for n, _, _ in VIDEOS]
    assert clips.nearest_bucket(1280, 720, shapes) == 1 and clips.nearest_bucket(720, 1280, shapes) == 2
    assert clips.smaller_than(48, 80, shapes[2]) is False and clips.smaller_than(20, 36, shapes[2]) is True
    with pytest.raises(ValueError, match="buckets"):
        phase(buckets=["9x32"])


def test_long_videos_give_a_clip_per_window_each_pass_counted_from_the_index(ray_cluster, long_videos):
    data = DataConfig(decode_workers=2, read_workers=1, decode_batch_size=4, shuffle_buffer=8)
    one_shape = phase()
    per_video = clips.window_count(int(SECONDS * FPS), FPS, 9, FPS)
    assert per_video == 14
    assert eligible_samples(long_videos, one_shape, data) == 3 * per_video
    rows = list(build_phase_dataset(long_videos, one_shape, data).iter_rows())
    keys = Counter(row["key"].split(WINDOW_MARK)[0] for row in rows)
    assert keys == {"wide": per_video, "square": per_video, "portrait": per_video}
    assert len({row["key"] for row in rows}) == len(rows)
    # windows of one video are different clips of it
    wide = [row["frames"] for row in rows if row["key"].startswith("wide")]
    assert len({clip.tobytes() for clip in wide}) == per_video
    capped = DataConfig(**{**data.model_dump(), "max_windows": 3})
    assert eligible_samples(long_videos, one_shape, capped) == 9
    assert len(list(build_phase_dataset(long_videos, one_shape, capped).iter_rows())) == 9


def test_mixed_aspect_ratios_make_batches_of_one_bucket_each(ray_cluster, long_videos):
    data = DataConfig(decode_workers=2, read_workers=1, decode_batch_size=4, shuffle_buffer=8)
    bucketed = phase(buckets=BUCKETS)
    ds = build_phase_dataset(long_videos, bucketed, data)
    shapes = clips.phase_buckets(bucketed)
    seen: Counter = Counter()
    for batch in bucket_batches(ds.iter_batches(batch_size=5, batch_format="numpy"), bucketed, batch_size=4):
        model = to_model_batch(batch)
        names = {key.split(WINDOW_MARK)[0] for key in model["key"]}
        assert len(names) == 1, names  # each video is alone in its bucket here
        shape = shapes[EXPECTED_BUCKET[names.pop()]]
        assert tuple(model["video"].shape) == (4, 3, shape.frames, shape.height, shape.width)
        seen[shape.name] += 4
    assert seen == {s.name: 12 for s in shapes}  # 14 clips a bucket: 3 whole batches, the rest dropped


def test_three_long_videos_train_in_buckets_with_batch_4_on_2_workers(ray_cluster, long_videos, tmp_path):
    from aiprod.training.runner import RunOptions, run_curriculum

    cfg = load_config("tiny", [
        "curriculum.phases.0.batch_size=4", "curriculum.phases.0.steps=4",
        f"curriculum.phases.0.buckets={json.dumps(BUCKETS)}",
        "curriculum.phases.1.batch_size=4", "curriculum.phases.1.steps=3",
        f"curriculum.phases.1.buckets={json.dumps(BUCKETS)}",
    ])
    summary = run_curriculum(cfg, RunOptions(data=long_videos, storage=str(tmp_path), run_name="own", end_phase=1,
                                             workers=2))
    assert summary["status"] == "finished"
    assert [p["steps"] for p in summary["phases"][:2]] == [4, 3]
    metrics = [json.loads(line) for line in (Path(tmp_path) / "own" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in metrics if "loss" in r and "event" not in r)
