"""MultilingualTextEncoder: byte-level UTF-8 tokens plus domain-term tokens, then a transformer.

No tokenizer to download: any script is its UTF-8 bytes. Terms from a list (emergency and civic
words in English and Indian languages, and the synthetic caption grammar's words and the emergency
templates' headline words in every caption language: en, hi, bn, ta) become single tokens, matched
longest first at word boundaries and case-insensitively; everything else falls back to bytes. A
term's embedding row starts as the mean of its bytes' rows (`init_term_embeddings`).

terms.txt: the first `model.text.num_terms` (500) lines are used; the lines after them are terms
left out to make room for the caption languages' words (other Indian languages' words, election and
civic-administration words), kept for a larger `num_terms`.

Vocabulary: 0 pad, 1 bos, 2 eos, 3..258 bytes, 259.. terms.
"""

from __future__ import annotations

import hashlib
import unicodedata
from pathlib import Path

import torch
from torch import nn

from aiprod import storage
from aiprod.config import TextConfig
from aiprod.models.layers import MLP, Attention

PAD, BOS, EOS = 0, 1, 2
BYTE_OFFSET = 3
TERM_OFFSET = BYTE_OFFSET + 256
DEFAULT_TERMS = Path(__file__).with_name("terms.txt")
# The packaged list before the caption grammar's words became terms (2026-12-03): weights saved
# without TERMS_KEY were trained with it, and load with it.
TERMS_V1 = Path(__file__).with_name("terms-v1.txt")
TERMS_KEY = "text.terms_sha256"  # the sha256 of the term list, saved with the weights


def _normalise(text: str) -> str:
    """NFC, and lowercase where that keeps the length (so match positions stay valid)."""
    text = unicodedata.normalize("NFC", text)
    return "".join(c.lower() if len(c.lower()) == 1 else c for c in text)


def _is_word_char(c: str) -> bool:
    return c.isalnum() or c == "_" or unicodedata.category(c).startswith("M")  # M: Indic vowel signs


def load_terms(path: str | None, num_terms: int) -> list[str]:
    """The first `num_terms` distinct lines of the term list (the packaged one when `path` is None)."""
    source = str(path) if path else str(DEFAULT_TERMS)
    terms: list[str] = []
    for line in storage.read_text(source).splitlines():
        term = _normalise(line.strip())
        if term and term not in terms:
            terms.append(term)
    if len(terms) < num_terms:
        raise ValueError(
            f"model.text.num_terms={num_terms} but the term list {source} has only "
            f"{len(terms)} distinct terms"
        )
    return terms[:num_terms]


def terms_digest(terms: list[str]) -> bytes:
    """The sha256 of a term list, one term per line: what names a tokenizer (weights, shard records)."""
    return hashlib.sha256("\n".join(terms).encode("utf-8")).digest()


def terms_fingerprint(terms: list[str]) -> torch.Tensor:
    """uint8[32]: `terms_digest` as saved under TERMS_KEY."""
    return torch.tensor(list(terms_digest(terms)), dtype=torch.uint8)


def with_saved_terms(cfg: TextConfig, state: dict[str, torch.Tensor]) -> TextConfig:
    """The text config that reads `state`'s captions as it was trained to: weights saved before the
    term list was recorded (no TERMS_KEY) were trained with TERMS_V1, the packaged list of then."""
    if TERMS_KEY in state or cfg.terms_file is not None:
        return cfg
    return cfg.model_copy(update={"terms_file": str(TERMS_V1)})


def state_for_terms(state: dict[str, torch.Tensor], terms: list[str]) -> dict[str, torch.Tensor]:
    """`state` to load into a text encoder of `terms`, TERMS_KEY filled in for weights from before it
    was saved; ValueError (why) when the weights were trained with another term list."""
    problem = terms_mismatch(state, terms)
    if problem:
        raise ValueError(problem)
    return {TERMS_KEY: terms_fingerprint(terms), **state}


def terms_mismatch(state: dict[str, torch.Tensor], terms: list[str]) -> str | None:
    """Why `state` cannot be read with a tokenizer of `terms`, or None."""
    saved = state.get(TERMS_KEY)
    if saved is None:
        if len(terms) <= 500 and terms == load_terms(str(TERMS_V1), 500)[: len(terms)]:
            return None
        return (f"the weights predate {TERMS_KEY} and were trained with the term list {TERMS_V1.name}; set "
                f"model.text.terms_file={TERMS_V1}")
    saved, wanted = bytes(saved.to("cpu", torch.uint8).tolist()), terms_digest(terms)
    if saved == wanted:
        return None
    return (f"the weights were trained with another term list (sha256 {saved.hex()[:12]}) than "
            f"model.text's terms_file/num_terms give ({wanted.hex()[:12]}): captions would map to "
            "the wrong embedding rows; use the terms the model was trained with")


class ByteTermTokenizer:
    def __init__(self, terms: list[str], max_length: int, on_too_long: str = "truncate"):
        if max_length < 2:
            raise ValueError(f"model.text.max_length must leave room for bos and eos, got {max_length}")
        self.terms = terms
        self.max_length = max_length
        self.on_too_long = on_too_long
        self.vocab_size = TERM_OFFSET + len(terms)
        self._trie: dict = {}
        for index, term in enumerate(terms):
            node = self._trie
            for c in term:
                node = node.setdefault(c, {})
            node[None] = TERM_OFFSET + index

    def _match(self, text: str, start: int) -> tuple[int, int] | None:
        """(token, end) of the longest term at `start` that sits on word boundaries."""
        if start > 0 and _is_word_char(text[start - 1]) and _is_word_char(text[start]):
            return None
        node, best = self._trie, None
        for end in range(start, len(text)):
            node = node.get(text[end])
            if node is None:
                break
            after_ok = end + 1 == len(text) or not (_is_word_char(text[end]) and _is_word_char(text[end + 1]))
            if None in node and after_ok:
                best = (node[None], end + 1)
        return best

    def encode(self, text: str, index: int = 0) -> list[int]:
        """Token ids with bos/eos; too long -> truncated (keeping eos) or ValueError, as configured."""
        text = _normalise(text)
        ids, i = [BOS], 0
        while i < len(text):
            match = self._match(text, i) if self._trie else None
            if match is not None:
                ids.append(match[0])
                i = match[1]
            else:
                ids.extend(BYTE_OFFSET + b for b in text[i].encode("utf-8"))
                i += 1
        ids.append(EOS)
        if len(ids) > self.max_length:
            if self.on_too_long == "error":
                raise ValueError(
                    f"text {index} is {len(ids)} tokens long (with bos/eos); model.text.max_length is "
                    f"{self.max_length} (set model.text.on_too_long=truncate to cut it)"
                )
            ids = ids[: self.max_length - 1] + [EOS]
        return ids

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """ids [B, L] long (padded with 0) and mask [B, L] bool (True = token); L = longest text."""
        if isinstance(texts, str):
            raise TypeError("tokenize expects a list of strings, got one str")
        encoded = [self.encode(text, i) for i, text in enumerate(texts)]
        length = max((len(e) for e in encoded), default=2)
        ids = torch.full((len(encoded), length), PAD, dtype=torch.long)
        for row, e in enumerate(encoded):
            ids[row, : len(e)] = torch.tensor(e, dtype=torch.long)
        return ids, ids != PAD

    def decode(self, ids: list[int]) -> str:
        """Text back from ids (terms come back lowercased); for debugging and tests."""
        out, pending = [], bytearray()
        for i in ids:
            if BYTE_OFFSET <= i < TERM_OFFSET:
                pending.append(i - BYTE_OFFSET)
                continue
            out.append(pending.decode("utf-8", errors="replace"))
            pending = bytearray()
            if i >= TERM_OFFSET:
                out.append(self.terms[i - TERM_OFFSET])
        out.append(pending.decode("utf-8", errors="replace"))
        return "".join(out)


class TextBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = MLP(width, mlp_ratio)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), attn_mask=attn_mask)
        return x + self.mlp(self.norm2(x))


class MultilingualTextEncoder(nn.Module):
    """tokenize(list[str]) -> (ids, mask); forward(ids, mask) -> [B, L, width]."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.cfg = cfg
        terms = load_terms(cfg.terms_file, cfg.num_terms)
        self.tokenizer = ByteTermTokenizer(terms, cfg.max_length, cfg.on_too_long)
        self.width = cfg.width
        self.embed = nn.Embedding(self.tokenizer.vocab_size, cfg.width)
        self.pos = nn.Parameter(torch.randn(cfg.max_length, cfg.width) * 0.02)
        self.blocks = nn.ModuleList(TextBlock(cfg.width, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.width)
        # saved with the weights: a term's row means nothing to a tokenizer with another term list
        self.register_buffer("terms_sha256", terms_fingerprint(terms))
        self.init_term_embeddings()

    @torch.no_grad()
    def init_term_embeddings(self, mode: str = "mean_rescaled") -> None:
        """Each term's row from its spelling: the mean of its UTF-8 bytes' rows, rescaled to the mean
        norm of the byte rows ("mean_rescaled"; "mean" leaves it shorter the longer the term is).

        So a term no caption has trained starts where its spelling points, not at a random vector.
        Measured on the tiny encoder (and 768 wide, 2 deep), 3 seeds: the pooled output of each of
        the 500 terms as one token against all 500 spelled in bytes, the right spelling nearest for
        0.2 % of terms with random rows, 17 % (26 %) with the plain mean, 26 % (37 %) rescaled;
        weighting bytes by IDF or centring the means did no better (24 % / 18 %). Runs in __init__;
        a no-op on the meta device (a checkpoint's rows are loaded there)."""
        weight = self.embed.weight
        terms = self.tokenizer.terms
        if weight.is_meta or not terms:
            return
        spelled = [term.encode("utf-8") for term in terms]
        index = torch.zeros(len(terms), max(len(b) for b in spelled), dtype=torch.long, device=weight.device)
        counts = torch.zeros(len(terms), 1, dtype=weight.dtype, device=weight.device)
        for row, b in enumerate(spelled):
            index[row, : len(b)] = torch.tensor([BYTE_OFFSET + x for x in b], dtype=torch.long)
            counts[row] = len(b)
        byte_rows = weight[BYTE_OFFSET:TERM_OFFSET]
        present = (torch.arange(index.shape[1], device=weight.device)[None, :] < counts).to(weight.dtype)
        means = (weight[index] * present[..., None]).sum(dim=1) / counts
        if mode == "mean_rescaled":
            means = means * (byte_rows.norm(dim=1).mean() / means.norm(dim=1, keepdim=True).clamp_min(1e-12))
        elif mode != "mean":
            raise ValueError(f"init_term_embeddings: mode is mean or mean_rescaled, got {mode!r}")
        weight[TERM_OFFSET : TERM_OFFSET + len(terms)] = means

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tokenizer(texts)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if ids.ndim != 2 or mask.shape != ids.shape:
            raise ValueError(
                f"text encoder expects ids and mask [B, L], got {tuple(ids.shape)} and {tuple(mask.shape)}"
            )
        if ids.shape[1] > self.cfg.max_length:
            raise ValueError(
                f"text encoder got {ids.shape[1]} tokens; model.text.max_length is {self.cfg.max_length}"
            )
        x = self.embed(ids) + self.pos[: ids.shape[1]]
        # Rows with no tokens at all would give NaN attention; let them attend to everything.
        keys = mask | ~mask.any(dim=1, keepdim=True)
        attn_mask = keys[:, None, None, :]
        for block in self.blocks:
            x = block(x, attn_mask)
        return self.norm(x)

    def encode(
        self, texts: list[str], device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Convenience: texts -> (features [B, L, width], mask [B, L]) on `device`."""
        ids, mask = self.tokenize(texts)
        device = device or next(self.parameters()).device
        ids, mask = ids.to(device), mask.to(device)
        return self(ids, mask), mask
