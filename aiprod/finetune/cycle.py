"""The continuous fine-tuning cycle: new shards -> fine-tune production -> judge the candidate beside
production -> publish it with that report -> promote it, point an A/B share of Serve at it, or keep
production.

    plan = plan_cycle(CycleOptions(registry="s3://b/registry", data="s3://b/shards/2026-12-03", mode="lora"))
    result = run_cycle(plan, start_ray=lambda cfg: init_ray(cpus_needed(cfg)))   # the JSON line's dict

Steps, each skipped when a rerun finds it done (see aiprod.finetune for the whole contract):
1. plan: production's version B, the config (B's own config.yaml, or --preset/--config, plus
   overrides; its model must be B's), `train.mode`, `train.init_from` = B's registry entry, the
   phases (the denoiser phases unless given), and the cycle's key (B, index.json sha256, mode,
   config digest) -> the run STORAGE/finetune-KEY.
2. train: run_curriculum on that run (a new one, or resumed from its last checkpoint), unless its
   summary.json says finished.
3. evaluate: the candidate (RUN/final) and B with the same eval config, prompts, seeds and held-out
   clips of --data (aiprod.eval.report.evaluate with compare=B) into RUN/report/; report.json gains
   `compared_to` (B's metrics, gates and candidate - B deltas) and `finetune` (the key, run, data).
4. publish: B's name with the minor (finetune.bump) one past the highest taken -> the next version,
   with that report. A published version whose report has this cycle's key is found instead.
5. decide: gates (eval.gates) pass and no judge figure (finetune.judge_metrics) is below B's minus
   finetune.margin, and production is still B -> promote (or, with ab, Registry.set_ab); else keep.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiprod import storage
from aiprod.config import Config, ConfigError, RegistryConfig, load_config
from aiprod.finetune.decision import CycleInputError, CycleKey, compared_to, config_digest, data_digest, decide, \
    next_version
from aiprod.manifest import MANIFEST
from aiprod.registry import Registry, RegistryError, VersionExistsError, parse_version
from aiprod.registry.names import REPORT  # the eval report's name, as a registry entry holds it

CYCLE_FILE = "cycle.json"  # RUN/cycle.json: the decision's JSON line, as last printed
REPORT_DIR = "report"


@dataclass
class CycleOptions:
    registry: str
    data: str
    storage: str | None = None  # runs root (default train.storage)
    base: str | None = None  # preset name or YAML file; None: production's own config.yaml
    overrides: list[str] = field(default_factory=list)
    mode: str | None = None  # full | lora | dora (default finetune.mode)
    ab: float | None = None  # send this share of Serve's traffic to the candidate instead of promoting
    start_phase: int | None = None  # default: the config's first denoiser phase
    end_phase: int | None = None  # default: its last
    workers: str | int = "auto"
    device: str = "cpu"  # evaluation


@dataclass
class Plan:
    registry: Registry
    cfg: Config
    key: CycleKey
    data: str
    storage: str
    run_uri: str
    start_phase: int
    end_phase: int
    opts: CycleOptions

    @property
    def base(self) -> str:
        return self.key.base


def _say(message: str) -> None:
    print(f"finetune: {message}", flush=True)


def plan_cycle(opts: CycleOptions) -> Plan:
    """Everything the cycle can check before it trains; CycleInputError names what is wrong."""
    if opts.ab is not None and not 0 < opts.ab <= 1:
        raise CycleInputError(f"finetune: --ab must be a traffic share > 0 and <= 1, got {opts.ab}")
    try:
        explicit = load_config(opts.base, opts.overrides) if opts.base else None
        registry = Registry(opts.registry, explicit.registry if explicit else RegistryConfig())
        base = registry.pointer("production")
        if base is None:
            raise CycleInputError(f"finetune: the registry {registry.root} has no production version to fine-tune: "
                                  "publish and promote one first (jobs/registry.py)")
        own = registry.config(base)
        cfg = explicit or own.with_overrides(opts.overrides)
        mode = opts.mode or cfg.finetune.mode
        cfg = cfg.with_overrides([f"train.mode={mode}", f"train.init_from={registry.store.entry_uri(base)}"])
    except (ConfigError, RegistryError) as exc:
        raise CycleInputError(str(exc) if str(exc).startswith(("config:", "registry:", "finetune:"))
                              else f"finetune: {exc}") from None
    differ = _differences(cfg.model.model_dump(mode="json"), own.model.model_dump(mode="json"), "model")
    if differ:
        raise CycleInputError(f"finetune: the config's model is not production {base}'s ({', '.join(differ[:5])}): "
                              "fine-tuning starts from its weights, so use its config (no --preset/--config) or "
                              "one with the same model section")
    start, end = _phases(cfg, opts)
    problems = registry.verify(base)
    if problems:
        raise CycleInputError(f"registry: production {base} fails its manifest: " + "; ".join(problems))
    data = storage.absolute(opts.data)
    key = CycleKey(base, data_digest(data), mode, config_digest(cfg, (start, end)))
    root = storage.absolute(opts.storage or cfg.train.storage)
    return Plan(registry, cfg, key, data, root, storage.join(root, key.run_name), start, end, opts)


def _differences(mine: dict[str, Any], theirs: dict[str, Any], path: str) -> list[str]:
    out = []
    for k in sorted(set(mine) | set(theirs)):
        a, b = mine.get(k), theirs.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{path}.{k}")
        elif a != b:
            out.append(f"{path}.{k}: {a!r} vs {b!r}")
    return out


def _phases(cfg: Config, opts: CycleOptions) -> tuple[int, int]:
    phases = cfg.curriculum.phases
    denoiser = [i for i, p in enumerate(phases) if p.component == "denoiser"]
    if not denoiser and (opts.start_phase is None or opts.end_phase is None):
        raise CycleInputError("finetune: the config has no denoiser phase to fine-tune; pass --start-phase/--end-phase")
    start = denoiser[0] if opts.start_phase is None else opts.start_phase
    end = denoiser[-1] if opts.end_phase is None else opts.end_phase
    if not 0 <= start <= end < len(phases):
        raise CycleInputError(f"finetune: phases {start}..{end} are not a range within 0..{len(phases) - 1}")
    return start, end


# ----------------------------------------------------------------------------- the cycle


def run_cycle(plan: Plan, start_ray: Callable[[Config], None] | None = None) -> dict[str, Any]:
    """Run (or finish) the planned cycle and return its result (the JSON line). `start_ray(cfg)` is
    called once, just before training, when there is training to do."""
    candidate = find_candidate(plan)
    if candidate is None:
        final = train(plan, start_ray)
        report = evaluate_side_by_side(plan, final)
        candidate = publish(plan, final, report)
    else:
        _say(f"{candidate} was published by this cycle already (key {plan.key.key}): not training or "
             "evaluating again")
    result = decide_and_act(plan, candidate)
    record = storage.join(result["run"], CYCLE_FILE)
    text = json.dumps(result, sort_keys=True) + "\n"
    if not storage.exists(record) or storage.read_text(record) != text:
        storage.write_text_atomic(record, text)
    return result


def find_candidate(plan: Plan) -> str | None:
    """The version this cycle published before: its report's `finetune` names this data, mode and
    config, and either this base (the cycle's candidate) or it is production itself (promoted)."""
    reg, key = plan.registry, plan.key
    kind = parse_version(key.base, reg.cfg)
    for name in reversed(reg.versions()):
        other = parse_version(name, reg.cfg)
        if (other.model_type, other.specialization) != (kind.model_type, kind.specialization):
            continue
        found = (reg.report(name) or {}).get("finetune") or {}
        if found.get("data_key") == key.data_key and (found.get("base") == key.base or name == key.base):
            return name
    return None


def train(plan: Plan, start_ray: Callable[[Config], None] | None) -> str:
    """RUN/final, training (or resuming) the run unless it finished."""
    from aiprod.training.run_options import RunOptions, run_exists
    from aiprod.training.runner import run_curriculum

    from aiprod.training.run_outputs import FINAL_DIR

    final = storage.join(plan.run_uri, FINAL_DIR)
    if _finished(plan.run_uri):
        _say(f"run {plan.run_uri} finished already: not training again")
        return final
    resume = run_exists(plan.run_uri)
    _say(f"{'resuming' if resume else 'training'} run {plan.run_uri}: {plan.key.mode} fine-tune of {plan.base} "
         f"on {plan.data}, phases {plan.start_phase}..{plan.end_phase}")
    if start_ray is not None:
        start_ray(plan.cfg)
    run_curriculum(plan.cfg, RunOptions(data=plan.data, storage=plan.storage, run_name=plan.key.run_name,
                                        start_phase=plan.start_phase, end_phase=plan.end_phase, resume=resume,
                                        workers=plan.opts.workers))
    if not _finished(plan.run_uri):
        raise RuntimeError(f"finetune: run {plan.run_uri} ended without a finished final/ (see its summary.json)")
    return final


def _finished(run_uri: str) -> bool:
    from aiprod.training.run_outputs import FINAL_DIR, SUMMARY_FILE

    try:
        summary = json.loads(storage.read_text(storage.join(run_uri, SUMMARY_FILE)))
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    return summary.get("status") == "finished" and storage.exists(storage.join(run_uri, FINAL_DIR, MANIFEST))


def evaluate_side_by_side(plan: Plan, final: str) -> dict[str, Any]:
    """The candidate's report with production evaluated beside it on the same prompts, seeds and
    clips, in RUN/report/ (reused when a crashed cycle left it)."""
    from aiprod.eval.report import evaluate, json_safe

    out = storage.join(plan.run_uri, REPORT_DIR)
    done = storage.join(out, REPORT)
    if storage.exists(done):
        report = json.loads(storage.read_text(done))
        if (report.get("finetune") or {}).get("key") == plan.key.key:
            _say(f"reusing the side-by-side report {done}")
            return report
    production = plan.registry.store.entry_uri(plan.base)
    _say(f"evaluating the candidate beside production {plan.base}")
    with tempfile.TemporaryDirectory(prefix="aiprod-finetune-") as scratch:
        local = Path(scratch) if storage.is_s3(out) else Path(out)
        report = evaluate(final, local, data_uri=plan.data, compare=production, device=plan.opts.device,
                          label=f"candidate ({plan.key.run_name})", compare_label=plan.base)
        report["compared_to"] = compared_to(report, report["compare"] or {}, plan.base, plan.cfg.eval.gates)
        report["finetune"] = {**plan.key.record(), "run": plan.run_uri, "data": plan.data,
                              "phases": [plan.start_phase, plan.end_phase]}
        report = json_safe(report)
        storage.write_text_atomic(local / REPORT, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        if storage.is_s3(out):
            storage.upload_dir(local, out)
    return report


def publish(plan: Plan, final: str, report: dict[str, Any]) -> str:
    """Publish RUN/final as the next free version after production's, with its report."""
    reg = plan.registry
    for _ in range(5):  # another publisher may take the name between our look and our publish
        version = next_version(plan.base, reg.store.names(), plan.cfg.finetune.bump, reg.cfg)
        try:
            reg.publish(final, version, report=report)
        except VersionExistsError:
            continue
        _say(f"published {version} (the report compares it with {plan.base})")
        return version
    raise RegistryError(f"registry: could not find a free version after {plan.base} in {reg.root} (5 tries)")


def decide_and_act(plan: Plan, candidate: str) -> dict[str, Any]:
    """Promote, A/B or keep, by the rule; doing nothing that is already done. The cycle's own
    record (base, key, run) comes from the candidate's report, so a rerun after a promotion, whose
    plan starts from the candidate, reports the cycle that made it."""
    reg, rule = plan.registry, plan.cfg.finetune
    report = reg.report(candidate) or {}
    cycle = report.get("finetune") or {}
    base = cycle.get("base", plan.base)
    decision = decide(report, plan.cfg.eval.gates, rule)
    production = reg.pointer("production")
    if production not in (base, candidate):
        decision.worse.append(f"production moved from {base} to {production} since the candidate was made "
                              "from it: run the cycle again on the new production")
    ab = reg.ab()
    if production == candidate:
        status = "promoted"
    elif not decision.ok:
        status = "kept"
    elif plan.opts.ab is not None:
        status = "ab"
        if not (ab and ab.get("version") == candidate and ab.get("fraction") == float(plan.opts.ab)):
            reg.set_ab(candidate, plan.opts.ab, reason=f"fine-tuning cycle {cycle.get('key')}: candidate of {base}")
            _say(f"A/B: {plan.opts.ab:g} of Serve's traffic -> {candidate}")
    else:
        status = "promoted"
        reg.promote(candidate, plan.cfg.eval.gates)
        _say(f"promoted {candidate} (was {base})")
        if ab and ab.get("version") == candidate:
            reg.clear_ab(reason=f"{candidate} was promoted")
    if status == "kept":
        _say(f"kept production {production}; {candidate} is published but not promoted: "
             + "; ".join(decision.reasons))
    ab = reg.ab()
    return {"status": status, "candidate": candidate, "base": base, "production": reg.pointer("production"),
            "ab": {"version": ab["version"], "fraction": ab["fraction"]} if ab else None,
            "mode": cycle.get("mode", plan.key.mode), "key": cycle.get("key", plan.key.key),
            "run": cycle.get("run", plan.run_uri),
            "report": storage.join(reg.store.entry_uri(candidate), REPORT),
            "gates_passed": decision.gates_passed, "reasons": decision.reasons, "judge": decision.judge}
