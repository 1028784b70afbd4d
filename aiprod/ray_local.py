"""Join a Ray cluster or start a local one: what every job CLI (curriculum, tune) does first."""

from __future__ import annotations

import math
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def local_runtime_env() -> dict:
    """The runtime_env of a one-machine cluster we start (init_ray below, the tests' session cluster).

    No dashboard there (it costs ~3 s of start-up and a process), so no State API for Ray Train's
    PlacementGroupCleaner, which would warn every second of a run: its logger is quieted in every
    worker. Ray Train's preemption watcher, an extra actor per worker group that polls for nodes
    being drained (spot reclaims), has nothing to watch on one machine and would be one more
    process starting on its few cores with every run and tune trial: it is turned off."""
    return {
        "env_vars": {"PYTHONPATH": str(ROOT), "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"},
        "worker_process_setup_hook": "aiprod.ray_local.quiet_placement_group_cleaner",
    }


def init_ray(cpus_needed: float, address: str | None = None) -> None:
    """Join `address` (or RAY_ADDRESS), else a running local cluster, else start one.

    address 'local' always starts a new local cluster. A new cluster gets at least `cpus_needed`
    logical CPUs even on a 2-core machine: training workers and data decoders each hold one, and
    on a laptop they time-share the cores rather than wait forever for a free CPU."""
    import ray

    if ray.is_initialized():
        return
    runtime_env = {"env_vars": {"PYTHONPATH": str(ROOT)}}
    address = address or os.environ.get("RAY_ADDRESS")
    if address and address != "local":
        ray.init(address=address, runtime_env=runtime_env)
        return
    if address is None:
        try:
            ray.init(address="auto", runtime_env=runtime_env)
            return
        except ConnectionError:
            pass
    cpus = max(os.cpu_count() or 1, math.ceil(cpus_needed))
    ray.init(num_cpus=cpus, runtime_env=local_runtime_env(), include_dashboard=False)


def quiet_placement_group_cleaner() -> None:
    """Worker-process set-up on a dashboard-less local cluster: Ray Train's PlacementGroupCleaner
    cannot reach the State API there (its warning would fill a third of a demo's output). The
    placement groups still go with the job when its driver ends."""
    import logging

    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)
