"""The learned confidence (model.al.confidence): calibrated to P(every head right), monotone in one score,
and able to use the loss module's input when that is what carries the signal."""

from __future__ import annotations

import numpy as np

from model.al.confidence import (
    JOINT_MAX_SOFTMAX,
    RiskScore,
    confidence_features,
    error_auroc,
    fit_confidence,
    fit_risk_score,
)


def synthetic_outputs(n: int, rng: np.random.Generator, informative: str) -> tuple[np.ndarray, dict, np.ndarray]:
    """Two heads' probabilities, a predicted loss, and whether every head is right.

    ``informative`` says which output carries the truth: "softmax" (a confident head is usually right) or
    "loss" (the softmax says nothing; the predicted loss does).
    """
    skill = rng.uniform(0, 1, n)
    correct = rng.uniform(0, 1, n) < 0.35 + 0.6 * skill
    probs = {}
    for head, k in (("a", 3), ("b", 4)):
        logits = rng.normal(0, 1, (n, k))
        if informative == "softmax":
            logits[:, 0] += 4 * skill
        p = np.exp(logits)
        probs[head] = p / p.sum(axis=1, keepdims=True)
    loss = (1 - skill) * 3 + rng.normal(0, 0.3, n) if informative == "loss" else rng.normal(1, 0.5, n)
    return loss, probs, correct


def test_features_are_the_loss_then_per_head_log_softmax_margin_entropy() -> None:
    probs = {"a": np.array([[0.7, 0.2, 0.1]]), "b": np.array([[0.5, 0.5]])}
    f = confidence_features(np.array([0.3]), probs)
    assert f.shape == (1, 7)
    assert np.allclose(f[0, :3], [0.3, np.log(0.7), 0.5])
    assert np.isclose(f[0, 3], -(0.7 * np.log(0.7) + 0.2 * np.log(0.2) + 0.1 * np.log(0.1)))
    assert np.allclose(f[0, 4:6], [np.log(0.5), 0.0]) and np.isclose(f[0, 6], np.log(2))
    assert confidence_features(np.array([0.3]), probs, use_loss_module=False).shape == (1, 6)


def test_the_confidence_is_calibrated_on_images_it_was_not_fitted_on() -> None:
    rng = np.random.default_rng(0)
    loss, probs, correct = synthetic_outputs(6000, rng, "softmax")
    fit, test = np.arange(3000), np.arange(3000, 6000)
    conf = fit_confidence(loss[fit], {h: p[fit] for h, p in probs.items()}, correct[fit])
    assert conf is not None
    predicted = conf.predict(loss[test], {h: p[test] for h, p in probs.items()})
    assert ((0 <= predicted) & (predicted <= 1)).all()
    edges = np.quantile(predicted, np.linspace(0, 1, 6))
    for lo, hi in zip(edges[:-1], edges[1:]):  # five bins of equal size: the rate of right images matches
        inside = (predicted >= lo) & (predicted <= hi)
        assert abs(predicted[inside].mean() - correct[test][inside].mean()) < 0.06
    order = np.argsort(conf.logit(loss[test], {h: p[test] for h, p in probs.items()}))
    assert (np.diff(predicted[order]) >= 0).all()  # monotone in one linear score: it orders like a score


def test_it_uses_the_loss_module_when_that_is_where_the_signal_is() -> None:
    rng = np.random.default_rng(1)
    loss, probs, correct = synthetic_outputs(4000, rng, "loss")
    fit, test = np.arange(2000), np.arange(2000, 4000)
    sub = {h: p[test] for h, p in probs.items()}
    with_loss = fit_confidence(loss[fit], {h: p[fit] for h, p in probs.items()}, correct[fit])
    without = fit_confidence(loss[fit], {h: p[fit] for h, p in probs.items()}, correct[fit], use_loss_module=False)
    assert with_loss is not None and without is not None
    auroc_with = error_auroc(with_loss.predict(loss[test], sub), correct[test])
    auroc_without = error_auroc(without.predict(loss[test], sub), correct[test])
    assert auroc_with > 0.7 and auroc_without < 0.6


def test_nothing_is_fitted_without_enough_right_and_wrong_examples() -> None:
    probs = {"a": np.full((5, 2), 0.5)}
    assert fit_confidence(np.zeros(5), probs, np.array([True, True, True, True, False])) is None
    assert np.isnan(error_auroc(np.ones(3), np.array([True, True, True])))


def test_the_risk_score_is_the_learned_confidence_only_where_it_beats_the_joint_max_softmax() -> None:
    rng = np.random.default_rng(2)
    loss, probs, correct = synthetic_outputs(1500, rng, "loss")  # the signal is in the loss module
    learned = fit_risk_score("confidence", loss, probs, correct)
    assert learned.source == "confidence" and learned.confidence is not None
    assert np.allclose(learned(loss, probs), -learned.confidence.logit(loss, probs))
    # a few dozen labels where the max-softmax carries the signal: a regression on 7 features cannot show that
    # it does better out of fold, so the joint max-softmax ranks
    loss, probs, correct = synthetic_outputs(40, np.random.default_rng(3), "softmax")
    few = fit_risk_score("confidence", loss, probs, correct)
    assert few.source == JOINT_MAX_SOFTMAX and few.confidence is None
    assert np.allclose(few(loss, probs), -sum(np.log(p.max(axis=1)) for p in probs.values()))
    assert fit_risk_score("loss", loss, probs, correct)(loss, probs).tolist() == loss.tolist()
    again = RiskScore.from_dict(learned.to_dict())
    assert again.source == "confidence" and np.allclose(again(loss, probs), learned(loss, probs))
