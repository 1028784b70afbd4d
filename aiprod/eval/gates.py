"""Release gates: thresholds on a report's headline metrics (light: no torch, used by the registry).

A gate is `<metric>_min` (the metric must be >= the threshold) or `<metric>_max` (<=), checked
against `report["metrics"][<metric>]`. A metric that is missing or null fails its gate.
"""

from __future__ import annotations

import math
from typing import Any

SUFFIXES = {"_min": ">=", "_max": "<="}


def parse_gate(gate: str) -> tuple[str, str]:
    """`psnr_min` -> ("psnr", ">="); anything else is a clear ValueError."""
    for suffix, op in SUFFIXES.items():
        if gate.endswith(suffix) and len(gate) > len(suffix):
            return gate[: -len(suffix)], op
    raise ValueError(f"gate '{gate}' must be '<metric>_min' or '<metric>_max' (e.g. psnr_min, fd_randproj3d_max)")


def passes_gates(report: dict[str, Any], gates: dict[str, float]) -> tuple[bool, list[str]]:
    """(all gates pass, one reason per failed gate)."""
    metrics = report.get("metrics") if isinstance(report, dict) else None
    if not isinstance(metrics, dict):
        return False, ["report has no 'metrics' section (is it a jobs/evaluate.py report.json?)"]
    reasons: list[str] = []
    for gate, threshold in sorted(gates.items()):
        name, op = parse_gate(gate)
        value = metrics.get(name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
            reasons.append(f"{gate}: metric '{name}' is missing from the report (got {value!r})")
            continue
        ok = value >= threshold if op == ">=" else value <= threshold
        if not ok:
            reasons.append(f"{gate}: {name} = {value:.4g}, needs {op} {threshold:g}")
    return not reasons, reasons
