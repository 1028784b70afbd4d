"""The search: a Ray Tune Tuner with Optuna's TPE (seeded) and the ASHA scheduler, and its outputs.

    summary = run_search(cfg, SearchOptions(data="out/shards/demo", storage="out/tune", name="s1"))

Everything lives in the search directory STORAGE/NAME/ (local or s3://): Tune's experiment state
and trial records, the trials' curriculum runs (trials/<id>/), and the outputs written at the end:
trials.csv, best.yaml (an overrides file for jobs/curriculum.py), objective.png (objective vs each
searched value), importances.json/.png (Optuna's parameter importances, with enough trials) and
summary.json. `resume=True` continues an interrupted search with Tuner.restore: finished trials
keep their results and are not run again; unfinished ones start again.
"""

from __future__ import annotations

import io
import json
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from aiprod import plots, storage
from aiprod.config import Config, ConfigError
from aiprod.tuning import space
from aiprod.tuning.objective import Objective
from aiprod.tuning.trial import TRIALS_DIR, TrialContext, run_trial

log = logging.getLogger("aiprod.tuning")

OUTPUTS = ("trials.csv", "best.yaml", "objective.png", "summary.json")


@dataclass
class SearchOptions:
    data: str
    storage: str
    name: str
    samples: int | None = None  # default: tune.num_samples
    max_concurrent: int | str = "auto"  # default: tune.max_concurrent
    resume: bool = False


def search_uri(opts: SearchOptions) -> str:
    if not opts.name or "/" in opts.name or opts.name in (".", ".."):
        raise ConfigError(f"config: --name must be a plain name, got {opts.name!r}")
    return storage.join(storage.absolute(opts.storage), opts.name)


def _tune_storage(uri: str) -> tuple[str, Any]:
    """(path, pyarrow filesystem or None) as Ray Tune takes them."""
    if storage.is_s3(uri):
        return uri[len("s3://"):], storage.s3_filesystem()
    return uri, None


def trial_resources(cfg: Config) -> dict[str, float]:
    """What one trial's curriculum run holds at once (its workers)."""
    workers = cfg.tune.workers_per_trial
    gpu = cfg.train.use_gpu is True
    return {"CPU": workers * cfg.train.cpus_per_worker + cfg.tune.driver_cpus, "GPU": float(workers if gpu else 0)}


def requested_concurrency(cfg: Config, max_concurrent: int | str) -> int | str:
    """--max-concurrent, else tune.max_concurrent: a trial count, or 'auto' (what the cluster holds)."""
    return int(max_concurrent) if max_concurrent != "auto" else cfg.tune.max_concurrent


def local_cluster_cpus(cfg: Config, max_concurrent: int | str) -> float:
    """Logical CPUs for a new local cluster: every concurrent trial's driver and training workers plus
    its data pipeline (concurrent Ray Data pipelines short of CPUs can starve each other); 'auto'
    counts two trials."""
    requested = requested_concurrency(cfg, max_concurrent)
    trials = 2 if requested == "auto" else requested
    return trials * (trial_resources(cfg)["CPU"] + cfg.data.decode_workers + cfg.data.read_workers)


def auto_concurrency(cfg: Config, cluster: dict[str, float]) -> int:
    """Trials that fit the cluster's current resources at once (at least 1: an autoscaling
    cluster grows for the pending ones)."""
    need = trial_resources(cfg)
    fits = [math.floor(cluster.get(k, 0.0) / v) for k, v in need.items() if v > 0]
    return max(1, min(fits) if fits else 1)


def max_reports(cfg: Config) -> int:
    """An upper bound on a trial's reports: a checkpoint every report_every_steps, one per phase end."""
    total = 0
    for i in space.tuned_phases(cfg):
        phase = cfg.curriculum.phases[i]
        steps = cfg.tune.trial_steps or phase.steps
        if steps is None:
            raise ConfigError(f"config: curriculum.phases.{i} has no `steps`; set tune.trial_steps for the search")
        total += math.ceil(steps / cfg.tune.report_every_steps) + 1
    return total


def build_tuner(cfg: Config, opts: SearchOptions, uri: str, objective: Objective, concurrency: int):
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    context = TrialContext(config=cfg.to_dict(), data=opts.data, search_uri=uri, objective=objective)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, context=context), {"cpu": cfg.tune.driver_cpus}
    )
    path, filesystem = _tune_storage(uri)
    if opts.resume:
        return tune.Tuner.restore(path, trainable, resume_unfinished=True, restart_errored=True,
                                  storage_filesystem=filesystem)
    samples = opts.samples or cfg.tune.num_samples
    startup = cfg.tune.tpe_startup_trials or max(1, min(10, samples // 2))
    searcher = OptunaSearch(sampler=optuna.samplers.TPESampler(seed=cfg.tune.seed, n_startup_trials=startup))
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=max_reports(cfg),
                              grace_period=cfg.tune.grace_period, reduction_factor=cfg.tune.reduction_factor)
    parent, name = path.rsplit("/", 1)
    return tune.Tuner(
        trainable,
        param_space=space.tune_space(cfg.tune.space),
        tune_config=tune.TuneConfig(metric=cfg.tune.metric, mode=cfg.tune.mode, search_alg=searcher,
                                    scheduler=scheduler, num_samples=samples, max_concurrent_trials=concurrency),
        run_config=tune.RunConfig(name=name, storage_path=parent, storage_filesystem=filesystem,
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )


def search_exists(uri: str) -> bool:
    from ray import tune

    path, filesystem = _tune_storage(uri)
    return tune.Tuner.can_restore(path, storage_filesystem=filesystem)


def _error_line(error: BaseException | None) -> str:
    """The exception's own message (a Ray task error's last line), not the Ray wrapper's header."""
    if error is None:
        return ""
    cause = getattr(error, "cause", None) or error
    lines = [line for line in str(cause).splitlines() if line.strip()]
    return (f"{type(cause).__name__}: {lines[-1]}" if lines else type(cause).__name__)[:300]


def run_search(cfg: Config, opts: SearchOptions) -> dict[str, Any]:
    """Run (or resume) the search; returns summary.json's content."""
    import ray

    space.check_space(cfg)
    opts = replace(opts, data=storage.absolute(opts.data))
    uri = search_uri(opts)
    exists = search_exists(uri)
    if exists and not opts.resume:
        raise ConfigError(f"config: search '{opts.name}' already exists at {uri}: pass --resume to continue it "
                          "or choose another --name")
    if opts.resume and not exists:
        raise FileNotFoundError(f"--resume: no search named '{opts.name}' at {uri}")
    if not storage.exists(storage.join(opts.data, "index.json")):
        raise ConfigError(f"config: --data: no index.json in {opts.data} (build shards with jobs/make_shards.py)")
    max_reports(cfg)  # every tuned phase has a step count

    objective = Objective.from_data(opts.data, cfg)
    requested = requested_concurrency(cfg, opts.max_concurrent)
    concurrency = auto_concurrency(cfg, ray.cluster_resources()) if requested == "auto" else requested
    print(f"search: {uri} ({'resume' if opts.resume else 'new'}; {opts.samples or cfg.tune.num_samples} trials, "
          f"{concurrency} at once; objective {cfg.tune.metric} = {objective.extractor_name} on "
          f"{len(objective.captions)} held-out clips x {len(objective.seeds)} seeds, {cfg.tune.mode})", flush=True)
    if not opts.resume:
        storage.write_text_atomic(storage.join(uri, "config.yaml"), cfg.to_yaml())
    grid = build_tuner(cfg, opts, uri, objective, concurrency).fit()
    return write_outputs(cfg, grid, uri)


# ------------------------------------------------------------------------------ outputs


def trial_rows(cfg: Config, grid) -> list[dict[str, Any]]:
    """One row per trial: its point, last and best figure, how far it got, where its time went."""
    import numpy as np

    metric, keys = cfg.tune.metric, list(cfg.tune.space)
    rows = []
    for result in grid:
        history = result.metrics_dataframe
        last = result.metrics or {}
        values = history[metric].dropna().tolist() if history is not None and metric in history else []
        intervals = history["train_interval_s"].dropna().tolist() if history is not None and "train_interval_s" in history else []
        steady = float(np.median(intervals[1:])) if len(intervals) > 1 else None
        rows.append({
            "trial_id": last.get("trial_id") or Path(str(result.path)).name,
            **{key: result.config.get(key) for key in keys},
            metric: values[-1] if values else None,
            f"{metric}_best": (min if cfg.tune.mode == "min" else max)(values) if values else None,
            "reports": len(values),
            "global_step": last.get("global_step"),
            "time_total_s": last.get("time_total_s"),
            "first_report_s": intervals[0] if intervals else None,
            "interval_s": steady,
            "val_s": float(sum(history["val_s"].dropna())) if history is not None and "val_s" in history else None,
            "error": _error_line(result.error),
        })
    finished = [r["global_step"] for r in rows if not r["error"] and r["global_step"] is not None]
    full = max(finished) if finished else None
    for row in rows:
        row["status"] = ("error" if row["error"] else "completed" if row["global_step"] == full
                         else "stopped early" if row["reports"] else "no result")
    return sorted(rows, key=lambda r: r["trial_id"])


def best_row(cfg: Config, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The best last figure among completed trials (among all with a figure if none completed)."""
    metric = cfg.tune.metric
    scored = [r for r in rows if r[metric] is not None and math.isfinite(r[metric])]
    pool = [r for r in scored if r["status"] == "completed"] or scored
    if not pool:
        return None
    return (min if cfg.tune.mode == "min" else max)(pool, key=lambda r: r[metric])


def objective_plot(cfg: Config, rows: list[dict[str, Any]]) -> bytes:
    import matplotlib.ticker

    plt = plots.pyplot()

    metric, keys = cfg.tune.metric, list(cfg.tune.space)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    styles = {"completed": ("o", "tab:blue"), "stopped early": ("x", "tab:orange")}
    for ax, key in zip(axes[0], keys):
        for status, (marker, colour) in styles.items():
            pts = [(r[key], r[metric]) for r in rows if r["status"] == status and r[metric] is not None]
            if pts:
                ax.scatter(*zip(*pts), marker=marker, color=colour, label=status)
        dim = cfg.tune.space[key]
        if dim.log:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlim(dim.low, dim.high)  # the searched range
        ax.set_xlabel("λ (diffusion.noise_lambda)" if key == "diffusion.noise_lambda" else key)
        ax.set_ylabel(f"{metric} ({cfg.tune.mode})")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("objective vs searched values (last report of each trial)", fontsize=10)
    return plots.figure_png(fig, dpi=110, bbox_inches="tight")


def importances(cfg: Config, rows: list[dict[str, Any]]) -> dict[str, float] | None:
    """Optuna's (fANOVA) parameter importances over the trials with a figure, when there are enough."""
    import optuna

    metric = cfg.tune.metric
    scored = [r for r in rows if r[metric] is not None and math.isfinite(r[metric])]
    if len(scored) < cfg.tune.importance_min_trials:
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize" if cfg.tune.mode == "min" else "maximize")
    dists = {k: optuna.distributions.FloatDistribution(d.low, d.high, log=d.log) for k, d in cfg.tune.space.items()}
    for row in scored:
        study.add_trial(optuna.trial.create_trial(params={k: row[k] for k in dists}, distributions=dists,
                                                  value=row[metric]))
    return {k: float(v) for k, v in optuna.importance.get_param_importances(study, normalize=True).items()}


def importance_plot(values: dict[str, float]) -> bytes:
    fig, ax = plots.pyplot().subplots(figsize=(5, 0.5 + 0.5 * len(values)))
    names = list(values)[::-1]
    ax.barh(names, [values[n] for n in names], color="tab:green")
    ax.set_xlabel("importance (fANOVA, normalised)")
    return plots.figure_png(fig, dpi=110, bbox_inches="tight")


def write_outputs(cfg: Config, grid, uri: str) -> dict[str, Any]:
    import csv

    rows = trial_rows(cfg, grid)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["trial_id"])
    writer.writeheader()
    writer.writerows(rows)
    storage.write_text_atomic(storage.join(uri, "trials.csv"), buffer.getvalue())
    storage.write_bytes_atomic(storage.join(uri, "objective.png"), objective_plot(cfg, rows))

    best = best_row(cfg, rows)
    files = ["trials.csv", "objective.png"]
    if best is not None:
        overrides = space.best_overrides(cfg, {k: best[k] for k in cfg.tune.space})
        header = (f"# best trial {best['trial_id']}: {cfg.tune.metric} = {best[cfg.tune.metric]:.6g} ({best['status']})\n"
                  f"# use: python jobs/curriculum.py --overrides-file best.yaml ...\n")
        storage.write_text_atomic(storage.join(uri, "best.yaml"), header + yaml.safe_dump(overrides, sort_keys=True))
        files.append("best.yaml")
    ranked = importances(cfg, rows)
    if ranked is not None:
        storage.write_text_atomic(storage.join(uri, "importances.json"), json.dumps(ranked, indent=2))
        storage.write_bytes_atomic(storage.join(uri, "importances.png"), importance_plot(ranked))
        files += ["importances.json", "importances.png"]
    statuses = [r["status"] for r in rows]
    summary = {
        "search": uri, "metric": cfg.tune.metric, "mode": cfg.tune.mode, "trials": len(rows),
        "completed": statuses.count("completed"), "stopped_early": statuses.count("stopped early"),
        "errored": statuses.count("error"),
        "best": None if best is None else {"trial_id": best["trial_id"], "value": best[cfg.tune.metric],
                                            "params": {k: best[k] for k in cfg.tune.space}},
        "importances": ranked, "files": files + ["summary.json"], "trials_dir": storage.join(uri, TRIALS_DIR),
    }
    storage.write_text_atomic(storage.join(uri, "summary.json"), json.dumps(summary, indent=2, default=str))
    return summary
