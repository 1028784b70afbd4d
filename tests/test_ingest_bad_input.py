"""Bad input to jobs/make_shards.py gets one clear line (file/line and reason in rejected.jsonl) and
loses nothing else: a missing video, a duplicate path, an empty caption, a video shorter than a
clip, a video (portrait too) smaller than the bucket it would train in."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from aiprod.config import DataConfig, load_config
from aiprod.data import shards
from aiprod.data.ingest import (Item, VideoSettings, parse_min_size, phases_min_buckets, too_small, video_items,
                                video_sample)
from aiprod.data.photo_footage import write_photo_video
from aiprod.data.shard_writer import Rejected, Sample, Settings

ROOT = Path(__file__).resolve().parents[1]


def write_captions(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture
def videos(tmp_path) -> Path:
    folder = tmp_path / "videos"
    write_photo_video(folder / "a.mp4", 64, 48, seconds=2, fps=8, move="pan_right")
    write_photo_video(folder / "b.mp4", 48, 64, seconds=2, fps=8, move="zoom_in")
    return folder


def rejected_by_source(items_rejected: list[Rejected]) -> dict[str, Rejected]:
    return {Path(r.source).name: r for r in items_rejected}


def test_captions_row_naming_a_missing_video(videos, tmp_path):
    captions = write_captions(tmp_path / "c.jsonl", [{"path": "a.mp4", "caption": "a"},
                                                    {"path": "gone.mp4", "caption": "b"}])
    items, rejected = video_items(str(videos), captions, DataConfig())
    assert sorted(Path(i.source).name for i in items) == ["a.mp4", "b.mp4"]  # b.mp4: no caption row, still planned
    (bad,) = rejected
    assert bad.reason == "missing_file" and bad.error.startswith(f"{captions}:2: no video at ")
    assert bad.error.endswith("gone.mp4")


def test_duplicate_path_names_both_lines(videos, tmp_path):
    captions = write_captions(tmp_path / "c.jsonl", [{"path": "a.mp4", "caption": "first"},
                                                    {"path": "b.mp4", "caption": "b"},
                                                    {"path": "./a.mp4", "caption": "second"}])
    items, rejected = video_items(str(videos), captions, DataConfig())
    assert {Path(i.source).name: i.caption for i in items} == {"a.mp4": "first", "b.mp4": "b"}
    (bad,) = rejected
    assert bad.reason == "duplicate" and bad.error == f"{captions}:3: ./a.mp4 is already listed at {captions}:1"


def test_empty_caption_without_sidecar(videos, tmp_path):
    (videos / "b.txt").write_text("a sidecar caption\n")
    captions = write_captions(tmp_path / "c.jsonl", [{"path": "a.mp4", "caption": "  "},
                                                    {"path": "b.mp4", "caption": ""}])
    items, rejected = video_items(str(videos), captions, DataConfig())
    assert [(Path(i.source).name, i.caption) for i in items] == [("b.mp4", "a sidecar caption")]
    (bad,) = rejected
    assert bad.reason == "no_caption" and bad.error == f"{captions}:1: empty caption for a.mp4 (and no sidecar .txt)"


def test_video_shorter_than_one_clip(tmp_path):
    write_photo_video(tmp_path / "short.mp4", 64, 48, seconds=0.5, fps=8)  # 4 frames
    item = Item(key="short", source=str(tmp_path / "short.mp4"), caption="c")
    result = video_sample(item, Settings(clip_frames=9, clip_fps=8))
    assert isinstance(result, Rejected) and result.reason == "too_short"
    assert result.error.startswith(f"{item.source}: 4 frames at 8 fps, shorter than a clip of 9 frames")
    assert isinstance(video_sample(item, Settings(clip_frames=4, clip_fps=8)), Sample)


def test_too_small_picks_the_bucket_nearest_the_aspect_and_the_smallest_across_phases():
    phases = ((32, 32),), ((64, 64), (48, 80), (80, 48))
    assert too_small(60, 40, phases) is None  # phase 0's 32x32 takes it without upscaling
    assert too_small(30, 40, phases).name == "1x32x32"
    landscape = parse_min_size("64x64,48x80,80x48")
    assert too_small(80, 48, landscape) is None and too_small(79, 48, landscape).name == "1x48x80"
    assert too_small(48, 80, landscape) is None and too_small(48, 79, landscape).name == "1x80x48"
    assert too_small(64, 64, landscape) is None and too_small(63, 70, landscape).name == "1x64x64"
    assert parse_min_size("0") == () and too_small(1, 1, ()) is None
    with pytest.raises(ValueError, match="HEIGHTxWIDTH"):
        parse_min_size("64")
    tiny = load_config("tiny").curriculum.phases
    assert set(phases_min_buckets(tiny)) == {((32, 32),)}


def test_portrait_video_smaller_than_its_bucket_rotation_applied(tmp_path):
    only_landscape = parse_min_size("48x80")
    # stored 96x56 (WxH) in both; the phone video is shown 56x96 (portrait): 56 < the bucket's 80 wide
    write_photo_video(tmp_path / "phone.mp4", 56, 96, seconds=2, fps=8, rotation=90)
    write_photo_video(tmp_path / "flat.mp4", 96, 56, seconds=2, fps=8)
    settings = VideoSettings(min_buckets=only_landscape)
    phone = video_sample(Item(key="phone", source=str(tmp_path / "phone.mp4"), caption="c"), settings)
    assert isinstance(phone, Rejected) and phone.reason == "too_small"
    assert phone.error == (f"{tmp_path / 'phone.mp4'}: shown 56x96 (WxH, rotation 90), smaller than the 48x80 "
                           "(HxW) bucket it would train in")
    flat = video_sample(Item(key="flat", source=str(tmp_path / "flat.mp4"), caption="c"), settings)
    assert isinstance(flat, Sample) and (flat.meta["width"], flat.meta["height"]) == (96, 56)


def make_shards(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "jobs" / "make_shards.py"), "--no-progress", "--workers", "1", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_make_shards_with_every_bad_input_at_once_keeps_all_good_videos(videos, tmp_path):
    write_photo_video(videos / "c.mp4", 176, 144, seconds=2, fps=8, move="pan_left")
    write_photo_video(videos / "short.mp4", 64, 48, seconds=0.5, fps=8)
    write_photo_video(videos / "phone_small.mp4", 24, 40, seconds=2, fps=8, rotation=90)  # shown 24x40 < 32x32
    rows = [{"path": "a.mp4", "caption": "a"}, {"path": "b.mp4", "caption": "b"},
            {"path": "c.mp4", "caption": "c"}, {"path": "missing.mp4", "caption": "m"},
            {"path": "a.mp4", "caption": "again"}, {"path": "short.mp4", "caption": "s"},
            {"path": "phone_small.mp4", "caption": "p"}, {"path": "empty.mp4", "caption": ""}]
    write_photo_video(videos / "empty.mp4", 64, 48, seconds=2, fps=8)
    captions = write_captions(tmp_path / "captions.jsonl", rows)
    out = tmp_path / "shards"
    args = ["--videos", str(videos), "--captions", captions, "--out", str(out), "--clip-frames", "9",
            "--clip-fps", "8", "--heldout-fraction", "0"]
    result = make_shards(*args, "--preset", "tiny")  # the tiny preset's phases train at 32x32
    assert result.returncode == 0, result.stderr
    samples = {}
    for shard in sorted(out.glob("shard-*.tar")):
        with open(shard, "rb") as f:
            samples.update({key: json.loads(parts["json"]) for key, parts in shards.iter_tar_samples(f)})
    assert {k: s["caption"] for k, s in samples.items()} == {"a": "a", "b": "b", "c": "c"}
    lines = [json.loads(line) for line in (out / shards.REJECTED).read_text().splitlines()]
    reasons = {Path(r["source"]).name: r["reason"] for r in lines}
    assert len(lines) == 5 and reasons == {"missing.mp4": "missing_file", "a.mp4": "duplicate",
                                           "short.mp4": "too_short", "phone_small.mp4": "too_small",
                                           "empty.mp4": "no_caption"}
    where = {r["reason"]: r["error"] for r in lines}
    assert where["missing_file"].startswith(f"{captions}:4:") and where["duplicate"].startswith(f"{captions}:5:")
    assert where["no_caption"].startswith(f"{captions}:8:") and "24x40" in where["too_small"]
    summary_line = [line for line in result.stderr.splitlines() if "rejected" in line]
    assert summary_line == [f"make_shards: 5 of 8 inputs rejected (duplicate 1, missing_file 1, no_caption 1, "
                            f"too_short 1, too_small 1); one line each with its reason in {out}/{shards.REJECTED}"]

    # without --preset (nor --min-size) sizes are not checked: the small phone video is kept
    loose = make_shards(*args[:5], str(tmp_path / "loose"), *args[6:])
    assert loose.returncode == 0, loose.stderr
    kept = json.loads(loose.stdout.strip().splitlines()[-1])
    assert kept["samples"] == 4 and "too_small" not in kept["rejected_by_reason"]
