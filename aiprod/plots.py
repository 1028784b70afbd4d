"""The project's PNG figures, drawn in one place for training and evaluation alike.

    loss_curve_png(losses, "phase 1: simple_objects")   # one phase's loss by step, with a moving mean
    phase_loss_curves_png(records)                      # every phase of a run's metrics.jsonl, log scale
    contact_sheet_png(frames, 8)                        # one row of evenly spaced frames, native size
    labelled_contact_sheet_png([("reference", clip), ("A en seed 0", video)], 8, 96, "scene 0")

Curves are matplotlib figures (Agg backend: no display on Ray workers or servers); contact sheets
are frames pasted side by side with Pillow. Videos are uint8 `[T, H, W, 3]` arrays.
"""

from __future__ import annotations

import io
import math
from collections import defaultdict
from typing import Any

import numpy as np

__all__ = ["contact_sheet_png", "figure_png", "frame_strip", "labelled_contact_sheet_png", "loss_curve_png",
           "phase_loss_curves_png", "pyplot"]

SHEET_LABEL_WIDTH = 110  # px left of each labelled row for its label
SHEET_PAD = 4  # px around and between labelled rows
SHEET_FRAME_GAP = 2  # white px between the frames of a labelled row


def pyplot():
    """matplotlib.pyplot on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_png(fig, **savefig: Any) -> bytes:
    """The figure as PNG bytes (`savefig` options such as dpi pass through); the figure is closed."""
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", **savefig)
    finally:
        pyplot().close(fig)
    return buffer.getvalue()


# ---------------------------------------------------------------------------- loss curves


def loss_curve_png(losses: list[float], title: str, smooth: int = 5) -> bytes:
    """One phase's loss against its step, with the mean of `smooth` steps once there are that many."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, alpha=0.4, label="loss")
    if len(losses) >= smooth:
        kernel = np.ones(smooth) / smooth
        ax.plot(steps[smooth - 1 :], np.convolve(losses, kernel, mode="valid"), label=f"mean of {smooth}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return figure_png(fig)


def _losses_by_phase(records: list[dict[str, Any]]) -> tuple[dict[int, list[tuple[int, float]]], dict[int, str]]:
    """(global step, loss) per phase and each phase's name, from metrics.jsonl step records."""
    by_phase: dict[int, list[tuple[int, float]]] = defaultdict(list)
    names: dict[int, str] = {}
    for r in records:
        if "event" not in r and isinstance(r.get("loss"), (int, float)) and math.isfinite(r["loss"]):
            phase = int(r["phase"])
            by_phase[phase].append((int(r.get("global_step", len(by_phase[phase]))), r["loss"]))
            names[phase] = r.get("phase_name", str(r["phase"]))
    return by_phase, names


def phase_loss_curves_png(records: list[dict[str, Any]]) -> bytes | None:
    """Every phase's training loss against the global step on one log-scale axis, from a run's
    metrics.jsonl records; None when no record holds a finite loss."""
    by_phase, names = _losses_by_phase(records)
    if not by_phase:
        return None
    plt = pyplot()
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
    return figure_png(fig)


# --------------------------------------------------------------------------- contact sheets


def frame_strip(frames: np.ndarray, count: int, px: int | None = None, gap: int = 0) -> np.ndarray:
    """Up to `count` evenly spaced frames of `frames` side by side, `gap` white columns apart, each
    resized to `px` high (None: as they are)."""
    from PIL import Image

    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"contact sheet expects frames [T,H,W,3], got {frames.shape}")
    picks = np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int)
    images = [frames[i] for i in picks]
    h, w = frames.shape[1:3]
    if px is not None and px != h:
        size = (max(1, round(w * px / h)), px)
        resample = Image.Resampling.NEAREST if px > h else Image.Resampling.BOX  # small clips keep crisp pixels
        images = [np.asarray(Image.fromarray(f).resize(size, resample)) for f in images]
    if gap:
        spacer = np.full((images[0].shape[0], gap, 3), 255, np.uint8)
        images = [x for f in images for x in (f, spacer)][:-1]
    return np.concatenate(images, axis=1)


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def contact_sheet_png(frames: np.ndarray, max_frames: int) -> bytes:
    """uint8 [T,H,W,3] -> one PNG row of up to `max_frames` evenly spaced frames."""
    from PIL import Image

    return _png(Image.fromarray(frame_strip(frames, max_frames)))


def labelled_contact_sheet_png(rows: list[tuple[str, np.ndarray]], frames: int, px: int, title: str = "") -> bytes:
    """A PNG: an optional title line, then per (label, video) the label and a row of `frames`
    evenly spaced frames, `px` high."""
    from PIL import Image, ImageDraw, ImageFont

    strips = [(label, frame_strip(video, frames, px, SHEET_FRAME_GAP)) for label, video in rows]
    pad, title_h = SHEET_PAD, 20 if title else 0
    width = SHEET_LABEL_WIDTH + max(s.shape[1] for _, s in strips) + pad
    height = title_h + sum(s.shape[0] + pad for _, s in strips) + pad
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=12)
    if title:
        draw.text((pad, pad), title, fill=(0, 0, 0), font=font)
    y = pad + title_h
    for label, strip in strips:
        sheet.paste(Image.fromarray(strip), (SHEET_LABEL_WIDTH, y))
        draw.text((pad, y + strip.shape[0] // 2 - 7), label, fill=(0, 0, 0), font=font)
        y += strip.shape[0] + pad
    return _png(sheet)
