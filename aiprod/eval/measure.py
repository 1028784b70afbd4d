"""One model under evaluation: generate a video per (scene, language, seed), judge and measure each,
and sum them up per language, per level and overall (the report section of that model)."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aiprod.config import Config
from aiprod.eval import judge as judging
from aiprod.eval import metrics as m
from aiprod.eval.scenes import EvalCase
from aiprod.eval.settings import ClipSpec

__all__ = ["ModelResult", "evaluate_model", "generate_and_judge", "vae_per_clip_and_bucket"]


@dataclass
class ModelResult:
    section: dict[str, Any]
    videos: dict[tuple[int, str, int], np.ndarray] = field(default_factory=dict)


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(values)) if values else None


def _group_stats(samples: list[dict[str, Any]]) -> dict[str, Any]:
    align = judging.alignment([(s["scores"], s["language"]) for s in samples])
    return {"videos": len(samples), "temporal_coherence": _mean([s["temporal_coherence"] for s in samples]),
            "sample_psnr": _mean([s["psnr"] for s in samples]), "sample_ssim": _mean([s["ssim"] for s in samples]),
            **{f"alignment_{a}": v for a, v in align["per_attribute"].items()}}


def generate_and_judge(pipe, cfg: Config, cases: list[EvalCase], spec: ClipSpec, languages: list[str],
                       label: str) -> tuple[list[dict[str, Any]], dict[tuple[int, str, int], np.ndarray]]:
    """Generate every (scene, language, seed) with `pipe`; per video its judgement, scores and
    pixel agreement with the scene's reference. Returns (samples, videos by (scene, language, seed))."""
    from tqdm import tqdm

    e = cfg.eval
    seeds = list(e.seeds)
    total = len(cases) * len(languages) * len(seeds)
    videos: dict[tuple[int, str, int], np.ndarray] = {}
    samples = []
    with tqdm(total=total, desc=f"generating ({label})", unit="video", dynamic_ncols=True) as bar:
        for case in cases:
            for language in languages:
                prompt = case.meta["captions"][language]
                for seed in seeds:
                    video = pipe.generate(prompt, language, seconds=spec.frames / spec.fps, fps=spec.fps,
                                          height=spec.height, width=spec.width, seed=seed, steps=e.steps)
                    reference = case.reference[: len(video)]
                    judgement = judging.judge_video(video)
                    samples.append({
                        "case": case.index, "level": case.level, "scene_seed": case.seed, "language": language,
                        "seed": seed, "prompt": prompt, "frames": int(video.shape[0]),
                        "truth": {"colours": case.meta["colours"], "count": case.meta["count"],
                                  "direction": case.meta["motion_direction"]},
                        "judgement": judgement.to_dict(), "scores": judging.score(judgement, case.meta),
                        "temporal_coherence": m.temporal_coherence(video, e.coherence_grid),
                        "psnr": m.psnr(reference, video, cap=e.psnr_cap) if len(reference) == len(video) else None,
                        "ssim": m.ssim(reference, video) if len(reference) == len(video) else None,
                    })
                    videos[(case.index, language, seed)] = video
                    bar.update(1)
    return samples, videos


def evaluate_model(pipe, cfg: Config, cases: list[EvalCase], spec: ClipSpec, languages: list[str],
                   reference_clips: list[np.ndarray], reference_features: np.ndarray,
                   extractor: m.FeatureExtractor, label: str) -> ModelResult:
    """Generate every (scene, language, seed) with `pipe` and measure it; the reference clips are
    reconstructed by the model's VAE, their features are the Fréchet distance's reference set."""
    e = cfg.eval
    total = len(cases) * len(languages) * len(e.seeds)
    started = time.monotonic()
    samples, videos = generate_and_judge(pipe, cfg, cases, spec, languages, label)
    generate_s = time.monotonic() - started

    vae = m.vae_reconstruction(pipe.model.vae, reference_clips, e.psnr_cap, pipe.device)
    generated = list(videos.values())
    fd = (m.frechet_distance(extractor(generated), reference_features)
          if len(generated) >= 2 and len(reference_features) >= 2 else None)
    align = judging.alignment([(s["scores"], s["language"]) for s in samples])
    metrics = {
        "psnr": vae["psnr"], "ssim": vae["ssim"],
        "sample_psnr": _mean([s["psnr"] for s in samples]), "sample_ssim": _mean([s["ssim"] for s in samples]),
        "temporal_coherence": _mean([s["temporal_coherence"] for s in samples]),
        "reference_temporal_coherence": _mean([m.temporal_coherence(c.reference, e.coherence_grid) for c in cases]),
        extractor.key: fd,
        "alignment_accuracy": align["accuracy"],
        **{f"alignment_{a}": v for a, v in align["per_attribute"].items() if a != "all"},
    }
    by_language: dict[str, list] = defaultdict(list)
    by_level: dict[int, list] = defaultdict(list)
    for s in samples:
        by_language[s["language"]].append(s)
        by_level[s["level"]].append(s)
    section = {
        "label": label,
        "model": {"version": pipe.version, "config_hash": pipe.cfg.hash(), "preset": pipe.cfg.preset},
        "metrics": metrics,
        "alignment": align,
        "per_language": {lang: _group_stats(rows) for lang, rows in sorted(by_language.items())},
        "per_level": {str(level): _group_stats(rows) for level, rows in sorted(by_level.items())},
        "vae": {k: v for k, v in vae.items() if k != "reconstructions"},
        "samples": samples,
        "timing": {"generate_s": round(generate_s, 2), "seconds_per_video": round(generate_s / max(total, 1), 3)},
    }
    return ModelResult(section, videos)


def vae_per_clip_and_bucket(vae: dict[str, Any], clips: list[dict[str, Any]]) -> dict[str, Any]:
    """Add `per_clip` ({key, width, height, bucket, psnr, ssim} per reference clip, in order) and
    `per_bucket` ({bucket: {clips, psnr, ssim}}, means) to a vae_reconstruction result, from the
    clips' descriptions (`clips[i]` is the clip measured i-th); returns `vae`."""
    if len(clips) != len(vae["psnr_per_clip"]):
        raise ValueError(f"{len(clips)} clip descriptions for {len(vae['psnr_per_clip'])} measured clips")
    vae["per_clip"] = [{**clip, "psnr": p, "ssim": s}
                       for clip, p, s in zip(clips, vae["psnr_per_clip"], vae["ssim_per_clip"])]
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in vae["per_clip"]:
        groups[row["bucket"]].append(row)
    vae["per_bucket"] = {bucket: {"clips": len(rows), "psnr": _mean([r["psnr"] for r in rows]),
                                  "ssim": _mean([r["ssim"] for r in rows])} for bucket, rows in sorted(groups.items())}
    return vae
