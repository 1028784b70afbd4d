"""Faults injected on purpose by the tests (a SIGKILLed worker, non-finite losses), read from the
environment by the driver and passed to the workers; nothing here runs in a normal run."""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

from aiprod import storage

FAULT_ENV = {"kill_at_step": "AIPROD_FAULT_KILL_AT_STEP", "kill_rank": "AIPROD_FAULT_KILL_RANK",
             "nan_at_step": "AIPROD_FAULT_NAN_AT_STEP", "nan_count": "AIPROD_FAULT_NAN_COUNT"}
KILL_MARKER = ".fault-kill-done"


def faults_from_env() -> dict[str, Any]:
    """The faults FAULT_ENV asks for; empty in normal runs."""
    faults: dict[str, Any] = {}
    for key, env in FAULT_ENV.items():
        raw = os.environ.get(env)
        if raw:
            faults[key] = int(raw)
    return faults


class FaultInjector:
    def __init__(self, faults: dict[str, Any], run_uri: str, rank: int, world: int):
        self.faults, self.run_uri, self.rank, self.world = faults, run_uri, rank, world
        self.nans_injected = 0

    def nan_now(self, step: int) -> bool:
        """AIPROD_FAULT_NAN_AT_STEP / _COUNT: that many non-finite losses in a row, once."""
        if self.faults.get("nan_at_step") != step or self.nans_injected >= self.faults.get("nan_count", 1):
            return False
        self.nans_injected += 1
        return True

    def maybe_kill(self, global_step: int) -> None:
        """AIPROD_FAULT_KILL_AT_STEP (/ _RANK): SIGKILL this worker once, at a global step."""
        at = self.faults.get("kill_at_step")
        if at is None or global_step != at or self.rank != self.faults.get("kill_rank", self.world - 1):
            return
        marker = storage.join(self.run_uri, KILL_MARKER)
        if storage.exists(marker):
            return
        self._wait_for_commit(at)
        storage.write_text_atomic(marker, f"killed rank {self.rank} at global step {at}\n")
        sys.stdout.write(f"fault injection: SIGKILL rank {self.rank} at global step {at}\n")
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    def _wait_for_commit(self, step: int, timeout_s: float = 60.0) -> None:
        """Until Ray Train has committed the newest checkpoint written before `step`. A worker killed
        within about a second of a report restarts from the checkpoint before it (Ray Train had not
        committed the newest yet), so without this wait which checkpoint a test resumes from would
        depend on the machine's speed."""
        from aiprod.training.checkpoint import committed_names, list_checkpoints, parse_name

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            written = [name for name in list_checkpoints(self.run_uri) if parse_name(name)[0] < step]
            if not written or written[0] in (committed_names(self.run_uri) or set()):
                return
            time.sleep(0.2)
