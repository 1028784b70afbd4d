"""The curriculum on a real local Ray cluster: 2 CPU workers over gloo, real DeepSpeed, real
SIGKILLs, real moto S3. Scenarios are combined so the file runs a handful of curricula in all:

- ZeRO-2, local storage: every phase runs and its loss falls; a worker SIGKILLed mid-phase is
  restarted by Ray Train and the step count continues from the last checkpoint; 3 NaN losses in a
  row roll back to the last checkpoint with a lower LR; outputs (final/, samples, metrics, TB).
- ZeRO-3, storage on S3: the driver is SIGKILLed mid-run, a byte of the newest checkpoint is
  flipped, `--resume` falls back to the checkpoint before it (with a warning) and finishes the run.
- a bad config fails before any worker starts; a corrupt shard stops every worker once, naming it
  (no retries as worker failures), and the run resumes once the shard is fixed.
- `ray start --head` on loopback + `ray job submit -- python jobs/curriculum.py --demo` (slow).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from aiprod import model_dir, storage
from aiprod.config import ConfigError, load_config
from aiprod.data.bad_samples import TrainingDataError
from aiprod.manifest import verify_manifest
from aiprod.training import checkpoint as ckpt
from aiprod.training.runner import RunOptions, run_curriculum
from tests.conftest import ROOT, free_port, load_job

PHASE_TIMEOUT_S = 900


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    from aiprod.data.synthetic_shards import build_synthetic_shards

    cfg = load_config("tiny")
    out = str(tmp_path_factory.mktemp("shards"))
    phase = cfg.curriculum.phases[0]
    build_synthetic_shards(out, cfg.train.demo_clips, size=(phase.height, phase.width), frames=phase.frames,
                           fps=phase.fps, seed=0, data=cfg.data)
    return out


def read_metrics(run: str) -> list[dict]:
    return [json.loads(line) for line in storage.read_text(storage.join(run, "metrics.jsonl")).splitlines()]


def step_records(metrics: list[dict]) -> list[int]:
    return [r["global_step"] for r in metrics if "event" not in r and "loss" in r]


def check_finished_run(run: str, cfg, zero_stage: int) -> dict:
    """Every phase ran to its step count, losses fell, outputs are where they belong."""
    summary = json.loads(storage.read_text(storage.join(run, "summary.json")))
    phases = cfg.curriculum.phases
    assert summary["status"] == "finished" and summary["zero_stage"] == zero_stage
    assert [p["name"] for p in summary["phases"]] == [p.name for p in phases]
    assert [p["steps"] for p in summary["phases"]] == [p.steps for p in phases]
    assert summary["global_step"] == sum(p.steps for p in phases)
    for p in summary["phases"]:
        # the loss on the phase's fixed probe batch (fixed noise) fell within the phase
        assert p["probe_loss_end"] < p["probe_loss_start"], p
    for i, p in enumerate(phases):
        stem = f"phase{i}-{p.name}"
        for rel in (f"phases/{stem}.json", f"samples/{stem}.mp4", f"samples/{stem}-frames.png",
                    f"samples/{stem}-loss.png", f"best/{stem}/model.safetensors"):
            assert storage.exists(storage.join(run, rel)), rel
    final = storage.join(run, "final")
    assert verify_manifest(final) == []
    from aiprod.provenance import verify_bytes

    final_sample = verify_bytes(storage.read_bytes(storage.join(run, "samples", "final.mp4")))  # signed like any
    assert final_sample["valid"] and final_sample["mode"] == "standard", final_sample
    assert final_sample["notes"] == [f"training sample final of run {run.rstrip('/').rsplit('/', 1)[-1]}"]
    vae_sample = verify_bytes(storage.read_bytes(storage.join(run, "samples", f"phase0-{phases[0].name}.mp4")))
    assert vae_sample["valid"] and vae_sample["mode"] == "vae_reconstruction", vae_sample
    assert any("tfevents" in f for f in storage.list_files(storage.join(run, "tensorboard")))
    # retention: num_to_keep committed checkpoints, no orphans left behind
    names = ckpt.list_checkpoints(run)
    assert len(names) == cfg.checkpoint.num_to_keep and set(names) <= ckpt.committed_names(run)
    # the final model is the last checkpoint's weights, bit for bit
    from safetensors.torch import load

    last = load(storage.read_bytes(storage.join(run, names[0], model_dir.WEIGHTS)))
    exported = load(storage.read_bytes(storage.join(final, model_dir.WEIGHTS)))
    assert last.keys() == exported.keys() and all((last[k] == exported[k]).all() for k in last)
    from aiprod.diffusion.pipeline import VideoPipeline

    VideoPipeline.from_checkpoint(final)  # loads without DeepSpeed
    return summary


def test_bad_config_fails_before_any_worker_starts(ray_cluster, shards, tmp_path, capsys):
    cfg = load_config("tiny", ["curriculum.phases.0.frames=8", "train.offload_params=true"])
    with pytest.raises(ConfigError) as err:
        run_curriculum(cfg, RunOptions(data=shards, storage=str(tmp_path), run_name="bad"))
    message = str(err.value)
    assert "curriculum.phases.0.frames" in message and "1 + k*4" in message
    assert "offload_params needs train.zero_stage=3" in message
    assert not (tmp_path / "bad").exists()  # nothing written, no trainer created

    cli = load_job("curriculum")
    code = cli.main(["--preset", "tiny", "--data", str(tmp_path / "nowhere"), "--storage", str(tmp_path),
                     "--run-name", "bad2"])
    assert code == 2 and "no index.json" in capsys.readouterr().err
    assert not (tmp_path / "bad2").exists()


def test_a_corrupt_index_json_fails_the_preflight_and_writes_no_run_dir(ray_cluster, shards, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for shard in Path(shards).iterdir():
        (data / shard.name).write_bytes(shard.read_bytes())
    index = (data / "index.json").read_text()
    (data / "index.json").write_text(index[: len(index) // 2])  # a torn write
    with pytest.raises(ConfigError, match=r"--data: .*index.json: not valid JSON"):
        run_curriculum(load_config("tiny"), RunOptions(data=str(data), storage=str(tmp_path), run_name="torn"))
    assert not (tmp_path / "torn").exists()  # a retry under the same name is not blocked


def test_a_corrupt_shard_stops_every_worker_once_naming_it_and_the_run_resumes_once_fixed(
        ray_cluster, shards, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(shards, data)
    good = {path: path.read_bytes() for path in data.glob("*.tar")}
    damaged = {}
    for path, raw in good.items():  # every shard, so that the phase's few steps meet one
        damaged[path] = bytearray(raw)
        damaged[path][100] ^= 0xFF  # inside the first member's tar header
        path.write_bytes(damaged[path])
    names = "|".join(re.escape(path.name) for path in good)
    cfg = load_config("tiny")
    opts = RunOptions(data=str(data), storage=str(tmp_path), run_name="bad-shard", end_phase=0)
    # a typed error from the ranks' collective stop; an error in one worker would instead be
    # retried train.max_failures times by Ray Train and end as its TrainingFailedError
    with pytest.raises(TrainingDataError, match=rf"({names}): sha256 does not match index.json.*--resume"):
        run_curriculum(cfg, opts)
    run = tmp_path / "bad-shard"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "bad_data" and "sha256 does not match" in summary["error"]
    events = [r for r in read_metrics(str(run)) if r.get("event") in ("bad_data", "resumed")]
    assert [r["event"] for r in events] == ["bad_data"] and events[0]["phase"] == 0  # one worker group, once

    for path, raw in good.items():  # fixed: the same run continues and finishes the phase
        path.write_bytes(raw)
    done = run_curriculum(cfg, RunOptions(data=str(data), storage=str(tmp_path), run_name="bad-shard",
                                          end_phase=0, resume=True))
    assert done["status"] == "finished" and done["phases"][0]["steps"] == cfg.curriculum.phases[0].steps

    cli = load_job("curriculum")  # the CLI's exit status for bad data is 3, its message names the shard
    for path, raw in damaged.items():
        path.write_bytes(raw)
    code = cli.main(["--preset", "tiny", "--data", str(data), "--storage", str(tmp_path), "--run-name", "cli",
                     "--end-phase", "0"])
    assert code == 3 and re.search(names, capsys.readouterr().err)


@pytest.mark.parametrize("name", ["a b", "x\n", "a\\b", "..", "-x", "a/b", ""])
def test_run_names_are_checked_against_one_pattern_before_ray_starts(name, tmp_path, capsys):
    cli = load_job("curriculum")
    code = cli.main(["--preset", "tiny", "--data", str(tmp_path), "--storage", str(tmp_path), f"--run-name={name}"])
    assert code == 2 and "--run-name" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_zero2_curriculum_survives_worker_kill_and_nan_rollback(ray_cluster, shards, tmp_path, monkeypatch):
    kill_at, nan_at = 15, 45  # kill: phase 0 after the step-10 checkpoint; NaN: phase 2, after step 40's
    monkeypatch.setenv("AIPROD_FAULT_KILL_AT_STEP", str(kill_at))
    monkeypatch.setenv("AIPROD_FAULT_NAN_AT_STEP", str(nan_at))
    cfg = load_config("tiny", ["train.zero_stage=2"])
    monkeypatch.setenv("AIPROD_FAULT_NAN_COUNT", str(cfg.train.nan_rollback_after))
    summary = run_curriculum(cfg, RunOptions(data=shards, storage=str(tmp_path), run_name="z2"))
    run = str(tmp_path / "z2")
    check_finished_run(run, cfg, zero_stage=2)

    metrics = read_metrics(run)
    assert (tmp_path / "z2" / ".fault-kill-done").exists()  # the worker really was SIGKILLed
    resumed = [r for r in metrics if r.get("event") == "resumed"]
    assert resumed and ckpt.parse_name(resumed[0]["from"])[0] == 10
    steps = step_records(metrics)
    restart = steps.index(kill_at) + 1
    assert steps[restart] == 11, steps  # the restarted group continued after the step-10 checkpoint
    assert steps[-1] == summary["global_step"]

    nan_events = [r for r in metrics if r.get("event") == "nonfinite_loss"]
    rollbacks = [r for r in metrics if r.get("event") == "rollback"]
    assert len(nan_events) == cfg.train.nan_rollback_after and len(rollbacks) == 1
    phase2 = summary["phases"][2]
    assert phase2["nan_skipped"] == cfg.train.nan_rollback_after and phase2["nan_rollbacks"] == 1
    assert phase2["lr_scale"] == pytest.approx(cfg.train.nan_lr_factor)
    assert summary["nan_rollbacks"] == 1


def _committed_steps(run: str) -> list[int]:
    names = ckpt.committed_names(run) or set()
    return sorted(ckpt.parse_name(n)[0] for n in names)


def test_zero3_on_s3_resume_after_driver_kill_falls_back_past_corrupt_checkpoint(
        ray_cluster, shards, s3_uri, tmp_path):
    import ray

    cfg = load_config("tiny", ["train.zero_stage=3"])
    run = storage.join(s3_uri, "z3")
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "PYTHONPATH": str(ROOT)}
    log = open(tmp_path / "driver.log", "wb")
    driver = subprocess.Popen(
        [sys.executable, str(ROOT / "jobs" / "curriculum.py"), "--preset", "tiny", "--data", shards,
         "--storage", s3_uri, "--run-name", "z3", "train.zero_stage=3"],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + PHASE_TIMEOUT_S
        while max(_committed_steps(run), default=0) < 50:  # the one before the newest is mid-phase 2
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoints committed in time"
            time.sleep(1)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        log.close()
    # The dead driver's controller and workers go with it; wait until their CPUs are free again.
    deadline = time.monotonic() + 120
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"] - 0.5:
        assert time.monotonic() < deadline, ray.available_resources()
        time.sleep(1)

    committed = sorted(ckpt.committed_names(run), key=lambda n: ckpt.parse_name(n)[0])
    newest, before = committed[-1], committed[-2]
    target = storage.join(run, newest, model_dir.WEIGHTS)
    blob = bytearray(storage.read_bytes(target))
    blob[len(blob) // 2] ^= 0x01
    storage.write_bytes_atomic(target, bytes(blob))
    logged_before = len(step_records(read_metrics(run)))

    cli = load_job("curriculum")  # --resume without --preset: the run's own config.yaml from S3
    assert cli.main(["--run-name", "z3", "--storage", s3_uri, "--data", shards, "--resume"]) == 0

    metrics = read_metrics(run)
    skipped = [r for r in metrics if r.get("event") == "checkpoint_skipped"]
    assert [r["name"] for r in skipped] == [newest] and "sha256 mismatch" in skipped[0]["problems"]
    resumed = [r for r in metrics if r.get("event") == "resumed"]
    assert resumed[-1]["from"] == before
    after = step_records(metrics)[logged_before:]  # the same run's metrics, continued
    assert after[0] == ckpt.parse_name(before)[0] + 1
    check_finished_run(run, cfg, zero_stage=3)


@pytest.mark.slow
def test_ray_job_submit_to_a_head_started_with_ray_start(shards, tmp_path):
    temp_dir = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's unix sockets live under it
    gcs, dashboard = free_port(), free_port()
    venv_bin = str(Path(sys.executable).parent)
    # Token auth set explicitly for the head and every CLI call. Left unset, Ray 2.60's `ray start`
    # turns it on when ~/.ray/auth_token exists (any earlier local ray.init() writes one) while the
    # CLI client sends no token: the outcome would depend on the machine and on test order.
    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    env.pop("RAY_ADDRESS", None)
    ports = {"--dashboard-agent-listen-port": free_port(), "--dashboard-agent-grpc-port": free_port(),
             "--metrics-export-port": free_port(), "--runtime-env-agent-port": free_port(),
             "--ray-client-server-port": free_port(), "--node-manager-port": free_port(),
             "--object-manager-port": free_port()}
    head = subprocess.Popen(
        [f"{venv_bin}/ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         "--num-cpus=6", f"--temp-dir={temp_dir}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dashboard}", *[f"{k}={v}" for k, v in ports.items()]],
        env=env, stdout=open(tmp_path / "head.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        address = f"http://127.0.0.1:{dashboard}"
        deadline = time.monotonic() + 180
        while subprocess.run([f"{venv_bin}/ray", "job", "list", "--address", address], env=env,
                             capture_output=True).returncode != 0:
            assert head.poll() is None, (tmp_path / "head.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the head did not come up"
            time.sleep(2)
        job = subprocess.run(
            [f"{venv_bin}/ray", "job", "submit", "--address", address, "--working-dir", str(ROOT), "--",
             "python", "jobs/curriculum.py", "--demo", "--data", shards, "--storage", str(tmp_path / "runs"),
             "--run-name", "job", "--end-phase", "1", "curriculum.phases.0.steps=8", "curriculum.phases.1.steps=8"],
            env=env, capture_output=True, text=True, timeout=PHASE_TIMEOUT_S)
        assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-2000:]
        assert "succeeded" in job.stdout + job.stderr
        run = tmp_path / "runs" / "job"
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "finished" and len(summary["phases"]) == 2
        assert verify_manifest(run / "final") == []
    finally:
        _stop_head(head, temp_dir)


def _stop_head(head: subprocess.Popen, temp_dir: str) -> None:
    """Stop the head we started: its process group, then any process still using its temp dir."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(head.pid, sig)
        except ProcessLookupError:
            break
        try:
            head.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="ignore")
        except OSError:
            continue
        if temp_dir in cmdline:
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except ProcessLookupError:
                pass
