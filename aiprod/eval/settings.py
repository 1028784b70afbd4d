"""What an evaluation generates at: the clip size and the prompt languages, from a model's config
(with the command line's overrides applied: `Config.with_overrides`)."""

from __future__ import annotations

from dataclasses import dataclass

from aiprod.config import Config
from aiprod.data import captions as cap
from aiprod.data.clips import ClipShape, phase_buckets

__all__ = ["ClipSpec", "clip_spec", "eval_buckets", "eval_languages"]


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


def eval_buckets(cfg: Config) -> list[ClipShape]:
    """The shapes held-out clips are read at (each clip at the one nearest its aspect ratio): the last
    phase's buckets, unless eval.{frames,height,width} set a size; else the one clip_spec shape."""
    e = cfg.eval
    if e.frames is None and e.height is None and e.width is None:
        return phase_buckets(cfg.curriculum.phases[-1])
    spec = clip_spec(cfg)
    return [ClipShape(spec.frames, spec.height, spec.width)]


def eval_languages(cfg: Config) -> list[str]:
    languages = cfg.eval.languages or list(cap.LANGUAGES)
    for language in languages:
        cap.check_language(language)
    return languages
