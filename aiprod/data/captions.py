"""Captions from a clip's structured truth, through a small grammar per language.

English, Hindi (Devanagari), Bengali (Bengali script) and Tamil (Tamil script). The words live in
one table, a column per language (WORDS: one language's words); the grammar is the same everywhere:

    [count prefix] clause (, clause)* [and clause] [, scene phrase]*
    clause = article [size] colour shape [manner]* direction verb   (English: ... moving DIR [suffix])
"""

from __future__ import annotations

import unicodedata
from typing import Any

LANGUAGES: tuple[str, ...] = ("en", "hi", "bn", "ta")

COLOURS = ("red", "green", "blue", "yellow", "cyan", "magenta", "white")
SHAPES = ("circle", "square", "triangle", "star")
DIRECTIONS = ("right", "left", "up", "down")
SIZES = ("tiny", "small", "medium", "large", "huge")
MANNERS = ("spinning", "accelerating", "fast")
CONDITIONS = ("low_light", "noise", "flicker")

# The grammar's words and every phrase, one column per language in LANGUAGES order (English,
# Hindi, Bengali, Tamil); None where a language has no such phrase. Sizes and manners carry their
# trailing space, and a medium size is left unsaid.
Phrases = tuple[str | None, ...]

GRAMMAR: dict[str, tuple[str, ...]] = {
    "article": ("a", "एक", "একটি", "ஒரு"),
    # English puts the verb before the direction: "moving right"
    "clause": ("{article} {size}{colour} {shape} {manner}moving {direction}{suffix}",
               "{article} {size}{colour} {shape} {manner}{direction} जा रहा है",
               "{article} {size}{colour} {shape} {manner}{direction} যাচ্ছে",
               "{article} {size}{colour} {shape} {manner}{direction} நகர்கிறது"),
    "joiner": (", ",) * len(LANGUAGES),
    "last_joiner": (" and ", " और ", " এবং ", " மற்றும் "),
    "scene_joiner": (", ",) * len(LANGUAGES),
}

PHRASES: dict[tuple[str, Any], Phrases] = {
    ("colour", "red"): ("red", "लाल", "লাল", "சிவப்பு"),
    ("colour", "green"): ("green", "हरा", "সবুজ", "பச்சை"),
    ("colour", "blue"): ("blue", "नीला", "নীল", "நீல"),
    ("colour", "yellow"): ("yellow", "पीला", "হলুদ", "மஞ்சள்"),
    ("colour", "cyan"): ("cyan", "फ़िरोज़ी", "ফিরোজা", "இளநீல"),
    ("colour", "magenta"): ("magenta", "मैजेंटा", "ম্যাজেন্টা", "செந்நீல"),
    ("colour", "white"): ("white", "सफ़ेद", "সাদা", "வெள்ளை"),
    ("shape", "circle"): ("circle", "वृत्त", "বৃত্ত", "வட்டம்"),
    ("shape", "square"): ("square", "वर्ग", "বর্গ", "சதுரம்"),
    ("shape", "triangle"): ("triangle", "त्रिभुज", "ত্রিভুজ", "முக்கோணம்"),
    ("shape", "star"): ("star", "तारा", "তারা", "நட்சத்திரம்"),
    ("direction", "right"): ("right", "दाईं ओर", "ডান দিকে", "வலது பக்கம்"),
    ("direction", "left"): ("left", "बाईं ओर", "বাম দিকে", "இடது பக்கம்"),
    ("direction", "up"): ("up", "ऊपर", "উপরে", "மேலே"),
    ("direction", "down"): ("down", "नीचे", "নিচে", "கீழே"),
    ("size", "tiny"): ("tiny ", "बहुत छोटा ", "খুব ছোট ", "மிகச் சிறிய "),
    ("size", "small"): ("small ", "छोटा ", "ছোট ", "சிறிய "),
    ("size", "large"): ("large ", "बड़ा ", "বড় ", "பெரிய "),
    ("size", "huge"): ("huge ", "विशाल ", "বিশাল ", "மிகப் பெரிய "),
    ("manner", "spinning"): ("spinning and ", "घूमते हुए ", "ঘুরতে ঘুরতে ", "சுழன்றபடி "),
    ("manner", "accelerating"): ("speeding up and ", "तेज़ होते हुए ", "গতি বাড়িয়ে ", "வேகமெடுத்து "),
    ("manner", "fast"): (None, "बहुत तेज़ी से ", "খুব দ্রুত ", "மிக வேகமாக "),
    # English says how fast after the direction: "moving right very fast"
    ("suffix", "fast"): (" very fast", None, None, None),
    ("count", 2): ("two objects: ", "दो वस्तुएँ: ", "দুটি বস্তু: ", "இரண்டு பொருட்கள்: "),
    ("count", 3): ("three objects: ", "तीन वस्तुएँ: ", "তিনটি বস্তু: ", "மூன்று பொருட்கள்: "),
    ("count", 4): ("four objects: ", "चार वस्तुएँ: ", "চারটি বস্তু: ", "நான்கு பொருட்கள்: "),
    ("scene", "textured"): ("over a textured background", "बनावटी पृष्ठभूमि पर",
                            "নকশা করা পটভূমিতে", "வடிவமைந்த பின்னணியில்"),
    ("scene", "pan"): ("the camera pans {direction}", "कैमरा {direction} घूमता है",
                       "ক্যামেরা {direction} সরে", "கேமரா {direction} நகர்கிறது"),
    ("scene", "occlusion"): ("one passes in front of another", "एक वस्तु दूसरी के आगे से गुज़रती है",
                             "একটি বস্তু অন্যটির সামনে দিয়ে যায়", "ஒன்று மற்றொன்றின் முன்னால் கடக்கிறது"),
    ("scene", "low_light"): ("in low light", "कम रोशनी में", "কম আলোয়", "குறைந்த ஒளியில்"),
    ("scene", "noise"): ("with sensor noise", "सेंसर शोर के साथ", "সেন্সর নয়েজ সহ", "சென்சார் இரைச்சலுடன்"),
    ("scene", "flicker"): ("with flickering light", "टिमटिमाती रोशनी में",
                           "ঝিকিমিকি আলোয়", "மினுமினுக்கும் ஒளியில்"),
}


def _words(column: int) -> dict[str, Any]:
    """One language's words (its column of GRAMMAR and PHRASES), as `caption` reads them."""
    words: dict[str, Any] = {key: values[column] for key, values in GRAMMAR.items()}
    for (concept, key), values in PHRASES.items():
        if values[column] is not None:
            words.setdefault(concept, {})[key] = values[column]
    return words


WORDS: dict[str, dict[str, Any]] = {language: _words(column) for column, language in enumerate(LANGUAGES)}


def check_language(language: str) -> str:
    if language not in WORDS:
        raise ValueError(f"unknown caption language {language!r}; choose one of {list(WORDS)}")
    return language


def _clause(words: dict[str, Any], obj: dict[str, Any]) -> str:
    manners = "".join(words["manner"].get(m, "") for m in MANNERS if obj.get(m))
    suffix = "".join(words.get("suffix", {}).get(m, "") for m in MANNERS if obj.get(m))
    text = words["clause"].format(
        article=words["article"],
        size=words["size"].get(obj["size"], ""),
        colour=words["colour"][obj["colour"]],
        shape=words["shape"][obj["shape"]],
        manner=manners,
        direction=words["direction"][obj["direction"]],
        suffix=suffix,
    )
    return " ".join(text.split())


def caption(truth: dict[str, Any], language: str) -> str:
    """The caption of a clip's truth (`objects`, `background`, `camera_pan`, `occlusion`, `conditions`)."""
    words = WORDS[check_language(language)]
    objects = truth["objects"]
    clauses = [_clause(words, o) for o in objects]
    listed = words["joiner"].join(clauses[:-1]) + words["last_joiner"] + clauses[-1] if len(clauses) > 1 else clauses[0]
    text = words["count"].get(len(objects), "") + listed
    scene = []
    if truth.get("background") == "textured":
        scene.append(words["scene"]["textured"])
    if truth.get("camera_pan"):
        scene.append(words["scene"]["pan"].format(direction=words["direction"][truth["camera_pan"]]))
    if truth.get("occlusion"):
        scene.append(words["scene"]["occlusion"])
    scene.extend(words["scene"][c] for c in truth.get("conditions", []))
    if scene:
        text += words["scene_joiner"] + words["scene_joiner"].join(scene)
    return unicodedata.normalize("NFC", text)


def captions(truth: dict[str, Any]) -> dict[str, str]:
    """The caption in every language."""
    return {language: caption(truth, language) for language in LANGUAGES}


# Unicode script name prefix -> language code, for captions given without a language
SCRIPT_LANGUAGE = {"DEVANAGARI": "hi", "BENGALI": "bn", "TAMIL": "ta", "TELUGU": "te", "GUJARATI": "gu",
                   "GURMUKHI": "pa", "KANNADA": "kn", "MALAYALAM": "ml", "ORIYA": "or", "LATIN": "en"}


def detect_language(text: str) -> str:
    """The language code of the script most letters of `text` are in ('und' when unknown)."""
    counts: dict[str, int] = {}
    for ch in text:
        if ch.isalpha():
            script = unicodedata.name(ch, "").split(" ", 1)[0]
            counts[script] = counts.get(script, 0) + 1
    if not counts:
        return "und"
    return SCRIPT_LANGUAGE.get(max(counts, key=counts.get), "und")
