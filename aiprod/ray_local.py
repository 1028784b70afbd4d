"""Join a Ray cluster or start a local one: what every job CLI (curriculum, tune) does first."""

from __future__ import annotations

import math
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
    ray.init(num_cpus=cpus, runtime_env=runtime_env, include_dashboard=False)
