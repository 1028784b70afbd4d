"""The light half of the fine-tuning cycle (no torch, no Ray): what identifies a cycle, the next
version's name, the side-by-side section of the candidate's report and the promotion rule."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from aiprod import storage
from aiprod.config import Config, FinetuneConfig, RegistryConfig
from aiprod.eval.gates import passes_gates
from aiprod.registry.names import VersionName, is_version_name, parse_version

RUN_PREFIX = "finetune-"
# What does not change the weights a cycle trains: where things live, how they are served, and how
# the candidate is judged afterwards (gates, margin). A rerun that changes only these trains nothing.
UNHASHED = {"registry": None, "serve": None, "provenance": None, "tune": None, "finetune": None,
            "train": ("init_from", "storage", "workers", "use_gpu", "cpu_workers", "progress_every_s"),
            "data": ("uri",), "eval": ("gates",)}


class CycleInputError(ValueError):
    """Bad input to the cycle (no production, no data index, a model that is not production's): exit 2."""


def config_digest(cfg: Config, phases: tuple[int, int]) -> str:
    """sha256 (16 hex) of the settings that shape the trained weights and their evaluation, and of
    the phases trained (another range is another cycle)."""
    tree = {**cfg.to_dict(), "phases trained": list(phases)}
    for section, keys in UNHASHED.items():
        if keys is None:
            tree.pop(section, None)
        else:
            for key in keys:
                tree.get(section, {}).pop(key, None)
    canonical = json.dumps(tree, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def data_digest(data_uri: str) -> str:
    """sha256 of the shard set's index.json: it lists every shard's sha256, so it names the data."""
    index = storage.join(data_uri, "index.json")
    try:
        return hashlib.sha256(storage.read_bytes(index)).hexdigest()
    except FileNotFoundError:
        raise CycleInputError(f"finetune: --data {data_uri}: no index.json (build shards with "
                              "jobs/make_shards.py)") from None


@dataclass(frozen=True)
class CycleKey:
    """A cycle is (base version, data, mode, config); `data_key` leaves the base out, so a rerun
    after the candidate became production still finds its cycle."""
    base: str
    data_sha256: str
    mode: str
    config_hash: str

    @property
    def data_key(self) -> str:
        text = json.dumps([self.data_sha256, self.mode, self.config_hash])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def key(self) -> str:
        return hashlib.sha256(f"{self.base}\n{self.data_key}".encode()).hexdigest()[:16]

    @property
    def run_name(self) -> str:
        return RUN_PREFIX + self.key

    def record(self) -> dict[str, Any]:
        return {"key": self.key, "data_key": self.data_key, "base": self.base, "data_sha256": self.data_sha256,
                "mode": self.mode, "config_hash": self.config_hash}


def next_version(base: str, existing: list[str], bump: str, cfg: RegistryConfig) -> str:
    """`base` with its minor (or patch) one past the highest taken by a version of the same model
    type, specialization and major (and minor, for a patch) in `existing`, published or not."""
    b = parse_version(base, cfg)
    same = [parse_version(n, cfg) for n in existing if is_version_name(n)]
    same = [v for v in same if (v.model_type, v.specialization, v.major) == (b.model_type, b.specialization, b.major)]
    if bump == "minor":
        minor = max([v.minor for v in same] + [b.minor]) + 1
        return str(VersionName(b.model_type, b.major, minor, 0, b.specialization))
    patch = max([v.patch for v in same if v.minor == b.minor] + [b.patch]) + 1
    return str(VersionName(b.model_type, b.major, b.minor, patch, b.specialization))


def _number(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def compared_to(candidate: dict[str, Any], production: dict[str, Any], version: str,
                gates: dict[str, float]) -> dict[str, Any]:
    """The report's `compared_to` section: production's figures on the same prompts, seeds and
    clips, its gates, and candidate - production for every metric both have."""
    mine, theirs = candidate.get("metrics", {}), production.get("metrics", {})
    deltas = {k: _number(mine[k]) - _number(theirs[k]) for k in sorted(mine)
              if k in theirs and _number(mine[k]) is not None and _number(theirs[k]) is not None}
    ok, reasons = passes_gates(production, gates)
    return {"version": version, "metrics": theirs, "deltas": deltas,
            "gates": {"passed": ok, "reasons": reasons}}


@dataclass
class Decision:
    gates_passed: bool
    gate_failures: list[str] = field(default_factory=list)
    worse: list[str] = field(default_factory=list)  # one line per judge figure below production - margin
    judge: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.gates_passed and not self.worse

    @property
    def reasons(self) -> list[str]:
        return self.gate_failures + self.worse


def decide(report: dict[str, Any], gates: dict[str, float], rule: FinetuneConfig) -> Decision:
    """Gates pass, and every judge figure the candidate and production both have is >= production's
    minus the margin. A report without production's figures fails (nothing to compare with)."""
    ok, failures = passes_gates(report, gates)
    decision = Decision(ok, failures)
    production = (report.get("compared_to") or {}).get("metrics")
    if not isinstance(production, dict):
        decision.worse.append("the report has no compared_to section with production's figures")
        return decision
    mine = report.get("metrics", {})
    for metric in rule.judge_metrics:
        cand, prod = _number(mine.get(metric)), _number(production.get(metric))
        if cand is None or prod is None:
            continue
        decision.judge[metric] = {"candidate": cand, "production": prod, "delta": round(cand - prod, 6)}
        if cand < prod - rule.margin:
            decision.worse.append(f"{metric}: {cand:.4g} < production {prod:.4g} - margin {rule.margin:g}")
    if not decision.judge:
        decision.worse.append(f"no judge figure of {rule.judge_metrics} is in both reports")
    return decision
