"""The quality report of a model: generate for synthetic-grammar prompts, measure, write JSON + HTML.

    report = evaluate("out/runs/demo/final", "out/report", data_uri="out/shards/demo")
    ok, reasons = passes_gates(report, cfg.eval.gates)

What is measured (`report["metrics"]`, the numbers release gates look at):
- `psnr`, `ssim`: VAE reconstruction of held-out clips (the `heldout` split of `--data`; without
  data, the synthetic reference clips) — how faithfully the model's latent space holds video;
  `vae.per_clip` has them per clip (key, size, bucket) and `vae.per_bucket` per bucket: each clip is
  read at the last phase's bucket nearest its aspect ratio (its one size when it lists no buckets);
  no ground truth is needed, so real footage is measured the same way;
- `sample_psnr`, `sample_ssim`: each generated video against the ground-truth clip its prompt was
  made from (a loose, pixel-level agreement with the prompt's scene);
- `temporal_coherence` of the generated videos (`reference_temporal_coherence` for the references);
- a Fréchet distance between generated videos and references under its extractor's own key:
  `fvd` only with real I3D weights (`eval.i3d_weights`), else `fd_randproj3d`;
- `alignment_accuracy` (mean over attributes) and `alignment_<attribute>` from the judge.

Prompts: `eval.num_samples` ground-truth scenes (levels `eval.levels`, seeds from
`eval.prompt_seed`), each captioned in every evaluation language and generated with every seed in
`eval.seeds`, so languages are compared on the same scenes.
"""

from __future__ import annotations

import json
import math
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from aiprod import model_dir, plots, storage
from aiprod.config import Config
from aiprod.eval import metrics as m
from aiprod.eval.gates import passes_gates
from aiprod.eval.heldout import read_heldout
from aiprod.eval.measure import ModelResult, evaluate_model, vae_per_clip_and_bucket
from aiprod.eval.report_html import render_html
from aiprod.eval.run_log import find_metrics_log, phase_summary, read_metrics_log
from aiprod.eval.scenes import EvalCase, build_cases
from aiprod.eval.settings import ClipSpec, clip_spec, eval_buckets, eval_languages

__all__ = ["evaluate", "json_safe", "reference_clips", "write_reports"]

FORMAT = "aiprod-eval/1"


def _load_pipeline(ref: str, device: str, alternate: bool = False):
    from aiprod.diffusion.pipeline import VideoPipeline

    return VideoPipeline.from_checkpoint(ref, device=device, alternate=alternate)


def reference_clips(cfg: Config, spec: ClipSpec, data_uri: str | None,
                    cases: list[EvalCase]) -> tuple[list[np.ndarray], dict[str, Any]]:
    """(clips, report["data"]): the held-out clips of `data_uri` (aiprod.eval.heldout, the clips the
    Tune objective compares with too), else the scenes' synthetic references."""
    if not data_uri:
        clips = [c.reference for c in cases]
        shape = f"{spec.frames}x{spec.height}x{spec.width}"
        return clips, {"uri": None, "split": None, "clips": len(clips), "skipped": [],
                       "source": "synthetic references",
                       "per_clip": [{"key": f"scene-{c.index}", "width": spec.width, "height": spec.height,
                                     "bucket": shape} for c in cases]}
    heldout = read_heldout(data_uri, cfg.eval.heldout_clips, spec, seed=cfg.data.seed, buckets=eval_buckets(cfg))
    if not heldout.clips:
        raise ValueError(f"--data {data_uri}: no usable clips of {spec.frames} frames at {spec.fps} fps "
                         f"(skipped: {heldout.skipped[:3]})")
    return heldout.frames(), {**heldout.summary(), "source": heldout.split,
                              "per_clip": [{"key": c.key, "width": c.width, "height": c.height, "bucket": c.bucket}
                                           for c in heldout.clips]}


def evaluate(checkpoint: str, out_dir: str | os.PathLike, data_uri: str | None = None,
             compare: str | None = None, overrides: list[str] | tuple[str, ...] = (), device: str = "cpu",
             label: str | None = None, compare_label: str | None = None) -> dict[str, Any]:
    """Evaluate a weights directory (and optionally a second one side by side; without one, the
    other weights an EMA run's final/ keeps, raw or EMA); write report.json, report.html and the PNGs
    into `out_dir`; return the report."""
    started = time.monotonic()
    pipe = _load_pipeline(checkpoint, device)
    cfg = pipe.cfg.with_overrides(overrides)
    spec, languages = clip_spec(cfg), eval_languages(cfg)
    cases = build_cases(cfg, spec)
    extractor = m.make_extractor(cfg.eval.i3d_weights, device)
    clips, data = reference_clips(cfg, spec, data_uri, cases)

    features = extractor(clips)
    results = [evaluate_model(pipe, cfg, cases, spec, languages, clips, features, extractor,
                              label or Path(str(checkpoint).rstrip("/")).name)]
    alternate = None if compare else model_dir.alternate_file(checkpoint)
    if alternate:  # final/ of an EMA run: judge the weights it did not export beside the ones it did
        compare, compare_label = str(checkpoint), f"{label or Path(str(checkpoint).rstrip('/')).name} ({alternate})"
    if compare:
        other = _load_pipeline(compare, device, alternate=alternate is not None)
        results.append(evaluate_model(other, cfg, cases, spec, languages, clips, features, extractor,
                                      compare_label or Path(str(compare).rstrip("/")).name))
    for result in results:
        vae_per_clip_and_bucket(result.section["vae"], data["per_clip"])
    results[0].section["model"]["checkpoint"] = str(checkpoint)
    if compare:
        results[1].section["model"]["checkpoint"] = str(compare)
        results[1].section["model"]["weights"] = alternate or model_dir.WEIGHTS

    log_uri = find_metrics_log(str(checkpoint))
    records = read_metrics_log(log_uri)
    ok, reasons = passes_gates(results[0].section, cfg.eval.gates)
    report = {
        "format": FORMAT,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **{k: v for k, v in results[0].section.items()},
        "gates": {"thresholds": dict(cfg.eval.gates), "passed": ok, "reasons": reasons},
        "settings": {"frames": spec.frames, "height": spec.height, "width": spec.width, "fps": spec.fps,
                     "steps": cfg.eval.steps, "guidance": cfg.diffusion.guidance, "seeds": list(cfg.eval.seeds),
                     "prompt_seed": cfg.eval.prompt_seed, "levels": list(cfg.eval.levels), "languages": languages,
                     "psnr_cap": cfg.eval.psnr_cap, "coherence_grid": cfg.eval.coherence_grid, "device": device},
        "counts": {"scenes": len(cases), "languages": len(languages), "seeds": len(cfg.eval.seeds),
                   "videos": len(results[0].videos), "vae_clips": len(clips), "fd_reference_clips": len(clips)},
        "extractor": {"name": extractor.name, "key": extractor.key, "dim": extractor.dim,
                      "weights": getattr(extractor, "weights", None),
                      "note": "real FVD (I3D)" if extractor.key == "fvd" else
                              "fixed random 3D-conv projection; comparable within this project only, not FVD"},
        "data": data,
        "scenes": [{"case": c.index, "level": c.level, "seed": c.seed, "captions": c.meta["captions"],
                    "colours": c.meta["colours"], "count": c.meta["count"],
                    "direction": c.meta["motion_direction"]} for c in cases],
        "run": {"metrics_log": log_uri, "phases": phase_summary(records)},
        "compare": results[1].section if compare else None,
    }
    report["timing"]["total_s"] = round(time.monotonic() - started, 2)
    write_reports(report, results, cases, Path(out_dir), cfg, records)
    return report


# ----------------------------------------------------------------------------- writing


def json_safe(value: Any) -> Any:
    """Non-finite floats -> None (JSON has no inf/NaN); numpy scalars -> Python numbers."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def _write_json(report: dict[str, Any], path: Path) -> None:
    text = json.dumps(json_safe(report), indent=2, ensure_ascii=False, allow_nan=False)
    storage.write_text_atomic(path, text + "\n")


def write_reports(report: dict[str, Any], results: list[ModelResult], cases: list[EvalCase], out: Path,
                  cfg: Config, records: list[dict[str, Any]]) -> None:
    """Contact sheets, loss curves, report.json and report.html under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "sheets").mkdir(exist_ok=True)
    languages, seed = report["settings"]["languages"], report["settings"]["seeds"][0]
    letters = [chr(ord("A") + i) for i in range(len(results))]
    legend = "   ".join(f"{letter} = {r.section['label']}" for letter, r in zip(letters, results))
    frames, px = cfg.eval.sheet_frames, cfg.eval.sheet_frame_px
    overview_rows = []
    for case in cases:
        rows = [("reference", case.reference)]
        for letter, result in zip(letters, results):
            rows += [(f"{letter} {language} seed {seed}", result.videos[(case.index, language, seed)])
                     for language in languages]
        sheet_path = out / "sheets" / f"scene-{case.index:03d}.png"
        sheet_path.write_bytes(plots.labelled_contact_sheet_png(rows, frames, px, f"scene {case.index}: {legend}"))
        report["scenes"][case.index]["sheet"] = f"sheets/{sheet_path.name}"
        overview_rows.append((f"{case.index} reference", case.reference))
        overview_rows += [(f"{case.index} {letter} {languages[0]}", r.videos[(case.index, languages[0], seed)])
                          for letter, r in zip(letters, results)]
    (out / "contact_sheet.png").write_bytes(
        plots.labelled_contact_sheet_png(overview_rows, frames, px, f"{legend}   (seed {seed})"))
    report["contact_sheet"] = "contact_sheet.png"
    curves = plots.phase_loss_curves_png(records)
    if curves is not None:
        (out / "loss_curves.png").write_bytes(curves)
    report["run"]["loss_curves"] = "loss_curves.png" if curves is not None else None
    _write_json(report, out / "report.json")
    storage.write_text_atomic(out / "report.html", render_html(report, __doc__ or ""))
