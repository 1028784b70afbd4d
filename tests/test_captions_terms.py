"""Captions that fit every preset's text encoder, and domain terms that mean something from step one
(caption token lengths in shards, the truncation line, term embeddings initialised from their bytes)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from aiprod.config import load_config
from aiprod.config.loading import available_presets
from aiprod.data import caption_lengths as cl
from aiprod.data import shards
from aiprod.data.captions import LANGUAGES
from aiprod.data.synthetic import make_clip
from aiprod.data.synthetic_shards import build_synthetic_shards
from aiprod.models import build_model
from aiprod.models.text import BYTE_OFFSET, TERM_OFFSET, MultilingualTextEncoder


@pytest.fixture(scope="module")
def measured() -> list[tuple[str, str]]:
    # 80 seeds a level: the longest structure (level 2, four objects, textured) turns up many times
    return cl.grammar_captions(seeds=80) + cl.emergency_prompts()


@pytest.mark.parametrize("preset", available_presets())
def test_every_preset_max_length_covers_grammar_and_emergency_captions(preset, measured):
    text = load_config(preset).model.text
    tokenizer = cl.default_tokenizer(text.terms_file, text.num_terms)
    hist = cl.histogram(measured, tokenizer)
    assert set(hist) == set(LANGUAGES)
    longest = cl.longest(hist)
    assert all(share == 0.0 for share in cl.truncated_share(hist, text.max_length).values()), (
        f"{preset}: max_length {text.max_length} cuts captions; longest per language {longest}")


def _byte_means(encoder: MultilingualTextEncoder) -> torch.Tensor:
    rows = encoder.embed.weight.detach()
    return torch.stack([rows[[BYTE_OFFSET + b for b in term.encode("utf-8")]].mean(0)
                        for term in encoder.tokenizer.terms])


def test_term_in_a_training_caption_gets_a_gradient():
    encoder = MultilingualTextEncoder(load_config("tiny").model.text)
    captions = [make_clip(1, 0, 3, 16, 16, 8.0, language)[1]["caption"] for language in LANGUAGES]
    ids, mask = encoder.tokenize(captions)
    seen = {int(i) for i in ids[ids >= TERM_OFFSET]}
    for row, caption in enumerate(captions):  # every language's caption carries terms
        assert (ids[row] >= TERM_OFFSET).any(), f"no term in the training caption {caption!r}"
    encoder(ids, mask).square().mean().backward()
    grad = encoder.embed.weight.grad
    assert all(grad[i].abs().sum() > 0 for i in seen)
    unseen = [i for i in range(TERM_OFFSET, encoder.tokenizer.vocab_size) if i not in seen]
    assert grad[unseen].abs().sum() == 0


def test_unseen_term_embeds_close_to_its_own_spelling():
    torch.manual_seed(0)
    text = build_model(load_config("tiny").model).text  # as training builds it: no later init undoes it
    tokenizer = text.tokenizer
    spelling = F.normalize(_byte_means(text), dim=1)
    rows = F.normalize(text.embed.weight.detach()[TERM_OFFSET:], dim=1)
    similarity = rows @ spelling.T  # [term, spelling of term]
    for term in ("flood warning", "बाढ़ की चेतावनी", "வெள்ளம்", "ঘূর্ণিঝড়", "evacuation"):
        i = tokenizer.terms.index(term)  # no synthetic caption holds these
        others = torch.cat([similarity[i, :i], similarity[i, i + 1 :]])
        assert similarity[i, i] > 0.99 and similarity[i, i] > others.max(), term
    assert (similarity.argmax(dim=1) == torch.arange(len(tokenizer.terms))).float().mean() > 0.95
    # rescaled to a byte row's length, not shrunk by long spellings
    norms = text.embed.weight.detach().norm(dim=1)
    byte_norm = norms[BYTE_OFFSET:TERM_OFFSET].mean()
    assert torch.allclose(norms[TERM_OFFSET:], byte_norm.expand(len(tokenizer.terms)), rtol=1e-4)

    # a checkpoint's rows win over the init: load_state_dict into a model built on the meta device
    with torch.device("meta"):
        again = MultilingualTextEncoder(load_config("tiny").model.text)
    again.load_state_dict(text.state_dict(), assign=True)
    assert torch.equal(again.embed.weight, text.embed.weight)


def test_truncated_share_and_summary_line():
    hist = {"en": {11: 3, 30: 1}, "ta": {70: 1, 11: 1}}
    assert cl.truncated_share(hist, 64) == {"en": 0.0, "ta": 0.5}
    assert cl.truncated_share(hist, 20) == {"en": 0.25, "ta": 0.5}
    line = cl.summary_line(hist, 20)
    assert line == "captions: en 25.0% truncated at max_length 20 (longest 30), ta 50.0% (longest 70)"
    merged = cl.merge([{"tokenizer": "t", "lengths": {"en": {"11": 2}}},  # keys from JSON are str
                       {"tokenizer": "t", "lengths": {"en": {11: 1}}}])
    assert merged == {"tokenizer": "t", "lengths": {"en": {11: 3}}}
    assert cl.merge([{"tokenizer": "t", "lengths": {}}, {"tokenizer": "u", "lengths": {}}]) is None
    assert cl.merge([{"tokenizer": "t", "lengths": {}}, None]) is None


def test_shards_record_caption_token_lengths(tmp_path, capsys):
    out = tmp_path / "syn"
    summary = build_synthetic_shards(str(out), 8, levels=[1], size=(16, 16), frames=3, heldout_fraction=0.0,
                                     workers=1)
    err = capsys.readouterr().err
    assert "captions: en 0.0% truncated at max_length 64 (longest 11)" in err
    # level 1 in every language: "a red circle moving right" is 5 terms and 4 spaces, plus bos/eos
    assert summary["caption_tokens"]["lengths"] == {lang: {11: 2} for lang in LANGUAGES}
    index = shards.read_index(str(out))
    record = index["shards"][0]["caption_tokens"]
    assert record["tokenizer"] == cl.tokenizer_id()
    assert cl.truncated_share(record, 10) == {lang: 1.0 for lang in LANGUAGES}
    text = load_config("tiny").model.text
    assert cl.report_truncation(str(out), text) == (
        "captions: en 0.0% truncated at max_length 64 (longest 11), hi 0.0% (longest 11), "
        "bn 0.0% (longest 11), ta 0.0% (longest 11)")
    assert "truncated at max_length 8" in cl.report_truncation(str(out), text.model_copy(update={"max_length": 8}))
    assert "bn 100.0%" in cl.index_summary(index, 8)
    # another tokenizer, or an index from before the field: said in one line, not a wrong figure
    other = cl.report_truncation(str(out), text.model_copy(update={"num_terms": 100}))
    assert "tokenizer" in other and "not measured" in other
    for record in index["shards"]:
        del record["caption_tokens"]
    (out / shards.INDEX).write_text(json.dumps(index))
    assert "predates" in cl.report_truncation(str(out), text)


def test_weights_remember_their_term_list_and_old_weights_load_with_theirs(tmp_path):
    from aiprod import model_dir
    from aiprod.diffusion.pipeline import VideoPipeline
    from aiprod.model_dir import CheckpointError
    from aiprod.models.text import TERMS_KEY, TERMS_V1, load_terms

    cfg = load_config("tiny")
    torch.manual_seed(0)
    state = build_model(cfg.model).state_dict()
    assert TERMS_KEY in state
    # weights saved before the list was recorded were trained with the list of then: they load with it
    model_dir.save(tmp_path / "old", {k: v for k, v in state.items() if k != TERMS_KEY}, cfg)
    old = VideoPipeline.from_checkpoint(tmp_path / "old")
    assert old.model.text.tokenizer.terms == load_terms(str(TERMS_V1), cfg.model.text.num_terms)
    assert old.model.text.tokenizer.terms != build_model(cfg.model).text.tokenizer.terms
    # weights of one list are refused by a tokenizer of another, naming both
    other = cfg.with_overrides([f"model.text.terms_file={TERMS_V1}"])
    model_dir.save(tmp_path / "mismatch", state, other)
    with pytest.raises(CheckpointError, match="another term list"):
        VideoPipeline.from_checkpoint(tmp_path / "mismatch")
    model_dir.save(tmp_path / "same", state, cfg)
    assert VideoPipeline.from_checkpoint(tmp_path / "same").model.text.tokenizer.terms[0] == \
        build_model(cfg.model).text.tokenizer.terms[0]
