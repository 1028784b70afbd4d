"""Real footage (camera moves over a photograph matplotlib ships) and the VAE reconstruction figures
jobs/evaluate.py reports on it per held-out clip and per bucket, with no synthetic ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from aiprod.data import video
from aiprod.data.clips import ClipShape, nearest_bucket
from aiprod.data.photo_footage import (FOOTAGE_SET, MOVES, Footage, camera_move, photo, varied_footage,
                                       write_photo_videos)
from aiprod.eval import metrics as m
from aiprod.eval.measure import vae_per_clip_and_bucket
from tests.conftest import load_job

ROOT = Path(__file__).resolve().parents[1]
BUCKETS = ["9x32x32", "9x24x40", "9x40x24"]
SMALL_SET = (Footage("wide.mp4", 80, 34, 2.0, 8.0, "pan_right"), Footage("square.mp4", 48, 48, 2.0, 8.0, "zoom_in"),
             Footage("phone.mp4", 36, 64, 2.0, 8.0, "pan_up", rotation=90),
             Footage("portrait.mp4", 36, 64, 2.0, 8.0, "zoom_out"), Footage("hd.mp4", 64, 36, 2.0, 8.0, "pan_left"),
             Footage("qcif.mp4", 88, 72, 2.0, 8.0, "pan_down"))


def test_camera_moves_over_a_real_photograph_are_deterministic_and_move():
    image = photo()
    assert image.shape == (600, 512, 3) and image.dtype == np.uint8 and image.std() > 30  # a photo, not a card
    clip = camera_move(image, 64, 36, 8, "pan_right")
    assert clip.shape == (8, 36, 64, 3) and np.array_equal(clip, camera_move(image, 64, 36, 8, "pan_right"))
    assert np.abs(clip[0].astype(int) - clip[-1]).mean() > 10  # the camera moves
    assert np.abs(clip[3].astype(int) - clip[4]).mean() < np.abs(clip[0].astype(int) - clip[-1]).mean()
    # a pan left is a pan right played backwards; a zoom in ends on a close-up (finer detail per pixel)
    assert np.abs(camera_move(image, 64, 36, 8, "pan_left")[::-1].astype(int) - clip).max() <= 1
    zoom = camera_move(image, 48, 48, 8, "zoom_in").astype(float)
    assert np.abs(np.diff(zoom[0], axis=1)).mean() > np.abs(np.diff(zoom[-1], axis=1)).mean()
    with pytest.raises(ValueError, match="move must be one of"):
        camera_move(image, 8, 8, 2, "spin")


def test_varied_footage_pairs_every_size_with_every_move():
    footage = varied_footage(36)
    sizes = {(f.width, f.height, f.rotation) for f in FOOTAGE_SET}
    assert {(f.width, f.height, f.rotation, f.move) for f in footage} == {(*s, mv) for s in sizes for mv in MOVES}
    assert len({f.name for f in footage}) == 36


def test_written_videos_show_the_frames_at_their_size_rotation_applied(tmp_path):
    rows = write_photo_videos(tmp_path / "v", SMALL_SET[:3])
    lines = [json.loads(line) for line in (tmp_path / "v" / "captions.jsonl").read_text().splitlines()]
    assert lines == rows and [r["path"] for r in rows] == ["wide.mp4", "square.mp4", "phone.mp4"]
    for item in SMALL_SET[:3]:
        data = (tmp_path / "v" / item.name).read_bytes()
        info = video.probe(data, count_frames=True)
        assert (info.width, info.height, info.frames, info.rotation) == (item.width, item.height, 16, item.rotation)
        shown = video.decode_clip(data, 16, 8.0, item.height, item.width, start=0.0)
        assert m.psnr(camera_move(photo(), item.width, item.height, 16, item.move), shown) > 28  # right way up


@pytest.fixture(scope="module")
def footage_shards(tmp_path_factory) -> Path:
    from aiprod.data.ingest import build_video_shards

    root = tmp_path_factory.mktemp("footage")
    write_photo_videos(root / "videos", SMALL_SET)
    summary = build_video_shards(str(root / "shards"), str(root / "videos"), str(root / "videos/captions.jsonl"),
                                 heldout_fraction=0.5, workers=1)
    assert summary["rejected"] == 0 and summary["heldout_samples"] >= 3
    return root / "shards"


def test_heldout_clips_are_read_at_the_bucket_nearest_their_aspect(footage_shards):
    from aiprod.eval.heldout import read_heldout
    from aiprod.eval.settings import ClipSpec

    shapes = [ClipShape(9, 32, 32), ClipShape(9, 24, 40), ClipShape(9, 40, 24)]
    heldout = read_heldout(str(footage_shards), 8, ClipSpec(9, 32, 32, 8.0), buckets=shapes)
    sizes = {f.name.removesuffix(".mp4"): (f.width, f.height) for f in SMALL_SET}
    assert heldout.split == "heldout" and len(heldout.clips) >= 3 and not heldout.skipped
    for clip in heldout.clips:
        assert (clip.width, clip.height) == sizes[clip.key]  # from the sample JSON, as shown
        shape = shapes[nearest_bucket(clip.width, clip.height, shapes)]
        assert clip.bucket == shape.name and clip.frames.shape == (9, shape.height, shape.width, 3)
    assert len({c.bucket for c in heldout.clips}) >= 2
    plain = read_heldout(str(footage_shards), 8, ClipSpec(9, 32, 32, 8.0))
    assert {c.bucket for c in plain.clips} == {"9x32x32"}


class _Posterior:
    def __init__(self, z: torch.Tensor):
        self.z = z

    def mode(self) -> torch.Tensor:
        return self.z


class StubVAE(torch.nn.Module):
    """Identity (a perfect reconstruction), or the input plus fixed noise."""

    temporal_compression = 4

    def __init__(self, noise: float):
        super().__init__()
        self.noise = noise

    def encode(self, x: torch.Tensor) -> _Posterior:
        return _Posterior(x)

    def decode(self, z: torch.Tensor, size) -> torch.Tensor:
        return z + self.noise * torch.randn(z.shape, generator=torch.Generator().manual_seed(0))


def test_per_clip_and_per_bucket_figures_rank_a_perfect_vae_above_a_noisy_one():
    clips = [camera_move(photo(), w, h, 9, mv) for w, h, mv in ((40, 24, "pan_left"), (24, 40, "pan_up"),
                                                                 (40, 24, "zoom_in"))]
    described = [{"key": f"c{i}", "width": c.shape[2], "height": c.shape[1],
                  "bucket": f"9x{c.shape[1]}x{c.shape[2]}"} for i, c in enumerate(clips)]
    perfect = vae_per_clip_and_bucket(m.vae_reconstruction(StubVAE(0.0), clips, 100.0), described)
    noisy = vae_per_clip_and_bucket(m.vae_reconstruction(StubVAE(0.2), clips, 100.0), described)
    assert [c["key"] for c in noisy["per_clip"]] == ["c0", "c1", "c2"]
    assert {b: v["clips"] for b, v in noisy["per_bucket"].items()} == {"9x24x40": 2, "9x40x24": 1}
    assert all(c["psnr"] == 100.0 and c["ssim"] > 0.999 for c in perfect["per_clip"])
    assert all(10 < c["psnr"] < 30 and c["ssim"] < 0.9 for c in noisy["per_clip"])
    wide = noisy["per_bucket"]["9x24x40"]
    assert wide["psnr"] == pytest.approx((noisy["per_clip"][0]["psnr"] + noisy["per_clip"][2]["psnr"]) / 2)
    with pytest.raises(ValueError, match="2 clip descriptions for 3 measured clips"):
        vae_per_clip_and_bucket(noisy, described[:2])


def test_evaluate_on_real_footage_reports_vae_per_clip_and_bucket(footage_shards, tmp_path, capsys):
    """jobs/evaluate.py on a non-synthetic shard set (no `truth` in its sample JSON) with a freshly
    initialised tiny model: the report's per-clip and per-bucket VAE figures add up."""
    from aiprod.config import load_config
    from aiprod.diffusion.pipeline import VideoPipeline
    from aiprod.models import build_model

    torch.manual_seed(0)
    cfg = load_config("tiny", [f"curriculum.phases.5.buckets={json.dumps(BUCKETS)}"])
    VideoPipeline(cfg, build_model(cfg.model)).save_pretrained(tmp_path / "model")
    job = load_job("evaluate")
    rc = job.main(["--checkpoint", str(tmp_path / "model"), "--data", str(footage_shards), "--out",
                   str(tmp_path / "report"), "eval.num_samples=1", "eval.seeds=[0]", "eval.languages=[en]",
                   "eval.steps=1"])
    assert rc == 0
    printed = capsys.readouterr().out.strip().splitlines()
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    vae, data = report["vae"], report["data"]
    assert data["source"] == "heldout" and vae["clips"] == data["clips"] == len(vae["per_clip"]) >= 3
    shapes = [ClipShape(*map(int, b.split("x"))) for b in BUCKETS]
    for clip in vae["per_clip"]:
        assert clip["bucket"] == shapes[nearest_bucket(clip["width"], clip["height"], shapes)].name
        assert 0 < clip["psnr"] < 100 and -1 <= clip["ssim"] <= 1
    counts = {}
    for clip in vae["per_clip"]:
        counts[clip["bucket"]] = counts.get(clip["bucket"], 0) + 1
    assert {b: v["clips"] for b, v in vae["per_bucket"].items()} == counts and len(counts) >= 2
    assert report["metrics"]["psnr"] == pytest.approx(np.mean([c["psnr"] for c in vae["per_clip"]]))
    assert json.loads(printed[-1])["vae_per_bucket"] == vae["per_bucket"]
    assert sum(line.startswith("  VAE reconstruction, bucket ") for line in printed) == len(counts)
    html = (tmp_path / "report" / "report.html").read_text()
    assert "VAE reconstruction per bucket" in html and vae["per_clip"][0]["key"] in html
