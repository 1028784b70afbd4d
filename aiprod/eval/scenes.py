"""The evaluation's prompts: ground-truth scenes of the synthetic grammar, each with its reference
clip and its captions in every language (`eval.num_samples` scenes of levels `eval.levels`, seeds
from `eval.prompt_seed`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from aiprod.config import Config
from aiprod.data.synthetic import make_clip
from aiprod.eval import judge as judging
from aiprod.eval.settings import ClipSpec

__all__ = ["EvalCase", "build_cases"]

SEARCH_SEEDS = 64  # scene seeds tried for the wanted motion direction before any is taken


@dataclass
class EvalCase:
    """One ground-truth scene: its reference clip and its truth (captions in every language)."""

    index: int
    level: int
    seed: int
    reference: np.ndarray
    meta: dict[str, Any]


def build_cases(cfg: Config, spec: ClipSpec) -> list[EvalCase]:
    """`eval.num_samples` scenes, levels in turn and, within a level, motion directions in turn (the
    first unused seed from `eval.prompt_seed` whose scene moves that way), so that a model which
    always draws one direction scores the chance level of 1/4, not the share of a lucky draw."""
    levels, used = cfg.eval.levels, set()
    cases = []
    for i in range(cfg.eval.num_samples):
        level = levels[i % len(levels)]
        wanted = judging.DIRECTIONS[(i // len(levels)) % len(judging.DIRECTIONS)]
        seed = cfg.eval.prompt_seed
        for _ in range(SEARCH_SEEDS):
            while seed in used:
                seed += 1
            reference, meta = make_clip(level, seed, spec.frames, spec.height, spec.width, spec.fps, "en")
            if meta["motion_direction"] == wanted:
                break
            seed += 1
        else:  # a level whose scenes rarely move one way: take the next scene as it is
            seed = min(s for s in range(cfg.eval.prompt_seed, seed + 1) if s not in used)
            reference, meta = make_clip(level, seed, spec.frames, spec.height, spec.width, spec.fps, "en")
        used.add(seed)
        cases.append(EvalCase(i, level, seed, reference, meta))
    return cases
