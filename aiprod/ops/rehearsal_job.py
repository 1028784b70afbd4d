"""The rehearsal's job, run by `aiprod.ops.rehearsal` as its own driver process:

    python -m aiprod.ops.rehearsal_job RAY_ADDRESS        # prints one JSON line

It runs the tiny curriculum (phases 0-1) with its two training workers STRICT_SPREAD over worker
nodes the 0-CPU head cannot hold, counts the worker nodes while it runs, then waits for them to
go once idle. Settings come from the environment the rehearsal gives it: REHEARSAL_WORKDIR,
REHEARSAL_ROOT (the repository), REHEARSAL_UP_TIMEOUT_S, REHEARSAL_DOWN_TIMEOUT_S.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any


def worker_nodes() -> list[dict[str, Any]]:
    """Alive nodes with CPUs: every node but the 0-CPU head."""
    import ray

    return [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0]


def curriculum_command(address: str, work: str) -> list[str]:
    return [sys.executable, os.path.join(os.environ["REHEARSAL_ROOT"], "jobs", "curriculum.py"), "--demo",
            "--storage", os.path.join(work, "runs"), "--run-name", "rehearsal", "--end-phase", "1",
            "--workers", "2", "--ray-address", address, "train.placement_strategy=STRICT_SPREAD",
            "train.demo_clips=80", "curriculum.phases.0.steps=8", "curriculum.phases.1.steps=8"]


def run_curriculum(address: str, work: str, before: int) -> dict[str, Any]:
    """Run the curriculum, watching the worker nodes: their peak, when two were up, their labels."""
    t0 = time.monotonic()
    with open(os.path.join(work, "curriculum.log"), "wb") as log:
        proc = subprocess.Popen(curriculum_command(address, work), cwd=work, stdout=log, stderr=subprocess.STDOUT)
        peak, up_s, labels = before, None, {}
        deadline = t0 + float(os.environ["REHEARSAL_UP_TIMEOUT_S"])
        while proc.poll() is None:
            alive = worker_nodes()
            labels.update({n["NodeID"]: n.get("Labels", {}) for n in alive})
            peak = max(peak, len(alive))
            if up_s is None and len(alive) >= 2:
                up_s = time.monotonic() - t0
            if time.monotonic() > deadline:
                proc.kill()
            time.sleep(1)
    return {"returncode": proc.returncode, "run_s": time.monotonic() - t0, "peak": peak, "up_s": up_s,
            "labels": labels}


def main(address: str) -> dict[str, Any]:
    import ray

    ray.init(address=address, log_to_driver=False)
    work = os.environ["REHEARSAL_WORKDIR"]
    before = len(worker_nodes())
    watched = run_curriculum(address, work, before)
    summary_path = os.path.join(work, "runs", "rehearsal", "summary.json")
    summary = json.load(open(summary_path)) if os.path.exists(summary_path) else {}
    nodes = summary.get("worker_nodes", [])
    curriculum = {"returncode": watched["returncode"], "status": summary.get("status"),
                  "global_step": summary.get("global_step"),
                  "phases": [p["name"] for p in summary.get("phases", [])], "worker_nodes": nodes,
                  "run_s": watched["run_s"]}
    t1 = time.monotonic()
    deadline = t1 + float(os.environ["REHEARSAL_DOWN_TIMEOUT_S"])
    while worker_nodes() and time.monotonic() < deadline:
        time.sleep(1)
    return {"workers_before": before, "workers_peak": watched["peak"], "scale_up_s": watched["up_s"],
            "curriculum": curriculum, "labels": {n: watched["labels"].get(n, {}) for n in nodes},
            "workers_after": len(worker_nodes()), "scale_down_s": time.monotonic() - t1}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
