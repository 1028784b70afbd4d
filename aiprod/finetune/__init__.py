"""The continuous fine-tuning cycle (issue 25): new shards -> fine-tune the registry's production
-> evaluate the candidate beside production -> publish it with that report -> promote it, or send
an A/B share of Serve's traffic to it, only when it passes the release gates and is not worse than
production on the judge beyond a margin. `jobs/finetune.py` is its CLI; README "Continuous
fine-tuning" the user's guide.

Modules: `decision` (light: the cycle's key, the next version's name, the `compared_to` section and
the promotion rule) and `cycle` (plan_cycle, run_cycle: training, evaluation, publish, decision).

Idempotent: a cycle is keyed on (production version, sha256 of --data's index.json, mode, digest of
the config that shapes the weights and their evaluation, phases); its run is STORAGE/finetune-KEY and
its candidate's report.json records the key (`finetune`). A rerun resumes an unfinished run, reuses
a finished run's final/ and RUN/report/, finds a published candidate instead of publishing another,
and then decides again: a promoted candidate (now production) or an A/B pointer already set is
left as it is, and the same JSON line comes out. Gates, margin and judge figures are not part of
the key, so changing them re-decides without training again.
"""

from aiprod.finetune.cycle import CycleOptions, Plan, plan_cycle, run_cycle
from aiprod.finetune.decision import CycleInputError, CycleKey, Decision, decide, next_version

__all__ = ["CycleInputError", "CycleKey", "CycleOptions", "Decision", "Plan", "decide", "next_version",
           "plan_cycle", "run_cycle"]
