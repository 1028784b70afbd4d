"""Alert videos without a model: a template card (headline, instructions, region, icon) with a
pulsing border and a scrolling ticker, encoded as H.264 MP4.

    alert = render_alert(AlertRequest("flood", language="hi", region="पटना"))
    Path("alert.mp4").write_bytes(alert.mp4)
    python -m aiprod.emergency flood --language hi --region पटना --out alert.mp4

The card is drawn once; each frame only copies it and updates the moving parts, so a 5 s card
renders and encodes in a fraction of a second on one CPU core.
"""

from __future__ import annotations

import argparse
import io
import math
import string
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from aiprod.config import TemplateConfig
from aiprod.emergency.templates import (
    EmergencyTemplate,
    IconShape,
    LayoutElement,
    TemplateLibrary,
    Variation,
    load_library,
)
from aiprod.emergency.text import FontBook, TextSetter, UnsupportedText

TICKER_SEPARATOR = "   •   "
TICKER_TEXT_HEIGHT = 0.62  # ticker font size, fraction of the ticker band


@dataclass(frozen=True)
class AlertRequest:
    emergency_type: str
    language: str = "en"
    variation: int | None = None
    headline: str | None = None
    instructions: str | None = None
    region: str = ""
    motion: str | None = None  # the model path's camera: "left", "down:2", "still"; None = from the words


@dataclass
class Card:
    """A drawn card and what moves on it."""

    base: np.ndarray  # [H, W, 3] uint8
    variation: Variation
    template_id: str
    ticker_box: tuple[int, int, int, int] | None = None
    ticker_strip: np.ndarray | None = None  # [h, period, 3], tiled so any window of the box width fits
    ticker_period: int = 0
    inset_box: tuple[int, int, int, int] | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Alert:
    mp4: bytes
    template_id: str  # "flood/2:flash_flood"
    language: str
    frames: int
    width: int
    height: int
    fps: int
    seconds: float
    render_s: float
    notes: list[str]


def _pixel_box(box: tuple[float, float, float, float], width: int, height: int) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    return round(x0 * width), round(y0 * height), round(x1 * width), round(y1 * height)


def _square(box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    side = min(x1 - x0, y1 - y0)
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    return cx - side // 2, cy - side // 2, cx - side // 2 + side, cy - side // 2 + side


def draw_icon(draw: ImageDraw.ImageDraw, shapes: list[IconShape], box: tuple[int, int, int, int], fg, bg) -> None:
    x0, y0, x1, y1 = _square(box)
    side = x1 - x0

    def pt(p: tuple[float, float]) -> tuple[float, float]:
        return x0 + p[0] * side, y0 + p[1] * side

    for shape in shapes:
        colour = fg if shape.fill == "fg" else bg
        width = max(1, round(shape.width * side))
        kind = shape.kind()
        if kind == "polygon":
            draw.polygon([pt(p) for p in shape.polygon], fill=colour)
        elif kind == "ellipse":
            a, b, c, d = shape.ellipse
            draw.ellipse([*pt((a, b)), *pt((c, d))], fill=colour)
        elif kind == "line":
            draw.line([pt(p) for p in shape.line], fill=colour, width=width, joint="curve")
        else:
            a, b, c, d = shape.arc
            draw.arc([*pt((a, b)), *pt((c, d))], shape.start, shape.end, fill=colour, width=width)


def _stripes(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], colour, background) -> None:
    x0, y0, x1, y1 = box
    h = y1 - y0
    draw.rectangle(box, fill=background)
    for x in range(x0 - h, x1 + h, 2 * h):
        draw.polygon([(x, y1), (x + h, y0), (x + 2 * h, y0), (x + h, y1)], fill=colour)
    draw.rectangle((x0 - 2 * h, y0, x0 - 1, y1), fill=background)  # keep stripes inside the box


def _fill_slot(fmt: str, fields: dict[str, str]) -> str:
    """The slot text, or '' when it refers to a field that is empty (e.g. no region given)."""
    names = [name for _, name, _, _ in string.Formatter().parse(fmt) if name]
    if any(not fields.get(name, "").strip() for name in names):
        return ""
    return fmt.format(**fields).strip()


class CardRenderer:
    """Draws template cards and turns them into frames; one per font dir / template dir."""

    def __init__(self, cfg: TemplateConfig | None = None):
        self.cfg = cfg or TemplateConfig()
        self.library: TemplateLibrary = load_library(self.cfg.templates_dir)
        self.fonts = FontBook(self.cfg.font_dir, {k: dict(v) for k, v in self.library.fonts.items()})

    # ------------------------------------------------------------------------------- text

    def _fields(self, request: AlertRequest, template: EmergencyTemplate, index: int) -> tuple[dict[str, str], list[str]]:
        """Slot values in the request language, each checked against the fonts; a value no font can
        draw falls back to English (region: its drawable characters), with a note saying so."""
        language = request.language
        notes: list[str] = []
        wording, found = template.wording_for(index, language)
        english, _ = template.wording_for(index, "en")
        if not found and (request.headline is None or request.instructions is None):
            notes.append(f"no {language} default wording for {template.type}; English used")
        values = {
            "headline": (request.headline or wording.headline, english.headline, True),
            "instructions": (request.instructions or wording.instructions, english.instructions, False),
            "label": (template.label.get(language) or template.label["en"], template.label["en"], False),
        }
        for name in self.library.phrases:
            values[name] = (self.library.phrase(name, language), self.library.phrase(name, "en"), False)
        fields: dict[str, str] = {}
        for name, (text, fallback, bold) in values.items():
            try:
                self.fonts.check(text, bold)
                fields[name] = text
            except UnsupportedText as exc:
                notes.append(f"{name}: {exc}; English used")
                fields[name] = fallback
        region = request.region or ""
        try:
            self.fonts.check(region, True)
        except UnsupportedText as exc:
            notes.append(f"region: {exc}; those characters left out")
            region = " ".join("".join(ch for ch in region if ch not in exc.missing).split())
        fields["region"] = region
        return fields, notes

    # ------------------------------------------------------------------------------- card

    def card(self, request: AlertRequest, width: int, height: int, inset: bool = False) -> Card:
        template = self.library.get(request.emergency_type)
        index = 0 if request.variation is None else request.variation
        if not 0 <= index < len(template.variations):
            raise ValueError(
                f"variation must be within 0..{len(template.variations) - 1} for {template.type}, got {index}"
            )
        variation = template.variations[index]
        palette = variation.palette
        fields, notes = self._fields(request, template, index)
        setter = TextSetter(self.fonts, language=request.language, min_px=self.cfg.min_font_px)
        image = Image.new("RGB", (width, height), palette.rgb("background"))
        draw = ImageDraw.Draw(image)
        card = Card(np.empty(0), variation, f"{template.type}/{index}:{variation.name}", notes=notes)
        slots = variation.slots
        for element in self.library.layouts[variation.layout]:
            box = _pixel_box(element.box, width, height)
            if element.kind == "panel":
                draw.rectangle(box, fill=palette.rgb(element.color))
            elif element.kind == "stripes":
                _stripes(draw, box, palette.rgb(element.color), palette.rgb(element.fill))
            elif element.kind == "icon":
                if inset:
                    card.inset_box = _square(box)
                else:
                    shapes = self.library.icons[variation.icon]
                    draw_icon(draw, shapes, box, palette.rgb(element.fg), palette.rgb(element.bg))
            elif element.kind == "text":
                text = _fill_slot(getattr(slots, element.slot), fields)
                if text:
                    block = setter.fit(text, box, element.bold, element.max_lines)
                    setter.draw(draw, block, box, palette.rgb(element.color), element.align)
            elif element.kind == "ticker":
                self._ticker(card, setter, element, box, fields, draw, width)
        card.base = np.asarray(image, dtype=np.uint8).copy()
        return card

    def _ticker(self, card: Card, setter: TextSetter, element: LayoutElement, box, fields, draw, width: int) -> None:
        palette = card.variation.palette
        draw.rectangle(box, fill=palette.rgb(element.fill))
        parts = [_fill_slot(fmt, fields) for fmt in card.variation.slots.ticker]
        text = TICKER_SEPARATOR.join(p for p in parts if p)
        if not text:
            return
        x0, y0, x1, y1 = box
        band = y1 - y0
        strip = setter.single_line(text, max(self.cfg.min_font_px, round(TICKER_TEXT_HEIGHT * band)), element.bold,
                                   palette.rgb(element.color), palette.rgb(element.fill))
        gap = round(card.variation.motion.ticker_gap * width)
        period = strip.width + gap
        tile = Image.new("RGB", (period, band), palette.rgb(element.fill))
        tile.paste(strip, (0, max(0, (band - strip.height) // 2)))
        repeats = math.ceil((x1 - x0) / period) + 1
        card.ticker_strip = np.tile(np.asarray(tile, dtype=np.uint8), (1, repeats, 1))
        card.ticker_period = period
        card.ticker_box = box

    # ----------------------------------------------------------------------------- frames

    def frames(self, card: Card, seconds: float, fps: int, inset: np.ndarray | None = None) -> np.ndarray:
        """[T, H, W, 3] uint8: the card with the ticker scrolling, the border pulsing and, when
        given, inset frames (e.g. the model's video) looping in the icon box."""
        count = max(1, math.ceil(seconds * fps))
        height, width = card.base.shape[:2]
        motion = card.variation.motion
        border = max(1, round(motion.border * min(width, height)))
        colour = np.array(card.variation.palette.rgb("border"), dtype=np.float32)
        inset_frames = _fit_inset(inset, card.inset_box) if inset is not None and card.inset_box else None
        out = np.empty((count, height, width, 3), dtype=np.uint8)
        edges = [np.s_[:border, :], np.s_[-border:, :], np.s_[:, :border], np.s_[:, -border:]]
        for i in range(count):
            t = i / fps
            frame = out[i]
            frame[:] = card.base
            if card.ticker_strip is not None:
                x0, y0, x1, y1 = card.ticker_box
                offset = int(t * motion.ticker_speed * width) % card.ticker_period
                frame[y0:y1, x0:x1] = card.ticker_strip[:, offset : offset + (x1 - x0)]
            if inset_frames is not None:
                x0, y0, x1, y1 = card.inset_box
                frame[y0:y1, x0:x1] = inset_frames[i % len(inset_frames)]
            alpha = 0.5 * (1 + math.sin(2 * math.pi * motion.pulse_hz * t))
            for edge in edges:
                region = frame[edge].astype(np.float32)
                frame[edge] = (alpha * colour + (1 - alpha) * region).astype(np.uint8)
        return out


def _fit_inset(frames: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"inset must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    size = (box[2] - box[0], box[3] - box[1])
    return np.stack([np.asarray(Image.fromarray(f).resize(size, Image.Resampling.BILINEAR)) for f in frames])


_RENDERERS: dict[tuple, CardRenderer] = {}


def renderer_for(cfg: TemplateConfig | None = None) -> CardRenderer:
    """A cached CardRenderer per template config (fonts and templates load once per process)."""
    cfg = cfg or TemplateConfig()
    key = tuple(sorted(cfg.model_dump().items()))
    if key not in _RENDERERS:
        _RENDERERS[key] = CardRenderer(cfg)
    return _RENDERERS[key]


def render_alert(
    request: AlertRequest,
    cfg: TemplateConfig | None = None,
    seconds: float = 5.0,
    inset: np.ndarray | None = None,
) -> Alert:
    """An H.264 MP4 alert video for the request (ValueError names a bad type or variation)."""
    from aiprod.data.video_encode import write_mp4

    start = time.perf_counter()
    renderer = renderer_for(cfg)
    cfg = renderer.cfg
    card = renderer.card(request, cfg.width, cfg.height, inset=inset is not None)
    frames = renderer.frames(card, seconds, cfg.fps, inset)
    buffer = io.BytesIO()
    write_mp4(frames, buffer, cfg.fps, crf=cfg.crf, preset=cfg.preset)
    return Alert(
        mp4=buffer.getvalue(),
        template_id=card.template_id,
        language=request.language,
        frames=len(frames),
        width=cfg.width,
        height=cfg.height,
        fps=cfg.fps,
        seconds=len(frames) / cfg.fps,
        render_s=time.perf_counter() - start,
        notes=card.notes,
    )


def main(argv: list[str] | None = None) -> int:
    library = load_library()
    parser = argparse.ArgumentParser(prog="python -m aiprod.emergency", description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("emergency_type", choices=library.types())
    parser.add_argument("--language", default="en")
    parser.add_argument("--variation", type=int)
    parser.add_argument("--headline")
    parser.add_argument("--instructions")
    parser.add_argument("--region", default="")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--out", default="alert.mp4")
    args = parser.parse_args(argv)
    request = AlertRequest(args.emergency_type, args.language, args.variation, args.headline, args.instructions,
                           args.region)
    from aiprod.provenance import Facts, Provenance, alert_prompt

    provenance = Provenance()
    alert = render_alert(request, seconds=args.seconds)
    prompt = alert_prompt(request.emergency_type, request.headline, request.instructions, request.region)
    facts = Facts("template", "template", request.language, prompt, notes=tuple(alert.notes))
    Path(args.out).write_bytes(provenance.sign(alert.mp4, facts))
    print(f"{args.out}: {alert.template_id} {alert.frames} frames {alert.width}x{alert.height} "
          f"in {alert.render_s:.2f}s, signed by {provenance.keys.signer}"
          + "".join(f"\n  note: {n}" for n in alert.notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
