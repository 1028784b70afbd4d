"""Bad training data: the errors that name it, reading them out of Ray's wrapping, and the counter
of bad samples that stops a dataset once more than `data.max_bad_fraction` of its samples failed.

Samples that fail to decode are dropped, logged with their key and counted by a small actor (one
per building process, a tally per dataset); once too many have failed, the step that counted them
raises `BadSamplesError` naming the first bad keys, which stops the dataset and so the training
workers iterating it.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any


class BadSamplesError(RuntimeError):
    """Too many samples failed to decode; the message names the first bad keys."""


class TrainingDataError(RuntimeError):
    """A run stopped on bad training data (every worker, together, at the same step): not retried
    as a worker failure, since a restarted worker would read the same bytes."""


DATA_ERROR_NAMES = ("BadSamplesError", "ShardError", "LatentCacheError", "LatentCacheMismatch")
_DATA_ERROR_LINE = re.compile(rf"^(?:[\w.]+\.)?(?:{'|'.join(DATA_ERROR_NAMES)}): (.+)$", re.MULTILINE)


def data_error_message(exc: BaseException) -> str | None:
    """The message of the bad-data error inside `exc`, None when `exc` is not about the data.

    Ray Data raises a UDF's error in the consumer as a task error around a UserCodeException whose
    cause did not survive pickling: only the remote traceback text names ours, so that text is
    read (its last line naming one of DATA_ERROR_NAMES) when no exception in the chain is ours."""
    stack, seen = [exc], set()
    while stack:
        err = stack.pop()
        if id(err) in seen:
            continue
        seen.add(id(err))
        wrapped = getattr(err, "cause", None)  # a RayTaskError, maybe a dynamic subclass of ours
        if not isinstance(wrapped, BaseException) and any(c.__name__ in DATA_ERROR_NAMES for c in type(err).__mro__):
            return (str(err).strip().splitlines() or [type(err).__name__])[0]  # Ray may append lines of its own
        stack.extend(e for e in (wrapped, err.__context__, err.__cause__) if isinstance(e, BaseException))
    found = _DATA_ERROR_LINE.findall(str(exc))
    return found[-1].strip() if found else None


# ----------------------------------------------------------------------------- counting


def _counter_class():
    import ray

    @ray.remote(num_cpus=0)
    class BadSampleCounter:
        """Good and bad sample counts of the datasets one process builds, a tally per dataset.

        One actor for all of them, not one each: an actor is a process of its own (seconds of CPU
        to start), and a curriculum builds a dataset per phase."""

        def __init__(self) -> None:
            self.tallies: defaultdict[str, dict[str, Any]] = defaultdict(
                lambda: {"good": 0, "bad": 0, "bad_keys": []})

        def add(self, dataset: str, limits: tuple[float, int, int], good: int,
                bad: list[tuple[str, str]]) -> str | None:
            """Record a batch; the error message once bad samples pass the allowed fraction.

            `limits` = (max_fraction, expected samples, bad keys reported), sent with every batch so
            that no registration call has to arrive first."""
            max_fraction, expected, keys_reported = limits
            tally = self.tallies[dataset]
            tally["good"] += good
            tally["bad"] += len(bad)
            for key, reason in bad:  # a skipped shard counts each of its samples under its own name, once
                if len(tally["bad_keys"]) >= keys_reported:
                    break
                if all(key != named for named, _ in tally["bad_keys"]):
                    tally["bad_keys"].append((key, reason))
            seen = tally["good"] + tally["bad"]
            allowed = max_fraction * max(seen, expected)
            if tally["bad"] > allowed:
                named = "; ".join(f"{key}: {reason}" for key, reason in tally["bad_keys"])
                return (f"{tally['bad']} of {seen} samples failed to decode, more than data.max_bad_fraction="
                        f"{max_fraction:g} of {max(seen, expected)}; first bad keys: {named}")
            return None

        def stats(self, dataset: str) -> dict[str, Any]:
            tally = self.tallies[dataset]
            return {"good": tally["good"], "bad": tally["bad"], "bad_keys": [k for k, _ in tally["bad_keys"]]}

    return BadSampleCounter


_counters: dict[str, Any] = {}  # Ray job id -> this process's BadSampleCounter


def process_counter():
    """This process's BadSampleCounter, started by the first dataset it builds in this Ray job.

    Not a named actor found by every process: its owner would be whichever process asked first,
    and it would die with that process (a finished Tune trial, say) under the others' datasets."""
    import ray

    job = ray.get_runtime_context().get_job_id()
    if job not in _counters:
        _counters[job] = _counter_class().remote()
    return _counters[job]


def bad_sample_stats(dataset) -> dict[str, Any]:
    """{good, bad, bad_keys} so far for a dataset made by `build_phase_dataset`."""
    import ray

    counter, dataset_id = dataset.bad_sample_counter
    return ray.get(counter.stats.remote(dataset_id))
