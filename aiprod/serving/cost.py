"""A standard replica's own running estimate of what a request costs, so that work which cannot
fit its deadline is refused before it starts, and a record of work abandoned past its deadline.

Cost is measured per sampler step and per unit of latent volume (latent t·h·w, doubled under
classifier-free guidance, which runs the denoiser twice), on this replica, with what it is serving
now: one step of a 128x128 clip tells what a step of a 64x64 one costs. Text encoding, decoding and
encoding are left out, so the estimate errs low and refuses only what clearly cannot fit; the
deadline checked between steps handles the rest.
"""

from __future__ import annotations

import time
from typing import Any

SMOOTHING = 0.3  # weight of the newest measurement in the running mean


def step_units(pipeline: Any, seconds: float, fps: float, height: int, width: int, guidance: float | None) -> int:
    """Latent volume one sampler step of this request processes (pipeline: a VideoPipeline)."""
    frames = pipeline.num_frames(seconds, fps)
    _, t, h, w = pipeline.model.vae.latent_shape(frames, height, width)
    guidance = pipeline.cfg.diffusion.guidance if guidance is None else guidance
    return int(t * h * w) * (1 if guidance == 1.0 else 2)


class StepTimer:
    """An on_step hook for VideoPipeline.generate that times the steps between its calls."""

    def __init__(self) -> None:
        self.last: float | None = None
        self.total_s = 0.0
        self.steps = 0

    def __call__(self, i: int, n: int) -> None:
        now = time.perf_counter()
        if self.last is not None and i > 0:
            self.total_s += now - self.last
            self.steps += 1
        self.last = now


class CostModel:
    """Seconds per step per latent unit (running mean) and the work abandoned past its deadline."""

    def __init__(self) -> None:
        self.seconds_per_unit: float | None = None
        self.abandoned = 0
        self.last_abandoned: dict[str, Any] | None = None
        self.refused = 0

    def reset(self) -> None:
        """Another model or fault setting: earlier timings say nothing about it."""
        self.seconds_per_unit = None

    def record(self, timer: StepTimer, units: int) -> None:
        if timer.steps == 0 or units <= 0:
            return
        rate = timer.total_s / (timer.steps * units)
        old = self.seconds_per_unit
        self.seconds_per_unit = rate if old is None else (1 - SMOOTHING) * old + SMOOTHING * rate

    def estimate_s(self, units: int, steps: int) -> float | None:
        return None if self.seconds_per_unit is None else self.seconds_per_unit * units * steps

    def abandon(self, step: int, steps: int) -> None:
        self.abandoned += 1
        self.last_abandoned = {"steps_done": step, "steps": steps, "at": time.time()}

    def info(self) -> dict[str, Any]:
        return {"seconds_per_step_unit": self.seconds_per_unit, "abandoned": self.abandoned,
                "last_abandoned": self.last_abandoned, "refused_over_deadline": self.refused}
