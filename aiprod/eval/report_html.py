"""report.html: a report.json rendered as one self-contained page (tables; the PNGs beside it)."""

from __future__ import annotations

import html
import math
from typing import Any

__all__ = ["render_html"]

GROUP_COLUMNS = ["videos", "temporal_coherence", "sample_psnr", "sample_ssim", "alignment_colour",
                 "alignment_colours", "alignment_count", "alignment_direction", "alignment_all"]
STYLE = ("body{font-family:'Noto Sans',sans-serif;margin:24px;max-width:1200px}table{border-collapse:collapse;"
         "margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}"
         "th{background:#f2f2f2}.pass{color:#0a0;font-weight:bold}.fail{color:#c00;font-weight:bold}"
         "img{max-width:100%;image-rendering:pixelated;border:1px solid #ddd}")


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


def _group_table(title: str, sections: list[dict[str, Any]], key: str) -> str:
    rows = []
    for section in sections:
        for group, stats in section[key].items():
            rows.append([section["label"], group, *[stats.get(c) for c in GROUP_COLUMNS]])
    return f"<h2>{html.escape(title)}</h2>" + _table(["model", key.split("_", 1)[1], *GROUP_COLUMNS], rows)


def _gates(report: dict[str, Any]) -> str:
    gates = report["gates"]
    rows = [[g, t, report["metrics"].get(g.rsplit("_", 1)[0])] for g, t in gates["thresholds"].items()]
    return (f"<p class='{'pass' if gates['passed'] else 'fail'}'>Release gates: "
            f"{'PASSED' if gates['passed'] else 'FAILED'}</p>" + _table(["gate", "threshold", "value"], rows)
            + "".join(f"<p class='fail'>{html.escape(r)}</p>" for r in gates["reasons"]))


def _summary(report: dict[str, Any]) -> str:
    s, c, ext = report["settings"], report["counts"], report["extractor"]
    return _table(["", ""], [
        ["model", report["model"].get("checkpoint")], ["version", report["model"]["version"]],
        ["config hash", report["model"]["config_hash"]], ["created", report["created_at"]],
        ["clip", f"{s['frames']} frames, {s['height']}x{s['width']}, {s['fps']} fps"],
        ["sampler steps / guidance", f"{s['steps']} / {s['guidance']}"], ["seeds", ", ".join(map(str, s["seeds"]))],
        ["scenes x languages x seeds", f"{c['scenes']} x {c['languages']} x {c['seeds']} = {c['videos']} videos"],
        ["reference / held-out clips", f"{c['vae_clips']} ({report['data']['source']})"],
        ["Fréchet distance", f"{ext['name']} ({ext['note']})"],
        ["generation time", f"{report['timing']['generate_s']} s ({report['timing']['seconds_per_video']} s/video)"],
    ])


def _vae(sections: list[dict[str, Any]]) -> str:
    """VAE reconstruction of the reference clips per bucket and per clip."""
    if not all("per_bucket" in s["vae"] for s in sections):
        return ""
    buckets = [[s["label"], b, v["clips"], v["psnr"], v["ssim"]] for s in sections
               for b, v in s["vae"]["per_bucket"].items()]
    clips = [[s["label"], c["key"], f"{c['width']}x{c['height']}", c["bucket"], c["psnr"], c["ssim"]]
             for s in sections for c in s["vae"]["per_clip"]]
    return ("<h2>VAE reconstruction per bucket</h2>" + _table(["model", "bucket (FxHxW)", "clips", "psnr", "ssim"],
                                                              buckets)
            + "<h2>VAE reconstruction per clip</h2>" + _table(["model", "clip", "video WxH", "bucket", "psnr",
                                                               "ssim"], clips))


def _losses(run: dict[str, Any]) -> str:
    if not run["phases"]:
        return "<p>No metrics.jsonl found next to the checkpoint (no training run to show).</p>"
    return (f"<img src='{run['loss_curves']}' alt='loss curves'>" if run.get("loss_curves") else "") + _table(
        ["phase", "name", "steps", "first loss", "final loss", "best loss"],
        [[p["phase"], p["name"], p["steps"], p["first_loss"], p["final_loss"], p["best_loss"]]
         for p in run["phases"]])


def _scene(scene: dict[str, Any], sections: list[dict[str, Any]], languages: list[str]) -> str:
    captions = "".join(f"<li lang='{html.escape(lang)}'><b>{html.escape(lang)}</b> {html.escape(text)}</li>"
                       for lang, text in scene["captions"].items() if lang in languages)
    verdicts = [[sec["label"], smp["language"], smp["seed"], ", ".join(smp["judgement"]["colours"]),
                 smp["judgement"]["count"], smp["judgement"]["direction"], smp["temporal_coherence"], smp["psnr"],
                 " ".join(k for k, v in smp["scores"].items() if v) or "none"]
                for sec in sections for smp in sec["samples"] if smp["case"] == scene["case"]]
    return (f"<h3>scene {scene['case']} (level {scene['level']}): {', '.join(scene['colours'])}; "
            f"{scene['count']} object(s); {scene['direction']}</h3><ul>{captions}</ul>"
            f"<img src='{scene.get('sheet', '')}' alt='contact sheet scene {scene['case']}'>"
            + _table(["model", "language", "seed", "judged colours", "count", "direction", "coherence", "psnr",
                      "correct"], verdicts))


def render_html(report: dict[str, Any], method: str) -> str:
    """The page for `report` (and its `compare` section side by side); `method` is the closing
    "How the figures are made" text."""
    sections = [report] + ([report["compare"]] if report.get("compare") else [])
    metrics_table = _table(["metric", *[s["label"] for s in sections]],
                           [[name, *[s["metrics"].get(name) for s in sections]] for name in report["metrics"]])
    scenes = "".join(_scene(scene, sections, report["settings"]["languages"]) for scene in report["scenes"])
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>AIPROD report "
            f"{html.escape(report['model']['version'])}</title><style>{STYLE}</style></head><body>"
            f"<h1>Quality report: {html.escape(str(report['label']))}</h1>{_summary(report)}"
            f"<h2>Release gates</h2>{_gates(report)}<h2>Metrics</h2>{metrics_table}{_vae(sections)}"
            + _group_table("Per language", sections, "per_language")
            + _group_table("Per level (curriculum phase)", sections, "per_level")
            + f"<h2>Training loss per phase</h2>{_losses(report['run'])}<h2>Samples next to references</h2>"
            f"<img src='{report['contact_sheet']}' alt='contact sheet'>" + scenes
            + "<h2>How the figures are made</h2><pre>" + html.escape(method) + "</pre></body></html>")
