"""The visible disclosure: a short "AI-generated" label, in the request's language, burnt into the
bottom-right corner of every frame (serve.disclosure_label). Text is shaped by the alert cards'
fonts (aiprod.emergency.text), so Indic scripts render correctly."""

from __future__ import annotations

import functools

import numpy as np

from aiprod.config import TemplateConfig

LABELS = {
    "en": "AI-generated",
    "hi": "एआई द्वारा निर्मित",
    "bn": "এআই দ্বারা তৈরি",
    "ta": "AI உருவாக்கியது",
    "te": "AI రూపొందించినది",
    "mr": "एआयद्वारे निर्मित",
}
HEIGHT = 0.07  # label text height, fraction of the frame's shorter side
MARGIN = 0.02  # gap to the frame's edges, same unit
WHITE, BLACK = (255, 255, 255), (0, 0, 0)


def label_text(language: str) -> str:
    return LABELS.get(language, LABELS["en"])


def label_image(language: str, width: int, height: int, cfg: TemplateConfig) -> np.ndarray:
    """[h, w, 3] uint8: white text on black, at most half the frame wide; English when no font has the script."""
    return _label_image(language, width, height, cfg.model_dump_json())


@functools.lru_cache(maxsize=64)
def _label_image(language: str, width: int, height: int, cfg_json: str) -> np.ndarray:
    from aiprod.emergency.render import renderer_for
    from aiprod.emergency.text import TextSetter, UnsupportedText

    fonts = renderer_for(TemplateConfig.model_validate_json(cfg_json)).fonts
    text = label_text(language)
    try:
        fonts.check(text, True)
    except UnsupportedText:
        text, language = LABELS["en"], "en"
    setter = TextSetter(fonts, language=language)
    size = max(4, round(HEIGHT * min(width, height)))
    image = setter.single_line(f" {text} ", size, True, WHITE, BLACK)
    if image.width > width // 2:  # a narrow frame: shrink the text to fit half its width
        size = max(4, size * (width // 2) // image.width)
        image = setter.single_line(f" {text} ", size, True, WHITE, BLACK)
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[: max(1, height // 2), : max(1, width // 2)]


def label_box(shape: tuple[int, ...], language: str, cfg: TemplateConfig) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the label in frames of `shape` ([T, H, W, 3])."""
    height, width = shape[1], shape[2]
    label = label_image(language, width, height, cfg)
    margin = round(MARGIN * min(width, height))
    x1, y1 = width - margin, height - margin
    return x1 - label.shape[1], y1 - label.shape[0], x1, y1


def burn_label(frames: np.ndarray, language: str, cfg: TemplateConfig | None = None) -> np.ndarray:
    """A copy of `frames` ([T, H, W, 3] uint8) with the label in the bottom-right corner of each."""
    cfg = cfg or TemplateConfig()
    out = np.array(frames, dtype=np.uint8, copy=True)
    x0, y0, x1, y1 = label_box(out.shape, language, cfg)
    out[:, y0:y1, x0:x1] = label_image(language, out.shape[2], out.shape[1], cfg)
    return out
