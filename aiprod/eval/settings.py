"""What an evaluation generates at: the clip size and the prompt languages, from a model's config
(with the command line's overrides applied: `Config.with_overrides`)."""

from __future__ import annotations

from dataclasses import dataclass

from aiprod.config import Config
from aiprod.data import captions as cap

__all__ = ["ClipSpec", "clip_spec", "eval_languages"]


@dataclass(frozen=True)
class ClipSpec:
    frames: int
    height: int
    width: int
    fps: float


def clip_spec(cfg: Config) -> ClipSpec:
    """eval.{frames,height,width,fps}, each defaulting to the last curriculum phase's."""
    last = cfg.curriculum.phases[-1]
    e = cfg.eval
    return ClipSpec(e.frames or last.frames, e.height or last.height, e.width or last.width, e.fps or last.fps)


def eval_languages(cfg: Config) -> list[str]:
    languages = cfg.eval.languages or list(cap.LANGUAGES)
    for language in languages:
        cap.check_language(language)
    return languages
