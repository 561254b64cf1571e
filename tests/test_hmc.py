"""NUTS (lidvae_nb.hmc) against closed-form posteriors, within Monte Carlo error.

Tolerances are a few Monte Carlo standard errors, with the effective sample size of the chain
(not its length) in the standard error; seeds are fixed, so the tests are deterministic.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lidvae_nb import ppca
from lidvae_nb.hmc import effective_sample_size, sample_log_prob, sample_model


def ess(samples: torch.Tensor) -> np.ndarray:
    """Effective sample size per coordinate of one chain (S, d)."""
    return effective_sample_size(samples).numpy()


def assert_matches_gaussian(samples: torch.Tensor, mean: np.ndarray, cov: np.ndarray, k=4.0):
    """Sample mean and variance within k Monte Carlo standard errors of N(mean, cov)."""
    x = samples.numpy()
    n_eff = ess(samples)
    assert np.all(n_eff > 0.2 * len(x)), n_eff  # NUTS on a Gaussian mixes well
    var = np.diag(cov)
    mean_se = np.sqrt(var / n_eff)
    np.testing.assert_array_less(np.abs(x.mean(0) - mean), k * mean_se)
    # Var of a sample variance of a Gaussian is 2 var^2 / n.
    var_se = var * np.sqrt(2 / n_eff)
    np.testing.assert_array_less(np.abs(x.var(0) - var), k * var_se)
    return n_eff


def test_nuts_matches_correlated_ppca_posterior():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((2, 5))
    W[1] = 0.8 * W[0] + 0.3 * W[1]  # strongly correlated posterior of (z1, z2)
    sigma = 0.7
    x = rng.standard_normal(5) * 2
    mean, cov = ppca.posterior(x, W, sigma)
    assert abs(cov[0, 1]) / np.sqrt(cov[0, 0] * cov[1, 1]) > 0.5
    samples = sample_log_prob(
        ppca.unnormalized_log_posterior(x, W, sigma),
        torch.zeros(2, dtype=torch.float64),
        num_samples=600,
        warmup=250,
        seed=1,
    )
    assert samples.shape == (600, 2) and samples.dtype == torch.float64
    n_eff = assert_matches_gaussian(samples, mean, cov)
    # Correlation: the standard error of a sample correlation is about (1 - rho^2) / sqrt(n).
    rho = cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1])
    rho_hat = np.corrcoef(samples.numpy().T)[0, 1]
    assert abs(rho_hat - rho) < 4 * (1 - rho**2) / np.sqrt(n_eff.min())


def test_nuts_on_a_collapsed_posterior_returns_the_prior():
    x = np.array([3.0, -2.0, 1.0, 0.5, 4.0])
    samples = sample_log_prob(
        ppca.unnormalized_log_posterior(x, np.zeros((2, 5)), 1.5),
        torch.zeros(2, dtype=torch.float64),
        num_samples=600,
        warmup=200,
        seed=2,
    )
    assert_matches_gaussian(samples, np.zeros(2), np.eye(2))


def test_nuts_on_a_pyro_model_matches_the_conjugate_posterior():
    import pyro
    import pyro.distributions as dist

    y = torch.tensor([1.2, 0.4, 2.0, 1.1, 0.9, 1.6, 0.2, 1.4])

    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        scale = pyro.sample("scale", dist.LogNormal(0.0, 0.3))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(mu, scale), obs=y)

    draws = sample_model(model, y, num_samples=300, warmup=150, seed=3)
    assert set(draws) == {"mu", "scale"}
    assert draws["mu"].shape == (300,)
    assert torch.all(draws["scale"] > 0)  # returned in the constrained space
    # Given scale, mu | y ~ N(sum(y) / (n + scale^2), scale^2 / (n + scale^2)); averaging the
    # conditional mean over the scale draws gives E[mu | y] (Rao-Blackwell).
    s2 = draws["scale"] ** 2
    rb_mean = float((y.sum() / (len(y) + s2)).mean())
    mu = draws["mu"]
    se = float(mu.std()) / np.sqrt(ess(mu[:, None])[0])
    assert abs(float(mu.mean()) - rb_mean) < 4 * se


def test_same_seed_same_chain():
    log_prob = ppca.unnormalized_log_posterior(np.ones(5), np.eye(2, 5), 1.0)
    init = torch.zeros(2, dtype=torch.float64)
    a = sample_log_prob(log_prob, init, num_samples=20, warmup=20, seed=5)
    b = sample_log_prob(log_prob, init, num_samples=20, warmup=20, seed=5)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_samples": 0}, "num_samples must be a positive integer, got 0"),
        ({"num_samples": 2.5}, "num_samples must be a positive integer, got 2.5"),
        ({"warmup": -1}, "warmup must be a non-negative integer, got -1"),
    ],
)
def test_bad_counts_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sample_log_prob(lambda z: -(z**2).sum(), torch.zeros(2), **kwargs)


def test_bad_init_and_target_are_named():
    with pytest.raises(ValueError, match=r"init must be a vector \(d,\), got shape \(2, 2\)"):
        sample_log_prob(lambda z: -(z**2).sum(), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="finite scalar"):
        sample_log_prob(lambda z: torch.log(z).sum(), torch.zeros(2))
