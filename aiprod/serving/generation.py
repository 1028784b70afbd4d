"""What the generator replicas do, free of Serve: standard batches grouped by shape, and the
emergency path (fast model when it can make the deadline, template card otherwise).

Deadlines cross processes as wall-clock timestamps (time.time()), so time spent queueing at a
replica counts against them.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aiprod.config import Config
from aiprod.emergency.render import AlertRequest, render_alert
from aiprod.provenance.disclosure import burn_label
from aiprod.serving.adapters import AdapterError, AdapterHost, AdapterUnavailable
from aiprod.serving.cost import CostModel, StepTimer, step_units
from aiprod.serving.model_host import ModelHost, Served

log = logging.getLogger(__name__)


class InjectedFault(RuntimeError):
    """Raised by a model call when serve.fault says so."""


def apply_fault(delay_s: float, fail: bool, name: str) -> None:
    if delay_s > 0:
        time.sleep(delay_s)
    if fail:
        raise InjectedFault(f"injected fault: serve.fault.{name}_model_fail is true")


def encode(frames: np.ndarray, fps: float, cfg: Config) -> bytes:
    from aiprod.data.video_encode import write_mp4

    buffer = io.BytesIO()
    write_mp4(frames, buffer, fps, crf=cfg.serve.video_crf, preset=cfg.serve.video_preset)
    return buffer.getvalue()


# ------------------------------------------------------------------------------ standard


@dataclass(frozen=True)
class VideoJob:
    prompt: str
    language: str
    seconds: float
    fps: int
    width: int
    height: int
    seed: int
    steps: int | None
    guidance: float | None
    bucket: float
    deadline: float  # time.time() after which the answer is useless
    deadline_s: float  # the whole allowance the request asked for (a cost above it can never fit)
    adapter: str | None = None  # the request's adapter (aiprod.serving.adapters), as it asked for it

    def shape(self) -> tuple:
        return (self.seconds, self.fps, self.width, self.height, self.steps, self.guidance)


@dataclass
class VideoResult:
    # ok | deadline | no_model | bad_request | failed | too_costly (422) | busy (503) | bad_adapter (422) |
    # adapter_unavailable (503: it failed to load and is backed off from for retry_after_s)
    status: str
    mp4: bytes = b""
    version: str = ""
    arm: str = ""
    frames: int = 0
    width: int = 0
    height: int = 0
    fps: int = 0
    generation_s: float = 0.0
    batch_size: int = 1
    message: str = ""
    adapter: str = ""  # the adapter version that answered (the base's is `version`)
    retry_after_s: float | None = None


class StandardBatchRunner:
    """What a standard replica holds besides its models: its own cost estimate, reset whenever the
    model or fault setting changes."""

    def __init__(self, cfg: Config, host: ModelHost, adapters: AdapterHost | None = None):
        self.cfg = cfg
        self.host = host
        self.adapters = adapters or AdapterHost(cfg, host.device)
        self.cost = CostModel()
        self._config_seen = host.updated_at

    def prepare(self, job: VideoJob) -> VideoResult | None:
        """Before batching: resolve and load the job's adapter for the arm it lands in (a refusal
        when it names none), so that a batch seldom waits for an adapter load."""
        _, served = self.host.pick(job.bucket)
        if job.adapter is None or served is None:
            return None
        found = adapter_for(job, served, self.adapters)
        return found if isinstance(found, VideoResult) else None

    def run(self, jobs: list[VideoJob]) -> list[VideoResult]:
        if self.host.updated_at != self._config_seen:
            self._config_seen = self.host.updated_at
            self.cost.reset()
        return run_standard_batch(self.host, jobs, self.cfg, self.cost, self.adapters)

    def info(self) -> dict[str, Any]:
        return {**self.host.info(), "cost": self.cost.info(), "adapters": self.adapters.info()}


def adapter_for(job: VideoJob, base: Served, adapters: AdapterHost | None) -> Served | VideoResult:
    """The loaded adapter the job asks for on `base`, or the answer saying why there is none."""
    if adapters is None:
        return VideoResult("bad_adapter", message=f"adapter {job.adapter!r}: this replica serves no adapters")
    try:
        return adapters.served(job.adapter, base)
    except AdapterError as exc:
        return VideoResult("bad_adapter", message=str(exc))
    except AdapterUnavailable as exc:
        if exc.__cause__ is not None:  # this request's load failed; later ones are refused until the retry
            log.error("%s", exc, exc_info=exc.__cause__)
        return VideoResult("adapter_unavailable", message=str(exc), retry_after_s=exc.retry_in_s)


def run_standard_batch(host: ModelHost, jobs: list[VideoJob], cfg: Config,
                       cost: CostModel | None = None, adapters: AdapterHost | None = None) -> list[VideoResult]:
    """One Serve batch: jobs grouped by (arm, adapter, shape), each group on one pipeline snapshot."""
    cost = cost or CostModel()
    picked = [host.pick(job.bucket) for job in jobs]
    results: list[VideoResult | None] = [None] * len(jobs)
    bases: dict[int, Served] = {}  # job -> its arm's model, for jobs answered by an adapter on it
    groups: dict[tuple, list[int]] = {}
    for i, (job, (arm, served)) in enumerate(zip(jobs, picked)):
        adapter = None
        if job.adapter is not None and served is not None:
            found = adapter_for(job, served, adapters)
            if isinstance(found, VideoResult):
                results[i] = found
                continue
            bases[i], picked[i], adapter = served, (arm, found), found.version
        groups.setdefault((arm, adapter, job.shape()), []).append(i)
    for indices in groups.values():
        arm, served = picked[indices[0]]
        for i in indices:
            results[i] = result = _standard_one(jobs[i], arm, served, host, cfg, len(indices), cost)
            if i in bases and result.status == "ok":
                result.version, result.adapter = bases[i].version, served.version
    return results  # type: ignore[return-value]


def _refusal(job: VideoJob, served: Served, cost: CostModel) -> VideoResult | None:
    """too_costly when this replica's estimate exceeds the whole deadline, busy when only what is left of it."""
    pipeline = served.pipeline
    units = step_units(pipeline, job.seconds, job.fps, job.height, job.width, job.guidance)
    steps = job.steps or pipeline.cfg.diffusion.sample_steps
    estimate = cost.estimate_s(units, steps)
    if estimate is None:
        return None
    left = job.deadline - time.time()
    if estimate > job.deadline_s:
        cost.refused += 1
        return VideoResult("too_costly", message=(
            f"this request needs about {estimate:.1f}s of sampling on this replica ({steps} steps), more than "
            f"its deadline_s of {job.deadline_s:g}s; use fewer steps or a smaller size or duration"))
    if estimate > left:
        cost.refused += 1
        return VideoResult("busy", message=f"this request needs about {estimate:.1f}s of sampling and only "
                                           f"{max(left, 0):.1f}s of its deadline is left; retry later")
    return None


def _standard_one(job: VideoJob, arm: str, served: Served | None, host: ModelHost, cfg: Config,
                  batch_size: int, cost: CostModel) -> VideoResult:
    from aiprod.diffusion.pipeline import GenerationAbandoned, NonFiniteOutput  # torch: not in the ingress

    if served is None:
        return VideoResult("no_model", message=f"no model loaded ({host.error or 'serve.model is not set'})")
    if time.time() > job.deadline:
        return VideoResult("deadline", message="deadline passed before generation started")
    start = time.perf_counter()
    try:
        refused = _refusal(job, served, cost)
        if refused is not None:
            return refused
        apply_fault(host.fault.standard_model_delay_s, host.fault.standard_model_fail, "standard")
        timer, step_delay_s = StepTimer(), host.fault.standard_step_delay_s

        def on_step(i: int, n: int) -> None:
            if step_delay_s > 0 and i < n:
                time.sleep(step_delay_s)
            timer(i, n)

        units = step_units(served.pipeline, job.seconds, job.fps, job.height, job.width, job.guidance)
        try:
            frames = served.pipeline.generate(
                job.prompt, job.language, seconds=job.seconds, fps=job.fps, height=job.height, width=job.width,
                seed=job.seed, steps=job.steps, guidance=job.guidance, mode="standard", deadline=job.deadline,
                on_step=on_step,
            )
        finally:
            cost.record(timer, units)
        if cfg.serve.disclosure_label:
            frames = burn_label(frames, job.language, cfg.serve.template)
        mp4 = encode(frames, job.fps, cfg)
    except GenerationAbandoned as exc:
        cost.abandon(exc.step, exc.steps)
        return VideoResult("deadline", message=str(exc))
    except NonFiniteOutput as exc:
        log.error("standard generation: %s", exc)
        return VideoResult("failed", message=f"NonFiniteOutput: {exc}")
    except ValueError as exc:
        return VideoResult("bad_request", message=str(exc))
    except Exception as exc:  # noqa: BLE001 - the ingress answers 500 with the message
        log.exception("standard generation failed")
        return VideoResult("failed", message=f"{type(exc).__name__}: {exc}")
    return VideoResult(
        "ok", mp4=mp4, version=served.version, arm=arm, frames=len(frames), width=int(frames.shape[2]),
        height=int(frames.shape[1]), fps=job.fps, generation_s=time.perf_counter() - start, batch_size=batch_size,
    )


# ----------------------------------------------------------------------------- emergency


@dataclass(frozen=True)
class EmergencyJob:
    request: AlertRequest
    bucket: float
    deadline: float  # time.time() by which this replica must have answered


@dataclass
class AlertResult:
    mode: str  # emergency (model) | template
    mp4: bytes
    version: str
    template_id: str
    frames: int
    generation_s: float
    arm: str = ""
    reason: str = ""  # why the template was used
    motion: str = ""  # the model path's camera motion (aiprod.diffusion.motion)
    notes: list[str] = field(default_factory=list)


def render_template(request: AlertRequest, cfg: Config, reason: str) -> AlertResult:
    alert = render_alert(request, cfg.serve.template, seconds=cfg.serve.emergency_seconds)
    return AlertResult("template", alert.mp4, "template", alert.template_id, alert.frames, alert.render_s,
                       reason=reason, notes=alert.notes)


def warm_up(cfg: Config) -> None:
    """Render one card so fonts, templates and the encoder are loaded before the first request."""
    from aiprod.emergency import load_library

    first = load_library(cfg.serve.template.templates_dir).types()[0]
    render_template(AlertRequest(first), cfg, "warm-up")


class Breaker:
    """Skips the model after `failures` failures in a row, for `cooldown_s`, then tries again."""

    def __init__(self, failures: int, cooldown_s: float):
        self.failures = failures
        self.cooldown_s = cooldown_s
        self.in_a_row = 0
        self.open_until = 0.0
        self.estimate_s: float | None = None  # running mean of successful model latencies

    def reset(self) -> None:
        """A new model or fault setting gets a fresh chance."""
        self.in_a_row, self.open_until, self.estimate_s = 0, 0.0, None

    def record(self, ok: bool, seconds: float = 0.0) -> None:
        if ok:
            self.in_a_row = 0
            self.estimate_s = seconds if self.estimate_s is None else 0.7 * self.estimate_s + 0.3 * seconds
            return
        self.in_a_row += 1
        if self.in_a_row >= self.failures:
            self.open_until = time.monotonic() + self.cooldown_s
            self.in_a_row = 0

    def skip_reason(self, budget_s: float) -> str | None:
        if time.monotonic() < self.open_until:
            return "model_unhealthy"
        if budget_s <= 0 or (self.estimate_s is not None and self.estimate_s > budget_s):
            return "would_miss_deadline"
        return None


class EmergencyResponder:
    """Fast model path with the template card as the answer whenever the model cannot be used."""

    def __init__(self, cfg: Config, host: ModelHost):
        self.cfg = cfg
        self.host = host
        self.breaker = Breaker(cfg.serve.breaker_failures, cfg.serve.breaker_cooldown_s)
        self._model_slot = asyncio.Semaphore(1)  # one model run at a time per replica
        self._config_seen = host.updated_at

    @staticmethod
    def _prompt(request: AlertRequest) -> str:
        return " ".join(p for p in (request.emergency_type.replace("_", " "), request.headline or "",
                                    request.region) if p)

    def _model_frames(self, served: Served, request: AlertRequest) -> np.ndarray:
        s = self.cfg.serve
        apply_fault(self.host.fault.emergency_model_delay_s, self.host.fault.emergency_model_fail, "emergency")
        return served.pipeline.generate(
            self._prompt(request), request.language, seconds=s.emergency_seconds, fps=s.template.fps,
            height=s.emergency_height, width=s.emergency_width, seed=0, mode="emergency", motion=request.motion,
        )

    async def _with_model(self, job: EmergencyJob, arm: str, served: Served) -> AlertResult:
        start = time.perf_counter()
        async with self._model_slot:
            frames = await asyncio.to_thread(self._model_frames, served, job.request)
        model_s = time.perf_counter() - start
        alert = await asyncio.to_thread(render_alert, job.request, self.cfg.serve.template,
                                        self.cfg.serve.emergency_seconds, frames)
        self.breaker.record(True, model_s)
        motion = served.pipeline.motion_for(self._prompt(job.request), job.request.motion)
        return AlertResult("emergency", alert.mp4, served.version, alert.template_id, alert.frames,
                           time.perf_counter() - start, arm=arm, notes=alert.notes, motion=str(motion))

    async def handle(self, job: EmergencyJob) -> AlertResult:
        if self.host.updated_at != self._config_seen:  # a new model or fault setting: fresh chance
            self._config_seen = self.host.updated_at
            self.breaker.reset()
        model_budget = job.deadline - time.time() - self.cfg.serve.emergency_reserve_s
        arm, served = self.host.pick(job.bucket)
        reason = "no_model" if served is None else self.breaker.skip_reason(model_budget)
        if reason is None:
            try:
                return await asyncio.wait_for(self._with_model(job, arm, served), model_budget)
            except TimeoutError:
                reason = "would_miss_deadline"
                self.breaker.record(False)
            except Exception as exc:  # noqa: BLE001 - any model failure is answered from templates
                reason = f"model_failed: {type(exc).__name__}"
                log.warning("emergency model path failed: %s", exc)
                self.breaker.record(False)
        return await asyncio.to_thread(render_template, job.request, self.cfg, reason)

    def info(self) -> dict[str, Any]:
        return {
            **self.host.info(),
            "breaker_open": time.monotonic() < self.breaker.open_until,
            "model_estimate_s": self.breaker.estimate_s,
        }
