"""aiprod.ray_local: the local cluster the job CLIs start when they find none."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

from tests.conftest import ROOT

PROBE = """
import logging, ray
from aiprod.ray_local import init_ray
init_ray(1, address="local")
@ray.remote(num_cpus=0)
def cleaner_log_level():
    name = "ray.train.v2._internal.execution.controller.placement_group_cleaner"
    return logging.getLogger(name).getEffectiveLevel()
print("level", ray.get(cleaner_log_level.remote()))
@ray.remote(num_cpus=0)
def preemption_watcher_setting():
    import os
    return os.environ.get("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER")
print("watcher", ray.get(preemption_watcher_setting.remote()))
"""


def test_a_local_cluster_quiets_the_placement_group_cleaner_and_skips_the_preemption_watcher():
    # Without a dashboard there is no State API: Ray Train's cleaner would warn every second.
    # Ray Train's controller reads the watcher switch from its environment (with "1" a run starts a
    # PreemptionWatcher actor, with "0" none: checked by hand in Ray's actor table).
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    levels = [line.split()[1] for line in out.stdout.splitlines() if line.startswith("level ")]
    assert levels == [str(logging.ERROR)], out.stdout[-2000:]
    assert "watcher 0" in out.stdout.splitlines(), out.stdout[-2000:]
