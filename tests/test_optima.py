"""The GMVAE's two global optima of Wang et al. Sec. 2.2, built exactly in one dimension."""

import numpy as np
import pytest
from scipy.stats import norm

from lidvae_nb.optima import GMVAE1D, Mixture1D, collapsed_optimum, identity, quantile_map

CLUSTERS = Mixture1D([0.4, 0.6], [-2.5, 2.0], [1.0, 0.7])
SIGMA = 0.3


def data(n=300, seed=0):
    w, _ = CLUSTERS.sample(n, seed=seed)
    return w + SIGMA * np.random.default_rng(seed + 1).normal(size=n)


def test_quantile_map_pushes_the_standard_normal_onto_the_mixture():
    T = quantile_map(CLUSTERS)
    w = np.linspace(-6, 6, 2001)
    np.testing.assert_allclose(CLUSTERS.cdf(T(w)), norm.cdf(w), atol=1e-11)
    assert np.all(np.diff(T(w)) > 0)


def test_both_optima_give_the_true_marginal_likelihood():
    x = data()
    exact = CLUSTERS.convolve(SIGMA).logpdf(x)
    truth = GMVAE1D(CLUSTERS, identity, SIGMA, n_grid=8001)
    collapsed = collapsed_optimum(CLUSTERS, 2, SIGMA, n_grid=8001)
    np.testing.assert_allclose(truth.loglik(x), exact, atol=1e-8)
    np.testing.assert_allclose(collapsed.loglik(x), exact, atol=1e-6)


def test_labels_identifiable_at_the_truth_and_collapsed_at_the_other_optimum():
    x = data()
    informative = GMVAE1D(CLUSTERS, identity, SIGMA, n_grid=4001).label_posterior(x)
    assert np.mean(informative.max(1) > 0.95) > 0.8
    flat = collapsed_optimum(CLUSTERS, 3, SIGMA, n_grid=2001).label_posterior(x)
    np.testing.assert_allclose(flat, 1 / 3, atol=1e-12)


def test_misspecified_one_cluster_fit_collapses():
    x = data()
    twins = Mixture1D([0.5, 0.5], [0.3, 0.3], [1.2, 1.2])
    np.testing.assert_allclose(
        GMVAE1D(twins, identity, SIGMA, n_grid=2001).label_posterior(x), 0.5, atol=1e-12
    )


def test_bad_input_is_rejected_with_the_value_named():
    with pytest.raises(ValueError, match="weights must be non-negative and sum to 1"):
        Mixture1D([0.5, 0.6], [0, 1], [1, 1])
    with pytest.raises(ValueError, match=r"sds must be > 0, got \[1, -1\]"):
        Mixture1D([0.5, 0.5], [0, 1], [1, -1])
    with pytest.raises(ValueError, match="means must be a finite vector of length 2"):
        Mixture1D([0.5, 0.5], [0, 1, 2], [1, 1])
    with pytest.raises(ValueError, match="sigma must be > 0, got 0"):
        GMVAE1D(CLUSTERS, identity, 0)
    with pytest.raises(ValueError, match="K must be a positive integer, got 0"):
        collapsed_optimum(CLUSTERS, 0, SIGMA)
