"""Local rehearsal of a cloud burst (aiprod.ops.rehearsal): cluster.yaml's worker types on Ray's
fake multi-node provider, token auth on, the tiny curriculum across two launched worker nodes,
scale-down when idle.

It starts its OWN Ray cluster (its own head, autoscaler and nodes) in a child process, so it does
not meet the session's shared `ray_cluster` in this process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("rehearsal")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", "aiprod.ops.rehearsal", "--out", str(out), "--idle-timeout-s", "10"],
        env=env, capture_output=True, text=True, timeout=840,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    saved = json.loads((out / "report.json").read_text())
    assert saved == json.loads(proc.stdout.strip().splitlines()[-1])
    return saved


@pytest.mark.slow
def test_workers_start_on_demand_and_the_tiny_curriculum_spans_two_nodes(report):
    job = report["job"]
    assert job["workers_before"] == 0, "min_workers 0: nothing but the head before the job"
    assert job["workers_peak"] == 2
    run = job["curriculum"]
    assert run["returncode"] == 0 and run["status"] == "finished", run
    assert run["phases"] == ["vae", "simple_objects"] and run["global_step"] > 0
    assert len(set(run["worker_nodes"])) == 2, "STRICT_SPREAD: one training worker per launched node"


@pytest.mark.slow
def test_spot_types_are_launched_first(report):
    labels = report["job"]["labels"]
    assert len(labels) == 2 and all(node.get("market") == "spot" for node in labels.values()), labels


@pytest.mark.slow
def test_idle_workers_are_removed(report):
    job = report["job"]
    assert job["workers_after"] == 0, "idle workers must be terminated after idle_timeout"


@pytest.mark.slow
def test_token_auth_refuses_a_client_with_another_token(report):
    assert report["right_token"]["connected"] is True
    assert report["wrong_token"]["connected"] is False
    assert report["wrong_token"]["error"]
