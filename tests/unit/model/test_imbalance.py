"""Class imbalance: median-frequency weights and undersampling that protects rare classes of other heads."""

from __future__ import annotations

import numpy as np
import pytest

from model.data.imbalance import median_frequency_weights, undersample


def _labels(counts: list[int]) -> np.ndarray:
    return np.repeat(np.arange(len(counts)), counts)


def test_median_frequency_weights_known_counts() -> None:
    # freq .5 .3 .2, median .3 -> .3/.5, .3/.3, .3/.2
    w = median_frequency_weights(_labels([50, 30, 20]), 3)
    assert w == pytest.approx([0.6, 1.0, 1.5])


def test_median_frequency_weights_even_number_of_classes() -> None:
    # freq .4 .3 .2 .1, median (.3+.2)/2 = .25
    w = median_frequency_weights(_labels([40, 30, 20, 10]), 4)
    assert w == pytest.approx([0.25 / 0.4, 0.25 / 0.3, 0.25 / 0.2, 0.25 / 0.1])


def test_median_frequency_weights_absent_class_gets_one() -> None:
    # present freq .6 .4, median .5; class 1 absent
    w = median_frequency_weights(np.array([0] * 60 + [2] * 40), 3)
    assert w == pytest.approx([0.5 / 0.6, 1.0, 0.5 / 0.4])


def test_undersample_single_head_caps_majority_at_max_ratio() -> None:
    labels = _labels([900, 300, 40])[:, None]
    kept = labels[undersample(labels, [3], max_ratio=5.0, rng=np.random.default_rng(0))]
    # cap = 5 * 40 = 200: day and night cut to exactly the cap, the rare class untouched
    assert np.bincount(kept[:, 0], minlength=3).tolist() == [200, 200, 40]


def test_undersample_is_deterministic_and_returns_sorted_unique_indices() -> None:
    labels = _labels([500, 20])[:, None]
    a = undersample(labels, [2], 10.0, np.random.default_rng(3))
    b = undersample(labels, [2], 10.0, np.random.default_rng(3))
    assert np.array_equal(a, b)
    assert np.all(np.diff(a) > 0)


def _two_skewed_heads() -> np.ndarray:
    """timeofday (day, night, dusk) x weather (clear, rain, snow); both heads skewed."""
    blocks = [((0, 0), 600), ((1, 0), 100), ((2, 0), 20), ((0, 2), 10), ((0, 1), 15)]
    return np.array([pair for pair, n in blocks for _ in range(n)])


def test_undersample_never_drops_a_row_with_a_rare_class_of_another_head() -> None:
    labels = _two_skewed_heads()
    keep = undersample(labels, [3, 3], max_ratio=10.0, rng=np.random.default_rng(0))
    kept = np.zeros(len(labels), dtype=bool)
    kept[keep] = True
    # weather: rain (15) and snow (10) are rare; those rows are "day" images, the majority of timeofday
    assert kept[(labels[:, 1] == 1) | (labels[:, 1] == 2)].all()
    # timeofday: dusk (20) is rare; its rows are "clear", the majority of weather
    assert kept[labels[:, 0] == 2].all()
    # the majority class of each head is cut to its cap (10 x the rarest class) or below
    tod = np.bincount(labels[keep, 0], minlength=3)
    assert tod[0] <= 10 * tod[2]
    assert tod[0] < 625  # something was dropped


def test_undersample_still_acts_when_another_head_is_balanced() -> None:
    rng = np.random.default_rng(1)
    tod = rng.choice(3, 3000, p=[0.6, 0.35, 0.05])
    weather = rng.choice(3, 3000, p=[0.4, 0.3, 0.3])  # nothing to undersample here
    labels = np.stack([tod, weather], axis=1)
    keep = undersample(labels, [3, 3], max_ratio=3.0, rng=np.random.default_rng(0))
    counts = np.bincount(labels[keep, 0], minlength=3)
    assert counts.max() <= 3 * counts.min()
