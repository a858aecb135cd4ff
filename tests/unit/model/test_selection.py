import numpy as np
import pytest

from model.al.strategies import (
    STRATEGY_NAMES,
    EntropyStrategy,
    LossDiversityStrategy,
    LossStrategy,
    MarginStrategy,
    PoolView,
    RandomStrategy,
    get_strategy,
)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_loss_takes_highest_losses_first():
    pool = PoolView(predicted_loss=np.array([0.1, 5.0, 0.3, 9.0, 2.0]))
    assert LossStrategy(subset_size=None).select(pool, 3, rng()).tolist() == [3, 1, 4]


def test_loss_ranks_a_random_subset_as_in_the_paper():
    loss = np.random.default_rng(1).normal(size=1000)
    pool = PoolView(predicted_loss=loss)
    picked = LossStrategy(subset_size=100).select(pool, 10, rng(7))
    subset = rng(7).choice(1000, size=100, replace=False)  # the same draw the strategy makes
    assert set(picked) <= set(subset)
    assert picked.tolist() == subset[np.argsort(-loss[subset])[:10]].tolist()
    assert set(picked) != set(np.argsort(-loss)[:10])  # not the global top-10


def test_loss_subset_is_never_smaller_than_k():
    pool = PoolView(predicted_loss=np.arange(50.0))
    picked = LossStrategy(subset_size=5).select(pool, 20, rng())
    assert len(set(picked.tolist())) == 20


def test_entropy_takes_most_uncertain_summed_over_heads():
    probs = {
        "timeofday": np.array([[0.98, 0.01, 0.01], [1 / 3, 1 / 3, 1 / 3], [1 / 3, 1 / 3, 1 / 3], [0.9, 0.05, 0.05]]),
        "weather": np.array([[0.98, 0.01, 0.01], [0.98, 0.01, 0.01], [1 / 3, 1 / 3, 1 / 3], [0.9, 0.05, 0.05]]),
    }
    pool = PoolView(predicted_loss=np.zeros(4), probs=probs)
    assert EntropyStrategy().select(pool, 4, rng()).tolist() == [2, 1, 3, 0]


def test_margin_takes_smallest_margin_over_heads():
    probs = {
        "a": np.array([[0.7, 0.3], [0.5, 0.5], [0.99, 0.01], [0.6, 0.4]]),
        "b": np.array([[0.7, 0.3], [0.99, 0.01], [0.99, 0.01], [0.6, 0.4]]),
    }
    pool = PoolView(predicted_loss=np.zeros(4), probs=probs)
    # min margins: 0.4, 0.0, 0.98, 0.2 -> one undecided head is enough to come first
    assert MarginStrategy().select(pool, 4, rng()).tolist() == [1, 3, 0, 2]


def test_loss_diversity_skips_exact_duplicates():
    a, b, c, d = np.eye(4)
    loss = np.array([10.0, 9.9, 9.8, 9.7, 9.0, 8.5, 0.1, 0.2])
    emb = np.array([a, a, b, b, c, d, a + b, c + d])  # 0,1 and 2,3 are exact duplicates
    pool = PoolView(predicted_loss=loss, embeddings=emb)
    assert LossStrategy(subset_size=None).select(pool, 3, rng()).tolist() == [0, 1, 2]  # plain loss: duplicates
    picked = LossDiversityStrategy(candidate_factor=2, subset_size=None).select(pool, 3, rng())
    # highest loss first; then the farthest candidates, ties to the higher loss; never a duplicate of a pick
    assert picked.tolist() == [0, 2, 4]


def test_loss_diversity_ignores_embedding_scale():
    loss = np.array([3.0, 2.0, 1.0])
    emb = np.array([[1.0, 0.0], [5.0, 0.0], [0.0, 1.0]])  # 0 and 1 point the same way
    pool = PoolView(predicted_loss=loss, embeddings=emb)
    assert LossDiversityStrategy(subset_size=None).select(pool, 2, rng()).tolist() == [0, 2]


def test_loss_diversity_needs_embeddings():
    with pytest.raises(ValueError, match="embeddings"):
        LossDiversityStrategy().select(PoolView(predicted_loss=np.zeros(3)), 1, rng())


def test_random_is_reproducible_and_uniform():
    pool = PoolView(predicted_loss=np.zeros(10))
    strategy = RandomStrategy()
    assert strategy.select(pool, 3, rng(5)).tolist() == strategy.select(pool, 3, rng(5)).tolist()
    assert strategy.select(pool, 3, rng(5)).tolist() != strategy.select(pool, 3, rng(6)).tolist()
    generator = rng(0)
    counts = np.zeros(10)
    for _ in range(5000):
        picked = strategy.select(pool, 3, generator)
        assert len(set(picked.tolist())) == 3
        counts[picked] += 1
    assert np.all(np.abs(counts - 1500) < 150)  # expected 1500 each, sd about 32


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_every_strategy_returns_k_distinct_valid_indices(name):
    n = 30
    generator = rng(3)
    pool = PoolView(
        predicted_loss=generator.normal(size=n),
        probs={"h": generator.dirichlet(np.ones(3), size=n)},
        embeddings=generator.normal(size=(n, 4)),
        risk=generator.normal(size=n),
    )
    strategy = get_strategy(name)
    assert strategy.name == name
    for k, expected in [(0, 0), (7, 7), (100, n)]:
        picked = strategy.select(pool, k, rng())
        assert len(picked) == expected and len(set(picked.tolist())) == expected
        assert np.all((picked >= 0) & (picked < n))
    with pytest.raises(ValueError, match="k must be"):
        strategy.select(pool, -1, rng())


def test_get_strategy_passes_options_and_rejects_unknown_names():
    assert get_strategy("loss", subset_size=123).subset_size == 123
    with pytest.raises(ValueError, match="loss\\+diversity"):
        get_strategy("coreset")


def test_uncertainty_strategies_need_probs():
    with pytest.raises(ValueError, match="probabilities"):
        EntropyStrategy().select(PoolView(predicted_loss=np.zeros(3)), 1, rng())


def test_pool_view_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="probs"):
        PoolView(predicted_loss=np.zeros(3), probs={"h": np.ones((4, 2)) / 2})
    with pytest.raises(ValueError, match="embeddings"):
        PoolView(predicted_loss=np.zeros(3), embeddings=np.zeros((2, 5)))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_pool_view_refuses_non_finite_scores(bad):
    """A NaN sorts anywhere and an inf first: either would choose the batch, so the pool refuses them (as certify
    does)."""
    with pytest.raises(ValueError, match="NaN or infinite"):
        PoolView(predicted_loss=np.array([0.1, bad, 0.3]))
    probs = np.full((3, 3), 1 / 3)
    probs[1, 0] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        PoolView(predicted_loss=np.zeros(3), probs={"weather": probs})


def test_the_strategy_names_are_the_registry():
    """One list: every name builds a strategy, and an unknown name names the choices."""
    assert {type(get_strategy(n)).__name__ for n in STRATEGY_NAMES} == {
        "LossStrategy",
        "LossDiversityStrategy",
        "RandomStrategy",
        "EntropyStrategy",
        "MarginStrategy",
        "ConfidenceStrategy",
    }
    with pytest.raises(ValueError, match="margin"):
        get_strategy("coreset")


def test_the_confidence_strategy_takes_the_highest_risk_and_needs_one():
    pool = PoolView(predicted_loss=np.zeros(5), risk=np.array([0.2, 3.0, -1.0, 7.0, 1.0]))
    assert get_strategy("confidence").select(pool, 3, rng()).tolist() == [3, 1, 4]
    with pytest.raises(ValueError, match="risk score"):
        get_strategy("confidence").select(PoolView(predicted_loss=np.zeros(5)), 2, rng())
    with pytest.raises(ValueError, match="risk must be"):
        PoolView(predicted_loss=np.zeros(3), risk=np.array([0.0, np.nan, 1.0]))
