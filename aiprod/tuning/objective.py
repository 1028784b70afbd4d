"""The search's validation figure: comparable across λ, unlike the training loss.

The training loss is measured against noise drawn with the trial's own λ, so two trials with
different λ solve different regression problems and their losses cannot be compared. The figure
here never looks at training noise: from each checkpoint the pipeline generates clips for the
captions of the held-out reference clips with fixed seeds (`tune.val_seeds`, else `eval.seeds`;
`eval.steps` sampler steps), and `val_objective` is the Fréchet distance between the features of
those generated clips and of the reference clips themselves, with the evaluation report's extractor
(FD-randproj3d, or real FVD when `eval.i3d_weights` is set). Lower is better. It sees colour, layout
and motion at several scales and rewards both fidelity and variety.

The reference clips are the evaluation's own: the first `tune.val_clips` clips that
aiprod.eval.heldout reads at the evaluation clip size (`eval.frames` etc., by default the last
phase's), which jobs/evaluate.py compares with too. So the search optimises the figure the release
is judged on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aiprod.config import Config
from aiprod.eval.heldout import read_heldout
from aiprod.eval.settings import ClipSpec, clip_spec

log = logging.getLogger("aiprod.tuning")


@dataclass
class Objective:
    """The reference clips' captions and features (computed once) plus how to sample from a checkpoint."""

    spec: ClipSpec  # the size generated clips are made at: the reference clips'
    keys: list[str]  # sample keys of the reference clips
    captions: list[tuple[str, str]]  # (caption, language) of each reference clip
    reference: np.ndarray  # features of the reference clips [N, D]
    seeds: list[int]
    steps: int
    i3d_weights: str | None = None
    extractor_name: str = ""
    extractor_key: str = ""
    _extractor: Any = field(default=None, repr=False)

    @classmethod
    def from_data(cls, data_uri: str, cfg: Config) -> Objective:
        """The objective on the first `tune.val_clips` held-out clips of `data_uri`."""
        from aiprod.eval.metrics import make_extractor

        spec = clip_spec(cfg)
        heldout = read_heldout(data_uri, cfg.tune.val_clips, spec, seed=cfg.data.seed)
        if len(heldout.clips) < 2:
            raise ValueError(f"tune: the objective needs >= 2 held-out clips of {spec.frames} frames at {spec.fps} "
                             f"fps in {data_uri}, got {len(heldout.clips)} (skipped: {heldout.skipped[:3]}); "
                             "add held-out data (data.heldout_fraction) or lower tune.val_clips")
        log.info("tune: objective on %d %s clips of %s", len(heldout.clips), heldout.split, data_uri)
        extractor = make_extractor(cfg.eval.i3d_weights)
        return cls(
            spec=spec,
            keys=[c.key for c in heldout.clips],
            captions=[(c.caption, c.language or "en") for c in heldout.clips],
            reference=extractor(heldout.frames()),
            seeds=list(cfg.tune.val_seeds if cfg.tune.val_seeds is not None else cfg.eval.seeds),
            steps=cfg.eval.steps,
            i3d_weights=cfg.eval.i3d_weights,
            extractor_name=extractor.name,
            extractor_key=extractor.key,
        )

    def generate(self, checkpoint_dir: str) -> list[np.ndarray]:
        from aiprod.diffusion.pipeline import VideoPipeline

        pipe = VideoPipeline.from_checkpoint(checkpoint_dir, device="cpu")
        s = self.spec
        return [
            pipe.generate(caption, language, seconds=s.frames / s.fps, fps=s.fps, height=s.height,
                          width=s.width, seed=seed, steps=self.steps)
            for caption, language in self.captions for seed in self.seeds
        ]

    def __call__(self, checkpoint_dir: str) -> dict[str, float]:
        from aiprod.eval.metrics import frechet_distance, make_extractor

        if self._extractor is None:
            self._extractor = make_extractor(self.i3d_weights)
        generated = self._extractor(self.generate(checkpoint_dir))
        value = frechet_distance(generated, self.reference)
        return {"val_objective": value, f"val_{self.extractor_key}": value}
