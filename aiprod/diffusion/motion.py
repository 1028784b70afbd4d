"""The camera motion of the emergency fast path: read from the request, applied to pixels.

    motion = motion_from_text("a flood warning, water moving left")         # Motion("left", 1.0)
    motion = parse_motion("down:2")                                          # an explicit request field
    clip = warp_frames(image, frames=9, motion=motion, fps=8, speed=0.3)     # [B,3,1,H,W] -> [B,3,9,H,W]

Directions are found in every caption language the synthetic grammar speaks (its own direction
words, aiprod.data.captions) plus a few common synonyms; "towards"/"away" zoom in/out. A speed word
("fast", "slowly", ... in each language) scales the speed. Nothing found: a still camera.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# (dx, dy, zoom) per unit of speed; +x is right, +y is down (image rows)
VECTORS: dict[str, tuple[float, float, float]] = {
    "still": (0.0, 0.0, 0.0), "right": (1.0, 0.0, 0.0), "left": (-1.0, 0.0, 0.0), "up": (0.0, -1.0, 0.0),
    "down": (0.0, 1.0, 0.0), "towards": (0.0, 0.0, 1.0), "away": (0.0, 0.0, -1.0),
}
# Beside the grammar's own direction words (aiprod.data.captions.PHRASES): en, hi, bn, ta
SYNONYMS: dict[str, tuple[str, ...]] = {
    "right": ("rightward", "to the right", "eastward", "दाएँ", "दाहिनी ओर", "ডানে", "வலது"),
    "left": ("leftward", "to the left", "westward", "बाएँ", "बायीं ओर", "বামে", "இடது"),
    "up": ("upward", "rising", "ऊपर की ओर", "ওপরে", "மேல்நோக்கி"),
    "down": ("downward", "falling", "नीचे की ओर", "নীচে", "கீழ்நோக்கி"),
    "towards": ("towards", "toward", "approaching", "closer", "पास आ", "নিকটে আস", "কাছে আস", "நெருங்கி"),
    "away": ("away", "receding", "दूर जा", "দূরে", "விலகி"),
}
SPEEDS: dict[str, tuple[str, ...]] = {
    "fast": ("fast", "quickly", "rapidly", "तेज़ी से", "तेजी से", "দ্রুত", "வேகமாக"),
    "slow": ("slowly", "gently", "धीरे", "ধীরে", "மெதுவாக"),
}
SPEED_FACTOR = {"fast": 2.0, "slow": 0.5}
# phrases whose words must not count as directions ("speeding up and" is a manner, not "up")
IGNORED = ("speeding up", "up to", "keep up", "set up", "look up", "up-to-date")


@dataclass(frozen=True)
class Motion:
    direction: str = "still"  # a key of VECTORS
    factor: float = 1.0  # times the configured speed

    def __str__(self) -> str:
        return self.direction if self.factor == 1.0 else f"{self.direction}:{self.factor:g}"


def _normal(text: str) -> str:
    return unicodedata.normalize("NFC", text).casefold()


def _vocabulary() -> dict[str, list[str]]:
    from aiprod.data.captions import PHRASES

    words: dict[str, list[str]] = {d: list(SYNONYMS.get(d, ())) for d in VECTORS if d != "still"}
    for (concept, key), phrases in PHRASES.items():
        if concept == "direction" and key in words:
            words[key] += [p.strip() for p in phrases if p]
    return {d: sorted({_normal(w) for w in ws}, key=len, reverse=True) for d, ws in words.items()}


def _find(text: str, word: str) -> int:
    """Position of `word` in `text` as a whole word (Latin script) or as a phrase (other scripts); -1."""
    if word.isascii():
        match = re.search(rf"(?<![a-z]){re.escape(word)}(?![a-z])", text)
        return match.start() if match else -1
    return text.find(word)


def motion_from_text(text: str) -> Motion:
    """The first direction the text names (in any supported language), with its speed word; else still."""
    text = _normal(text)
    for phrase in IGNORED:
        text = text.replace(phrase, " " * len(phrase))
    found = [(pos, direction) for direction, words in _vocabulary().items() for word in words
             if (pos := _find(text, _normal(word))) >= 0]
    if not found:
        return Motion()
    direction = min(found)[1]
    factor = 1.0
    for speed, words in SPEEDS.items():
        if any(_find(text, _normal(w)) >= 0 for w in words):
            factor = SPEED_FACTOR[speed]
    return Motion(direction, factor)


def parse_motion(value: str) -> Motion:
    """An explicit motion: DIRECTION or DIRECTION:FACTOR (e.g. "left", "down:2", "still")."""
    direction, _, factor = str(value).strip().lower().partition(":")
    if direction not in VECTORS:
        raise ValueError(f"motion must be one of {', '.join(VECTORS)} (optionally :FACTOR), got {value!r}")
    try:
        speed = float(factor) if factor else 1.0
    except ValueError:
        raise ValueError(f"motion factor must be a number, got {factor!r} in {value!r}") from None
    if not 0 < speed <= 10:
        raise ValueError(f"motion factor must be within (0, 10], got {speed:g}")
    return Motion(direction, speed)


def warp_frames(image: torch.Tensor, frames: int, motion: Motion, fps: float, speed: float) -> torch.Tensor:
    """[B,C,1,H,W] -> [B,C,frames,H,W]: frame k shows the image moved by k/fps seconds of `motion`
    at `speed` frame widths (or zoom steps) per second; uncovered edges repeat the border pixels."""
    if image.ndim != 5 or image.shape[2] != 1:
        raise ValueError(f"warp_frames expects [B, C, 1, H, W], got {tuple(image.shape)}")
    dx, dy, zoom = VECTORS[motion.direction]
    rate = speed * motion.factor / fps
    if rate == 0 or (dx, dy, zoom) == (0.0, 0.0, 0.0):
        return image.expand(-1, -1, frames, -1, -1).contiguous()
    batch = image.shape[0]
    still = image[:, :, 0]
    out = []
    for k in range(frames):
        scale = 1.0 + zoom * rate * k  # > 1: content grows (the camera comes closer)
        theta = torch.zeros(batch, 2, 3, dtype=still.dtype, device=still.device)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / scale
        # grid_sample reads the source at the output position minus the shift: content moves by +shift
        theta[:, 0, 2] = -2.0 * dx * rate * k
        theta[:, 1, 2] = -2.0 * dy * rate * k
        grid = F.affine_grid(theta, list(still.shape), align_corners=False)
        out.append(F.grid_sample(still, grid, mode="bilinear", padding_mode="border", align_corners=False))
    return torch.stack(out, dim=2)
