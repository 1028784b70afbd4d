"""What a run tells you while it runs: progress lines, metrics.jsonl, TensorBoard, plots, contact sheets.

Only rank 0 logs. Everything lands under the run's directory (local or s3://): local runs write in
place; S3 runs write to a local staging dir that `sync()` uploads (at every checkpoint and phase end).
"""

from __future__ import annotations

import io
import json
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from aiprod import storage

log = logging.getLogger("aiprod.training")

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Throughput and data-wait bookkeeping for one phase; `line()` every `every_s` seconds."""

    def __init__(self, every_s: float, total_steps: int | None, start_step: int = 0):
        self.every_s = every_s
        self.total_steps = total_steps
        self.start_step = start_step
        self.started = self.last_print = time.monotonic()
        self.wait_s = 0.0
        self.samples = 0

    def add(self, samples: int, data_wait_s: float) -> None:
        self.samples += samples
        self.wait_s += data_wait_s

    def stats(self, step: int, time_fraction: float = 0.0) -> dict[str, float | None]:
        """`time_fraction`: how far a phase with a wall-clock cap is through it (0 without one)."""
        elapsed = max(1e-9, time.monotonic() - self.started)
        done = step - self.start_step
        eta = None
        if self.total_steps is not None and done > 0:
            eta = (self.total_steps - step) * elapsed / done
        if time_fraction > 0:
            by_time = elapsed * (1.0 - time_fraction) / time_fraction
            eta = by_time if eta is None else min(eta, by_time)
        return {"samples_per_s": self.samples / elapsed, "data_wait_share": min(1.0, self.wait_s / elapsed),
                "eta_s": eta}

    def due(self) -> bool:
        return time.monotonic() - self.last_print >= self.every_s

    def line(self, phase_index: int, phase_name: str, step: int, loss: float, lr: float,
             time_fraction: float = 0.0) -> str:
        self.last_print = time.monotonic()
        s = self.stats(step, time_fraction)
        total = "?" if self.total_steps is None else str(self.total_steps)
        return (f"[phase {phase_index} {phase_name}] step {step}/{total} loss {loss:.4f} lr {lr:.3g} "
                f"{s['samples_per_s']:.2f} samples/s data-wait {100 * s['data_wait_share']:.0f}% "
                f"ETA {format_duration(s['eta_s'])}")


class RunLogger:
    """metrics.jsonl + TensorBoard scalars under `run_uri` (rank 0 only)."""

    def __init__(self, run_uri: str):
        self.run_uri = run_uri
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


def loss_curve_png(losses: list[float], title: str, smooth: int = 5) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, alpha=0.4, label="loss")
    if len(losses) >= smooth:
        kernel = np.ones(smooth) / smooth
        ax.plot(steps[smooth - 1 :], np.convolve(losses, kernel, mode="valid"), label=f"mean of {smooth}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def contact_sheet_png(frames: np.ndarray, max_frames: int) -> bytes:
    """uint8 [T,H,W,3] -> one PNG row of up to `max_frames` evenly spaced frames."""
    from PIL import Image

    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"contact sheet expects frames [T,H,W,3], got {frames.shape}")
    count = min(max_frames, frames.shape[0])
    picks = np.linspace(0, frames.shape[0] - 1, count).round().astype(int)
    sheet = np.concatenate([frames[i] for i in picks], axis=1)
    buf = io.BytesIO()
    Image.fromarray(sheet).save(buf, format="PNG")
    return buf.getvalue()


def to_uint8_frames(video: Any) -> np.ndarray:
    """A video tensor [3,T,H,W] in [-1,1] -> uint8 [T,H,W,3]."""
    array = video.detach().float().clamp(-1, 1).cpu().numpy()
    return ((array.transpose(1, 2, 3, 0) + 1) * 127.5).round().astype(np.uint8)
