"""Training metrics from the records rank 0 writes to metrics.jsonl (aiprod.training.run_log):
every record passes through `TrainingMonitor.observe`, which sets the Ray metrics and returns the
loss anomaly events to write beside it. Tune trials report through `trial_report`.

Step records carry phase, step, loss, lr, samples_per_s, data_wait_share, eta_s; events carry
`event` (checkpoint with seconds and why, nonfinite_loss, rollback, ...).
"""

from __future__ import annotations

import time
from typing import Any

from aiprod.config.training import AnomalyConfig
from aiprod.monitoring.anomaly import LossAnomalyDetector
from aiprod.monitoring.catalog import record

STEP_GAUGES = {"loss": "aiprod_train_loss", "lr": "aiprod_train_lr",
               "samples_per_s": "aiprod_train_samples_per_second", "data_wait_share": "aiprod_train_data_wait_share",
               "eta_s": "aiprod_train_eta_seconds"}


def device_memory() -> tuple[str, float]:
    """(device, bytes): peak CUDA memory allocated by this process, else its resident memory."""
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            return "cuda", float(torch.cuda.max_memory_allocated())
    except Exception:  # noqa: BLE001 - fall back to the process size
        pass
    import psutil

    return "cpu", float(psutil.Process().memory_info().rss)


class TrainingMonitor:
    def __init__(self, run: str, anomaly: AnomalyConfig | None = None):
        self.run = run
        self.detector = LossAnomalyDetector(anomaly or AnomalyConfig())
        self.phase: int | None = None
        self.last_step_at: float | None = None  # monotonic time of the last step record

    def observe(self, rec: dict[str, Any]) -> list[dict[str, Any]]:
        """Metrics for one metrics.jsonl record; the anomaly events it raised (to log as well)."""
        event = rec.get("event")
        if event is None and "loss" in rec and "step" in rec:
            return self._step(rec)
        run = self.run
        if event == "checkpoint":
            record("aiprod_train_checkpoints", 1, run=run, why=str(rec.get("why", "")))
            if isinstance(rec.get("seconds"), (int, float)):
                record("aiprod_train_checkpoint_seconds", rec["seconds"], run=run)
            self.last_step_at = None  # the next step's interval would include the checkpoint
        elif event == "nonfinite_loss":
            record("aiprod_train_nan_skips", 1, run=run)
        elif event == "rollback":
            record("aiprod_train_rollbacks", 1, run=run)
            self.last_step_at = None
        return []

    def _step(self, rec: dict[str, Any]) -> list[dict[str, Any]]:
        run, now = self.run, time.monotonic()
        phase = rec.get("phase")
        if phase != self.phase:
            self.phase, self.last_step_at = phase, None
            self.detector.reset()
        if self.last_step_at is not None:
            record("aiprod_train_step_seconds", now - self.last_step_at, run=run)
        self.last_step_at = now
        record("aiprod_train_global_step", rec.get("global_step", 0), run=run)
        record("aiprod_train_last_step_time_seconds", time.time(), run=run)
        if isinstance(phase, int):
            record("aiprod_train_phase", phase, run=run)
        for key, name in STEP_GAUGES.items():
            if isinstance(rec.get(key), (int, float)):
                record(name, rec[key], run=run)
        device, used = device_memory()
        record("aiprod_train_device_memory_bytes", used, run=run, device=device)
        events = [a.event(phase) for a in self.detector.observe(float(rec["loss"]), rec.get("global_step", 0))]
        for e in events:
            record("aiprod_train_anomalies", 1, run=run, kind=e["kind"])
        return events


def trial_report(trial: str, result: dict[str, Any]) -> None:
    """Tune: one validation report of a trial (aiprod.tuning.trial's callback)."""
    record("aiprod_tune_trial_reports", 1, trial=trial)
    for key, name in (("val_objective", "aiprod_tune_trial_objective"), ("loss", "aiprod_tune_trial_loss"),
                      ("global_step", "aiprod_tune_trial_step")):
        if isinstance(result.get(key), (int, float)):
            record(name, result[key], trial=trial)
    if isinstance(result.get("val_s"), (int, float)):
        record("aiprod_tune_validation_seconds", result["val_s"], trial=trial)
