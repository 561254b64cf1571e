"""Properties of the GMM helpers: exact posteriors, EM, and the Pyro model of the weights."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from lidvae_nb import gmm

EYE2 = np.eye(2)


def _separated(n=400, seed=0, weights=(0.5, 0.5)):
    means = np.array([[-4.0, 0.0], [4.0, 1.0]])
    covs = np.array([EYE2, [[1.0, 0.3], [0.3, 0.5]]])
    X, z = gmm.sample_gmm(means, covs, list(weights), n, seed=seed)
    return X, z, means, covs


def test_sample_gmm_shapes_labels_and_moments():
    X, z, means, covs = _separated(n=4000, seed=1, weights=(0.25, 0.75))
    assert X.shape == (4000, 2) and z.shape == (4000,)
    assert abs(np.mean(z == 0) - 0.25) < 0.03
    np.testing.assert_allclose(X[z == 1].mean(axis=0), means[1], atol=0.06)
    np.testing.assert_allclose(np.cov(X[z == 1].T), covs[1], atol=0.08)
    X2, _ = gmm.sample_gmm(means, covs, [0.25, 0.75], 4000, seed=1)
    np.testing.assert_array_equal(X, X2)


def test_log_likelihood_matches_scipy():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(50, 3))
    means = rng.normal(size=(3, 3))
    A = rng.normal(size=(3, 3, 3))
    covs = A @ A.transpose(0, 2, 1) + 0.5 * np.eye(3)
    w = np.array([0.2, 0.3, 0.5])
    per_comp = np.stack([multivariate_normal(means[k], covs[k]).logpdf(X) for k in range(3)], 1)
    np.testing.assert_allclose(gmm.component_log_densities(X, means, covs), per_comp, rtol=1e-12)
    expected = logsumexp(per_comp + np.log(w), axis=1)
    np.testing.assert_allclose(
        gmm.pointwise_log_likelihood(X, means, covs, w), expected, rtol=1e-12
    )
    assert gmm.log_likelihood(X, means, covs, w) == pytest.approx(expected.sum(), rel=1e-12)
    resp = gmm.responsibilities(X, means, covs, w)
    np.testing.assert_allclose(resp, np.exp(per_comp + np.log(w) - expected[:, None]), rtol=1e-10)


@pytest.mark.parametrize("weights", [[0.5, 0.5], [0.25, 0.75], [0.2, 0.3, 0.5]])
def test_identical_components_give_the_prior_exactly(weights):
    K = len(weights)
    X, _, _, _ = _separated(n=200, seed=2)
    mean, cov = gmm.one_component_fit(X)
    means, covs = np.repeat(mean[None], K, 0), np.repeat(cov[None], K, 0)
    resp = gmm.responsibilities(X, means, covs, weights)
    assert np.all(resp == np.asarray(weights))  # bit for bit, not approximately
    assert np.all(gmm.posterior_kl_to_prior(resp, weights) == 0.0)
    assert gmm.mutual_information(resp) == pytest.approx(0.0, abs=1e-14)  # mean of rows rounds
    # the K-component model with identical components is the one-component model
    one = gmm.log_likelihood(X, mean[None], cov[None], [1.0])
    assert gmm.log_likelihood(X, means, covs, weights) == one


def test_distinct_components_give_positive_kl():
    X, _, means, covs = _separated(n=300, seed=4)
    resp = gmm.responsibilities(X, means, covs, [0.5, 0.5])
    kl = gmm.posterior_kl_to_prior(resp, [0.5, 0.5])
    assert np.all(kl > 0)
    assert kl.mean() == pytest.approx(np.log(2), abs=0.02)  # labels nearly certain
    assert 0 < gmm.mutual_information(resp) <= kl.mean() + 1e-12


@pytest.mark.parametrize("weights", [None, "learn"])
def test_em_log_likelihood_never_decreases(weights):
    X, _ = gmm.sample_gmm([[0.0, 0.0]], [EYE2], [1.0], 300, seed=5)
    fit = gmm.fit_em(X, 3, weights=weights, n_iter=200, tol=0.0, seed=1)
    steps = np.diff(fit.trace)
    assert fit.n_iter == 200 and not fit.converged
    assert np.all(steps >= -1e-9 * np.abs(fit.trace[1:]))
    assert fit.log_likelihood == pytest.approx(
        gmm.log_likelihood(X, fit.means, fit.covs, fit.weights), rel=1e-12
    )


@pytest.mark.parametrize("weights", [None, "learn"])
def test_em_recovers_separated_means_up_to_permutation(weights):
    X, _, means, covs = _separated(n=600, seed=6, weights=(0.4, 0.6))
    fit = gmm.fit_em(X, 2, weights=weights, seed=0)
    assert fit.converged
    best = min(
        itertools.permutations(range(2)), key=lambda p: np.abs(fit.means[list(p)] - means).max()
    )
    np.testing.assert_allclose(fit.means[list(best)], means, atol=0.15)
    np.testing.assert_allclose(fit.covs[list(best)], covs, atol=0.2)
    if weights == "learn":
        np.testing.assert_allclose(fit.weights[list(best)], [0.4, 0.6], atol=0.05)
    else:
        np.testing.assert_array_equal(fit.weights, [0.5, 0.5])


def test_em_on_one_cluster_beats_the_collapsed_fit_only_slightly():
    X, _ = gmm.sample_gmm([[0.0, 0.0]], [EYE2], [1.0], 500, seed=7)
    mean, cov = gmm.one_component_fit(X)
    fit = gmm.fit_em(X, 2, seed=0)
    gain = (fit.log_likelihood - gmm.log_likelihood(X, mean[None], cov[None], [1.0])) / len(X)
    assert 0 <= gain < 0.02
    curve = gmm.collapse_curve([100, 3000], 3, n_iter=300, tol=1e-8)
    assert curve["kl"].shape == (2, 3)
    assert curve["kl"][1].mean() < curve["kl"][0].mean()


def test_ellipse_points_lie_on_the_contour():
    cov = np.array([[2.0, 0.5], [0.5, 1.0]])
    pts = gmm.ellipse_points([1.0, -1.0], cov, n_std=2.0, num=50)
    d = pts - [1.0, -1.0]
    np.testing.assert_allclose(np.einsum("ni,ij,nj->n", d, np.linalg.inv(cov), d), 4.0)


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda: gmm.responsibilities(
                np.zeros((3, 2)), np.zeros((2, 2)), np.stack([EYE2] * 2), [-0.5, 1.5]
            ),
            r"weights must be finite and >= 0.*-0\.5",
        ),
        (
            lambda: gmm.responsibilities(
                np.zeros((3, 2)), np.zeros((2, 2)), np.stack([EYE2] * 2), [0.5, 0.6]
            ),
            r"weights must sum to 1.*0\.6",
        ),
        (
            lambda: gmm.log_likelihood(
                np.zeros((3, 2)), np.zeros((2, 2)), np.stack([EYE2, -EYE2]), [0.5, 0.5]
            ),
            r"covs\[1\] must be positive definite.*-1\.0",
        ),
        (
            lambda: gmm.log_likelihood(
                np.zeros((3, 2)), np.zeros((2, 2)), np.stack([EYE2] * 3), [0.5, 0.5]
            ),
            r"covs must have shape.*\(2, 2, 2\).*\(3, 2, 2\)",
        ),
        (
            lambda: gmm.log_likelihood(
                np.zeros((3, 3)), np.zeros((2, 2)), np.stack([EYE2] * 2), [0.5, 0.5]
            ),
            r"\(3, 3\).*\(2, 2\)",
        ),
        (
            lambda: gmm.responsibilities(
                np.zeros((3, 2)), np.zeros((2, 2)), np.stack([EYE2] * 2), [1.0]
            ),
            r"weights must have shape \(2,\).*\(1,\)",
        ),
        (lambda: gmm.fit_em(np.zeros((5, 2)), 0), r"K must be an integer >= 1, got 0"),
        (lambda: gmm.fit_em(np.zeros((5, 2)), 2, weights="free"), r"'free'"),
        (lambda: gmm.sample_gmm([[0.0]], [[[1.0]]], [1.0], 0), r"n must be an integer >= 1, got 0"),
        (
            lambda: gmm.posterior_kl_to_prior(np.full((4, 3), 1 / 3), [0.5, 0.5]),
            r"\(n, 2\).*\(4, 3\)",
        ),
    ],
)
def test_bad_input_raises_value_error_naming_the_value(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.fixture
def one_torch_thread():
    """NUTS on tiny tensors runs several times faster on one thread when the CPU is shared."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_nuts_with_identical_fixed_components_samples_the_dirichlet_prior(one_torch_thread):
    torch = pytest.importorskip("torch")
    from pyro.ops.stats import effective_sample_size

    from lidvae_nb.hmc import sample_model

    alpha, K = 2.0, 3
    X, _ = gmm.sample_gmm([[0.0, 0.0]], [EYE2], [1.0], 30, seed=8)
    samples = sample_model(
        gmm.mixture_weights_model,
        torch.tensor(X),
        K,
        alpha,
        fixed_means=torch.zeros(K, 2),
        fixed_scales=torch.ones(K, 2),
        num_samples=400,
        warmup=200,
        seed=0,
    )
    pi = samples["pi"]
    assert pi.shape == (400, K) and set(samples) == {"pi"}
    prior = torch.distributions.Dirichlet(torch.full((K,), alpha, dtype=torch.float64))
    for k in range(K):
        draws = pi[:, k]
        ess = float(effective_sample_size(draws[None, :, None]).squeeze())
        se_mean = float(prior.variance[k].sqrt()) / np.sqrt(ess)
        assert abs(float(draws.mean() - prior.mean[k])) < 4 * se_mean
        # variance of the sample variance of a Beta(2, 4) marginal, inflated by autocorrelation
        centred = (draws - prior.mean[k]) ** 2
        se_var = float(centred.std()) / np.sqrt(ess)
        assert abs(float(centred.mean() - prior.variance[k])) < 4 * se_var


def test_pyro_model_likelihood_sums_the_labels_out_like_numpy():
    torch = pytest.importorskip("torch")
    import pyro.poutine as poutine
    from pyro.poutine.util import site_is_subsample

    X, _, _, _ = _separated(n=40, seed=9)
    pi = torch.tensor([0.3, 0.7], dtype=torch.float64)
    mu = torch.tensor([[-1.0, 0.5], [2.0, 0.0]], dtype=torch.float64)
    sigma = torch.tensor([[1.0, 0.5], [2.0, 1.5]], dtype=torch.float64)
    model = poutine.condition(gmm.mixture_weights_model, data={"pi": pi, "mu": mu, "sigma": sigma})
    trace = poutine.trace(model).get_trace(torch.tensor(X), 2, 1.5)
    site = trace.nodes["x"]
    ours = float(site["fn"].log_prob(site["value"]).sum())
    covs = np.stack([np.diag(s**2) for s in sigma.numpy()])
    assert ours == pytest.approx(gmm.log_likelihood(X, mu.numpy(), covs, pi.numpy()), rel=1e-12)
    free = poutine.trace(gmm.mixture_weights_model).get_trace(torch.tensor(X), 2, 1.5)
    latent = {
        n
        for n, s in free.nodes.items()
        if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)
    }
    assert latent == {"pi", "mu", "sigma"}  # no discrete label site: NUTS can run
    with pytest.raises(ValueError, match=r"alpha must be > 0.*-1"):
        gmm.mixture_weights_model(torch.tensor(X), 2, -1.0)


def test_order_by_first_mean_undoes_a_label_swap():
    torch = pytest.importorskip("torch")
    pi = torch.tensor([[0.3, 0.7], [0.7, 0.3]])
    mu = torch.tensor([[[-2.0, 0.0], [2.0, 1.0]], [[2.0, 1.0], [-2.0, 0.0]]])
    pi_s, mu_s = gmm.order_by_first_mean(pi, mu)
    assert torch.equal(pi_s, torch.tensor([[0.3, 0.7], [0.3, 0.7]]))
    assert torch.equal(mu_s[1], mu[0])
