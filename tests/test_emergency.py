"""Emergency templates and the no-model renderer: data, shaping, fallbacks, real H.264 output."""

from __future__ import annotations

import io
import shutil

import av
import numpy as np
import pytest
import yaml
from PIL import ImageFont

from aiprod.config import TemplateConfig
from aiprod.emergency import (
    AlertRequest,
    TemplateError,
    emergency_types,
    load_library,
    raqm_available,
    render_alert,
    renderer_for,
)
from aiprod.emergency.render import main as render_main
from aiprod.emergency.text import render_text_image

EXPECTED_TYPES = {
    "flood", "cyclone", "earthquake", "heatwave", "fire", "tsunami", "landslide",
    "chemical_accident", "disease_outbreak", "evacuation_order",
}
DEVANAGARI = f"{TemplateConfig().font_dir}/NotoSansDevanagari-Regular.ttf"


def decode(mp4: bytes) -> tuple[str, float, np.ndarray]:
    with av.open(io.BytesIO(mp4)) as container:
        stream = container.streams.video[0]
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
        return stream.codec_context.name, float(stream.average_rate), frames


def test_ten_types_five_variations_with_english_and_hindi_wording():
    library = load_library()
    assert set(emergency_types()) == EXPECTED_TYPES
    for name in EXPECTED_TYPES:
        template = library.get(name)
        assert len(template.variations) == 5, name
        assert {"en", "hi"} <= set(template.wording), name
        layouts = {v.layout for v in template.variations}
        assert len(layouts) >= 3, f"{name}: variations should differ in layout"
        palettes = {v.palette.background for v in template.variations}
        assert len(palettes) == 5, f"{name}: every variation has its own colours"


def test_every_variation_draws_a_card():
    renderer = renderer_for()
    seen = set()
    for name in emergency_types():
        for index in range(5):
            card = renderer.card(AlertRequest(name, "hi" if index % 2 else "en", index, region="Patna"), 320, 180)
            assert card.base.shape == (180, 320, 3)
            assert card.notes == []
            seen.add(card.base.tobytes())
    assert len(seen) == 50


def test_raqm_shapes_devanagari():
    assert raqm_available()
    from PIL import features

    assert features.check("raqm") and features.version("raqm")
    for text in ("बाढ़ चेतावनी", "हिंदी"):
        shaped = np.asarray(render_text_image(text, DEVANAGARI, 48, ImageFont.Layout.RAQM))
        basic = np.asarray(render_text_image(text, DEVANAGARI, 48, ImageFont.Layout.BASIC))
        width = max(shaped.shape[1], basic.shape[1])
        pad = lambda a: np.pad(a, ((0, 0), (0, width - a.shape[1])))  # noqa: E731
        assert shaped.shape[0] == basic.shape[0]
        assert not np.array_equal(pad(shaped), pad(basic)), text


def test_mixed_script_text_is_split_into_font_runs():
    book = renderer_for().fonts
    runs = book.runs("पटना, Bihar 2024")
    assert [r.script for r in runs] == ["DEVANAGARI", "LATIN"]
    assert "".join(r.text for r in runs) == "पटना, Bihar 2024"


@pytest.mark.parametrize("language,region", [("en", "Patna, Bihar"), ("hi", "पटना, बिहार")])
def test_alert_video_is_h264_at_least_five_seconds(language, region):
    alert = render_alert(AlertRequest("flood", language=language, region=region), seconds=5.0)
    codec, fps, frames = decode(alert.mp4)
    assert codec == "h264"
    assert frames.shape == (alert.frames, 360, 640, 3)
    assert alert.frames / fps >= 5.0
    assert alert.notes == []
    # it moves: ticker and border change between frames
    assert np.abs(frames[0].astype(int) - frames[len(frames) // 2].astype(int)).mean() > 1


def test_hindi_card_differs_from_english_card():
    renderer = renderer_for()
    en = renderer.card(AlertRequest("cyclone", "en"), 640, 360).base
    hi = renderer.card(AlertRequest("cyclone", "hi"), 640, 360).base
    assert not np.array_equal(en, hi)


def test_language_without_wording_falls_back_to_english_with_a_note():
    renderer = renderer_for()
    card = renderer.card(AlertRequest("fire", "ta"), 320, 180)
    assert any("no ta default wording" in note for note in card.notes)
    # a Tamil headline given by the caller is drawn with the Tamil font, no fallback for it
    card = renderer.card(AlertRequest("fire", "ta", headline="தீ எச்சரிக்கை", instructions="Leave now"), 320, 180)
    assert card.notes == []


def test_script_without_font_falls_back_to_english_wording():
    renderer = renderer_for()
    fallback = renderer.card(AlertRequest("flood", "en", headline="洪水警报", region="武汉 Wuhan"), 320, 180)
    assert any(note.startswith("headline: no font for CJK") for note in fallback.notes)
    assert any(note.startswith("region:") for note in fallback.notes)
    english = renderer.card(AlertRequest("flood", "en", region="Wuhan"), 320, 180)
    assert np.array_equal(fallback.base, english.base)


def test_model_frames_are_shown_in_the_icon_box():
    renderer = renderer_for()
    request = AlertRequest("tsunami", "en")
    card = renderer.card(request, 640, 360, inset=True)
    inset = np.zeros((3, 32, 32, 3), np.uint8)
    inset[..., 0] = 200
    frames = renderer.frames(card, 1.0, 4, inset)
    x0, y0, x1, y1 = card.inset_box
    assert (frames[:, y0:y1, x0:x1, 0] == 200).all()


def test_bad_type_and_variation_are_named():
    with pytest.raises(TemplateError, match="unknown emergency_type 'volcano'"):
        render_alert(AlertRequest("volcano"))
    with pytest.raises(ValueError, match="variation must be within 0..4"):
        renderer_for().card(AlertRequest("flood", variation=7), 320, 180)


def test_broken_template_file_is_reported_with_file_and_field(tmp_path):
    src = load_library().directory
    for name in ("broken_layout", "bad_colour"):
        root = tmp_path / name
        shutil.copytree(src, root)
        data = yaml.safe_load((root / "flood.yaml").read_text())
        if name == "broken_layout":
            data["variations"][1]["layout"] = "diagonal"
            expected = r"flood.yaml: variations.1: layout 'diagonal' is not in _layouts.yaml"
        else:
            data["variations"][0]["palette"]["accent"] = "yellow"
            expected = r"flood.yaml: variations.0.palette.accent: .*#RRGGBB"
        (root / "flood.yaml").write_text(yaml.safe_dump(data, allow_unicode=True))
        with pytest.raises(TemplateError, match=expected):
            load_library(str(root))


def test_cli_writes_a_playable_alert(tmp_path, capsys):
    out = tmp_path / "alert.mp4"
    assert render_main(["earthquake", "--language", "hi", "--region", "शिमला", "--out", str(out)]) == 0
    codec, _, frames = decode(out.read_bytes())
    assert codec == "h264" and len(frames) >= 5 * TemplateConfig().fps
    assert "earthquake/0" in capsys.readouterr().out
