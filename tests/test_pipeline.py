"""VideoPipeline on CPU at tiny size: weights directory round trip and manifest checks, generate
(shapes, seeds, modes, bad input), the MP4 read back by PyAV, and jobs/sample.py end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from aiprod import storage
from aiprod.config import load_config
from aiprod.diffusion.pipeline import VideoPipeline
from aiprod.model_dir import CONFIG, WEIGHTS, CheckpointError
from aiprod.manifest import MANIFEST
from aiprod.models import build_model

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pipe() -> VideoPipeline:
    cfg = load_config("tiny")
    torch.manual_seed(0)
    model = build_model(cfg.model)
    torch.manual_seed(1)  # the output layer starts small; larger weights make outputs clearly prompt/seed-dependent
    for p in model.denoiser.final_proj.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return VideoPipeline(cfg, model, version="v0.1.0-test")


@pytest.fixture(scope="module")
def checkpoint(pipe, tmp_path_factory) -> Path:
    return pipe.save_pretrained(tmp_path_factory.mktemp("ckpt") / "weights")


# ---------------------------------------------------------------------------- weights


def test_save_and_load_round_trip_is_bit_exact(pipe, checkpoint):
    assert sorted(p.name for p in checkpoint.iterdir()) == sorted([WEIGHTS, CONFIG, MANIFEST])
    assert not [p for p in checkpoint.parent.iterdir() if p.name.startswith(".")], "temp dir left behind"
    loaded = VideoPipeline.from_checkpoint(checkpoint)
    assert loaded.version == "v0.1.0-test"
    assert loaded.cfg == pipe.cfg
    original, restored = pipe.model.state_dict(), loaded.model.state_dict()
    assert original.keys() == restored.keys()
    for key in original:
        assert original[key].dtype == restored[key].dtype and torch.equal(original[key], restored[key]), key
    assert all(k.split(".")[0] in {"vae", "text", "denoiser"} for k in load_file(checkpoint / WEIGHTS))
    a = pipe.generate("storm surge", seconds=0.6, fps=8, height=16, width=16, seed=3, steps=2)
    b = loaded.generate("storm surge", seconds=0.6, fps=8, height=16, width=16, seed=3, steps=2)
    assert np.array_equal(a, b)


def test_load_from_s3(pipe, checkpoint, s3_uri):
    storage.upload_dir(checkpoint, s3_uri)
    loaded = VideoPipeline.from_checkpoint(s3_uri)
    assert loaded.version == pipe.version
    for key, value in pipe.model.state_dict().items():
        assert torch.equal(value, loaded.model.state_dict()[key]), key
    storage.write_text_atomic(storage.join(s3_uri, CONFIG), "preset: edited\n")
    with pytest.raises(CheckpointError, match=r"config\.yaml: sha256 mismatch"):
        VideoPipeline.from_checkpoint(s3_uri)


def test_save_replaces_an_existing_directory(pipe, tmp_path):
    target = tmp_path / "w"
    pipe.save_pretrained(target)
    (target / "stale.txt").write_text("old")
    pipe.save_pretrained(target)
    assert not (target / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]


def test_tampered_or_incomplete_checkpoint_is_refused(pipe, tmp_path):
    target = pipe.save_pretrained(tmp_path / "w")
    config = target / CONFIG
    config.write_text(config.read_text() + "\n# edited\n")
    with pytest.raises(CheckpointError, match=r"config\.yaml: sha256 mismatch"):
        VideoPipeline.from_checkpoint(target)
    (target / WEIGHTS).unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors is missing"):
        VideoPipeline.from_checkpoint(target)


def test_weights_for_another_config_are_refused(pipe, tmp_path):
    target = pipe.save_pretrained(tmp_path / "w")
    config = target / CONFIG
    config.write_text(load_config("tiny", ["model.denoiser.transformer_blocks=3"]).to_yaml())
    (target / MANIFEST).unlink()
    with pytest.raises(CheckpointError, match="does not fit model config"):
        VideoPipeline.from_checkpoint(target)


# --------------------------------------------------------------------------- generate


def test_generate_shapes_seeds_and_modes(pipe):
    video = pipe.generate("a red circle moving right", "en", seconds=1.0, fps=8, height=32, width=48, seed=0)
    # 8 frames asked; the causal VAE decodes 1 + 4k frames -> the nearest is 9.
    assert video.dtype == np.uint8 and video.shape == (9, 32, 48, 3)
    assert np.array_equal(video, pipe.generate("a red circle moving right", "en", 1.0, 8, 32, 48, seed=0))
    assert not np.array_equal(video, pipe.generate("a red circle moving right", "en", 1.0, 8, 32, 48, seed=1))
    one = pipe.generate("बाढ़ की चेतावनी", "hi", seconds=0.1, fps=8, height=16, width=16, seed=0,
                        steps=2, guidance=1.0)
    assert one.shape == (1, 16, 16, 3)
    fast = pipe.generate("cyclone alert", "en", seconds=1.0, fps=8, height=32, width=32, seed=0, mode="emergency")
    assert fast.shape == (9, 32, 32, 3)
    assert pipe.num_frames(2.0, 8) == 17 and pipe.num_frames(5.0, 24) == 121


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"height": 30}, "height must be a positive multiple of 4"),
        ({"width": 0}, "width must be a positive multiple of 4"),
        ({"mode": "fast"}, "mode must be one of"),
        ({"seconds": 0}, "seconds must be > 0"),
        ({"fps": -1}, "fps must be > 0"),
        ({"steps": 0}, "steps must be within"),
        ({"guidance": 0.5}, "guidance must be >= 1"),
        ({"language": ""}, "language"),
    ],
)
def test_generate_rejects_bad_requests(pipe, kwargs, match):
    request = {"prompt": "x", "language": "en", "seconds": 1.0, "fps": 8, "height": 16, "width": 16, "seed": 0}
    with pytest.raises(ValueError, match=match):
        pipe.generate(**{**request, **kwargs})


# -------------------------------------------------------------------------------- MP4


def _read_mp4(path: Path) -> tuple[list[np.ndarray], Fraction, str, str]:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return frames, stream.average_rate, stream.codec_context.name, stream.codec_context.pix_fmt


def test_write_mp4_reads_back_with_pyav(pipe, tmp_path):
    video = pipe.generate("a red circle moving right", seconds=1.0, fps=8, height=32, width=48, seed=0, steps=2)
    out = tmp_path / "clip.mp4"
    pipe.write_mp4(video, out, fps=8)
    frames, rate, codec, pix_fmt = _read_mp4(out)
    assert len(frames) == video.shape[0] and frames[0].shape == (32, 48, 3)
    assert rate == 8 and codec == "h264" and pix_fmt == "yuv420p"


def test_sample_cli_end_to_end(checkpoint, tmp_path):
    from aiprod.provenance import verify_file

    out = tmp_path / "cli.mp4"
    cmd = [sys.executable, str(ROOT / "jobs" / "sample.py"), "--checkpoint", str(checkpoint),
           "--prompt", "flood warning", "--out", str(out), "--seconds", "1", "--fps", "8",
           "--height", "32", "--width", "32", "--steps", "2", "--mode", "emergency"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["frames"] == 9 and report["mode"] == "emergency" and report["version"] == "v0.1.0-test"
    frames, rate, _, _ = _read_mp4(out)
    assert len(frames) == 9 and frames[0].shape == (32, 32, 3) and rate == 8
    verdict = verify_file(out)  # signed C2PA content credentials (aiprod.provenance)
    assert verdict["valid"] and verdict["source_type"] == "trainedAlgorithmicMedia"
    assert (verdict["model_version"], verdict["mode"]) == ("v0.1.0-test", "emergency")
    bad = subprocess.run([*cmd, "--height", "30"], capture_output=True, text=True, timeout=300, env=env)
    assert bad.returncode == 2 and "height must be a positive multiple" in bad.stderr


# ------------------------------------------------------------------- deadline, finite output


def test_generation_past_its_deadline_stops_within_one_step(pipe, monkeypatch):
    """The clock moves past the deadline during step 2: step 3 never runs."""
    import aiprod.diffusion.pipeline as module

    clock = [1000.0]
    monkeypatch.setattr(module, "time", type("Clock", (), {"time": staticmethod(lambda: clock[0])}))
    ran = []

    def on_step(i: int, n: int) -> None:
        if i < n:
            ran.append(i)
        if i == 2:
            clock[0] = 1010.0

    with pytest.raises(module.GenerationAbandoned, match="after 3 of 8 sampler steps") as caught:
        pipe.generate("x", seconds=1.0, fps=8, height=16, width=16, steps=8, deadline=1005.0, on_step=on_step)
    assert ran == [0, 1, 2] and (caught.value.step, caught.value.steps) == (3, 8)
    frames = pipe.generate("x", seconds=1.0, fps=8, height=16, width=16, steps=2, deadline=1020.0)
    assert frames.dtype == np.uint8  # a deadline still ahead changes nothing


def test_non_finite_output_is_refused_before_encoding(pipe):
    from aiprod.diffusion.pipeline import NonFiniteOutput

    cfg = load_config("tiny")
    model = build_model(cfg.model)
    model.load_state_dict(pipe.model.state_dict())
    with torch.no_grad():
        model.denoiser.final_proj.weight.fill_(float("nan"))
    broken = VideoPipeline(cfg, model, version="nan-test")
    for mode in ("standard", "emergency"):
        with pytest.raises(NonFiniteOutput, match="non-finite"):
            broken.generate("x", seconds=1.0, fps=8, height=16, width=16, steps=1, mode=mode)
    with pytest.raises(ValueError, match="guidance must be >= 1 and finite"):
        pipe.generate("x", seconds=1.0, fps=8, height=16, width=16, steps=1, guidance=float("inf"))
