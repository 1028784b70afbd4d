"""jobs/evaluate.py on tiny checkpoints writes report.json + report.html; release gate checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aiprod.eval.gates import passes_gates
from tests.conftest import load_job

ROOT = Path(__file__).resolve().parents[1]
VERSION = "pib-videogen-standard-v0.1.0-general"


def test_passes_gates():
    report = {"metrics": {"psnr": 14.0, "temporal_coherence": 0.4, "fd_randproj3d": 30.0, "ssim": None}}
    assert passes_gates(report, {"psnr_min": 12.0, "fd_randproj3d_max": 50.0}) == (True, [])
    ok, reasons = passes_gates(report, {"psnr_min": 12.0, "temporal_coherence_min": 0.5, "fd_randproj3d_max": 10})
    assert not ok and reasons == ["fd_randproj3d_max: fd_randproj3d = 30, needs <= 10",
                                  "temporal_coherence_min: temporal_coherence = 0.4, needs >= 0.5"]
    ok, reasons = passes_gates(report, {"ssim_min": 0.5, "fvd_max": 100})
    assert not ok and "'fvd' is missing" in reasons[0] and "'ssim' is missing" in reasons[1]
    assert passes_gates({}, {"psnr_min": 1}) == (False, [
        "report has no 'metrics' section (is it a jobs/evaluate.py report.json?)"])
    with pytest.raises(ValueError, match="gate 'psnr' must be '<metric>_min' or '<metric>_max'"):
        passes_gates(report, {"psnr": 1.0})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_config) -> Path:
    """A tiny run directory: final/ weights (untrained: this tests the report machinery) and the
    trainer's metrics.jsonl format beside it; a second model for --compare."""
    import torch

    from aiprod.diffusion.pipeline import VideoPipeline
    from aiprod.models import build_model

    run = tmp_path_factory.mktemp("run")
    for name, seed in (("final", 0), ("other", 1)):
        torch.manual_seed(seed)
        VideoPipeline(tiny_config, build_model(tiny_config.model)).save_pretrained(run / name)
    lines, step = [], 0
    for phase, name in enumerate(p.name for p in tiny_config.curriculum.phases[:3]):
        for s in range(1, 6):
            step += 1
            lines.append({"time": 0, "global_step": step, "phase": phase, "phase_name": name, "step": s,
                          "loss": 1.0 / (phase + s)})
        lines.append({"time": 0, "global_step": step, "event": "checkpoint", "name": f"checkpoint-{step}"})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return run


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    from aiprod.data.synthetic_shards import build_synthetic_shards

    out = tmp_path_factory.mktemp("shards")
    build_synthetic_shards(str(out), 8, levels=[1, 2], size=(32, 32), frames=9, fps=8.0, seed=0,
                           heldout_fraction=0.5, workers=1)
    return out


def _evaluate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "jobs" / "evaluate.py"), *args], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})


def _strict_json(path: Path) -> dict:
    def refuse(constant: str):
        raise AssertionError(f"{path} holds {constant}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def test_evaluate_writes_both_reports(tmp_path, run_dir, shards):
    from aiprod.registry import Registry

    registry = tmp_path / "registry"
    Registry(registry).publish(run_dir / "final", VERSION)
    out = tmp_path / "report"
    result = _evaluate("--version", VERSION, "--registry", str(registry), "--compare", str(run_dir / "other"),
                       "--data", str(shards), "--out", str(out), "eval.num_samples=2",
                       "eval.languages=[en,hi]", "eval.seeds=[0]", "eval.heldout_clips=3")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "generating" in result.stderr  # the progress bar
    summary = json.loads(result.stdout.strip().splitlines()[-1])

    report = _strict_json(out / "report.json")
    assert summary["passed"] == report["gates"]["passed"] and summary["metrics"].keys() == report["metrics"].keys()
    assert report["model"]["version"] == VERSION and report["label"] == VERSION
    assert report["extractor"]["name"] == "FD-randproj3d" and "not FVD" in report["extractor"]["note"]
    assert report["settings"]["seeds"] == [0] and report["settings"]["languages"] == ["en", "hi"]
    assert report["counts"] == {"scenes": 2, "languages": 2, "seeds": 1, "videos": 4, "vae_clips": 3,
                                "fd_reference_clips": 3}
    assert report["data"]["split"] == "heldout" and report["data"]["clips"] == 3
    metrics = report["metrics"]
    for key in ("psnr", "ssim", "sample_psnr", "temporal_coherence", "fd_randproj3d", "alignment_accuracy",
                "alignment_colour", "alignment_count", "alignment_direction"):
        assert isinstance(metrics[key], float), key
    assert 0 < metrics["psnr"] < report["settings"]["psnr_cap"] and metrics["fd_randproj3d"] > 0
    assert set(report["per_language"]) == {"en", "hi"} and set(report["per_level"]) == {"1", "2"}
    assert len(report["samples"]) == 4 and {s["language"] for s in report["samples"]} == {"en", "hi"}
    assert report["gates"]["thresholds"] == {"psnr_min": 8.0, "temporal_coherence_min": 0.3,
                                             "alignment_colour_min": 0.5, "alignment_direction_min": 0.5}
    assert report["gates"]["passed"] == passes_gates(report, report["gates"]["thresholds"])[0]
    # an untrained model follows no prompt: its release fails on alignment, whatever its PSNR
    assert not report["gates"]["passed"]
    assert any(r.startswith("alignment_colour_min") for r in report["gates"]["reasons"])

    # loss curves from the run the registry entry was published from, per phase
    phases = report["run"]["phases"]
    assert [p["phase"] for p in phases] == [0, 1, 2] and all(p["steps"] == 5 for p in phases)
    assert phases[1]["first_loss"] == pytest.approx(0.5) and phases[1]["best_loss"] == pytest.approx(1 / 6)
    assert report["run"]["loss_curves"] == "loss_curves.png"

    compare = report["compare"]
    assert compare["label"] == "other" and compare["metrics"].keys() == metrics.keys()
    assert len(compare["samples"]) == 4

    from PIL import Image

    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.height > 6 * 96  # 2 scenes x (reference + 2 models) rows of 96 px frames
    for scene in report["scenes"]:
        assert Image.open(out / scene["sheet"]).height > 5 * 96  # reference + 2 models x 2 languages
    page = (out / "report.html").read_text(encoding="utf-8")
    hindi = report["scenes"][0]["captions"]["hi"]
    assert hindi in page and "Release gates" in page and "Per language" in page and "Per level" in page
    for image in ("contact_sheet.png", "loss_curves.png", report["scenes"][1]["sheet"]):
        assert f"src='{image}'" in page and (out / image).is_file()


def _evaluate_in_process(capsys, *args: str) -> tuple[int, str]:
    rc = load_job("evaluate").main(list(args))
    return rc, capsys.readouterr().err


def test_evaluate_fails_clearly(tmp_path, run_dir, capsys):
    rc, err = _evaluate_in_process(capsys, "--checkpoint", str(run_dir / "final"), "--data", str(tmp_path),
                                   "--out", str(tmp_path / "r"))
    assert rc == 1 and "no index.json" in err
    rc, err = _evaluate_in_process(capsys, "--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "r"))
    assert rc == 1 and "model.safetensors is missing" in err
    rc, err = _evaluate_in_process(capsys, "--checkpoint", str(run_dir / "final"), "--out", str(tmp_path / "r"),
                                   "eval.levels=[9]")
    assert rc == 1 and "config: eval: levels must be a non-empty list within 1..5" in err
    rc, err = _evaluate_in_process(capsys, "--checkpoint", str(run_dir / "final"), "--out", str(tmp_path / "r"),
                                   "eval.languages=[xx]")
    assert rc == 1 and "unknown caption language 'xx'" in err
    rc, err = _evaluate_in_process(capsys, "--version", "pib-videogen-standard-v9.0.0-general", "--registry",
                                   str(tmp_path / "empty-registry"), "--out", str(tmp_path / "r"))
    assert rc == 1 and "no version pib-videogen-standard-v9.0.0-general" in err


def test_tune_objective_and_evaluation_compare_with_the_same_heldout_clips(shards):
    """One held-out reader: Tune's objective holds the features and captions of the very clips the
    evaluation compares with (its first tune.val_clips of them), read the same way every time."""
    import numpy as np

    from aiprod.config import load_config
    from aiprod.eval.heldout import read_heldout
    from aiprod.eval.metrics import make_extractor
    from aiprod.eval.report import reference_clips
    from aiprod.eval.settings import clip_spec
    from aiprod.tuning.objective import Objective

    cfg = load_config("tiny", ["eval.heldout_clips=3", "tune.val_clips=3"])
    spec = clip_spec(cfg)
    clips, data = reference_clips(cfg, spec, str(shards), cases=[])
    assert data["split"] == "heldout" and data["clips"] == len(clips) == 3
    objective = Objective.from_data(str(shards), cfg)
    extractor = make_extractor(cfg.eval.i3d_weights)
    np.testing.assert_array_equal(objective.reference, extractor(clips))

    again = read_heldout(str(shards), 3, spec, seed=cfg.data.seed)
    assert [c.key for c in again.clips] == objective.keys
    assert [(c.caption, c.language) for c in again.clips] == objective.captions
    for clip, frames in zip(again.clips, clips):
        np.testing.assert_array_equal(clip.frames, frames)
        assert clip.frames.shape == (spec.frames, spec.height, spec.width, 3)

    fewer = Objective.from_data(str(shards), load_config("tiny", ["tune.val_clips=2"]))
    assert fewer.keys == objective.keys[:2]
    np.testing.assert_array_equal(fewer.reference, extractor(clips[:2]))


def test_plots_draw_both_contact_sheets_and_loss_curves():
    import io

    import numpy as np
    from PIL import Image

    from aiprod import plots

    video = np.random.default_rng(0).integers(0, 256, (9, 16, 20, 3), dtype=np.uint8)
    row = Image.open(io.BytesIO(plots.contact_sheet_png(video, 4)))
    np.testing.assert_array_equal(np.asarray(row), np.concatenate([video[i] for i in (0, 3, 5, 8)], axis=1))
    with pytest.raises(ValueError, match=r"expects frames \[T,H,W,3\]"):
        plots.contact_sheet_png(video[..., 0], 4)
    sheet = Image.open(io.BytesIO(plots.labelled_contact_sheet_png([("a", video), ("b", video)], 3, 32, "t")))
    assert sheet.size == (110 + 3 * 40 + 2 * 2 + 4, 20 + 2 * (32 + 4) + 4)

    assert plots.phase_loss_curves_png([{"event": "checkpoint"}]) is None
    records = [{"phase": 0, "phase_name": "vae", "global_step": s, "loss": 1.0 / s} for s in range(1, 6)]
    for png in (plots.phase_loss_curves_png(records), plots.loss_curve_png([1.0 / s for s in range(1, 9)], "t")):
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
