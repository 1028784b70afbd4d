"""Ray Tune + Optuna (TPE) + ASHA around the curriculum's training code (aiprod.tuning, tune/search.py).

On the shared local Ray, one tiny search (4 trials) on moto S3 storage, started with the CLI,
interrupted with SIGINT after a trial finished and resumed: it completes, ASHA stops a trial early,
the finished trial is not run again, and its best.yaml drives the curriculum job."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from aiprod import storage
from aiprod.config import ConfigError, load_config, load_overrides_file, validate
from aiprod.tuning import space
from aiprod.tuning.search import SearchOptions, auto_concurrency, max_reports, run_search
from aiprod.tuning.trial import STARTS_DIR, TRIALS_DIR, finished_results
from tests.conftest import load_job

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ units


def test_trial_overrides_apply_the_point_to_the_tuned_phases():
    cfg = load_config("tiny", ["tune.end_phase=2"])
    base1, base2 = cfg.curriculum.phases[1].lr, cfg.curriculum.phases[2].lr
    trial = cfg.with_overrides(space.trial_overrides(cfg, {"lr": 1e-3, "diffusion.noise_lambda": 0.8}))
    assert trial.curriculum.phases[1].lr == pytest.approx(1e-3)
    assert trial.curriculum.phases[2].lr == pytest.approx(1e-3 * base2 / base1)  # the curriculum's ratio
    assert trial.curriculum.phases[0].lr == cfg.curriculum.phases[0].lr  # untuned phase untouched
    assert trial.diffusion.noise_lambda == 0.8
    assert trial.checkpoint.every_steps == cfg.tune.report_every_steps
    assert [trial.curriculum.phases[i].steps for i in (1, 2)] == [cfg.tune.trial_steps] * 2
    best = space.best_overrides(cfg, {"lr": 1e-3, "diffusion.noise_lambda": 0.8})
    assert "checkpoint.every_steps" not in best and best["diffusion.noise_lambda"] == 0.8


def test_bad_space_and_phase_are_named():
    tree = load_config("tiny").to_dict()
    tree["tune"]["space"]["diffusion.noise_lamda"] = {"low": 0.6, "high": 0.8}
    with pytest.raises(ConfigError, match="noise_lamda' is not a config key"):
        space.check_space(validate(tree))
    tree = load_config("tiny").to_dict()
    tree["tune"]["space"]["diffusion.noise_lambda"] = {"low": 0.6, "high": 1.3}
    with pytest.raises(ConfigError, match=r"tune.space.diffusion.noise_lambda: 1.3 is not allowed"):
        space.check_space(validate(tree))
    with pytest.raises(ConfigError, match="tune.phase 9 is out of range"):
        space.check_space(load_config("tiny", ["tune.phase=9"]))
    with pytest.raises(ConfigError, match="'diffusion.schedule' holds 'cosine', not a number"):
        tree = load_config("tiny").to_dict()
        tree["tune"]["space"]["diffusion.schedule"] = {"low": 0, "high": 1}
        space.check_space(validate(tree))


def test_concurrency_and_report_budget():
    cfg = load_config("tiny", ["tune.workers_per_trial=2", "train.cpus_per_worker=1"])
    assert auto_concurrency(cfg, {"CPU": 8.0}) == 3  # 2 workers + the trial driver's 0.1 CPU each
    assert auto_concurrency(cfg, {"CPU": 0.0}) == 1  # an empty autoscaling cluster grows for one
    gpu = load_config("tiny", ["train.use_gpu=true", "tune.workers_per_trial=1", "train.cpus_per_worker=4"])
    assert auto_concurrency(gpu, {"CPU": 64.0, "GPU": 3.0}) == 3
    assert max_reports(cfg) == 9 // 3 + 1


# ----------------------------------------------------------------------- integration


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    from aiprod.data.synthetic_shards import build_synthetic_shards

    out = tmp_path_factory.mktemp("tune-shards") / "demo"
    cfg = load_config("tiny")
    phase = cfg.curriculum.phases[1]
    build_synthetic_shards(str(out), 60, levels=[1, 2], size=(phase.height, phase.width), frames=phase.frames,
                           fps=phase.fps, seed=0, heldout_fraction=0.1)
    return str(out)


def _starts(search: str) -> dict[str, int]:
    """How many times each trial was started (one marker object per start)."""
    counts: dict[str, int] = {}
    for marker in storage.list_files(storage.join(search, STARTS_DIR)):
        trial_id = json.loads(storage.read_text(marker))["trial_id"]
        counts[trial_id] = counts.get(trial_id, 0) + 1
    return counts


def _completed_runs(search: str) -> list[str]:
    """Trials whose training finished, by the same test --resume applies (summary.json is also
    written at each phase end, with status 'running': its mere presence is not enough)."""
    return [d.rsplit("/", 1)[-1] for d in storage.list_dirs(storage.join(search, TRIALS_DIR))
            if finished_results(d) is not None]


@pytest.fixture(scope="module")
def s3_search(ray_cluster, s3_endpoint, shards):
    """The tiny search (4 trials, 9 steps each, 2 at once) on moto S3: started with the CLI,
    interrupted with SIGINT once a trial has finished, then resumed."""
    root = f"s3://aiprod-test/tune-{os.getpid()}"
    search = storage.join(root, "tiny")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    cli = [sys.executable, str(ROOT / "tune" / "search.py"), "--preset", "tiny", "--data", shards,
           "--storage", root, "--name", "tiny", "--samples", "4", "--max-concurrent", "2"]
    proc = subprocess.Popen(cli, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 600
    finished: list[str] = []
    while time.monotonic() < deadline and proc.poll() is None and not finished:
        time.sleep(1)
        finished = _completed_runs(search)
    assert proc.poll() is None, "the search ended before it could be interrupted:\n" + proc.stdout.read()[-3000:]
    assert finished, "no trial finished in time"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=300)
    interrupted = {"finished": finished, "starts": _starts(search), "log": out}

    cfg = load_config("tiny")
    with pytest.raises(ConfigError, match="already exists"):
        run_search(cfg, SearchOptions(data=shards, storage=root, name="tiny", samples=4))
    summary = run_search(cfg, SearchOptions(data=shards, storage=root, name="tiny", samples=4, max_concurrent=2,
                                            resume=True))
    return cfg, summary, search, interrupted


def test_tiny_search_completes_and_asha_stops_a_trial_early(s3_search):
    import pandas as pd

    cfg, summary, uri, _ = s3_search
    assert summary["trials"] == 4 and summary["errored"] == 0
    assert summary["stopped_early"] >= 1, summary
    assert summary["completed"] >= 1
    table = pd.read_csv(io.StringIO(storage.read_text(storage.join(uri, "trials.csv"))))
    assert len(table) == 4 and set(table["status"]) <= {"completed", "stopped early"}
    stopped, completed = table[table.status == "stopped early"], table[table.status == "completed"]
    assert (stopped["reports"] < completed["reports"].max()).all()
    assert table["val_objective"].notna().all()
    for key, dim in cfg.tune.space.items():
        assert table[key].between(dim.low, dim.high).all()
    assert len({round(v, 9) for v in table["lr"]}) == 4  # four distinct points
    assert storage.read_bytes(storage.join(uri, "objective.png"))[:8] == b"\x89PNG\r\n\x1a\n"
    importances = json.loads(storage.read_text(storage.join(uri, "importances.json")))
    assert set(importances) == set(cfg.tune.space)
    assert pytest.approx(sum(importances.values())) == 1.0
    # Every trial ran the curriculum's own training: its checkpoints are in S3.
    for trial_id in table["trial_id"]:
        run = storage.join(uri, TRIALS_DIR, trial_id)
        assert any(d.rsplit("/", 1)[-1].startswith("checkpoint-") for d in storage.list_dirs(run)), run


def test_best_yaml_feeds_the_curriculum_job(s3_search, shards, tmp_path):
    cfg, summary, uri, _ = s3_search
    best = tmp_path / "best.yaml"
    best.write_text(storage.read_text(storage.join(uri, "best.yaml")))
    overrides = yaml.safe_load(best.read_text())
    assert overrides["curriculum.phases.1.lr"] == pytest.approx(summary["best"]["params"]["lr"])
    assert overrides["diffusion.noise_lambda"] == pytest.approx(summary["best"]["params"]["diffusion.noise_lambda"])
    assert load_overrides_file(best)  # the same reader jobs/curriculum.py uses

    job = load_job("curriculum")
    code = job.main(["--preset", "tiny", "--overrides-file", str(best), "--data", shards,
                     "--storage", str(tmp_path / "runs"), "--run-name", "best", "--start-phase", "1",
                     "--end-phase", "1", "--workers", "1", "curriculum.phases.1.steps=3"])
    assert code == 0
    used = load_config(tmp_path / "runs" / "best" / "config.yaml")
    assert used.curriculum.phases[1].lr == pytest.approx(overrides["curriculum.phases.1.lr"])
    assert used.diffusion.noise_lambda == pytest.approx(overrides["diffusion.noise_lambda"])
    assert json.loads((tmp_path / "runs" / "best" / "summary.json").read_text())["status"] == "finished"


def test_interrupted_search_resumed_without_rerunning_finished_trials(s3_search):
    cfg, summary, search, interrupted = s3_search
    assert len(interrupted["finished"]) < 4, "the search was interrupted before its end"
    starts = _starts(search)
    assert len(starts) == 4  # every trial of the search ran
    for trial_id in interrupted["finished"]:
        assert starts[trial_id] == 1, f"finished trial {trial_id} ran again after --resume: {starts}"
    assert summary["trials"] == 4
