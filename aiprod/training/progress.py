"""The progress line of a phase: step, loss, lr, samples/s, data-wait share and ETA."""

from __future__ import annotations

import math
import time


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressMeter:
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
