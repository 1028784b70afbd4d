"""A run's record on disk: metrics.jsonl and TensorBoard scalars, and small files written atomically.

Only rank 0 logs (progress lines: aiprod.training.progress; figures: aiprod.plots). Everything
lands under the run's directory (local or s3://): local runs write in place; S3 runs write to a
local staging dir that `sync()` uploads (at every checkpoint and phase end).
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from aiprod import storage
from aiprod.config.training import AnomalyConfig
from aiprod.monitoring.training_metrics import TrainingMonitor

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class RunLogger:
    """metrics.jsonl + TensorBoard scalars under `run_uri` (rank 0 only); every record also sets the
    run's Prometheus metrics, and loss anomalies (`anomaly`: train.anomaly) are logged as events."""

    def __init__(self, run_uri: str, anomaly: AnomalyConfig | None = None):
        self.run_uri = run_uri
        self.monitor = TrainingMonitor(run_uri.rstrip("/").rsplit("/", 1)[-1], anomaly)
        self.remote = storage.is_s3(run_uri)
        if self.remote:
            self._staging = tempfile.TemporaryDirectory(prefix="aiprod-run-")
            self.local = Path(self._staging.name)
            existing = storage.join(run_uri, METRICS_FILE)
            if storage.exists(existing):  # a restarted run keeps appending to its history
                (self.local / METRICS_FILE).write_bytes(storage.read_bytes(existing))
        else:
            self.local = Path(run_uri)
            self.local.mkdir(parents=True, exist_ok=True)
        self._metrics = open(self.local / METRICS_FILE, "a", encoding="utf-8")
        from torch.utils.tensorboard import SummaryWriter

        self._tb = SummaryWriter(log_dir=str(self.local / TENSORBOARD_DIR))

    def log(self, record: dict[str, Any], step: int) -> None:
        record = {"time": round(time.time(), 3), "global_step": step, **record}
        self._metrics.write(json.dumps(record, default=float) + "\n")
        self._metrics.flush()
        for key, value in record.items():
            if key not in ("time", "global_step") and isinstance(value, (int, float)) and math.isfinite(value):
                self._tb.add_scalar(key, value, step)
        for event in self.monitor.observe(record):  # anomaly events: metrics.jsonl only, not TensorBoard
            self._metrics.write(json.dumps({"time": record["time"], "global_step": step, **event}) + "\n")
            self._metrics.flush()

    def sync(self) -> None:
        self._metrics.flush()
        self._tb.flush()
        if self.remote:
            for file in sorted(self.local.rglob("*")):
                if file.is_file():
                    storage.put_file(file, storage.join(self.run_uri, file.relative_to(self.local).as_posix()))

    def close(self) -> None:
        self.sync()
        self._tb.close()
        self._metrics.close()
        if self.remote:
            self._staging.cleanup()


def write_file(run_uri: str, rel: str, data: bytes) -> str:
    uri = storage.join(run_uri, rel)
    storage.write_bytes_atomic(uri, data)
    return uri
