import numpy as np
import pytest
from scipy.stats import norm

from lidvae_nb import exact

GRID = exact.make_grid(-10.0, 10.0, 4001)
LOG_PRIOR = norm.logpdf(GRID)
X = np.array([-2.3, -0.4, 0.0, 0.7, 1.9])


def linear_loglik(a):
    return norm.logpdf(X[:, None], a * GRID[None, :], 1.0)


def test_flat_likelihood_gives_the_prior_exactly():
    flat = np.full((3, GRID.size), -4.2)
    log_prior_w, log_post_w = exact.grid_posterior(flat, LOG_PRIOR)
    np.testing.assert_allclose(
        np.exp(log_post_w), np.broadcast_to(np.exp(log_prior_w), (3, GRID.size)), rtol=0, atol=1e-15
    )
    assert np.all(np.abs(exact.posterior_kl(flat, LOG_PRIOR)) < 1e-13)


@pytest.mark.parametrize("a", [1e-3, 0.1, 1.0, 4.0])
def test_kl_positive_and_equal_to_closed_form(a):
    kl = exact.posterior_kl(linear_loglik(a), LOG_PRIOR)
    assert np.all(kl > 0)
    np.testing.assert_allclose(kl, exact.gaussian_posterior_kl(X, a), rtol=1e-9, atol=1e-15)


def test_posterior_mean_matches_closed_form():
    a = 1.5
    _, log_post = exact.grid_posterior(linear_loglik(a), LOG_PRIOR)
    mean = np.exp(log_post) @ GRID
    np.testing.assert_allclose(mean, a * X / (1 + a**2), atol=1e-10)


@pytest.mark.parametrize("a", [0.01, 0.3, 1.0, 3.0])
def test_kl_bounded_by_oscillation_and_close_to_half_variance_when_flat(a):
    ll = norm.logpdf(X[:, None], a * np.tanh(GRID)[None, :], 1.0)
    kl = exact.posterior_kl(ll, LOG_PRIOR)
    assert np.all(kl <= exact.loglik_oscillation(ll) ** 2 / 8)
    if a <= 0.01:
        np.testing.assert_allclose(kl, exact.loglik_prior_variance(ll, LOG_PRIOR) / 2, rtol=0.02)


def test_kl_increases_with_strength():
    kls = [exact.posterior_kl(linear_loglik(a), LOG_PRIOR).sum() for a in (0.0, 0.1, 0.5, 1.0, 2.0)]
    assert np.all(np.diff(kls) > 0)


def test_kl_divergence_is_zero_only_for_equal_distributions():
    p = np.log(np.array([0.2, 0.3, 0.5]))
    q = np.log(np.array([0.3, 0.3, 0.4]))
    assert exact.kl_divergence(p, p) == 0
    assert exact.kl_divergence(p, q) > 0
    with_zero = np.array([-np.inf, np.log(0.5), np.log(0.5)])
    assert np.isfinite(exact.kl_divergence(with_zero, q))


def test_bad_input_is_rejected_with_the_value_named():
    with pytest.raises(ValueError, match="lo=3"):
        exact.make_grid(3.0, 1.0)
    with pytest.raises(ValueError, match="got 2"):
        exact.make_grid(-1, 1, 2)
    with pytest.raises(ValueError, match=r"\(2, 7\)"):
        exact.grid_posterior(np.zeros((2, 7)), LOG_PRIOR)
    with pytest.raises(ValueError, match="NaN"):
        exact.grid_posterior(np.full(GRID.size, np.nan), LOG_PRIOR)
    with pytest.raises(ValueError, match="noise must be > 0, got -1"):
        exact.gaussian_posterior_kl(X, 1.0, noise=-1.0)
