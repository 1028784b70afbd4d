"""Every metric AIPROD exports, in one list: name, kind, labels, meaning.

Metrics go through Ray's own metrics agent (one per node; `ray.util.metrics`, and
`ray.serve.metrics` inside Serve replicas, which adds `deployment`, `replica` and `application`
labels). The agent adds the prefix `ray_`, and counters get `_total`: the counter
`aiprod_serve_requests` is scraped as `ray_aiprod_serve_requests_total`. `exported_names()` lists
the scraped names; the alert rules and the dashboard are checked against it.

Recording never raises: monitoring must not take down the alert it is watching.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)
PREFIX = "ray_"  # added by Ray's metrics agent to every application metric
SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)


@dataclass(frozen=True)
class Spec:
    name: str
    kind: str  # counter | gauge | histogram
    description: str
    labels: tuple[str, ...] = ()
    serve: bool = False  # recorded in a Serve replica: ray.serve.metrics (deployment/replica labels)
    boundaries: tuple[float, ...] = SECONDS_BUCKETS


SPECS: tuple[Spec, ...] = (
    # ------------------------------------------------------------------- Serve (ingress)
    Spec("aiprod_serve_requests", "counter", "HTTP requests answered, by endpoint, status code and path "
         "(standard, emergency_model, template, none)", ("endpoint", "status", "path"), serve=True),
    Spec("aiprod_serve_request_seconds", "histogram", "seconds from request to response, by endpoint and path",
         ("endpoint", "path"), serve=True),
    Spec("aiprod_serve_rejected", "counter", "503 answers (queue full, no model, busy)", ("endpoint",), serve=True),
    Spec("aiprod_serve_deadline_missed", "counter", "504 answers (the deadline passed)", ("endpoint",), serve=True),
    Spec("aiprod_serve_template_fallbacks", "counter", "emergency alerts answered by the template card, by "
         "reason (a bounded set: monitoring.serve_metrics.FALLBACK_REASONS)", ("reason",), serve=True),
    Spec("aiprod_serve_model_answers", "counter", "answers made by a model, by endpoint, model version, A/B arm "
         "and adapter (a registry version, '' for none)", ("endpoint", "version", "arm", "adapter"), serve=True),
    Spec("aiprod_emergency_unsigned", "counter", "emergency alerts sent without content credentials, by reason",
         ("reason",), serve=True),
    # --------------------------------------------------------------- Serve (generators)
    Spec("aiprod_model_load_failures", "counter", "model loads that failed (the replica keeps its model), by "
         "the pointer named (production, latest, other) or adapter (a request's adapter)", ("pointer",), serve=True),
    Spec("aiprod_model_serving", "gauge", "1 for the model version each A/B arm of a replica serves, 0 once "
         "replaced", ("arm", "version"), serve=True),
    Spec("aiprod_model_ab_fraction", "gauge", "share of requests routed to arm b", (), serve=True),
    # -------------------------------------------------------------------------- training
    Spec("aiprod_train_global_step", "gauge", "optimizer steps so far in the run", ("run",)),
    Spec("aiprod_train_phase", "gauge", "index of the curriculum phase being trained", ("run",)),
    Spec("aiprod_train_loss", "gauge", "training loss of the last optimizer step", ("run",)),
    Spec("aiprod_train_lr", "gauge", "learning rate of the last optimizer step", ("run",)),
    Spec("aiprod_train_samples_per_second", "gauge", "training samples per second over the phase", ("run",)),
    Spec("aiprod_train_data_wait_share", "gauge", "share of the phase's time spent waiting for data (0-1)",
         ("run",)),
    Spec("aiprod_train_step_seconds", "histogram", "wall-clock seconds between optimizer steps", ("run",)),
    Spec("aiprod_train_last_step_time_seconds", "gauge", "unix time of the last optimizer step (stall alarms)",
         ("run",)),
    Spec("aiprod_train_eta_seconds", "gauge", "estimated seconds left in the phase", ("run",)),
    Spec("aiprod_train_device_memory_bytes", "gauge", "peak accelerator memory allocated (cuda) or resident "
         "memory of rank 0 (cpu)", ("run", "device")),
    Spec("aiprod_train_checkpoint_seconds", "gauge", "seconds the last checkpoint took to write and report",
         ("run",)),
    Spec("aiprod_train_checkpoints", "counter", "checkpoints written, by why (interval, phase_end)", ("run", "why")),
    Spec("aiprod_train_nan_skips", "counter", "optimizer steps skipped for a non-finite loss", ("run",)),
    Spec("aiprod_train_rollbacks", "counter", "rollbacks to the last checkpoint after a NaN streak", ("run",)),
    Spec("aiprod_train_anomalies", "counter", "loss anomalies detected (loss_spike, loss_plateau)", ("run", "kind")),
    # ------------------------------------------------------------------------------ Tune
    Spec("aiprod_tune_trial_objective", "gauge", "a trial's last validation objective", ("trial",)),
    Spec("aiprod_tune_trial_loss", "gauge", "a trial's training loss at its last report", ("trial",)),
    Spec("aiprod_tune_trial_step", "gauge", "a trial's global step at its last report", ("trial",)),
    Spec("aiprod_tune_trial_reports", "counter", "validation reports passed to Tune", ("trial",)),
    Spec("aiprod_tune_validation_seconds", "histogram", "seconds a trial's validation took", ("trial",)),
)
BY_NAME = {spec.name: spec for spec in SPECS}


def exported_names(spec: Spec | None = None) -> set[str]:
    """The series names Prometheus scrapes for `spec` (all specs when None)."""
    if spec is None:
        return set().union(*(exported_names(s) for s in SPECS))
    base = PREFIX + spec.name
    if spec.kind == "counter":
        return {base + "_total"}
    if spec.kind == "histogram":
        return {base + "_bucket", base + "_sum", base + "_count"}
    return {base}


_metrics: dict[str, Any] = {}
_lock = threading.Lock()
_warned: set[str] = set()


def _create(spec: Spec) -> Any:
    if spec.serve:
        from ray.serve import metrics
    else:
        from ray.util import metrics
    if spec.kind == "counter":
        return metrics.Counter(spec.name, description=spec.description, tag_keys=spec.labels)
    if spec.kind == "gauge":
        return metrics.Gauge(spec.name, description=spec.description, tag_keys=spec.labels)
    return metrics.Histogram(spec.name, description=spec.description, boundaries=list(spec.boundaries),
                             tag_keys=spec.labels)


def metric(name: str) -> Any:
    """This process's metric object for `name`, made on first use (so a Serve metric made inside a
    replica carries its deployment and replica labels)."""
    found = _metrics.get(name)
    if found is None:
        with _lock:
            found = _metrics.get(name)
            if found is None:
                found = _metrics[name] = _create(BY_NAME[name])
    return found


def record(name: str, value: float = 1.0, **labels: str) -> None:
    """Counter: add `value`; gauge: set it; histogram: observe it. Failures are logged once per metric."""
    try:
        spec = BY_NAME[name]
        tags = {key: str(val) for key, val in labels.items()}
        target = metric(name)
        if spec.kind == "counter":
            target.inc(value, tags=tags or None)
        elif spec.kind == "gauge":
            target.set(value, tags=tags or None)
        else:
            target.observe(value, tags=tags or None)
    except Exception as exc:  # noqa: BLE001 - never fail the caller
        if name not in _warned:
            _warned.add(name)
            log.warning("metric %s not recorded: %s: %s", name, type(exc).__name__, exc)
