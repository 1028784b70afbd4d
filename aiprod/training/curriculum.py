"""The curriculum as a state machine: phases in order, each with its exit rule and plateau logic.

Pure Python (no torch, no Ray): every rank drives an identical copy with identical (all-reduced)
losses, so every decision (evaluate, reduce LR, stop, roll back) is the same on every rank. The
whole state is a dict in each checkpoint's state.json, so a resumed run continues mid-phase.

Exit rules: `steps`, `epochs` and `minutes` (wall-clock training time, as all ranks agree on it) are
caps whenever they are set (a resumed phase counts the time trained before its checkpoint); exit
`plateau` also stops when the
monitored loss (mean training loss over the last `eval_every_steps` steps) has not improved by
`min_delta` for `patience` evaluations (early stopping). With `reduce_on_plateau` a plateau first
multiplies the LR by `reduce_factor`; under exit `plateau` the phase then stops at the next plateau
without improvement, under the other rules every plateau reduces the LR again.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from aiprod.config import CurriculumConfig, PhaseConfig


@dataclass
class PhaseProgress:
    index: int
    name: str
    component: str
    step: int = 0  # optimizer steps taken in this phase
    epoch: int = 0  # completed passes over the phase's data
    samples: int = 0  # samples seen, all ranks together
    planned_steps: int | None = None  # LR-schedule length
    best_loss: float | None = None
    best_step: int | None = None
    evals_since_best: int = 0
    reduced_since_best: bool = False
    lr_scale: float = 1.0
    lr_reductions: int = 0
    nan_skipped: int = 0
    nan_streak: int = 0
    nan_rollbacks: int = 0
    losses: list[float] = field(default_factory=list)  # mean loss of every optimizer step
    window: list[float] = field(default_factory=list)  # losses since the last evaluation
    probe_start: float | None = None  # loss on the fixed probe batch at phase start / end
    probe_end: float | None = None
    elapsed_s: float = 0.0
    trained_s: float = 0.0  # seconds trained before this process (re)started the phase
    running_s: float = 0.0  # seconds since it (re)started, as the ranks agree on it (saved with checkpoints)
    exit_reason: str | None = None

    @property
    def done(self) -> bool:
        return self.exit_reason is not None

    def summary(self) -> dict[str, Any]:
        tail = self.losses[-5:]
        return {
            "index": self.index, "name": self.name, "component": self.component,
            "steps": self.step, "epochs": self.epoch, "samples": self.samples,
            "exit_reason": self.exit_reason, "time_s": round(self.elapsed_s, 3),
            "first_loss": self.losses[0] if self.losses else None,
            "last_loss": sum(tail) / len(tail) if tail else None,
            "best_loss": self.best_loss, "best_step": self.best_step,
            "probe_loss_start": self.probe_start, "probe_loss_end": self.probe_end,
            "lr_scale": self.lr_scale, "lr_reductions": self.lr_reductions,
            "nan_skipped": self.nan_skipped, "nan_rollbacks": self.nan_rollbacks,
        }


def planned_steps(phase: PhaseConfig, steps_per_epoch: int | None) -> int:
    """Optimizer steps the phase runs at most (the LR schedule's length)."""
    caps = []
    if phase.steps is not None:
        caps.append(phase.steps)
    if phase.epochs is not None:
        if steps_per_epoch is None:
            if phase.steps is None:
                raise ValueError(f"phase '{phase.name}': epochs need the data size (steps per epoch) to plan")
        else:
            caps.append(phase.epochs * max(1, steps_per_epoch))
    return min(caps)


class Curriculum:
    """Phases `start..end` of `cfg.phases`; `current` is the phase being trained."""

    def __init__(self, cfg: CurriculumConfig, start_phase: int = 0, end_phase: int | None = None):
        last = len(cfg.phases) - 1
        end = last if end_phase is None else end_phase
        if not 0 <= start_phase <= last:
            raise ValueError(f"start phase {start_phase} is out of range 0..{last}")
        if not start_phase <= end <= last:
            raise ValueError(f"end phase {end} is out of range {start_phase}..{last}")
        self.cfg = cfg
        self.start, self.end = start_phase, end
        self.current = start_phase
        self.global_step = 0
        self.phases = [PhaseProgress(i, p.name, p.component) for i, p in enumerate(cfg.phases)]

    # ------------------------------------------------------------------ queries

    @property
    def finished(self) -> bool:
        return self.current > self.end

    @property
    def phase_cfg(self) -> PhaseConfig:
        return self.cfg.phases[self.current]

    @property
    def progress(self) -> PhaseProgress:
        return self.phases[self.current]

    def exit_reason(self) -> str | None:
        """Why the current phase should stop now (caps), or None."""
        p, cfg = self.progress, self.phase_cfg
        if cfg.steps is not None and p.step >= cfg.steps:
            return "steps"
        if cfg.epochs is not None and p.epoch >= cfg.epochs:
            return "epochs"
        if cfg.minutes is not None and p.trained_s + p.running_s >= 60.0 * cfg.minutes:
            return "minutes"
        return None

    def time_fraction(self) -> float:
        """How far through its `minutes` cap the current phase is (0 without one)."""
        p, minutes = self.progress, self.phase_cfg.minutes
        return 0.0 if minutes is None else min(1.0, (p.trained_s + p.running_s) / (60.0 * minutes))

    def restart_clock(self) -> None:
        """A phase (re)starts in this process: the time trained before (a checkpoint's) is banked."""
        p = self.progress
        p.trained_s += p.running_s
        p.running_s = 0.0

    def eval_due(self) -> bool:
        return self.progress.step > 0 and self.progress.step % self.cfg.eval_every_steps == 0

    # ---------------------------------------------------------------- updates

    def record_step(self, loss: float, samples: int) -> None:
        p = self.progress
        p.step += 1
        p.samples += samples
        p.nan_streak = 0
        p.losses.append(loss)
        p.window.append(loss)
        self.global_step += 1

    def record_nonfinite(self, rollback_after: int) -> bool:
        """A skipped non-finite step; True when `rollback_after` came in a row (roll back now)."""
        p = self.progress
        p.nan_skipped += 1
        p.nan_streak += 1
        return p.nan_streak >= rollback_after

    def record_rollback(self, lr_factor: float) -> None:
        p = self.progress
        p.nan_rollbacks += 1
        p.nan_streak = 0
        p.lr_scale *= lr_factor

    def end_epoch(self) -> None:
        self.progress.epoch += 1

    def evaluate(self) -> str:
        """Plateau bookkeeping on the mean loss since the last evaluation.

        Returns 'improved', 'no_improvement', 'reduce_lr' (lr_scale was lowered) or 'stop'."""
        p, cfg = self.progress, self.phase_cfg
        if not p.window:
            return "no_improvement"
        monitored = sum(p.window) / len(p.window)
        p.window.clear()
        if p.best_loss is None or monitored < p.best_loss - cfg.min_delta:
            p.best_loss, p.best_step = monitored, p.step
            p.evals_since_best, p.reduced_since_best = 0, False
            return "improved"
        p.evals_since_best += 1
        if p.evals_since_best < cfg.patience:
            return "no_improvement"
        if cfg.reduce_on_plateau and (cfg.exit != "plateau" or not p.reduced_since_best):
            p.lr_scale *= cfg.reduce_factor
            p.lr_reductions += 1
            p.evals_since_best, p.reduced_since_best = 0, True
            return "reduce_lr"
        if cfg.exit == "plateau":
            return "stop"
        p.evals_since_best = 0
        return "no_improvement"

    def finish_phase(self, reason: str, elapsed_s: float) -> PhaseProgress:
        p = self.progress
        p.exit_reason = reason
        p.elapsed_s += elapsed_s
        self.current += 1
        return p

    # ------------------------------------------------------------ persistence

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start, "end": self.end, "current": self.current, "global_step": self.global_step,
            "phases": [asdict(p) for p in self.phases],
        }

    @classmethod
    def from_dict(cls, cfg: CurriculumConfig, data: dict[str, Any]) -> Curriculum:
        cur = cls(cfg, data["start"], data["end"])
        cur.current, cur.global_step = data["current"], data["global_step"]
        saved = {p["index"]: p for p in data["phases"]}
        for i, p in enumerate(cur.phases):
            if i in saved and saved[i]["name"] == p.name:
                cur.phases[i] = PhaseProgress(**saved[i])
        return cur

    def restart_at(self, phase: int) -> None:
        """Train `phase` again from its first step (phases after it too), keeping earlier history."""
        if not self.start <= phase <= self.end:
            raise ValueError(f"resume phase {phase} is out of range {self.start}..{self.end}")
        for i in range(phase, len(self.phases)):
            self.phases[i] = PhaseProgress(i, self.cfg.phases[i].name, self.cfg.phases[i].component)
        self.current = phase
        self.global_step = sum(p.step for p in self.phases[:phase])

    def summary(self) -> dict[str, Any]:
        ran = [p for p in self.phases[self.start : self.end + 1]]
        return {
            "phases": [p.summary() for p in ran],
            "global_step": self.global_step,
            "finished": self.finished,
            "time_s": round(sum(p.elapsed_s for p in ran), 3),
            "nan_skipped": sum(p.nan_skipped for p in ran),
            "nan_rollbacks": sum(p.nan_rollbacks for p in ran),
        }


def is_finite(value: float) -> bool:
    return math.isfinite(value)
