"""Captions from a clip's structured truth, through a small grammar per language.

English, Hindi (Devanagari), Bengali (Bengali script) and Tamil (Tamil script). The words live in
one table per language; the grammar is the same everywhere:

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

WORDS: dict[str, dict[str, Any]] = {
    "en": {
        "article": "a",
        "colour": dict(zip(COLOURS, COLOURS)),
        "shape": dict(zip(SHAPES, SHAPES)),
        # English puts the verb before the direction: "moving right"
        "clause": "{article} {size}{colour} {shape} {manner}moving {direction}{suffix}",
        "direction": {"right": "right", "left": "left", "up": "up", "down": "down"},
        "size": {"tiny": "tiny ", "small": "small ", "large": "large ", "huge": "huge "},
        "manner": {"spinning": "spinning and ", "accelerating": "speeding up and "},
        "suffix": {"fast": " very fast"},
        "count": {2: "two objects: ", 3: "three objects: ", 4: "four objects: "},
        "joiner": ", ",
        "last_joiner": " and ",
        "scene": {
            "textured": "over a textured background",
            "pan": "the camera pans {direction}",
            "occlusion": "one passes in front of another",
            "low_light": "in low light",
            "noise": "with sensor noise",
            "flicker": "with flickering light",
        },
        "scene_joiner": ", ",
    },
    "hi": {
        "article": "एक",
        "colour": {"red": "लाल", "green": "हरा", "blue": "नीला", "yellow": "पीला", "cyan": "फ़िरोज़ी",
                   "magenta": "मैजेंटा", "white": "सफ़ेद"},
        "shape": {"circle": "वृत्त", "square": "वर्ग", "triangle": "त्रिभुज", "star": "तारा"},
        "clause": "{article} {size}{colour} {shape} {manner}{direction} जा रहा है",
        "direction": {"right": "दाईं ओर", "left": "बाईं ओर", "up": "ऊपर", "down": "नीचे"},
        "size": {"tiny": "बहुत छोटा ", "small": "छोटा ", "large": "बड़ा ", "huge": "विशाल "},
        "manner": {"spinning": "घूमते हुए ", "accelerating": "तेज़ होते हुए ", "fast": "बहुत तेज़ी से "},
        "count": {2: "दो वस्तुएँ: ", 3: "तीन वस्तुएँ: ", 4: "चार वस्तुएँ: "},
        "joiner": ", ",
        "last_joiner": " और ",
        "scene": {
            "textured": "बनावटी पृष्ठभूमि पर",
            "pan": "कैमरा {direction} घूमता है",
            "occlusion": "एक वस्तु दूसरी के आगे से गुज़रती है",
            "low_light": "कम रोशनी में",
            "noise": "सेंसर शोर के साथ",
            "flicker": "टिमटिमाती रोशनी में",
        },
        "scene_joiner": ", ",
    },
    "bn": {
        "article": "একটি",
        "colour": {"red": "লাল", "green": "সবুজ", "blue": "নীল", "yellow": "হলুদ", "cyan": "ফিরোজা",
                   "magenta": "ম্যাজেন্টা", "white": "সাদা"},
        "shape": {"circle": "বৃত্ত", "square": "বর্গ", "triangle": "ত্রিভুজ", "star": "তারা"},
        "clause": "{article} {size}{colour} {shape} {manner}{direction} যাচ্ছে",
        "direction": {"right": "ডান দিকে", "left": "বাম দিকে", "up": "উপরে", "down": "নিচে"},
        "size": {"tiny": "খুব ছোট ", "small": "ছোট ", "large": "বড় ", "huge": "বিশাল "},
        "manner": {"spinning": "ঘুরতে ঘুরতে ", "accelerating": "গতি বাড়িয়ে ", "fast": "খুব দ্রুত "},
        "count": {2: "দুটি বস্তু: ", 3: "তিনটি বস্তু: ", 4: "চারটি বস্তু: "},
        "joiner": ", ",
        "last_joiner": " এবং ",
        "scene": {
            "textured": "নকশা করা পটভূমিতে",
            "pan": "ক্যামেরা {direction} সরে",
            "occlusion": "একটি বস্তু অন্যটির সামনে দিয়ে যায়",
            "low_light": "কম আলোয়",
            "noise": "সেন্সর নয়েজ সহ",
            "flicker": "ঝিকিমিকি আলোয়",
        },
        "scene_joiner": ", ",
    },
    "ta": {
        "article": "ஒரு",
        "colour": {"red": "சிவப்பு", "green": "பச்சை", "blue": "நீல", "yellow": "மஞ்சள்", "cyan": "இளநீல",
                   "magenta": "செந்நீல", "white": "வெள்ளை"},
        "shape": {"circle": "வட்டம்", "square": "சதுரம்", "triangle": "முக்கோணம்", "star": "நட்சத்திரம்"},
        "clause": "{article} {size}{colour} {shape} {manner}{direction} நகர்கிறது",
        "direction": {"right": "வலது பக்கம்", "left": "இடது பக்கம்", "up": "மேலே", "down": "கீழே"},
        "size": {"tiny": "மிகச் சிறிய ", "small": "சிறிய ", "large": "பெரிய ", "huge": "மிகப் பெரிய "},
        "manner": {"spinning": "சுழன்றபடி ", "accelerating": "வேகமெடுத்து ", "fast": "மிக வேகமாக "},
        "count": {2: "இரண்டு பொருட்கள்: ", 3: "மூன்று பொருட்கள்: ", 4: "நான்கு பொருட்கள்: "},
        "joiner": ", ",
        "last_joiner": " மற்றும் ",
        "scene": {
            "textured": "வடிவமைந்த பின்னணியில்",
            "pan": "கேமரா {direction} நகர்கிறது",
            "occlusion": "ஒன்று மற்றொன்றின் முன்னால் கடக்கிறது",
            "low_light": "குறைந்த ஒளியில்",
            "noise": "சென்சார் இரைச்சலுடன்",
            "flicker": "மினுமினுக்கும் ஒளியில்",
        },
        "scene_joiner": ", ",
    },
}


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
