"""The quality report of a model: generate for synthetic-grammar prompts, measure, write JSON + HTML.

    report = evaluate("out/runs/demo/final", "out/report", data_uri="out/shards/demo")
    ok, reasons = passes_gates(report, cfg.eval.gates)

What is measured (`report["metrics"]`, the numbers release gates look at):
- `psnr`, `ssim`: VAE reconstruction of held-out clips (the `heldout` split of `--data`; without
  data, the synthetic reference clips) — how faithfully the model's latent space holds video;
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

import html
import io
import json
import math
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from aiprod import storage
from aiprod.config import Config, apply_override, validate
from aiprod.data import captions as cap
from aiprod.data.synthetic import make_clip
from aiprod.eval import judge as judging
from aiprod.eval import metrics as m
from aiprod.eval.gates import passes_gates

__all__ = ["EvalCase", "evaluate", "generate_and_judge", "passes_gates", "write_reports"]

FORMAT = "aiprod-eval/1"
METRICS_LOG = "metrics.jsonl"
LOSS_TAIL = 5  # steps averaged for a phase's final loss


@dataclass
class EvalCase:
    """One ground-truth scene: its reference clip and its truth (captions in every language)."""

    index: int
    level: int
    seed: int
    reference: np.ndarray
    meta: dict[str, Any]


@dataclass
class ClipSpec:
    frames: int
    height: int
    width: int
    fps: float


@dataclass
class ModelResult:
    section: dict[str, Any]
    videos: dict[tuple[int, str, int], np.ndarray] = field(default_factory=dict)


# ------------------------------------------------------------------------------ settings


def with_overrides(cfg: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    tree = cfg.to_dict()
    for override in overrides:
        apply_override(tree, override)
    return validate(tree)


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


SEARCH_SEEDS = 64  # scene seeds tried for the wanted motion direction before any is taken


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


# ------------------------------------------------------------------------------ held-out data


def heldout_clips(data_uri: str, count: int, spec: ClipSpec, seed: int = 0) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Up to `count` clips of the `heldout` split (the train split when there is none), decoded
    centred at the evaluation clip size; samples too short or undecodable are skipped and counted."""
    from aiprod.data import shards, video

    index = shards.read_index(data_uri)
    if index is None:
        raise FileNotFoundError(f"--data {data_uri}: no {shards.INDEX} (build shards with jobs/make_shards.py)")
    split = "heldout" if index.get("heldout") else "train"
    clips, skipped = [], []
    for shard, _ in shards.shard_uris(data_uri, split, index):
        for key, parts in shards.iter_tar_samples(io.BytesIO(storage.read_bytes(shard))):
            if len(clips) >= count:
                break
            try:
                clips.append(video.decode_clip(parts["mp4"], spec.frames, spec.fps, spec.height, spec.width,
                                               start="center", seed=seed, name=key))
            except (video.VideoError, KeyError) as exc:
                skipped.append(f"{key}: {exc}")
        if len(clips) >= count:
            break
    return clips, {"uri": str(data_uri), "split": split, "clips": len(clips), "skipped": skipped}


# ---------------------------------------------------------------------------- run records


def find_metrics_log(checkpoint: str) -> str | None:
    """metrics.jsonl of the run a checkpoint came from: in it, beside it or one level up (RUN/final,
    RUN/checkpoint-..., RUN/best/phase-N); for a registry entry, next to its recorded source."""
    candidates = [checkpoint]
    entry = storage.join(checkpoint, "entry.json")
    if storage.exists(entry):
        source = json.loads(storage.read_text(entry)).get("source")
        if source:
            candidates.append(source)
    for base in candidates:
        base = str(base).rstrip("/")
        for up in range(3):
            uri = base
            for _ in range(up):
                uri = uri.rsplit("/", 1)[0] if "/" in uri else uri
            if storage.exists(storage.join(uri, METRICS_LOG)):
                return storage.join(uri, METRICS_LOG)
    return None


def phase_summary(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per curriculum phase: steps logged, first / final (mean of the last few) / best loss."""
    by_phase: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if "event" not in r and isinstance(r.get("loss"), (int, float)) and "phase" in r:
            by_phase[int(r["phase"])].append(r)
    rows = []
    for phase, steps in sorted(by_phase.items()):
        losses = [float(s["loss"]) for s in steps if math.isfinite(float(s["loss"]))]
        if not losses:
            continue
        rows.append({"phase": phase, "name": steps[-1].get("phase_name", str(phase)), "steps": len(steps),
                     "first_loss": losses[0], "final_loss": float(np.mean(losses[-LOSS_TAIL:])),
                     "best_loss": min(losses)})
    return rows


def plot_losses(records: list[dict[str, Any]], out: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_phase: dict[int, list[tuple[int, float]]] = defaultdict(list)
    names: dict[int, str] = {}
    for r in records:
        if "event" not in r and isinstance(r.get("loss"), (int, float)) and math.isfinite(r["loss"]):
            by_phase[int(r["phase"])].append((int(r.get("global_step", len(by_phase[int(r["phase"])]))), r["loss"]))
            names[int(r["phase"])] = r.get("phase_name", str(r["phase"]))
    if not by_phase:
        return False
    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=110)
    for phase, points in sorted(by_phase.items()):
        xs, ys = zip(*points)
        ax.plot(xs, ys, label=f"{phase} {names[phase]}", linewidth=1.2)
    ax.set_xlabel("global step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return True


# ------------------------------------------------------------------------------- evaluation


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


def _load_pipeline(ref: str, device: str):
    from aiprod.diffusion.pipeline import VideoPipeline

    return VideoPipeline.from_checkpoint(ref, device=device)


def evaluate(checkpoint: str, out_dir: str | os.PathLike, data_uri: str | None = None,
             compare: str | None = None, overrides: list[str] | tuple[str, ...] = (), device: str = "cpu",
             label: str | None = None, compare_label: str | None = None) -> dict[str, Any]:
    """Evaluate a weights directory (and optionally a second one side by side); write report.json,
    report.html and the PNGs into `out_dir`; return the report."""
    started = time.monotonic()
    pipe = _load_pipeline(checkpoint, device)
    cfg = with_overrides(pipe.cfg, overrides)
    spec, languages = clip_spec(cfg), eval_languages(cfg)
    cases = build_cases(cfg, spec)
    extractor = m.make_extractor(cfg.eval.i3d_weights, device)
    if data_uri:
        clips, data = heldout_clips(data_uri, cfg.eval.heldout_clips, spec, seed=cfg.data.seed)
        if not clips:
            raise ValueError(f"--data {data_uri}: no usable clips of {spec.frames} frames at {spec.fps} fps "
                             f"(skipped: {data['skipped'][:3]})")
        data["source"] = data["split"]
    else:
        clips = [c.reference for c in cases]
        data = {"uri": None, "split": None, "clips": len(clips), "skipped": [], "source": "synthetic references"}

    features = extractor(clips)
    results = [evaluate_model(pipe, cfg, cases, spec, languages, clips, features, extractor,
                              label or Path(str(checkpoint).rstrip("/")).name)]
    if compare:
        other = _load_pipeline(compare, device)
        results.append(evaluate_model(other, cfg, cases, spec, languages, clips, features, extractor,
                                      compare_label or Path(str(compare).rstrip("/")).name))
    results[0].section["model"]["checkpoint"] = str(checkpoint)
    if compare:
        results[1].section["model"]["checkpoint"] = str(compare)

    log_uri = find_metrics_log(str(checkpoint))
    records = []
    if log_uri:
        for line in storage.read_text(log_uri).splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line of a run still writing
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


def _frames_row(video: np.ndarray, count: int, px: int) -> np.ndarray:
    """`count` evenly spaced frames, each `px` high, side by side."""
    from PIL import Image

    idx = np.linspace(0, len(video) - 1, min(count, len(video))).round().astype(int)
    h, w = video.shape[1:3]
    size = (max(1, round(w * px / h)), px)
    resample = Image.Resampling.NEAREST if px >= h else Image.Resampling.BOX  # small clips keep crisp pixels
    frames = [np.asarray(Image.fromarray(video[i]).resize(size, resample)) for i in idx]
    gap = np.full((px, 2, 3), 255, np.uint8)
    return np.concatenate([x for f in frames for x in (f, gap)][:-1], axis=1)


def contact_sheet(rows: list[tuple[str, np.ndarray]], frames: int, px: int, title: str = ""):
    """A PIL image: an optional title line, then one labelled row of evenly spaced frames per
    (label, video)."""
    from PIL import Image, ImageDraw, ImageFont

    strips = [(label, _frames_row(video, frames, px)) for label, video in rows]
    label_w, pad, title_h = 110, 4, 20 if title else 0
    width = label_w + max(s.shape[1] for _, s in strips) + pad
    height = title_h + sum(s.shape[0] + pad for _, s in strips) + pad
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=12)
    if title:
        draw.text((pad, pad), title, fill=(0, 0, 0), font=font)
    y = pad + title_h
    for label, strip in strips:
        sheet.paste(Image.fromarray(strip), (label_w, y))
        draw.text((pad, y + strip.shape[0] // 2 - 7), label, fill=(0, 0, 0), font=font)
        y += strip.shape[0] + pad
    return sheet


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
        contact_sheet(rows, frames, px, f"scene {case.index}: {legend}").save(sheet_path)
        report["scenes"][case.index]["sheet"] = f"sheets/{sheet_path.name}"
        overview_rows.append((f"{case.index} reference", case.reference))
        overview_rows += [(f"{case.index} {letter} {languages[0]}", r.videos[(case.index, languages[0], seed)])
                          for letter, r in zip(letters, results)]
    contact_sheet(overview_rows, frames, px, f"{legend}   (seed {seed})").save(out / "contact_sheet.png")
    report["contact_sheet"] = "contact_sheet.png"
    report["run"]["loss_curves"] = "loss_curves.png" if plot_losses(records, out / "loss_curves.png") else None
    _write_json(report, out / "report.json")
    storage.write_text_atomic(out / "report.html", render_html(report))


# -------------------------------------------------------------------------------- HTML


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.4g}"
    return html.escape(str(value))


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


GROUP_COLUMNS = ["videos", "temporal_coherence", "sample_psnr", "sample_ssim", "alignment_colour",
                 "alignment_colours", "alignment_count", "alignment_direction", "alignment_all"]


def _group_table(title: str, sections: list[dict[str, Any]], key: str) -> str:
    rows = []
    for section in sections:
        for group, stats in section[key].items():
            rows.append([section["label"], group, *[stats.get(c) for c in GROUP_COLUMNS]])
    return f"<h2>{html.escape(title)}</h2>" + _table(["model", key.split("_", 1)[1], *GROUP_COLUMNS], rows)


def render_html(report: dict[str, Any]) -> str:
    sections = [report] + ([report["compare"]] if report.get("compare") else [])
    ext = report["extractor"]
    metric_names = list(report["metrics"])
    metrics_table = _table(["metric", *[s["label"] for s in sections]],
                           [[name, *[s["metrics"].get(name) for s in sections]] for name in metric_names])
    gates = report["gates"]
    gate_rows = [[g, t, report["metrics"].get(g.rsplit("_", 1)[0])] for g, t in gates["thresholds"].items()]
    gate_html = (f"<p class='{'pass' if gates['passed'] else 'fail'}'>Release gates: "
                 f"{'PASSED' if gates['passed'] else 'FAILED'}</p>" + _table(["gate", "threshold", "value"], gate_rows)
                 + "".join(f"<p class='fail'>{html.escape(r)}</p>" for r in gates["reasons"]))
    s = report["settings"]
    c = report["counts"]
    summary = _table(["", ""], [
        ["model", report["model"].get("checkpoint")], ["version", report["model"]["version"]],
        ["config hash", report["model"]["config_hash"]], ["created", report["created_at"]],
        ["clip", f"{s['frames']} frames, {s['height']}x{s['width']}, {s['fps']} fps"],
        ["sampler steps / guidance", f"{s['steps']} / {s['guidance']}"], ["seeds", ", ".join(map(str, s["seeds"]))],
        ["scenes x languages x seeds", f"{c['scenes']} x {c['languages']} x {c['seeds']} = {c['videos']} videos"],
        ["reference / held-out clips", f"{c['vae_clips']} ({report['data']['source']})"],
        ["Fréchet distance", f"{ext['name']} ({ext['note']})"],
        ["generation time", f"{report['timing']['generate_s']} s ({report['timing']['seconds_per_video']} s/video)"],
    ])
    run = report["run"]
    if run["phases"]:
        loss = (f"<img src='{run['loss_curves']}' alt='loss curves'>" if run.get("loss_curves") else "") + _table(
            ["phase", "name", "steps", "first loss", "final loss", "best loss"],
            [[p["phase"], p["name"], p["steps"], p["first_loss"], p["final_loss"], p["best_loss"]]
             for p in run["phases"]])
    else:
        loss = "<p>No metrics.jsonl found next to the checkpoint (no training run to show).</p>"
    scenes = []
    for scene in report["scenes"]:
        captions = "".join(f"<li lang='{html.escape(lang)}'><b>{html.escape(lang)}</b> {html.escape(text)}</li>"
                           for lang, text in scene["captions"].items() if lang in s["languages"])
        verdicts = [[sec["label"], smp["language"], smp["seed"], ", ".join(smp["judgement"]["colours"]),
                     smp["judgement"]["count"], smp["judgement"]["direction"], smp["temporal_coherence"], smp["psnr"],
                     " ".join(k for k, v in smp["scores"].items() if v) or "none"]
                    for sec in sections for smp in sec["samples"] if smp["case"] == scene["case"]]
        scenes.append(
            f"<h3>scene {scene['case']} (level {scene['level']}): {', '.join(scene['colours'])}; "
            f"{scene['count']} object(s); {scene['direction']}</h3><ul>{captions}</ul>"
            f"<img src='{scene.get('sheet', '')}' alt='contact sheet scene {scene['case']}'>"
            + _table(["model", "language", "seed", "judged colours", "count", "direction", "coherence", "psnr",
                      "correct"], verdicts))
    style = ("body{font-family:'Noto Sans',sans-serif;margin:24px;max-width:1200px}table{border-collapse:collapse;"
             "margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}"
             "th{background:#f2f2f2}.pass{color:#0a0;font-weight:bold}.fail{color:#c00;font-weight:bold}"
             "img{max-width:100%;image-rendering:pixelated;border:1px solid #ddd}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>AIPROD report "
            f"{html.escape(report['model']['version'])}</title><style>{style}</style></head><body>"
            f"<h1>Quality report: {html.escape(str(report['label']))}</h1>{summary}<h2>Release gates</h2>{gate_html}"
            f"<h2>Metrics</h2>{metrics_table}"
            + _group_table("Per language", sections, "per_language")
            + _group_table("Per level (curriculum phase)", sections, "per_level")
            + f"<h2>Training loss per phase</h2>{loss}<h2>Samples next to references</h2>"
            f"<img src='{report['contact_sheet']}' alt='contact sheet'>" + "".join(scenes)
            + "<h2>How the figures are made</h2><pre>" + html.escape(__doc__ or "") + "</pre></body></html>")
