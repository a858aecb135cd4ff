import json

import numpy as np
import pytest
from scipy.stats import beta

from model.al.certify import Certificate, certify_threshold, clopper_pearson_lower, labels_needed


@pytest.mark.parametrize("successes, n", [(1, 1), (7, 10), (10, 10), (45, 50), (950, 1000), (3, 200)])
def test_clopper_pearson_is_the_beta_quantile(successes, n):
    expected = beta.ppf(0.05, successes, n - successes + 1)
    assert clopper_pearson_lower(successes, n, 0.05) == pytest.approx(expected, rel=1e-12)


def test_clopper_pearson_known_values():
    assert clopper_pearson_lower(7, 10, 0.05) == pytest.approx(0.39338, abs=1e-5)  # textbook 90% two-sided CI
    assert clopper_pearson_lower(10, 10, 0.05) == pytest.approx(0.05 ** (1 / 10))
    assert clopper_pearson_lower(0, 10, 0.05) == 0.0
    assert clopper_pearson_lower(0, 0, 0.05) == 0.0
    assert clopper_pearson_lower(59, 59, 0.05) >= 0.95
    assert clopper_pearson_lower(58, 58, 0.05) < 0.95


@pytest.mark.parametrize("args", [(3, 2, 0.05), (-1, 2, 0.05), (1, 2, 0.0), (1, 2, 1.0)])
def test_clopper_pearson_rejects_bad_arguments(args):
    with pytest.raises(ValueError):
        clopper_pearson_lower(*args)


@pytest.mark.parametrize("target, delta", [(0.95, 0.05), (0.99, 0.05), (0.9, 0.1), (0.8, 0.01)])
def test_labels_needed_is_the_smallest_certifiable_count(target, delta):
    n = labels_needed(target, delta)
    assert clopper_pearson_lower(n, n, delta) >= target
    assert clopper_pearson_lower(n - 1, n - 1, delta) < target


def test_labels_needed_textbook_values():
    assert labels_needed(0.95, 0.05) == 59
    assert labels_needed(0.99, 0.05) == 299


def test_refuses_with_few_labels_and_says_how_many_more():
    cert = certify_threshold(np.linspace(0, 1, 40), np.ones(40, bool))
    assert cert.threshold is None and cert.lower_bound is None
    assert cert.n_calibration == 40
    assert cert.more_labels_needed == 19
    assert "19" in cert.message


def test_min_in_band_raises_the_count_needed():
    cert = certify_threshold(np.linspace(0, 1, 80), np.ones(80, bool), min_in_band=100)
    assert cert.threshold is None and cert.more_labels_needed == 20


def test_certifies_loosest_threshold_when_all_right():
    loss = np.random.default_rng(0).uniform(size=59)
    cert = certify_threshold(loss, np.ones(59, bool))
    assert cert.threshold == loss.max()
    assert cert.n_in_band == 59 and cert.precision == 1.0
    assert cert.lower_bound >= 0.95
    assert cert.more_labels_needed is None


def test_band_includes_all_tied_losses():
    loss = np.array([0.0] * 30 + [1.0] * 30)
    cert = certify_threshold(loss, np.ones(60, bool))
    assert cert.threshold == 1.0 and cert.n_in_band == 60


def test_fixed_sequence_stops_at_first_failure():
    # 150 right, then 10 errors, then 300 right: the full set passes again, but the walk must stop.
    correct = np.array([True] * 150 + [False] * 10 + [True] * 300)
    loss = np.arange(correct.size, dtype=float)
    rng = np.random.default_rng(0)
    perm = rng.permutation(correct.size)  # input order must not matter
    cert = certify_threshold(loss[perm], correct[perm])

    assert clopper_pearson_lower(int(correct.sum()), correct.size, 0.05) >= 0.95  # a looser threshold passes
    expected = None
    for n in range(59, correct.size + 1):  # independent walk, strict to loose
        if clopper_pearson_lower(int(correct[:n].sum()), n, 0.05) < 0.95:
            break
        expected = loss[n - 1]
    assert expected is not None and expected < 160
    assert cert.threshold == expected
    assert cert.n_in_band == int(expected) + 1
    assert cert.lower_bound >= 0.95


def test_refuses_when_lowest_losses_are_wrong_despite_enough_labels():
    correct = np.array([False] * 10 + [True] * 190)
    cert = certify_threshold(np.arange(200.0), correct)
    assert cert.threshold is None
    assert cert.more_labels_needed is None
    assert "lower bound" in cert.message


def test_certificate_json_round_trip():
    cert = certify_threshold(np.linspace(0, 1, 100), np.ones(100, bool), target=0.9, delta=0.1)
    again = Certificate.from_dict(json.loads(json.dumps(cert.to_dict())))
    assert again == cert


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="equal length"):
        certify_threshold(np.zeros(3), np.ones(4, bool))
    with pytest.raises(ValueError, match="NaN"):
        certify_threshold(np.array([0.0, np.nan]), np.ones(2, bool))
