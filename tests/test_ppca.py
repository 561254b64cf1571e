"""Closed forms and maximum likelihood of PPCA (lidvae_nb.ppca), checked against independent
computations: scipy densities, Gaussian conditioning, autograd, and a gradient-based fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from lidvae_nb import ppca


def random_model(q=2, d=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((q, d)), rng


def data_with_eigenvalues(lam, seed=0):
    """X (2d, d) whose second-moment matrix X^T X / n has exactly the eigenvalues ``lam``."""
    lam = np.asarray(lam, dtype=float)
    d = lam.size
    U, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    A = np.sqrt(d * lam)[:, None] * U.T
    return np.vstack([A, -A]), U


# ----------------------------------------------------------------------------- closed forms


def test_log_marginal_likelihood_equals_scipy_multivariate_normal():
    W, rng = random_model()
    sigma = 0.7
    X = rng.standard_normal((50, 5)) * 2
    cov = W.T @ W + sigma**2 * np.eye(5)
    expected = stats.multivariate_normal(np.zeros(5), cov).logpdf(X).sum()
    assert ppca.log_marginal_likelihood(X, W, sigma) == pytest.approx(expected, rel=1e-12)
    assert ppca.log_marginal_likelihood(X[3], W, sigma) == pytest.approx(
        stats.multivariate_normal(np.zeros(5), cov).logpdf(X[3]), rel=1e-12
    )


def test_posterior_equals_conditioning_the_joint_gaussian():
    # (z, x) is jointly Gaussian with Cov(z, x) = W and Cov(x) = W^T W + sigma^2 I, so
    # E[z | x] = W Cov(x)^{-1} x and Cov(z | x) = I - W Cov(x)^{-1} W^T (no M-matrix algebra).
    W, rng = random_model(q=3, d=6, seed=1)
    sigma = 0.4
    X = rng.standard_normal((7, 6))
    Cx = W.T @ W + sigma**2 * np.eye(6)
    means, cov = ppca.posterior(X, W, sigma)
    np.testing.assert_allclose(means, X @ np.linalg.solve(Cx, W.T), atol=1e-12)
    np.testing.assert_allclose(cov, np.eye(3) - W @ np.linalg.solve(Cx, W.T), atol=1e-12)
    mean0, cov0 = ppca.posterior(X[0], W, sigma)
    assert mean0.shape == (3,) and cov0.shape == (3, 3)
    np.testing.assert_allclose(mean0, means[0])


def test_unnormalized_log_posterior_is_exact_posterior_times_evidence():
    W, rng = random_model(seed=2)
    sigma, x = 0.8, rng.standard_normal(5)
    mean, cov = ppca.posterior(x, W, sigma)
    exact = stats.multivariate_normal(mean, cov)
    log_evidence = ppca.log_marginal_likelihood(x, W, sigma)
    log_prob = ppca.unnormalized_log_posterior(x, W, sigma)
    for z in rng.standard_normal((5, 2)) * 2:
        value = float(log_prob(torch.as_tensor(z)))
        assert value == pytest.approx(exact.logpdf(z) + log_evidence, rel=1e-11)


def test_kl_equals_torch_kl_divergence_and_is_zero_only_at_zero_W():
    W, rng = random_model(seed=3)
    sigma = 1.1
    X = rng.standard_normal((6, 5))
    means, cov = ppca.posterior(X, W, sigma)
    kl = ppca.kl_posterior_prior(X, W, sigma)
    p = torch.distributions.MultivariateNormal(
        torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64)
    )
    for i in range(6):
        post = torch.distributions.MultivariateNormal(
            torch.as_tensor(means[i]), torch.as_tensor(cov)
        )
        assert kl[i] == pytest.approx(float(torch.distributions.kl_divergence(post, p)), rel=1e-10)
    assert np.all(kl > 0)
    assert np.all(ppca.kl_posterior_prior(X, np.zeros((2, 5)), sigma) == 0.0)
    # A tiny nonzero loading already gives a strictly positive KL at every point.
    assert np.all(ppca.kl_posterior_prior(X, 1e-3 * W, sigma) > 0)
    assert isinstance(ppca.kl_posterior_prior(X[0], W, sigma), float)


def test_log_likelihood_grid_layout_and_values():
    W, rng = random_model(seed=4)
    sigma, x = 0.6, rng.standard_normal(5)
    z1, z2 = np.linspace(-2, 2, 7), np.linspace(-1, 1, 4)
    L = ppca.log_likelihood_grid(x, W, sigma, z1, z2)
    assert L.shape == (4, 7)
    i, j = 3, 5
    z = np.array([z1[j], z2[i]])
    expected = stats.norm(W.T @ z, sigma).logpdf(x).sum()
    assert L[i, j] == pytest.approx(expected, rel=1e-12)
    flat = ppca.log_likelihood_grid(x, np.zeros((2, 5)), sigma, z1, z2)
    assert np.ptp(flat) == 0.0


def test_sample_ppca_shapes_seed_and_covariance():
    W, _ = random_model(seed=5)
    X, Z = ppca.sample_ppca(W, 0.5, 20000, seed=11)
    assert X.shape == (20000, 5) and Z.shape == (20000, 2)
    X2, _ = ppca.sample_ppca(W, 0.5, 20000, seed=11)
    np.testing.assert_array_equal(X, X2)
    S = X.T @ X / len(X)
    np.testing.assert_allclose(S, W.T @ W + 0.25 * np.eye(5), atol=0.15)


# ----------------------------------------------------------------------------- maximum likelihood


def test_fit_ml_is_the_eigen_solution_and_a_stationary_point():
    W_true, _ = random_model(seed=6)
    X, _ = ppca.sample_ppca(W_true, 0.5, 400, seed=6)
    sigma = 0.8
    fit = ppca.fit_ml(X, 2, sigma)
    lam, U = np.linalg.eigh(X.T @ X / len(X))
    lam, U = lam[::-1], U[:, ::-1]
    assert np.all(lam[:2] > sigma**2)
    np.testing.assert_allclose(fit.eigenvalues, lam, rtol=1e-12)
    # The rotation-free content of W: W^T W = U_q (Lambda_q - sigma^2) U_q^T.
    np.testing.assert_allclose(
        fit.W.T @ fit.W, U[:, :2] @ np.diag(lam[:2] - sigma**2) @ U[:, :2].T, atol=1e-12
    )
    np.testing.assert_allclose(fit.row_norms, np.sqrt(lam[:2] - sigma**2), rtol=1e-12)
    W = torch.tensor(fit.W, requires_grad=True)
    ppca.marginal(W, sigma).log_prob(torch.as_tensor(X)).sum().backward()
    assert float(W.grad.abs().max()) < 1e-9


def test_fit_ml_beats_every_perturbation():
    W_true, rng = random_model(seed=7)
    X, _ = ppca.sample_ppca(W_true, 0.5, 300, seed=7)
    for sigma in (0.3, 1.0, 3.0):
        fit = ppca.fit_ml(X, 2, sigma)
        best = ppca.log_marginal_likelihood(X, fit.W, sigma)
        for scale in (1e-3, 1e-1, 1.0):
            for _ in range(10):
                W = fit.W + scale * rng.standard_normal(fit.W.shape)
                assert ppca.log_marginal_likelihood(X, W, sigma) < best


def test_rows_of_W_ml_are_exactly_zero_once_sigma_squared_exceeds_their_eigenvalue():
    lam = np.array([4.0, 2.0, 1.0, 0.5, 0.25])
    X, U = data_with_eigenvalues(lam)
    for sigma in np.linspace(0.1, 2.5, 49):
        fit = ppca.fit_ml(X, 3, sigma)
        for j in range(3):
            if sigma**2 > lam[j] * (1 + 1e-9):
                assert np.all(fit.W[j] == 0.0), (sigma, j)
            elif sigma**2 < lam[j] * (1 - 1e-9):
                assert fit.row_norms[j] == pytest.approx(np.sqrt(lam[j] - sigma**2), rel=1e-9)
                assert abs(fit.W[j] @ U[:, j]) == pytest.approx(fit.row_norms[j], rel=1e-9)
    collapsed = ppca.fit_ml(X, 3, 2.01)
    assert np.all(collapsed.W == 0.0)
    assert np.all(ppca.kl_posterior_prior(X, collapsed.W, 2.01) == 0.0)


def test_ml_sigma_is_mean_of_discarded_eigenvalues_and_maximises_likelihood():
    W_true, _ = random_model(seed=8)
    X, _ = ppca.sample_ppca(W_true, 0.6, 500, seed=8)
    fit = ppca.fit_ml(X, 2)
    assert fit.sigma**2 == pytest.approx(fit.eigenvalues[2:].mean(), rel=1e-12)
    best = ppca.log_marginal_likelihood(X, fit.W, fit.sigma)
    for s in (fit.sigma * 0.97, fit.sigma * 1.03):
        assert ppca.log_marginal_likelihood(X, ppca.fit_ml(X, 2, s).W, s) < best


def test_mean_kl_at_ml_matches_its_closed_form():
    W_true, _ = random_model(seed=9)
    X, _ = ppca.sample_ppca(W_true, 0.4, 300, seed=9)
    for sigma in (0.2, 0.7, 1.3, 5.0):
        fit = ppca.fit_ml(X, 2, sigma)
        mean_kl = ppca.kl_posterior_prior(X, fit.W, sigma).mean()
        assert mean_kl == pytest.approx(
            ppca.ml_mean_kl(fit.eigenvalues, 2, sigma), rel=1e-9, abs=1e-12
        )
    assert ppca.ml_mean_kl(fit.eigenvalues, 2, 5.0) == 0.0


@pytest.mark.parametrize("sigma", [0.5, 1.5])
def test_gradient_fit_from_random_start_reaches_the_closed_form(sigma):
    lam = np.array([1.8, 0.7, 0.1, 0.09, 0.08])
    X, _ = data_with_eigenvalues(lam, seed=3)
    fit = ppca.fit_ml(X, 2, sigma)
    W = ppca.fit_gradient(X, 2, sigma, seed=1)
    assert ppca.log_marginal_likelihood(X, W, sigma) == pytest.approx(
        ppca.log_marginal_likelihood(X, fit.W, sigma), abs=1e-8
    )
    np.testing.assert_allclose(W.T @ W, fit.W.T @ fit.W, atol=1e-5)


def test_rotated_ml_loadings_have_the_same_likelihood_and_kl():
    W_true, _ = random_model(seed=10)
    X, _ = ppca.sample_ppca(W_true, 0.5, 200, seed=10)
    base = ppca.fit_ml(X, 2, 0.6)
    means, _ = ppca.posterior(X, base.W, 0.6)
    for angle in (0.3, 1.0, 2.5):
        R = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        rot = ppca.fit_ml(X, 2, 0.6, rotation=R)
        assert not np.allclose(rot.W, base.W)
        assert ppca.log_marginal_likelihood(X, rot.W, 0.6) == pytest.approx(
            ppca.log_marginal_likelihood(X, base.W, 0.6), rel=1e-12
        )
        np.testing.assert_allclose(
            ppca.kl_posterior_prior(X, rot.W, 0.6),
            ppca.kl_posterior_prior(X, base.W, 0.6),
            rtol=1e-9,
        )
        np.testing.assert_allclose(ppca.posterior(X, rot.W, 0.6)[0], means @ R.T, atol=1e-12)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "sigma, shown",
    [(0.0, "0.0"), (-1.0, "-1.0"), (float("nan"), "nan"), ("a", "'a'"), (float("inf"), "inf")],
)
def test_bad_sigma_is_named(sigma, shown):
    W, _ = random_model()
    X = np.zeros((3, 5))
    for call in (
        lambda: ppca.posterior(X, W, sigma),
        lambda: ppca.log_marginal_likelihood(X, W, sigma),
        lambda: ppca.fit_ml(X, 2, sigma),
        lambda: ppca.sample_ppca(W, sigma, 3),
    ):
        with pytest.raises(ValueError, match="sigma") as err:
            call()
        assert shown in str(err.value)


def test_mismatched_shapes_are_named():
    W, _ = random_model()
    with pytest.raises(ValueError, match=r"\(4, 4\).*\(2, 5\)"):
        ppca.posterior(np.zeros((4, 4)), W, 1.0)
    with pytest.raises(ValueError, match=r"\(3,\).*\(2, 5\)"):
        ppca.kl_posterior_prior(np.zeros(3), W, 1.0)
    with pytest.raises(ValueError, match=r"\(5,\)"):
        ppca.log_marginal_likelihood(np.zeros((2, 5)), np.zeros(5), 1.0)
    with pytest.raises(ValueError, match=r"q = 2.*\(3, 5\)"):
        ppca.log_likelihood_grid(np.zeros(5), np.zeros((3, 5)), 1.0, [0.0], [0.0])
    with pytest.raises(ValueError, match=r"\(2, 5\)"):
        ppca.unnormalized_log_posterior(np.zeros((2, 5)), W, 1.0)


@pytest.mark.parametrize(
    "q, sigma, shown",
    [(0, 1.0, "0"), (6, 1.0, "6"), (5, None, "5"), (1.5, 1.0, "1.5"), (True, 1.0, "True")],
)
def test_q_out_of_range_is_named(q, sigma, shown):
    X = np.random.default_rng(0).standard_normal((10, 5))
    with pytest.raises(ValueError, match="q must be") as err:
        ppca.fit_ml(X, q, sigma)
    assert f"got {shown}" in str(err.value)


def test_other_bad_values_are_named():
    W, _ = random_model()
    X = np.random.default_rng(0).standard_normal((10, 5))
    with pytest.raises(ValueError, match="n must be a positive integer, got 0"):
        ppca.sample_ppca(W, 1.0, 0)
    with pytest.raises(ValueError, match="rotation must be an orthogonal"):
        ppca.fit_ml(X, 2, 1.0, rotation=np.ones((2, 2)))
    with pytest.raises(ValueError, match="finite"):
        ppca.posterior(np.full((2, 5), np.nan), W, 1.0)
