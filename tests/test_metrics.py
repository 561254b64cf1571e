"""Collapse metrics on encoders whose answers are known in closed form."""

import math

import numpy as np
import pytest
import torch
from torch import distributions as D

from lidvae_nb import metrics


class LinearGaussian(torch.nn.Module):
    """z ~ N(0, I_K), x | z ~ N(z, s^2 I_K), with q(z | x) the exact posterior (or a blind one)."""

    def __init__(self, k=3, s=2.0, blind=False, informative_dims=None):
        super().__init__()
        self.k, self.s, self.blind = k, s, blind
        self.informative = informative_dims if informative_dims is not None else k

    def prior(self):
        return D.Independent(D.Normal(torch.zeros(self.k), torch.ones(self.k)), 1)

    def encode(self, x):
        if self.blind:
            return D.Independent(D.Normal(torch.zeros_like(x), torch.ones_like(x)), 1)
        v = 1.0 / (1.0 + 1.0 / self.s**2)
        mean = v * x / self.s**2
        mean[:, self.informative :] = 0.0
        scale = torch.full_like(x, math.sqrt(v))
        scale[:, self.informative :] = 1.0
        return D.Independent(D.Normal(mean, scale), 1)

    def log_likelihood(self, x, z):
        return D.Independent(D.Normal(z, self.s), 1).log_prob(x)

    def sample(self, n, seed=0):
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.k, generator=g)
        return z + self.s * torch.randn(n, self.k, generator=g)


def test_blind_encoder_has_no_active_units_no_kl_and_no_information():
    model = LinearGaussian(blind=True)
    x = model.sample(2000)
    assert metrics.active_units(model, x) == 0.0
    assert metrics.kl_to_prior(model, x) == pytest.approx(0.0, abs=1e-12)
    assert abs(metrics.mutual_information(model, x)) < 0.02


def test_active_units_count_the_informative_dimensions():
    model = LinearGaussian(k=4, s=1.0, informative_dims=2)
    x = model.sample(1000)
    assert metrics.active_units(model, x) == 0.5
    assert metrics.active_units(model, x, fraction=False) == 2


def test_kl_matches_the_closed_form():
    s = 2.0
    model = LinearGaussian(k=3, s=s)
    x = model.sample(500)
    v = 1.0 / (1.0 + 1.0 / s**2)
    m = v * x / s**2
    expected = 0.5 * (v + m**2 - 1.0 - math.log(v)).sum(1).mean()
    assert metrics.kl_to_prior(model, x) == pytest.approx(float(expected), rel=1e-5)


def test_mutual_information_close_to_the_true_value():
    s = 2.0
    model = LinearGaussian(k=2, s=s)
    x = model.sample(4000, seed=1)
    true_mi = 2 * 0.5 * math.log(1 + 1 / s**2)  # I(x; z) of the linear-Gaussian model
    estimate = metrics.mutual_information(model, x, batch_size=1000)
    assert estimate == pytest.approx(true_mi, abs=0.05)


def test_iwae_is_exact_when_q_is_the_true_posterior():
    s = 1.5
    model = LinearGaussian(k=3, s=s)
    x = model.sample(50)
    ll = metrics.iwae_log_likelihood(model, x, n_samples=7, chunk_size=3)
    marginal = D.Independent(D.Normal(torch.zeros(3), math.sqrt(1 + s**2)), 1).log_prob(x)
    torch.testing.assert_close(ll, marginal, rtol=0, atol=1e-4)


def test_iwae_with_a_poor_proposal_is_a_lower_bound_that_tightens():
    model = LinearGaussian(k=2, s=1.0, blind=True)  # q = prior: a valid but poor proposal
    x = model.sample(200, seed=3)
    marginal = D.Independent(D.Normal(torch.zeros(2), math.sqrt(2.0)), 1).log_prob(x).mean()
    torch.manual_seed(0)
    few = metrics.iwae_log_likelihood(model, x, n_samples=1).mean()
    many = metrics.iwae_log_likelihood(model, x, n_samples=2000).mean()
    assert few < many < marginal + 0.01
    assert float(marginal - many) < 0.05


def test_cluster_accuracy_with_hungarian_matching():
    labels = np.array([0, 0, 1, 1, 2, 2])
    assert metrics.cluster_accuracy(labels, np.array([2, 2, 0, 0, 1, 1])) == 1.0
    assert metrics.cluster_accuracy(labels, np.zeros(6)) == pytest.approx(2 / 6)
    assert metrics.cluster_accuracy(labels, np.array([1, 1, 1, 0, 2, 2])) == pytest.approx(5 / 6)


def test_cluster_information_on_known_encoders():
    n, c = 400, 4
    uniform = torch.full((n, c), 1 / c)  # ignores x: a collapsed label
    mi, entropy = metrics.cluster_information(uniform)
    assert abs(mi) < 1e-6 and entropy == pytest.approx(math.log(c))
    onehot = torch.eye(c).repeat(n // c, 1)  # certain, all clusters used equally: I = log C
    mi, entropy = metrics.cluster_information(onehot)
    assert mi == pytest.approx(math.log(c), abs=1e-6) and abs(entropy) < 1e-6
    same = torch.eye(c)[torch.zeros(n, dtype=torch.long)]  # certain but constant: I = 0
    assert abs(metrics.cluster_information(same)[0]) < 1e-6
    with pytest.raises(ValueError, match="probability vector"):
        metrics.cluster_information(torch.ones(3, 2))
    with pytest.raises(ValueError, match=r"\(N, C\) with N >= 1, got shape \(3,\)"):
        metrics.cluster_information(torch.ones(3))


def test_collapse_report_has_every_metric():
    model = LinearGaussian(k=2, s=1.0)
    report = metrics.collapse_report(model, model.sample(300), iwae_samples=10)
    assert set(report) == {"au", "kl", "mi", "log_likelihood"}
    assert report["au"] == 1.0 and report["kl"] > 0.1 and report["mi"] > 0.1


def test_bad_input_is_rejected_with_the_value_named():
    model = LinearGaussian()
    with pytest.raises(ValueError, match="threshold must be > 0, got -1"):
        metrics.active_units(model, model.sample(10), threshold=-1)
    with pytest.raises(ValueError, match="n_samples must be a positive integer, got 0"):
        metrics.iwae_log_likelihood(model, model.sample(10), n_samples=0)
    with pytest.raises(ValueError, match=r"\(3,\) and \(2,\)"):
        metrics.cluster_accuracy([0, 1, 1], [0, 1])


# ---------------------------------------------------------------------------- run-to-run MCC
def _independent_latent(n=4000, k=3, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, size=(n, k))


def test_mcc_of_a_permuted_rescaled_shifted_copy_is_one():
    z = _independent_latent()
    copy = z[:, [2, 0, 1]] * np.array([-3.0, 0.5, 7.0]) + np.array([1.0, -2.0, 0.3])
    for kind in ("strong", "weak"):
        assert metrics.mean_correlation_coefficient(z, copy, kind) == pytest.approx(1, abs=1e-12)
    # torch tensors are accepted, and a copy of fewer dimensions is matched one to one
    sub = torch.as_tensor(z[:, [2, 0]] * 4.0)
    assert metrics.mean_correlation_coefficient(z, sub, "strong") == pytest.approx(1, abs=1e-12)


def test_mcc_of_independent_latents_is_near_zero():
    a, b = _independent_latent(seed=1), _independent_latent(seed=2)
    assert metrics.mean_correlation_coefficient(a, b, "strong") < 0.05
    assert metrics.mean_correlation_coefficient(a, b, "weak") < 0.05


def test_mcc_of_a_rotation_is_cos_theta_strong_and_one_weak():
    """Independent standardised coordinates rotated by theta: corr(z_i, z'_i) = cos theta."""
    theta = np.pi / 6
    z = _independent_latent(n=20000, k=2, seed=3)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    strong = metrics.mean_correlation_coefficient(z, z @ rot.T, "strong")
    assert strong == pytest.approx(np.cos(theta), abs=0.02)
    assert metrics.mean_correlation_coefficient(z, z @ rot.T, "weak") == pytest.approx(1, abs=1e-12)


def test_weak_mcc_is_one_for_any_invertible_affine_map_and_strong_follows_the_mixing():
    """For independent coordinates of equal variance, corr(z_i, (A z)_j) = A_ji / |A_j|."""
    from scipy.optimize import linear_sum_assignment

    a = np.array([[1.0, 2.0, 0.0], [0.5, -1.0, 3.0], [2.0, 0.0, 1.0]])
    z = _independent_latent(n=20000, seed=4)
    mixed = z @ a.T + 5.0
    assert metrics.mean_correlation_coefficient(z, mixed, "weak") == pytest.approx(1, abs=1e-10)
    corr = np.abs(a.T / np.linalg.norm(a, axis=1))
    rows, cols = linear_sum_assignment(-corr)
    expected = corr[rows, cols].mean()
    strong = metrics.mean_correlation_coefficient(z, mixed, "strong")
    assert expected < 0.95 and strong == pytest.approx(expected, abs=0.02)


def test_pairwise_mcc_and_bad_input():
    z = _independent_latent(n=500)
    values = metrics.pairwise_mcc([z, 2 * z, z[:, ::-1]], "strong")
    np.testing.assert_allclose(values, np.ones(3), atol=1e-12)
    with pytest.raises(ValueError, match="kind must be 'strong' or 'weak', got 'medium'"):
        metrics.mean_correlation_coefficient(z, z, "medium")
    with pytest.raises(ValueError, match="got 500 and 499 rows"):
        metrics.mean_correlation_coefficient(z, z[1:])
    constant = z.copy()
    constant[:, 1] = 3.0
    with pytest.raises(ValueError, match=r"z2 has constant columns \[1\]"):
        metrics.mean_correlation_coefficient(z, constant)
    with pytest.raises(ValueError, match="linearly dependent columns"):
        metrics.mean_correlation_coefficient(np.c_[z, z[:, 0] + z[:, 1]], z, "weak")
    with pytest.raises(ValueError, match=r"z1 must have shape \(N, K\)"):
        metrics.mean_correlation_coefficient(z[:, 0], z)
    with pytest.raises(ValueError, match="at least 2 representations, got 1"):
        metrics.pairwise_mcc([z])


def test_majority_accuracy_lets_clusters_share_a_label_and_bounds_the_hungarian_one():
    labels = [0, 0, 0, 1, 1, 1, 2, 2]
    clusters = [5, 5, 7, 7, 7, 7, 7, 9]  # cluster 7 is mostly label 1; 5 -> 0; 9 -> 2
    assert metrics.majority_accuracy(labels, clusters) == pytest.approx(6 / 8)
    assert metrics.cluster_accuracy(labels, clusters) == pytest.approx(6 / 8)
    one = [3] * 8  # everything in one cluster: the majority label's share
    assert metrics.majority_accuracy(labels, one) == pytest.approx(3 / 8)
    two_for_one = [0, 0, 0, 1, 1, 1, 0, 0]
    assert metrics.majority_accuracy([0, 0, 0, 0, 0, 0, 1, 1], two_for_one) == pytest.approx(6 / 8)
    with pytest.raises(ValueError, match="equal length"):
        metrics.majority_accuracy([0, 1], [0])


def test_learning_curve_point_on_a_model_with_a_known_likelihood():
    from lidvae_nb.models import ModelConfig, build_model

    torch.manual_seed(0)
    model = LinearGaussian(k=2, s=1.0)
    model.loss = lambda x: _exact_loss(model, x)
    x = torch.randn(40, 2) * math.sqrt(2.0)
    point = metrics.learning_curve_point(model, x, bound_samples=4, iwae_samples=30)
    exact = float(D.Independent(D.Normal(torch.zeros(2), math.sqrt(2.0)), 1).log_prob(x).mean())
    # q is the exact posterior: the ELBO, the reference bound and the IWAE all equal log p(x)
    for key in ("elbo", "ref_bound", "iwae"):
        assert point[key] == pytest.approx(exact, abs=1e-4)
    cfg = ModelConfig(data_dim=3, latent_dim=2, hidden=8, n_clusters=3)
    gm = build_model("gmvae", cfg).eval()
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    point = metrics.learning_curve_point(gm, torch.randn(8, 3), labels, bound_samples=5)
    assert point["acc_majority"] >= point["acc_hungarian"]
    assert point["kl_term"] == pytest.approx(point["kl_y"] + point["kl_z"], rel=1e-5)
    assert point["ref_bound"] >= point["elbo"] - 50  # a log-mean-exp over draws of the mean ELBO


def _exact_loss(model, x):
    q = model.encode(x)
    z = q.rsample()
    rec = -model.log_likelihood(x, z)
    kl = q.log_prob(z) - model.prior().log_prob(z)
    return {"loss": (rec + kl).mean(), "rec": rec, "kl_term": kl}


def test_closest_pair_ratio_finds_the_smallest_singular_value_of_a_linear_map():
    a = torch.diag(torch.tensor([3.0, 0.5]))
    ratio, z, z2 = metrics.closest_pair_ratio(lambda z: z @ a, 2, n_starts=32, steps=300)
    # a linear map shrinks no difference by more than its smallest singular value, and the
    # search should find a pair along that direction
    assert 0.5 - 1e-5 <= ratio < 0.51
    assert np.linalg.norm(z - z2) > 1e-3


def test_closest_pair_ratio_exposes_a_decoder_that_folds_the_plane():
    def fold(z):  # (z1, z2) and (-z1, z2) have the same image
        return torch.stack([z[:, 0].abs(), z[:, 1]], dim=1)

    ratio, z, z2 = metrics.closest_pair_ratio(fold, 2, n_starts=32, steps=300)
    assert ratio < 1e-3
    assert abs(z[0] + z2[0]) < 1e-2 and abs(z[1] - z2[1]) < 1e-2 and abs(z[0]) > 1e-3


def test_closest_pair_ratio_rejects_bad_settings():
    with pytest.raises(ValueError, match="latent_dim"):
        metrics.closest_pair_ratio(lambda z: z, 0)
    with pytest.raises(ValueError, match="box must be > 0, got -1.0"):
        metrics.closest_pair_ratio(lambda z: z, 2, box=-1.0)
