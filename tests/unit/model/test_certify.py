import json

import numpy as np
import pytest
from scipy.stats import beta

from model.al.certify import Certificate, certify_threshold, clopper_pearson_lower, labels_needed, walk_starts


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


def test_few_probes_walk_once_at_delta_and_more_probes_walk_from_doubling_bands_at_a_split_delta():
    assert walk_starts(100, 0.95, 0.05) == ([59], 0.05)
    starts, level = walk_starts(500, 0.95, 0.05)
    assert level == pytest.approx(0.05 / 3) and starts == [labels_needed(0.95, 0.05 / 3) * 2**j for j in range(3)]
    assert starts[-1] <= 500 < labels_needed(0.95, 0.05 / 4) * 8  # a fourth walk would not fit
    for n in (59, 150, 1000, 5000):
        starts, level = walk_starts(n, 0.95, 0.05)
        assert starts[-1] <= n or len(starts) == 1


def test_one_wrong_probe_at_the_lowest_risk_no_longer_ends_certification():
    """The single walk from 59 probes fails on its first band; the walk from a larger band certifies past it."""
    correct = np.ones(500, bool)
    correct[0] = False  # the lowest-risk probe is wrong
    correct[400:] = False  # and everything past 400
    risk = np.arange(500.0)
    cert = certify_threshold(risk, correct)
    starts, level = walk_starts(500, 0.95, 0.05)
    assert clopper_pearson_lower(58, 59, 0.05) < 0.95  # what stopped the single walk
    assert cert.threshold is not None and cert.n_in_band > starts[1]
    right = int(correct[: cert.n_in_band].sum())
    assert cert.lower_bound == pytest.approx(clopper_pearson_lower(right, cert.n_in_band, level))
    assert cert.lower_bound >= 0.95 and cert.n_in_band < 420


def test_certified_bands_miss_the_target_in_at_most_delta_of_probe_draws():
    """The bound's promise, checked by drawing probes again and again: from a pool whose precision falls with the
    risk, most draws certify and at most delta (plus sampling slack) of them a band under the target; from a pool
    whose every band is 0.94 right, any certificate is a miss, and at most delta of the draws give one."""
    rng = np.random.default_rng(0)
    n_pool, n_probes, draws, target, delta = 20_000, 600, 400, 0.95, 0.05
    slack = 3 * np.sqrt(delta * (1 - delta) / draws)
    risk = np.sort(rng.uniform(size=n_pool))
    for error_rate, certifies in ((0.12 * risk**2, True), (np.full(n_pool, 0.06), False)):
        correct = rng.uniform(size=n_pool) >= error_rate
        band_precision = np.cumsum(correct) / np.arange(1, n_pool + 1)
        misses = certified = 0
        for _ in range(draws):
            probes = rng.choice(n_pool, n_probes, replace=False)
            cert = certify_threshold(risk[probes], correct[probes], target=target, delta=delta)
            if cert.threshold is not None:
                certified += 1
                misses += band_precision[np.searchsorted(risk, cert.threshold, side="right") - 1] < target
        assert misses / draws <= delta + slack
        assert certified > draws / 2 if certifies else certified / draws <= delta + slack


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

    starts, level = walk_starts(correct.size, 0.95, 0.05)
    assert clopper_pearson_lower(int(correct.sum()), correct.size, level) >= 0.95  # a looser threshold passes
    expected = None
    for start in starts:  # independent walks, strict to loose, each from its own start
        for n in range(start, correct.size + 1):
            if clopper_pearson_lower(int(correct[:n].sum()), n, level) < 0.95:
                break
            expected = max(expected or 0.0, loss[n - 1])
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
