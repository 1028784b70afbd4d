"""The search's validation figure: comparable across λ, unlike the training loss.

The training loss is measured against noise drawn with the trial's own λ, so two trials with
different λ solve different regression problems and their losses cannot be compared. The figure
here never looks at training noise: from each checkpoint the pipeline generates clips for the
captions of fixed held-out clips with fixed seeds (`eval.seeds`, `eval.steps` sampler steps), and
`val_objective` is the Fréchet distance between the features of those generated clips and of the
held-out clips themselves, with the evaluation report's extractor (FD-randproj3d, or real FVD when
`eval.i3d_weights` is set). Lower is better. It sees colour, layout and motion at several scales,
rewards both fidelity and variety, and is what jobs/evaluate.py reports, so the search optimises
the figure the release is judged on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aiprod.config import Config, PhaseConfig

log = logging.getLogger("aiprod.tuning")


@dataclass
class Objective:
    """Held-out clips (and their features, computed once) plus how to sample from a checkpoint."""

    phase: PhaseConfig
    captions: list[tuple[str, str]]  # (caption, language) of each held-out clip
    reference: np.ndarray  # features of the held-out clips [N, D]
    seeds: list[int]
    steps: int
    i3d_weights: str | None = None
    extractor_name: str = ""
    extractor_key: str = ""
    _extractor: Any = field(default=None, repr=False)

    @classmethod
    def from_heldout(cls, clips: list[dict[str, Any]], cfg: Config, phase: PhaseConfig) -> Objective:
        from aiprod.eval.metrics import make_extractor

        if len(clips) < 2:
            raise ValueError(f"tune: the objective needs >= 2 held-out clips for phase '{phase.name}', "
                             f"got {len(clips)}; add held-out data (data.heldout_fraction) or lower tune.val_clips")
        extractor = make_extractor(cfg.eval.i3d_weights)
        return cls(
            phase=phase,
            captions=[(c["caption"], c.get("language") or "en") for c in clips],
            reference=extractor([c["frames"] for c in clips]),
            seeds=list(cfg.tune.val_seeds if cfg.tune.val_seeds is not None else cfg.eval.seeds),
            steps=cfg.eval.steps,
            i3d_weights=cfg.eval.i3d_weights,
            extractor_name=extractor.name,
            extractor_key=extractor.key,
        )

    def generate(self, checkpoint_dir: str) -> list[np.ndarray]:
        from aiprod.diffusion.pipeline import VideoPipeline

        pipe = VideoPipeline.from_checkpoint(checkpoint_dir, device="cpu")
        p = self.phase
        return [
            pipe.generate(caption, language, seconds=p.frames / p.fps, fps=p.fps, height=p.height,
                          width=p.width, seed=seed, steps=self.steps)
            for caption, language in self.captions for seed in self.seeds
        ]

    def __call__(self, checkpoint_dir: str) -> dict[str, float]:
        from aiprod.eval.metrics import frechet_distance, make_extractor

        if self._extractor is None:
            self._extractor = make_extractor(self.i3d_weights)
        generated = self._extractor(self.generate(checkpoint_dir))
        value = frechet_distance(generated, self.reference)
        return {"val_objective": value, f"val_{self.extractor_key}": value}


def load_heldout(data: str, cfg: Config, phase: PhaseConfig, count: int) -> list[dict[str, Any]]:
    """The first `count` held-out clips of the phase's levels in key order (a fixed set); clips of
    every level, at the phase's clip size, when the held-out split has fewer than 2 of them."""
    from aiprod.data.dataset import build_phase_dataset

    def take(p: PhaseConfig) -> list[dict[str, Any]]:
        try:
            return build_phase_dataset(data, p, cfg.data, "heldout").sort("key").limit(count).take_all()
        except ValueError:  # no held-out shard holds these levels
            return []

    rows = take(phase)
    if len(rows) < 2:
        everything = phase.model_copy(update={"levels": [1, 2, 3, 4, 5]})
        log.warning("tune: %d held-out clips of levels %s; the objective uses held-out clips of every level",
                    len(rows), phase.levels)
        rows = take(everything)
    log.info("tune: objective on %d held-out clips (phase '%s' size)", len(rows), phase.name)
    return [{"frames": np.array(r["frames"]), "caption": r["caption"], "language": r.get("language")}
            for r in rows]
