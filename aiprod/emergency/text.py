"""Shaped multi-script text for alert cards: script runs, font choice, wrapping, drawing.

Pillow's raqm layout (HarfBuzz + FriBiDi) shapes Devanagari conjuncts and vowel signs. No Noto
font holds every script, so a line is split into runs by Unicode script, each drawn with the font
for its script on a shared baseline. Characters of no script (digits, punctuation, spaces) join
the run around them when that font has them, else fall back to the Latin font.
"""

from __future__ import annotations

import functools
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, features

LATIN = "LATIN"
ELLIPSIS = "…"


class UnsupportedText(ValueError):
    """Text with characters no configured font can draw."""

    def __init__(self, text: str, missing: str):
        self.missing = missing
        scripts = sorted({_script_name(ch) for ch in missing})
        super().__init__(f"no font for {', '.join(scripts)} characters {missing[:8]!r} in {text[:40]!r}")


def raqm_available() -> bool:
    return bool(features.check("raqm"))


def _script_name(ch: str) -> str:
    name = unicodedata.name(ch, "")
    return name.split(" ", 1)[0] if name else f"U+{ord(ch):04X}"


@functools.lru_cache(maxsize=64)
def _cmap(path: str) -> frozenset[int]:
    from fontTools.ttLib import TTFont

    return frozenset(TTFont(path, lazy=True).getBestCmap())


@functools.lru_cache(maxsize=512)
def _truetype(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size, layout_engine=ImageFont.Layout.RAQM)


@functools.lru_cache(maxsize=64)
def _default_font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size)  # Pillow's bundled Latin font: the last resort


@dataclass(frozen=True)
class Run:
    text: str
    script: str


class FontBook:
    """Fonts per script and weight, from a font directory and a {script: {regular, bold}} table."""

    def __init__(self, font_dir: str | Path, table: dict[str, dict[str, str]]):
        self.font_dir = Path(font_dir)
        self.paths: dict[tuple[str, bool], str] = {}
        for script, weights in table.items():
            for bold in (False, True):
                path = self.font_dir / weights["bold" if bold else "regular"]
                if path.is_file():
                    self.paths[(script, bold)] = str(path)

    def covers(self, script: str, ch: str, bold: bool) -> bool:
        path = self.paths.get((script, bold)) or self.paths.get((script, not bold))
        if path is None:
            return script == LATIN and ch.isascii()
        return ord(ch) in _cmap(path)

    def font(self, script: str, bold: bool, size: int) -> ImageFont.FreeTypeFont:
        path = self.paths.get((script, bold)) or self.paths.get((script, not bold))
        return _truetype(path, size) if path else _default_font(size)

    def runs(self, text: str, bold: bool = False) -> list[Run]:
        """Split text into same-font runs; raises UnsupportedText when a character has no font."""
        scripts: list[str | None] = []
        text = unicodedata.normalize("NFC", text)
        for ch in text:
            script = _script_name(ch)
            scripts.append(script if (script, False) in self.paths or (script, True) in self.paths else None)
        known = [s for s in scripts if s is not None]
        previous = known[0] if known else LATIN
        resolved: list[str] = []
        missing = []
        for ch, script in zip(text, scripts):
            if script is None and not _is_common(ch):
                missing.append(ch)
                continue
            script = script or previous
            if not self.covers(script, ch, bold):
                script = LATIN
                if not self.covers(LATIN, ch, bold):
                    missing.append(ch)
                    continue
            if not _is_common(ch):
                previous = script
            resolved.append(script)
        if missing:
            raise UnsupportedText(text, "".join(dict.fromkeys(missing)))
        runs: list[Run] = []
        for ch, script in zip(text, resolved):
            if runs and runs[-1].script == script:
                runs[-1] = Run(runs[-1].text + ch, script)
            else:
                runs.append(Run(ch, script))
        return runs

    def check(self, text: str, bold: bool = False) -> None:
        self.runs(text, bold)


def _is_common(ch: str) -> bool:
    """Characters of no particular script: spaces, digits, punctuation, symbols, joiners."""
    category = unicodedata.category(ch)
    return category[0] in "ZNPS" or category == "Cf"


@dataclass
class Line:
    runs: list[tuple[str, ImageFont.FreeTypeFont]]
    width: float


@dataclass
class Block:
    lines: list[Line]
    ascent: int
    descent: int
    line_gap: int

    @property
    def height(self) -> int:
        n = len(self.lines)
        return n * (self.ascent + self.descent) + max(0, n - 1) * self.line_gap


class TextSetter:
    """Wraps and fits text into boxes and draws it with per-script fonts."""

    def __init__(self, book: FontBook, language: str = "en", min_px: int = 10, line_spacing: float = 0.18):
        self.book = book
        self.language = language
        self.min_px = min_px
        self.line_spacing = line_spacing

    def _measure(self, runs: list[Run], bold: bool, size: int) -> tuple[list[tuple[str, ImageFont.FreeTypeFont]], float]:
        placed = [(run.text, self.book.font(run.script, bold, size)) for run in runs]
        width = sum(font.getlength(text, language=self.language) for text, font in placed)
        return placed, width

    def layout(self, text: str, width: int, height: int, size: int, bold: bool, max_lines: int) -> Block | None:
        """Greedy word wrap at `size`; None when it does not fit the box."""
        words = text.split()
        if not words:
            return Block([], 0, 0, 0)
        space = self._measure([Run(" ", LATIN)], bold, size)[1]
        measured = [self._measure(self.book.runs(word, bold), bold, size) for word in words]
        lines: list[Line] = []
        current: list[tuple[str, ImageFont.FreeTypeFont]] = []
        current_w = 0.0
        for placed, w in measured:
            if w > width:
                return None
            extra = w + (space if current else 0.0)
            if current and current_w + extra > width:
                lines.append(Line(current, current_w))
                current, current_w = [], 0.0
                extra = w
            if current:
                current.append((" ", placed[0][1]))
            current.extend(placed)
            current_w += extra
        lines.append(Line(current, current_w))
        if len(lines) > max_lines:
            return None
        fonts = {font for line in lines for _, font in line.runs}
        ascent = max(font.getmetrics()[0] for font in fonts)
        descent = max(font.getmetrics()[1] for font in fonts)
        block = Block(lines, ascent, descent, int(self.line_spacing * size))
        return block if block.height <= height else None

    def fit(self, text: str, box: tuple[int, int, int, int], bold: bool, max_lines: int) -> Block:
        """The largest size whose wrapped text fits the box (binary search), else the smallest
        size cut to `max_lines` with an ellipsis."""
        x0, y0, x1, y1 = box
        width, height = x1 - x0, y1 - y0
        lo, hi = self.min_px, max(self.min_px, height)
        best = None
        while lo <= hi:
            mid = (lo + hi) // 2
            block = self.layout(text, width, height, mid, bold, max_lines)
            if block is not None:
                best, lo = block, mid + 1
            else:
                hi = mid - 1
        return best or self._truncated(text, width, bold, max_lines)

    def _truncated(self, text: str, width: int, bold: bool, max_lines: int) -> Block:
        words = text.split()
        while words:
            candidate = " ".join(words) + ELLIPSIS
            block = self.layout(candidate, width, 10**6, self.min_px, bold, max_lines)
            if block is not None:
                return block
            words = words[:-1]
        return Block([], 0, 0, 0)

    def draw(self, draw: ImageDraw.ImageDraw, block: Block, box: tuple[int, int, int, int], fill, align: str) -> None:
        """Draw a fitted block vertically centred in the box; runs share each line's baseline."""
        x0, y0, x1, y1 = box
        y = y0 + (y1 - y0 - block.height) // 2
        for line in block.lines:
            if align == "center":
                x = x0 + (x1 - x0 - line.width) / 2
            elif align == "right":
                x = x1 - line.width
            else:
                x = x0
            baseline = y + block.ascent
            for text, font in line.runs:
                draw.text((x, baseline), text, font=font, fill=fill, anchor="ls", language=self.language)
                x += font.getlength(text, language=self.language)
            y += block.ascent + block.descent + block.line_gap

    def single_line(self, text: str, size: int, bold: bool, fill, background) -> Image.Image:
        """One unwrapped line as an RGB image (the ticker strip)."""
        placed, width = self._measure(self.book.runs(text, bold), bold, size)
        fonts = {font for _, font in placed} or {self.book.font(LATIN, bold, size)}
        ascent = max(f.getmetrics()[0] for f in fonts)
        descent = max(f.getmetrics()[1] for f in fonts)
        image = Image.new("RGB", (max(1, int(width) + 1), ascent + descent), background)
        draw = ImageDraw.Draw(image)
        x = 0.0
        for part, font in placed:
            draw.text((x, ascent), part, font=font, fill=fill, anchor="ls", language=self.language)
            x += font.getlength(part, language=self.language)
        return image


def render_text_image(
    text: str, font_path: str | Path, size: int = 48, layout_engine: ImageFont.Layout = ImageFont.Layout.RAQM
) -> Image.Image:
    """One line in one font with a chosen layout engine (to compare shaped and unshaped text)."""
    font = ImageFont.truetype(str(font_path), size, layout_engine=layout_engine)
    left, top, right, bottom = font.getbbox(text)
    image = Image.new("L", (right - left + 8, bottom - top + 8), 0)
    ImageDraw.Draw(image).text((4 - left, 4 - top), text, font=font, fill=255)
    return image
