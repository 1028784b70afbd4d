"""Caption token lengths per language: histograms, the share a `model.text.max_length` would cut,
and a one-line summary (make_shards and the start of training print it).

    record = caption_token_lengths(samples)  # {"tokenizer": "terms:…", "lengths": {"en": {11: 10}, …}}
    truncated_share(record, 64)              # {"en": 0.0, "hi": 0.125, ...}
    summary_line(record, 64)                 # "captions: en 0.0% truncated at max_length 64 (longest 59), ..."
    report_truncation(data_uri, cfg.model.text)   # the line for a shard index (start of training)

Measured text: `grammar_captions()` (the synthetic grammar, levels 1-5, every language) and
`emergency_prompts()` (every template variation's type + headline, every language);
tests/test_captions_terms.py checks that every preset's max_length covers both.

Lengths are in tokens of the default tokenizer (the packaged term list, `TextConfig().num_terms`
terms) and include bos and eos; `tokenizer_id()` names that tokenizer (a short sha of its terms)
so a reader can tell whether recorded lengths apply to its own tokenizer.
"""

from __future__ import annotations

import functools
import sys
from collections import Counter
from collections.abc import Iterable
from typing import Any

from aiprod.data import captions as cap

NO_LIMIT = 1 << 30


def _order(language: str) -> tuple[int, str]:
    """Caption languages in LANGUAGES order (en, hi, bn, ta), then any other alphabetically."""
    return (cap.LANGUAGES.index(language) if language in cap.LANGUAGES else len(cap.LANGUAGES), language)


def terms_sha(terms: list[str]) -> str:
    from aiprod.models.text import terms_digest

    return terms_digest(terms).hex()[:12]


@functools.lru_cache(maxsize=8)
def _tokenizer(terms_file: str | None, num_terms: int):
    from aiprod.models.text import ByteTermTokenizer, load_terms

    return ByteTermTokenizer(load_terms(terms_file, num_terms), NO_LIMIT)


def default_tokenizer(terms_file: str | None = None, num_terms: int | None = None):
    """A tokenizer that never truncates, with the terms of `model.text` (default: TextConfig's)."""
    from aiprod.config import TextConfig

    return _tokenizer(terms_file, TextConfig().num_terms if num_terms is None else num_terms)


def tokenizer_id(tokenizer=None) -> str:
    """Which tokenizer the lengths are in: 'terms:' + a short sha of its term list."""
    return "terms:" + terms_sha(list((tokenizer or default_tokenizer()).terms))


def token_length(text: str, tokenizer=None) -> int:
    """Tokens of `text` with bos and eos, untruncated."""
    return len((tokenizer or default_tokenizer()).encode(text))


def histogram(pairs: Iterable[tuple[str, str]], tokenizer=None) -> dict[str, dict[int, int]]:
    """{language: {length: count}} of (language, text) pairs."""
    tokenizer = tokenizer or default_tokenizer()
    counts: dict[str, Counter] = {}
    for language, text in pairs:
        counts.setdefault(language, Counter())[token_length(text, tokenizer)] += 1
    return {lang: dict(sorted(counts[lang].items())) for lang in sorted(counts, key=_order)}


def caption_token_lengths(samples: Iterable[Any], tokenizer=None) -> dict[str, Any]:
    """The record of a shard: {"tokenizer": id, "lengths": {language: {length: count}}} of its
    samples' captions (objects with `.meta` or meta dicts with `caption` and optional `language`)."""
    tokenizer = tokenizer or default_tokenizer()
    pairs = []
    for sample in samples:
        meta = getattr(sample, "meta", sample)
        text = meta.get("caption") or ""
        pairs.append((meta.get("language") or cap.detect_language(text), text))
    return {"tokenizer": tokenizer_id(tokenizer), "lengths": histogram(pairs, tokenizer)}


def merge(records: Iterable[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Sum shard records; None when any lacks the field or their tokenizers differ (or none given)."""
    tokenizers, total = set(), {}
    seen = False
    for record in records:
        seen = True
        if not record or "lengths" not in record:
            return None
        tokenizers.add(record.get("tokenizer"))
        for language, lengths in record["lengths"].items():
            target = total.setdefault(language, Counter())
            for length, count in lengths.items():
                target[int(length)] += int(count)  # JSON keys come back as str
    if not seen or len(tokenizers) != 1:
        return None
    return {"tokenizer": tokenizers.pop(),
            "lengths": {lang: dict(sorted(total[lang].items())) for lang in sorted(total, key=_order)}}


def _lengths(hist: dict[str, Any]) -> dict[str, dict[int, int]]:
    lengths = hist.get("lengths", hist) if "tokenizer" in hist else hist
    return {lang: {int(k): int(v) for k, v in counts.items()} for lang, counts in lengths.items()}


def truncated_share(hist: dict[str, Any], max_length: int) -> dict[str, float]:
    """Per language, the share of captions longer than `max_length` tokens (cut by the encoder)."""
    shares = {}
    for language, counts in _lengths(hist).items():
        n = sum(counts.values())
        shares[language] = sum(c for length, c in counts.items() if length > max_length) / n if n else 0.0
    return shares


def longest(hist: dict[str, Any]) -> dict[str, int]:
    return {lang: max(counts, default=0) for lang, counts in _lengths(hist).items()}


def summary_line(hist: dict[str, Any], max_length: int) -> str:
    """'captions: en 0.0% truncated at max_length 64 (longest 27), hi 12.5% (longest 80), ...'"""
    shares, tops = truncated_share(hist, max_length), longest(hist)
    parts = [f"{lang} {100 * share:.1f}%" + (f" truncated at max_length {max_length}" if i == 0 else "")
             + f" (longest {tops[lang]})" for i, (lang, share) in enumerate(shares.items())]
    return "captions: " + (", ".join(parts) if parts else "none")


@functools.lru_cache(maxsize=1)
def preset_max_lengths() -> tuple[int, ...]:
    """The packaged presets' `model.text.max_length`s, smallest first."""
    from aiprod.config.loading import available_presets, load_config

    return tuple(sorted({load_config(name).model.text.max_length for name in available_presets()}))


def shards_summary(shard_records: Iterable[dict[str, Any]], out=None) -> dict[str, Any] | None:
    """The index records' `caption_tokens` summed (None when one lacks them); prints the summary line
    at the smallest packaged preset's max_length to stderr (make_shards)."""
    merged = merge(r.get("caption_tokens") for r in shard_records)
    if merged is None:
        line = "captions: some shards predate caption token lengths (or mix tokenizers); not summed"
    else:
        line = summary_line(merged, preset_max_lengths()[0])
    print(line, file=out or sys.stderr, flush=True)
    return merged


def index_summary(index: dict[str, Any] | None, max_length: int, tokenizer=None) -> str:
    """The summary line of a shard index's recorded lengths (train and heldout), or why there is none."""
    if not index:
        return "captions: no shard index, truncation not measured"
    records = [r.get("caption_tokens") for split in ("shards", "heldout") for r in index.get(split, [])]
    merged = merge(records)
    if merged is None:
        return ("captions: the shard index predates caption token lengths (or mixes tokenizers); "
                "truncation not measured (rebuild the shards to see it)")
    own = tokenizer_id(tokenizer)
    if merged["tokenizer"] != own:
        return (f"captions: the shards' lengths are in tokenizer {merged['tokenizer']}, this run's is {own}; "
                f"truncation not measured (rebuild the shards to see it)")
    return summary_line(merged, max_length)


def report_truncation(data_uri: str, text_cfg: Any, out=None) -> str:
    """Print (to stderr) and return the summary line of `data_uri`'s shard index at the run's
    `model.text.max_length`, in the run's tokenizer (its terms_file and num_terms)."""
    from aiprod.data.shards import read_index

    try:
        index = read_index(data_uri)
        tokenizer = default_tokenizer(text_cfg.terms_file, text_cfg.num_terms)
        line = index_summary(index, text_cfg.max_length, tokenizer)
    except Exception as exc:  # noqa: BLE001 - a report; check_data says what is wrong with the data
        line = f"captions: truncation not measured ({type(exc).__name__}: {exc})"
    print(line, file=out or sys.stderr, flush=True)
    return line


# ----------------------------------------------------------------------------- measured text


def grammar_captions(levels: Iterable[int] = (1, 2, 3, 4, 5), seeds: int = 400) -> list[tuple[str, str]]:
    """(language, caption) of synthetic clips' truths at `levels` x `seeds`, every language (the
    scene only: no frames are drawn, so thousands take a second)."""
    import numpy as np

    from aiprod.data import synthetic

    pairs = []
    for level in levels:
        for seed in range(seeds):
            rng = np.random.default_rng([seed, level])  # as make_clip draws it
            style = int(rng.integers(1, 5)) if level == 5 else level
            truth = synthetic._scene(style, rng, 9, 32, 32)
            pairs.extend(cap.captions(truth).items())
    return pairs


def emergency_prompts(templates_dir: str | None = None) -> list[tuple[str, str]]:
    """(language, prompt) of every emergency template variation as the emergency path builds its
    prompt (type, headline; the card's own wording in that language, English where it has none)."""
    from aiprod.emergency.templates import load_library

    library = load_library(templates_dir)
    pairs = []
    for name in library.types():
        template = library.get(name)
        for i in range(len(template.variations)):
            for language in cap.LANGUAGES:
                wording, _ = template.wording_for(i, language)
                pairs.append((language, f"{name.replace('_', ' ')} {wording.headline}"))
    return pairs
