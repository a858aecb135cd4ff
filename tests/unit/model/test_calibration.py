import json

import numpy as np
import pytest

from model.al.calibration import CorrectnessCalibrator, band_estimate, score_from_loss


def true_curve(loss):
    return 1.0 / (1.0 + np.exp(2.0 * (loss - 2.0)))


@pytest.fixture(scope="module")
def sample():
    rng = np.random.default_rng(0)
    loss = rng.uniform(0, 4, size=20_000)
    correct = rng.uniform(size=loss.size) < true_curve(loss)
    return loss, correct


def test_platt_recovers_a_known_decreasing_curve(sample):
    calibrator = CorrectnessCalibrator().fit(*sample)
    grid = np.linspace(0.2, 3.8, 50)
    error = np.abs(calibrator.predict(grid) - true_curve(grid))
    assert error.max() < 0.03
    assert calibrator.slope == pytest.approx(-2.0, abs=0.15) and calibrator.ranks()


def test_predictions_are_probabilities_strictly_falling_with_risk(sample):
    calibrator = CorrectnessCalibrator().fit(*sample)
    grid = np.linspace(-2, 6, 500)  # beyond the fitted range on both sides
    predicted = calibrator.predict(grid)
    assert np.all((predicted >= 0) & (predicted <= 1))
    assert np.all(np.diff(predicted) < 0)  # no plateau: every step of risk changes the score


def test_a_few_dozen_labels_already_spread_the_scores_of_a_ranking_risk():
    """Issue 14, cold start: 50 fit labels whose errors sit at high risk give a calibrator that ranks and scores
    that differ across the riskiest tasks (the head of the queue), not one plateau."""
    rng = np.random.default_rng(5)
    risk = rng.uniform(0, 4, 50)
    correct = rng.uniform(size=50) < true_curve(risk)
    calibrator = CorrectnessCalibrator().fit(risk, correct)
    assert calibrator.ranks()
    head = score_from_loss(np.linspace(3.0, 6.0, 5), calibrator)
    assert np.all(np.diff(head) < -1e-3)


def test_no_link_between_risk_and_errors_is_a_flat_calibrator_that_does_not_rank():
    rng = np.random.default_rng(6)
    risk = rng.uniform(0, 4, 60)
    for correct in (np.ones(60, bool), risk > 2.0, rng.uniform(size=60) < 0.6):  # all right; rising; no link
        calibrator = CorrectnessCalibrator().fit(risk, correct)
        assert not calibrator.ranks()
        assert calibrator.slope <= 0 and 0 < calibrator.predict([1.0])[0] <= 1


def test_calibrator_json_round_trip(sample):
    calibrator = CorrectnessCalibrator().fit(*sample)
    again = CorrectnessCalibrator.from_dict(json.loads(json.dumps(calibrator.to_dict())))
    grid = np.linspace(-1, 5, 300)
    np.testing.assert_array_equal(again.predict(grid), calibrator.predict(grid))
    assert again.ranks() == calibrator.ranks()


def test_an_isotonic_calibrator_saved_by_an_older_version_still_loads():
    old = CorrectnessCalibrator.from_dict({"x_thresholds": [0.0, 1.0, 2.0], "y_thresholds": [0.9, 0.9, 0.2]})
    np.testing.assert_allclose(old.predict([0.5, 1.5, 3.0]), [0.9, 0.55, 0.2])
    assert old.ranks() and old.to_dict() == {"x_thresholds": [0.0, 1.0, 2.0], "y_thresholds": [0.9, 0.9, 0.2]}


def test_unfitted_calibrator_says_so():
    with pytest.raises(RuntimeError, match="fit"):
        CorrectnessCalibrator().predict([0.5])


def test_uncalibrated_score_is_strictly_decreasing_logistic():
    loss = np.linspace(-50, 200, 5001)
    score = score_from_loss(loss, None)
    assert np.all((score >= 0) & (score <= 1))
    assert np.all(np.diff(score) < 0)
    np.testing.assert_allclose(score, 1 / (1 + np.exp(loss)), atol=1e-6)


def test_a_flat_calibrator_still_orders_the_scores_by_risk():
    calibrator = CorrectnessCalibrator().fit(np.linspace(0, 1, 30), np.ones(30, bool))
    loss = np.linspace(-1, 30, 5001)
    assert np.all(np.diff(calibrator.predict(loss)) == 0)  # flat ...
    score = score_from_loss(loss, calibrator)
    assert np.all(np.diff(score) < 0)  # ... but the score is still strictly decreasing
    assert np.all((score >= 0) & (score <= 1))
    np.testing.assert_allclose(score, calibrator.predict(loss), atol=1e-6)


def test_scores_of_separate_chunks_sort_like_losses(sample):
    calibrator = CorrectnessCalibrator().fit(*sample)
    rng = np.random.default_rng(1)
    chunk_a, chunk_b = rng.uniform(0, 4, 300), rng.uniform(0, 4, 200)
    scores = np.concatenate([score_from_loss(chunk_a, calibrator), score_from_loss(chunk_b, calibrator)])
    losses = np.concatenate([chunk_a, chunk_b])
    assert np.argsort(scores).tolist() == np.argsort(-losses).tolist()
    assert score_from_loss([1.5, 1.5], calibrator)[0] == score_from_loss([1.5, 1.5], calibrator)[1]


def test_band_estimate_on_a_known_calibrator():
    calibrator = CorrectnessCalibrator(x_thresholds=[0.0, 1.0], y_thresholds=[1.0, 0.0])  # P(right) = 1 - loss
    band = np.linspace(0, 1, 11)[::-1]
    estimate = band_estimate(calibrator, band, k=2)
    assert estimate.n == 11
    assert estimate.expected_accuracy == pytest.approx(0.5)
    assert estimate.best_case == pytest.approx(0.95)
    assert estimate.worst_case == pytest.approx(0.05)
    whole = band_estimate(calibrator, band, k=1000)  # k capped at the band size
    assert whole.best_case == whole.worst_case == pytest.approx(0.5)


def test_band_estimate_of_an_empty_band():
    calibrator = CorrectnessCalibrator(x_thresholds=[0.0, 1.0], y_thresholds=[1.0, 0.0])
    estimate = band_estimate(calibrator, [])
    assert estimate.n == 0 and estimate.expected_accuracy is None and estimate.worst_case is None
