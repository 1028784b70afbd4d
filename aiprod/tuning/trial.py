"""One trial of the search: the curriculum's own run (aiprod.training.runner, DeepSpeed and all)
for the tuned phase(s), with the sampled point applied to the config.

The training loop reports a checkpoint every `tune.report_every_steps` steps (the trial sets
`checkpoint.every_steps` to it). On the driver side a Ray Train callback computes the validation
figure on each reported checkpoint and passes the metrics to Tune, where ASHA may stop the trial.
So the loop needs no Tune-specific code, and a stopped trial simply ends its Train run.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from aiprod import storage
from aiprod.config import validate
from aiprod.tuning import space
from aiprod.tuning.objective import Objective

TRIALS_DIR = "trials"  # the trials' curriculum runs: SEARCH/trials/<trial id>/
STARTS_DIR = "starts"  # one marker per trial start: SEARCH/starts/<trial id>-<uuid>.json
RESULTS_FILE = "tune_results.jsonl"  # SEARCH/trials/<trial id>/: what the trial reported to Tune
SUMMARY_FILE = "summary.json"  # written by the curriculum run when it finishes


@dataclass
class TrialContext:
    """What every trial shares (passed with tune.with_parameters)."""

    config: dict[str, Any]  # the resolved base config
    data: str
    search_uri: str
    objective: Objective


def make_report_callback(objective: Objective, record_uri: str):
    """A Ray Train callback: on each checkpoint report, the validation figure -> Tune. Each result
    is also kept in `record_uri` (JSON lines), so a finished trial that Tune restarts after an
    interruption replays its results instead of training again."""
    from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY, TuneReportCallback

    from aiprod.monitoring.training_metrics import trial_report

    trial = record_uri.rstrip("/").rsplit("/", 2)[-2]  # SEARCH/trials/<trial id>/RESULTS_FILE

    class ValidationReport(TuneReportCallback):
        def __init__(self) -> None:
            super().__init__()
            self.objective = objective
            self.last = time.monotonic()
            self.records: list[dict[str, Any]] = []

        def after_report(self, run_context, metrics, checkpoint) -> None:
            if checkpoint is None:  # the run's final report carries no weights to judge
                return
            result = dict(metrics[0])
            result["train_interval_s"] = time.monotonic() - self.last
            started = time.monotonic()
            with checkpoint.as_directory() as local:
                result.update(self.objective(local))
            result["val_s"] = time.monotonic() - started
            trial_report(trial, result)  # Prometheus, through Ray's metrics agent
            result[CHECKPOINT_PATH_KEY] = checkpoint.path
            self.records.append(result)
            storage.write_text_atomic(record_uri, "".join(json.dumps(r) + "\n" for r in self.records))
            self.last = time.monotonic()
            self._training_actor_item_queue.put(result)

    return ValidationReport()


def finished_results(run: str) -> list[dict[str, Any]] | None:
    """The recorded results of a trial whose training run finished, else None."""
    summary, record = storage.join(run, SUMMARY_FILE), storage.join(run, RESULTS_FILE)
    if not (storage.exists(summary) and storage.exists(record)):
        return None
    if json.loads(storage.read_text(summary)).get("status") != "finished":
        return None
    return [json.loads(line) for line in storage.read_text(record).splitlines() if line.strip()]


def run_trial(params: dict[str, Any], context: TrialContext) -> None:
    """Tune function trainable: train the tuned phase(s) with `params` applied."""
    import ray.tune

    from aiprod.training.runner import RunOptions, run_curriculum

    base = validate(context.config)
    sampled = {key: params[key] for key in base.tune.space}
    cfg = base.with_overrides(space.trial_overrides(base, sampled))
    phases = space.tuned_phases(base)
    trial_id = ray.tune.get_context().get_trial_id()
    run = storage.join(context.search_uri, TRIALS_DIR, trial_id)
    done = finished_results(run)
    if done is not None:  # trained before an interruption, restarted by Tuner.restore: replay
        for result in done:
            ray.tune.report(result)
        return
    storage.write_text_atomic(
        storage.join(context.search_uri, STARTS_DIR, f"{trial_id}-{uuid.uuid4().hex[:8]}.json"),
        json.dumps({"trial_id": trial_id, "params": sampled, "time": time.time()}),
    )
    opts = RunOptions(
        data=context.data, storage=storage.join(context.search_uri, TRIALS_DIR), run_name=trial_id,
        start_phase=phases.start, end_phase=phases.stop - 1, workers=base.tune.workers_per_trial,
        replace=True,  # an unfinished trial restarted by --resume begins again
    )
    run_curriculum(cfg, opts, callbacks=[make_report_callback(context.objective, storage.join(run, RESULTS_FILE))])
