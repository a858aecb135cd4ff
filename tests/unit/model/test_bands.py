import numpy as np
import pytest

from model.al.bands import AUTOMATIC, DEFERRED, MANUAL, assign_bands, draw_audit_sample


def test_manual_wins_then_automatic_at_or_under_threshold():
    loss = np.array([0.1, 0.5, 0.9, 0.3, 0.2])
    bands = assign_bands(loss, manual_indices=[2, 0], threshold=0.3)
    assert bands.tolist() == [MANUAL, DEFERRED, MANUAL, AUTOMATIC, AUTOMATIC]


def test_no_threshold_means_nothing_automatic():
    bands = assign_bands(np.array([0.0, 0.1, 5.0]), manual_indices=[2], threshold=None)
    assert bands.tolist() == [DEFERRED, DEFERRED, MANUAL]


def test_empty_manual_list():
    bands = assign_bands(np.array([0.0, 1.0]), manual_indices=[], threshold=0.5)
    assert bands.tolist() == [AUTOMATIC, DEFERRED]


def test_manual_indices_out_of_range_are_refused():
    with pytest.raises(ValueError, match="manual_indices"):
        assign_bands(np.zeros(3), manual_indices=[3], threshold=None)


def test_audit_sample_is_a_reproducible_uniform_subset():
    candidates = np.array([4, 8, 15, 16, 23, 42])
    first = draw_audit_sample(candidates, 3, np.random.default_rng(0))
    assert first.tolist() == draw_audit_sample(candidates, 3, np.random.default_rng(0)).tolist()
    assert len(set(first.tolist())) == 3 and set(first.tolist()) <= set(candidates.tolist())
    assert sorted(draw_audit_sample(candidates, 100, np.random.default_rng(0)).tolist()) == sorted(candidates.tolist())
    assert draw_audit_sample(candidates, 0, np.random.default_rng(0)).size == 0
    rng = np.random.default_rng(1)
    counts = np.bincount(np.concatenate([draw_audit_sample(np.arange(6), 2, rng) for _ in range(3000)]), minlength=6)
    assert np.all(np.abs(counts - 1000) < 100)  # expected 1000 each, sd about 26
