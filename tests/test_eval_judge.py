"""The alignment judge, validated on ground-truth synthetic clips (levels 1-2, every language)."""

from __future__ import annotations

import pytest

from aiprod.data.captions import LANGUAGES
from aiprod.data.synthetic import make_clip
from aiprod.eval.judge import ATTRIBUTES, alignment, judge_video, score


@pytest.mark.parametrize("size,frames,n", [(32, 9, 80), (64, 17, 40)])
def test_judge_accuracy_on_ground_truth(size, frames, n):
    records = []
    for i in range(n):
        video, meta = make_clip(1 + i % 2, 500 + i, frames, size, size, 8, LANGUAGES[i % len(LANGUAGES)])
        records.append((score(judge_video(video), meta), meta["language"]))
    result = alignment(records)
    assert result["videos"] == n
    for attribute in ATTRIBUTES:
        assert result["per_attribute"][attribute] >= 0.95, result["per_attribute"]
    assert set(result["per_language"]) == set(LANGUAGES)
    assert all(row["videos"] == n // len(LANGUAGES) for row in result["per_language"].values())


def test_judge_sees_what_is_wrong():
    """Reversed clips move the other way; a recoloured clip has the wrong colour; blank has nothing."""
    wrong_direction = wrong_colour = 0
    for i in range(20):
        video, meta = make_clip(1, 900 + i, 9, 32, 32, 8)
        wrong_direction += not score(judge_video(video[::-1]), meta)["direction"]
        swapped = video[..., [2, 0, 1]]  # RGB -> BRG maps every palette colour to another one
        wrong_colour += not score(judge_video(swapped), meta)["colour"]
    assert wrong_direction == 20
    assert wrong_colour >= 18
    blank = judge_video(video * 0)
    assert (blank.colour, blank.count, blank.direction) == (None, 0, "static")
