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


@dataclass
class TrialContext:
    """What every trial shares (passed with tune.with_parameters)."""

    config: dict[str, Any]  # the resolved base config
    data: str
    search_uri: str
    objective: Objective


def make_report_callback(objective: Objective):
    """A Ray Train callback: on each checkpoint report, the validation figure -> Tune."""
    from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY, TuneReportCallback

    class ValidationReport(TuneReportCallback):
        def __init__(self) -> None:
            super().__init__()
            self.objective = objective
            self.last = time.monotonic()

        def after_report(self, run_context, metrics, checkpoint) -> None:
            if checkpoint is None:  # the run's final report carries no weights to judge
                return
            result = dict(metrics[0])
            result["train_interval_s"] = time.monotonic() - self.last
            started = time.monotonic()
            with checkpoint.as_directory() as local:
                result.update(self.objective(local))
            result["val_s"] = time.monotonic() - started
            result[CHECKPOINT_PATH_KEY] = checkpoint.path
            self.last = time.monotonic()
            self._training_actor_item_queue.put(result)

    return ValidationReport()


def run_trial(params: dict[str, Any], context: TrialContext) -> None:
    """Tune function trainable: train the tuned phase(s) with `params` applied."""
    import ray.tune

    from aiprod.training.runner import RunOptions, run_curriculum

    base = validate(context.config)
    sampled = {key: params[key] for key in base.tune.space}
    cfg = space.apply(base, space.trial_overrides(base, sampled))
    phases = space.tuned_phases(base)
    trial_id = ray.tune.get_context().get_trial_id()
    storage.write_text_atomic(
        storage.join(context.search_uri, STARTS_DIR, f"{trial_id}-{uuid.uuid4().hex[:8]}.json"),
        json.dumps({"trial_id": trial_id, "params": sampled, "time": time.time()}),
    )
    opts = RunOptions(
        data=context.data, storage=storage.join(context.search_uri, TRIALS_DIR), run_name=trial_id,
        start_phase=phases.start, end_phase=phases.stop - 1, workers=base.tune.workers_per_trial,
        replace=True,  # an unfinished trial restarted by --resume begins again
    )
    callbacks = [make_report_callback(context.objective)]
    import inspect
    if "callbacks" in inspect.signature(run_curriculum).parameters:
        run_curriculum(cfg, opts, callbacks=callbacks)
    else:  # TEMPORARY (scratch): until runner.run_curriculum takes callbacks
        import ray.train.torch as rtt
        original = rtt.TorchTrainer

        class WithCallbacks(original):
            def __init__(self, *a, run_config=None, **kw):
                run_config.callbacks = list(run_config.callbacks or []) + callbacks
                super().__init__(*a, run_config=run_config, **kw)

        rtt.TorchTrainer = WithCallbacks
        try:
            run_curriculum(cfg, opts)
        finally:
            rtt.TorchTrainer = original
