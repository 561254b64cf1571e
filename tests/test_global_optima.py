"""Yacoby et al.'s two examples: closed forms against quadrature, conditioning and Monte Carlo;
the paper's two losses; VAE training on the flat set and to the compromised optimum."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate
from scipy.optimize import minimize
from scipy.stats import multivariate_normal, norm

from lidvae_nb import global_optima as go
from lidvae_nb.trainer import TrainConfig, Trainer

SIGMA2 = 0.01
A_GT = np.array([[0.75, 0.25], [1.5, -1.0]])
B_GT = np.array([0.006, 0.006])


def random_spd(d, seed):
    m = np.random.default_rng(seed).normal(size=(d, d))
    return m @ m.T + 0.5 * np.eye(d)


# --- Eq. 5 ------------------------------------------------------------------------------------


def test_scalar_marginal_is_the_same_for_every_theta():
    for theta in np.linspace(0, 1.9, 7):
        np.testing.assert_allclose(go.scalar_model(theta, 2.0).marginal_cov(), [[4.0]])


def test_scalar_mutual_information_matches_numerical_integration():
    theta, sigma = 0.6, 1.0
    joint = multivariate_normal(np.zeros(2), go.scalar_model(theta, sigma).joint_cov())

    def integrand(z, x):
        p = joint.pdf([x, z])
        return p * (math.log(p) - norm.logpdf(x, 0, sigma) - norm.logpdf(z))

    value, _ = integrate.dblquad(integrand, -8, 8, -8, 8, epsabs=1e-9)
    closed = float(go.scalar_mutual_information(theta, sigma))
    assert closed == pytest.approx(value, abs=1e-6)
    assert closed == pytest.approx(go.scalar_model(theta, sigma).mutual_information(), rel=1e-12)
    # zero at theta = 0 and increasing: the paper's Eq. 15 ("- 4" in the bracket) is not.
    mi = go.scalar_mutual_information(np.linspace(0, 0.99, 50), sigma)
    assert mi[0] == 0 and np.all(np.diff(mi) > 0)


def test_scalar_posterior_matches_bayes_rule_by_quadrature():
    theta, sigma, x0 = 0.7, 1.3, 0.9
    z = np.linspace(-10, 10, 200_001)
    unnorm = norm.pdf(x0, theta * z, math.sqrt(sigma**2 - theta**2)) * norm.pdf(z)
    w = unnorm / np.trapezoid(unnorm, z)
    mean = np.trapezoid(z * w, z)
    var = np.trapezoid((z - mean) ** 2 * w, z)
    m, v = go.scalar_posterior(x0, theta, sigma)
    assert float(m) == pytest.approx(mean, abs=1e-8)
    assert v == pytest.approx(var, abs=1e-8)


def test_scalar_elbo_is_flat_in_theta_at_the_exact_posterior_even_on_a_finite_sample():
    """At phi*(theta) the ELBO is log p(x), and p(x) is N(0, sigma^2) for every theta."""
    sigma = 1.5
    x = torch.randn(64, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * sigma
    target = (0.5 * math.log(2 * math.pi * sigma**2) + x**2 / (2 * sigma**2)).mean()
    for theta in (0.1, 0.7, 1.2, 1.45):
        model = go.LinearGaussianVAE(go.ScalarDecoder(sigma, theta), n_samples=0).double()
        actual = float(
            model.decoder.theta.detach()
        )  # theta after the float32 round trip of its raw value
        slope, var = go.scalar_posterior(1.0, actual, sigma)
        with torch.no_grad():
            model.encoder.gain.fill_(float(slope))
            model.encoder.log_scale.fill_(0.5 * math.log(var))
        out = model.loss(x)
        torch.testing.assert_close(out["loss"], target, rtol=0, atol=1e-10)
        out["loss"].backward()
        assert abs(float(model.decoder.raw_theta.grad)) < 1e-10


def test_vae_runs_from_different_starts_stay_at_different_global_optima():
    torch.set_num_threads(1)
    x = torch.randn(500, 1, generator=torch.Generator().manual_seed(1))
    finals = []
    for theta0 in (0.2, 0.8):
        torch.manual_seed(0)
        model = go.LinearGaussianVAE(go.ScalarDecoder(1.0, theta0), n_samples=0)
        Trainer(model, TrainConfig(epochs=30, batch_size=50, lr=2e-2, progress=False)).fit(x)
        theta, enc = model.closed_form()
        assert go.population_loss(theta, enc, [[1.0]]) < 1e-3  # a global optimum (L >= 0)
        finals.append(float(theta.W[0, 0]))
    assert finals[1] - finals[0] > 0.3, finals


# --- Eq. 3 and Appendix C.3 ------------------------------------------------------------------


def test_mean_field_fit_minimises_the_reverse_kl():
    cov = random_spd(3, 0)
    mean = np.array([0.3, -1.0, 2.0])

    def kl(log_var):
        return go.gaussian_kl(mean, np.diag(np.exp(log_var)), mean, cov)

    best = minimize(kl, np.zeros(3), method="BFGS", tol=1e-12)
    np.testing.assert_allclose(go.mean_field_fit(cov), np.exp(best.x), rtol=1e-5)
    assert go.mean_field_gap(cov) == pytest.approx(best.fun, abs=1e-10)
    assert go.mean_field_gap(np.diag([0.5, 2.0, 3.0])) == pytest.approx(0.0, abs=1e-14)


def test_gaussian_kl_matches_monte_carlo():
    rng = np.random.default_rng(2)
    m0, c0 = rng.normal(size=2), random_spd(2, 3)
    m1, c1 = m0 + 0.5 * rng.normal(size=2), c0 + random_spd(2, 4)
    x = rng.multivariate_normal(m0, c0, 400_000)
    mc = np.mean(multivariate_normal(m0, c0).logpdf(x) - multivariate_normal(m1, c1).logpdf(x))
    assert go.gaussian_kl(m0, c0, m1, c1) == pytest.approx(mc, rel=0.01)


def test_cholesky_marginal_does_not_depend_on_b():
    for b in ([0.0, 0.0], [0.006, 0.006], [0.0099, 0.0], [0.003, 0.009]):
        model = go.cholesky_model(A_GT, b, SIGMA2)
        np.testing.assert_allclose(model.marginal_cov(), A_GT @ A_GT.T + SIGMA2 * np.eye(2))
        assert np.allclose(np.triu(model.W, 1), 0)  # lower triangular, as Cholesky factors are


def test_posterior_and_mutual_information_agree_with_conditioning_the_joint():
    model = go.cholesky_model(A_GT, [0.002, 0.008], SIGMA2)
    sx, W = model.marginal_cov(), model.W
    np.testing.assert_allclose(model.posterior_cov(), np.eye(2) - W.T @ np.linalg.solve(sx, W))
    np.testing.assert_allclose(model.posterior_gain(), W.T @ np.linalg.inv(sx), atol=1e-10)
    # I(X; Z) = (log det Cov(x) + log det Cov(z) - log det Cov(x, z)) / 2, the Gaussian formula.
    generic = 0.5 * (np.linalg.slogdet(sx)[1] - np.linalg.slogdet(model.joint_cov())[1])
    assert model.mutual_information() == pytest.approx(generic, rel=1e-10)


def test_best_mean_field_encoder_minimises_the_population_loss():
    model = go.cholesky_model(A_GT, B_GT, SIGMA2)
    data_cov = model.marginal_cov()
    best = model.best_mean_field()
    base = go.population_loss(model, best, data_cov)
    assert base == pytest.approx(model.posterior_matching_gap(), abs=1e-12)  # MLE term is 0
    rng = np.random.default_rng(0)
    for _ in range(20):
        other = go.MeanField(
            best.gain + 1e-3 * rng.normal(size=(2, 2)), best.var * np.exp(0.1 * rng.normal(size=2))
        )
        assert go.population_loss(model, other, data_cov) > base


def test_population_loss_is_the_negative_elbo_minus_the_data_entropy():
    torch.manual_seed(0)
    data_cov = go.cholesky_model(A_GT, B_GT, SIGMA2).marginal_cov()
    decoder = go.CholeskyDecoder(A_GT + 0.1, [0.004, 0.001], SIGMA2)
    model = go.LinearGaussianVAE(decoder, n_samples=0).double()
    best = model.closed_form()[0].best_mean_field()
    with torch.no_grad():  # near phi*, so that the Monte Carlo average has a small variance
        model.encoder.gain.copy_(torch.as_tensor(best.gain) + 0.01)
        model.encoder.log_scale.copy_(torch.as_tensor(0.5 * np.log(2 * best.var)))
    theta, enc = model.closed_form()
    x = torch.as_tensor(np.random.default_rng(0).multivariate_normal([0, 0], data_cov, 400_000))
    entropy = 0.5 * np.linalg.slogdet(2 * math.pi * math.e * data_cov)[1]
    with torch.no_grad():
        neg_elbo = float(model.loss(x)["loss"])
        exact_rec = model.loss(x[:20_000])["rec"]
        model.n_samples = 32  # the reparameterised estimator has the closed form as its mean
        mc_rec = model.loss(x[:20_000])["rec"]
    assert neg_elbo - entropy == pytest.approx(go.population_loss(theta, enc, data_cov), abs=0.02)
    assert float(mc_rec.mean()) == pytest.approx(float(exact_rec.mean()), rel=0.01)


def test_the_papers_two_losses():
    gt = go.cholesky_model(A_GT, B_GT, SIGMA2)
    data_cov = gt.marginal_cov()
    assert go.population_loss(gt, None, data_cov) == pytest.approx(0.532, abs=5e-4)
    a_star, loss_star = go.fit_cholesky_A(data_cov, B_GT, SIGMA2, restarts=3)
    assert loss_star == pytest.approx(0.196, abs=5e-4)
    star = go.cholesky_model(a_star, B_GT, SIGMA2)
    # theta* fits the data worse than the truth, but its posterior is easier to match.
    mle = go.gaussian_kl([0, 0], data_cov, [0, 0], star.marginal_cov())
    assert mle > 0.01 and star.posterior_matching_gap() < gt.posterior_matching_gap() - 0.3


def test_figure_1a_prefers_large_b11_and_small_b22():
    gaps = {
        b: go.cholesky_model(A_GT, b, SIGMA2).posterior_matching_gap()
        for b in [(0.0, 0.0), (0.0099, 0.0), (0.0, 0.0099), (0.0099, 0.0099)]
    }
    assert min(gaps, key=gaps.get) == (0.0099, 0.0)


def test_torch_decoders_match_the_closed_forms():
    b = np.array([0.002, 0.007])
    for learn in ("A", "B"):
        W, psi = go.CholeskyDecoder(A_GT, b, SIGMA2, learn=learn).double()()
        ref = go.cholesky_model(A_GT, b, SIGMA2)
        np.testing.assert_allclose(W.detach().numpy(), ref.W, atol=1e-6)
        np.testing.assert_allclose(psi.detach().numpy(), ref.psi, atol=1e-8)


def test_trained_vae_gives_up_the_data_fit_for_a_simpler_posterior():
    torch.set_num_threads(1)
    data_cov = go.cholesky_model(A_GT, B_GT, SIGMA2).marginal_cov()
    x = torch.as_tensor(
        np.random.default_rng(0).multivariate_normal([0, 0], data_cov, 1000), dtype=torch.float32
    )
    torch.manual_seed(0)
    model = go.LinearGaussianVAE(go.CholeskyDecoder(np.eye(2), B_GT, SIGMA2), n_samples=0)
    Trainer(model, TrainConfig(epochs=60, batch_size=50, lr=2e-2, progress=False)).fit(x)
    theta, enc = model.closed_form()
    assert go.population_loss(theta, enc, data_cov) < 0.21  # paper: 0.196; the truth: 0.532


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: go.scalar_model(1.0, 1.0), r"theta must lie in \[0, sigma\).*got 1.0"),
        (lambda: go.scalar_model(-0.1, 1.0), "theta must lie.*got -0.1"),
        (lambda: go.scalar_model(0.1, -2.0), "sigma must be a finite number > 0, got -2.0"),
        (lambda: go.scalar_mutual_information([0.1, 3.0], 1.0), "theta must lie"),
        (lambda: go.cholesky_model(A_GT, [0.006, 0.01], SIGMA2), r"b \(the diagonal of B\)"),
        (lambda: go.cholesky_model(A_GT[:1], B_GT, SIGMA2), "A must be a square matrix"),
        (lambda: go.cholesky_model(A_GT, B_GT, 0.0), "sigma2 must be a finite number > 0"),
        (lambda: go.mean_field_fit([[1.0, 2.0], [2.0, 1.0]]), "cov must be positive definite"),
        (lambda: go.MeanField(np.eye(2), [1.0, -1.0]), "var must hold 2 positive variances"),
        (lambda: go.LinearGaussian(np.eye(2), [1.0]), "psi must hold 2 positive"),
        (lambda: go.ScalarDecoder(1.0, 0.0), r"theta_init must lie in \(0, sigma\)"),
        (lambda: go.CholeskyDecoder(A_GT, B_GT, SIGMA2, learn="C"), "learn must be 'A' or 'B'"),
        (lambda: go.CholeskyDecoder(A_GT, [0.0, 0.006], SIGMA2, learn="B"), "a learned b"),
        (lambda: go.fit_cholesky_A(np.eye(2), B_GT, SIGMA2, restarts=0), "restarts must be"),
        (
            lambda: go.LinearGaussianVAE(go.ScalarDecoder(1.0, 0.5), n_samples=-1),
            "n_samples must be a non-negative integer, got -1",
        ),
        (
            lambda: go.LinearGaussianVAE(go.ScalarDecoder(1.0, 0.5)).loss(torch.zeros(3, 2)),
            r"x must have shape \(B, 1\), got \(3, 2\)",
        ),
        (
            lambda: go.population_loss(go.scalar_model(0.5, 1.0), None, np.eye(2)),
            "data_cov must be 1x1",
        ),
    ],
)
def test_bad_input_is_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()
