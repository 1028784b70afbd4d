"""The training run behind a checkpoint, as its metrics.jsonl tells it: where the log is, its
records, and per curriculum phase the steps logged and the first, final and best loss."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import Any

import numpy as np

from aiprod import storage

__all__ = ["find_metrics_log", "phase_summary", "read_metrics_log"]

METRICS_LOG = "metrics.jsonl"
LOSS_TAIL = 5  # steps averaged for a phase's final loss


def find_metrics_log(checkpoint: str) -> str | None:
    """metrics.jsonl of the run a checkpoint came from: in it, beside it or one level up (RUN/final,
    RUN/checkpoint-..., RUN/best/phase-N); for a registry entry, next to its recorded source."""
    candidates = [checkpoint]
    entry = storage.join(checkpoint, "entry.json")
    if storage.exists(entry):
        source = json.loads(storage.read_text(entry)).get("source")
        if source:
            candidates.append(source)
    for base in candidates:
        base = str(base).rstrip("/")
        for up in range(3):
            uri = base
            for _ in range(up):
                uri = uri.rsplit("/", 1)[0] if "/" in uri else uri
            if storage.exists(storage.join(uri, METRICS_LOG)):
                return storage.join(uri, METRICS_LOG)
    return None


def read_metrics_log(uri: str | None) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl ([] without one)."""
    records = []
    if uri:
        for line in storage.read_text(uri).splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line of a run still writing
    return records


def phase_summary(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per curriculum phase: steps logged, first / final (mean of the last few) / best loss."""
    by_phase: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if "event" not in r and isinstance(r.get("loss"), (int, float)) and "phase" in r:
            by_phase[int(r["phase"])].append(r)
    rows = []
    for phase, steps in sorted(by_phase.items()):
        losses = [float(s["loss"]) for s in steps if math.isfinite(float(s["loss"]))]
        if not losses:
            continue
        rows.append({"phase": phase, "name": steps[-1].get("phase_name", str(phase)), "steps": len(steps),
                     "first_loss": losses[0], "final_loss": float(np.mean(losses[-LOSS_TAIL:])),
                     "best_loss": min(losses)})
    return rows
