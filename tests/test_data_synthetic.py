"""Synthetic curriculum clips and their captions: determinism, level properties, visible truth."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aiprod.data import captions as cap
from aiprod.data.synthetic import PALETTE, make_clip

T, H, W, FPS = 9, 32, 32, 8.0
SEEDS = range(8)


def _mask(frame: np.ndarray, rgb) -> np.ndarray:
    return np.all(frame == np.asarray(rgb, np.uint8), axis=-1)


def test_same_seed_same_clip_and_different_seed_differs():
    a, meta_a = make_clip(3, 7, T, H, W, FPS, "hi")
    b, meta_b = make_clip(3, 7, T, H, W, FPS, "hi")
    c, _ = make_clip(3, 8, T, H, W, FPS, "hi")
    assert a.dtype == np.uint8 and a.shape == (T, H, W, 3)
    assert np.array_equal(a, b) and meta_a == meta_b
    assert not np.array_equal(a, c)
    json.dumps(meta_a, ensure_ascii=False)  # the truth is plain JSON


@pytest.mark.parametrize("seed", SEEDS)
def test_level_1_one_medium_object_steady_motion_visible_in_frames(seed):
    frames, meta = make_clip(1, seed, T, H, W, FPS, "en")
    assert meta["count"] == 1 and len(meta["objects"]) == 1
    obj = meta["objects"][0]
    assert obj["size"] == "medium" and not (obj["spinning"] or obj["accelerating"] or obj["fast"])
    assert meta["background"] == "plain" and meta["conditions"] == [] and meta["camera_pan"] is None
    assert meta["motion_direction"] == obj["direction"] and meta["colours"] == [obj["colour"]]
    # what a judge sees: the object's palette colour dominates the non-background pixels ...
    first, last = (_mask(frames[i], PALETTE[obj["colour"]]) for i in (0, -1))
    assert first.sum() > 0.02 * H * W and last.sum() > 0.02 * H * W
    # ... and its centroid moves the stated way
    (y0, x0), (y1, x1) = (np.argwhere(m).mean(axis=0) for m in (first, last))
    dx, dy = x1 - x0, y1 - y0
    expected = {"right": dx > 2, "left": dx < -2, "down": dy > 2, "up": dy < -2}[obj["direction"]]
    assert expected, (obj["direction"], dx, dy)


@pytest.mark.parametrize("seed", SEEDS)
def test_level_2_two_to_four_distinct_objects_that_never_overlap(seed):
    frames, meta = make_clip(2, seed, T, H, W, FPS, "en")
    objects = meta["objects"]
    assert 2 <= meta["count"] == len(objects) <= 4
    assert len({o["colour"] for o in objects}) == len(objects)
    for t in (0, T // 2, T - 1):
        for obj in objects:  # every object is visible in its own colour in every frame
            assert _mask(frames[t], PALETTE[obj["colour"]]).sum() > 0
    # lanes: objects' paths are separated across the motion axis by more than their radii
    axis = 1 if objects[0]["direction"] in ("right", "left") else 0
    lanes = sorted((o["start_xy"][axis], o["radius_px"]) for o in objects)
    for (c0, r0), (c1, r1) in zip(lanes, lanes[1:]):
        assert c1 - c0 > r0 + r1


def test_level_3_complex_motion_and_level_4_edge_cases_and_level_5_mix():
    level3 = [make_clip(3, s, T, H, W, FPS)[1] for s in SEEDS]
    assert all(m["objects"][0]["spinning"] and m["background"] == "textured" for m in level3)
    assert any(m["occlusion"] for m in level3) and any(m["camera_pan"] for m in level3)
    assert any(m["objects"][0]["accelerating"] for m in level3)
    level4 = [make_clip(4, s, T, H, W, FPS)[1] for s in SEEDS]
    for m in level4:
        obj = m["objects"][0]
        assert m["conditions"] and set(m["conditions"]) <= set(cap.CONDITIONS)
        assert obj["fast"] or obj["size"] in ("tiny", "huge")
    level5 = [make_clip(5, s, T, H, W, FPS)[1] for s in range(16)]
    assert all(m["level"] == 5 and m["style_level"] in (1, 2, 3, 4) for m in level5)
    assert len({m["style_level"] for m in level5}) >= 3


def test_captions_in_every_language_in_their_own_script():
    _, meta = make_clip(2, 3, T, H, W, FPS, "ta")
    assert set(meta["captions"]) == set(cap.LANGUAGES) and meta["caption"] == meta["captions"]["ta"]
    for language, text in meta["captions"].items():
        assert text and cap.detect_language(text) == language, (language, text)
    words = cap.WORDS["hi"]
    assert words["colour"][meta["objects"][0]["colour"]] in meta["captions"]["hi"]
    assert f"{len(meta['objects'])}" not in meta["captions"]["en"]  # counts are words
    assert cap.WORDS["en"]["count"][meta["count"]] in meta["captions"]["en"]


def test_any_size_fps_and_length():
    for frames, height, width, fps in [(1, 8, 8, 1.0), (17, 33, 47, 29.97), (4, 96, 20, 60.0)]:
        clip, meta = make_clip(1, 0, frames, height, width, fps, "bn")
        assert clip.shape == (frames, height, width, 3) and meta["fps"] == fps


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="level"):
        make_clip(6, 0, T, H, W, FPS)
    with pytest.raises(ValueError, match="language"):
        make_clip(1, 0, T, H, W, FPS, "xx")
    with pytest.raises(ValueError, match="height"):
        make_clip(1, 0, T, 4, W, FPS)
