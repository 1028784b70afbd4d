"""Loss anomalies in a training phase: spikes and plateaus (config: train.anomaly).

Spike: after `warmup_steps`, a loss above EMA + spike_k x scale, where scale is the EMA of the
absolute deviation from the EMA (robust to the spike itself: a spike updates the statistics only
with its capped value), floored at scale_floor x EMA.
Plateau: the best loss has not improved by plateau_min_improvement (relative) for plateau_steps
steps; reported once per plateau_steps while it lasts.
A new phase starts afresh (its loss has another scale).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from aiprod.config.training import AnomalyConfig


@dataclass(frozen=True)
class Anomaly:
    kind: str  # loss_spike | loss_plateau
    step: int
    value: float  # the loss that raised it (plateau: the latest loss)
    baseline: float  # spike: the EMA before it; plateau: the best loss
    threshold: float  # spike: the loss above which it is one; plateau: the best loss to beat

    def event(self, phase: int | None) -> dict:
        return {"event": "anomaly", "kind": self.kind, "phase": phase, "step": self.step,
                "value": self.value, "baseline": self.baseline, "threshold": self.threshold}


class LossAnomalyDetector:
    def __init__(self, cfg: AnomalyConfig):
        self.cfg = cfg
        self.reset()

    def reset(self) -> None:
        self.seen = 0
        self.ema: float | None = None
        self.scale = 0.0
        self.best = math.inf
        self.best_step = 0

    def threshold(self) -> float | None:
        """The loss above which the next step is a spike (None while warming up)."""
        if self.ema is None or self.seen < self.cfg.warmup_steps:
            return None
        return self.ema + self.cfg.spike_k * max(self.scale, self.cfg.scale_floor * abs(self.ema))

    def observe(self, loss: float, step: int) -> list[Anomaly]:
        if not self.cfg.enabled or not math.isfinite(loss):
            return []  # non-finite losses are the NaN guard's business
        found = []
        limit = self.threshold()
        if limit is not None and loss > limit:
            found.append(Anomaly("loss_spike", step, loss, self.ema, limit))
        self._update(loss if limit is None else min(loss, limit))
        to_beat = self.best * (1 - self.cfg.plateau_min_improvement)
        if self.seen == 1 or loss < to_beat:
            self.best, self.best_step = min(loss, self.best), step
        elif step - self.best_step >= self.cfg.plateau_steps:
            found.append(Anomaly("loss_plateau", step, loss, self.best, to_beat))
            self.best_step = step  # once per window while it lasts
        return found

    def _update(self, value: float) -> None:
        self.seen += 1
        if self.ema is None:
            self.ema = value
            return
        beta = self.cfg.ema_beta
        self.scale = beta * self.scale + (1 - beta) * abs(value - self.ema)
        self.ema = beta * self.ema + (1 - beta) * value
