"""Kivva et al.'s setting: injectivity of piecewise-affine networks on known examples, the exact
marginal likelihood of a one-layer ReLU decoder under a Gaussian-mixture prior, and profiles."""

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal
from torch import nn

from lidvae_nb.mixture_prior import (
    ReluGMM,
    check_injectivity,
    likelihood_profile,
    profile_minimum,
    profile_study,
    relu_network,
)

Z1 = np.linspace(-3, 3, 200)[:, None]  # avoids z = 0, the kink of the examples below


# ---------------------------------------------------------------------------- Example 3.3
def test_relu_is_weakly_injective_but_not_injective():
    report = check_injectivity(relu_network([[1.0]], [0.0], [[1.0]], [0.0]), Z1)
    assert sorted(report.region_ranks) == [0, 1]  # z < 0 all maps to 0
    assert report.weakly_injective and not report.injective


def test_abs_is_not_weakly_injective_and_a_witness_is_found():
    report = check_injectivity(relu_network([[1.0], [-1.0]], [0, 0], [[1.0, 1.0]], [0.0]), Z1)
    assert report.full_rank and not report.weakly_injective and not report.injective
    assert report.n_overlapping == len(Z1)
    z, z_other = report.witness
    np.testing.assert_allclose(z_other, -z)  # |z| = |-z|


def test_zero_map_is_not_weakly_injective():
    report = check_injectivity(relu_network([[1.0]], [0.0], [[0.0]], [0.0]), Z1)
    assert np.all(report.region_ranks == 0)
    assert not report.weakly_injective and not report.injective


def test_relu_of_x_minus_relu_of_minus_x_is_injective():
    """ReLU(x) - ReLU(-x) = x: two regions, one linear map, no overlap."""
    report = check_injectivity(relu_network([[1.0], [-1.0]], [0, 0], [[1.0, -1.0]], [0.0]), Z1)
    assert report.n_regions == 2 and report.injective and report.weakly_injective


def test_invertible_leaky_relu_network_is_injective():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(2, 2), nn.LeakyReLU(0.2), nn.Linear(2, 2), nn.LeakyReLU(0.2), nn.Linear(2, 3)
    ).double()
    z = np.random.default_rng(0).normal(size=(1000, 2))
    report = check_injectivity(net, z)
    assert report.n_regions > 2 and report.injective


def test_a_fold_in_two_dimensions_is_found():
    """(z1, z2) -> (|z1|, z2): full rank everywhere, every image reached twice."""
    net = relu_network([[1, 0], [-1, 0], [0, 1]], [0, 0, 5], [[1, 1, 0], [0, 0, 1]], [0, 0])
    z = np.random.default_rng(1).normal(size=(500, 2))
    report = check_injectivity(net, z)
    assert report.full_rank and not report.weakly_injective


def test_a_map_to_fewer_dimensions_is_not_weakly_injective():
    net = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 1)).double()
    report = check_injectivity(net, np.random.default_rng(2).normal(size=(300, 2)))
    assert np.all(report.region_ranks <= 1) and not report.weakly_injective


def test_a_constant_piece_is_found_by_the_linear_program():
    """f(z) = ReLU(z) on the first output and 0 on the second: points in the flat region z < 0
    map to (0, 0), which no z > 0 reaches, so points with z > 0 keep a unique preimage."""
    report = check_injectivity(relu_network([[1.0]], [0.0], [[1.0], [0.0]], [0.0, 0.0]), Z1)
    assert report.weakly_injective and not report.injective
    assert report.unique.sum() == np.sum(Z1 > 0)


def test_an_image_shared_with_a_flat_region_is_found():
    """f(z) = ReLU(z) - 2 ReLU(z - 1) is 0 on z < 0 and 2 - z on z > 1: f(2) = 0 is also the
    image of the whole flat region, which only the linear program can see here (the sample has
    no point in (0, 1))."""
    net = relu_network([[1.0], [1.0]], [0.0, -1.0], [[1.0, -2.0]], [0.0])
    report = check_injectivity(net, np.array([[-1.0], [-0.5], [2.0], [2.5], [3.0]]))
    assert report.unique.tolist() == [False, False, False, True, True]
    assert report.weakly_injective and not report.injective


def test_points_on_a_kink_are_not_assessed():
    report = check_injectivity(relu_network([[1.0]], [0.0], [[1.0]], [0.0]), [[-1.0], [0.0], [1.0]])
    assert report.n_points == 3 and report.on_kink.tolist() == [False, True, False]
    assert report.unique.tolist() == [False, False, True] and report.region_of_point[1] == -1


def test_bad_networks_and_samples_are_rejected():
    with pytest.raises(ValueError, match="Tanh is not piecewise affine"):
        check_injectivity(nn.Sequential(nn.Linear(1, 2), nn.Tanh(), nn.Linear(2, 1)), Z1)
    with pytest.raises(ValueError, match=r"z must have shape \(N, 1\) with N >= 1, got \(5, 2\)"):
        check_injectivity(relu_network([[1.0]], [0.0], [[1.0]], [0.0]), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="all 3 points of z lie on kinks"):
        check_injectivity(relu_network([[1.0]], [0.0], [[1.0]], [0.0]), np.zeros((3, 1)))
    with pytest.raises(ValueError, match="got Conv1d"):
        check_injectivity(nn.Conv1d(1, 1, 1), Z1)


# ---------------------------------------------------------------------------- the likelihood
def test_exact_likelihood_agrees_with_quadrature():
    model = ReluGMM.random(3, n_hidden=4, data_dim=2, seed=3)
    x, _, _ = model.sample(300, seed=1)
    np.testing.assert_allclose(model.log_marginal(x), model.log_marginal_quadrature(x), atol=1e-5)


def test_linear_decoder_gives_the_gaussian_mixture_in_closed_form():
    """One unit that is on wherever the prior has mass: x ~ sum_j lam_j N(a mu_j + c, ...)."""
    a, c = np.array([1.5, -0.5]), np.array([0.3, 1.0])
    model = ReluGMM(
        w1=[1.0],
        b1=[60.0],
        w2=a[:, None],
        b2=c - 60 * a,
        means=[-1.0, 2.0],
        log_scales=np.log([0.5, 0.8]),
        logits=np.log([0.3, 0.7]),
        noise=0.3,
    )
    x, _, _ = model.sample(200, seed=0)
    expected = np.log(
        sum(
            lam * multivariate_normal(a * mu + c, s**2 * np.outer(a, a) + 0.09 * np.eye(2)).pdf(x)
            for lam, mu, s in [(0.3, -1.0, 0.5), (0.7, 2.0, 0.8)]
        )
    )
    np.testing.assert_allclose(model.log_marginal(x), expected, rtol=1e-10)


def test_density_integrates_to_one():
    model = ReluGMM.random(2, n_hidden=3, data_dim=1, seed=5)
    grid = np.linspace(-40, 40, 40001)[:, None]
    assert np.trapezoid(np.exp(model.log_marginal(grid)), grid[:, 0]) == pytest.approx(1, abs=1e-6)


@pytest.mark.parametrize("scale, shift", [(2.0, 0.5), (-0.7, -1.0)])
def test_affine_reparametrisation_and_split_component_keep_the_distribution(scale, shift):
    model = ReluGMM.random(3, seed=7)
    x, _, _ = model.sample(200, seed=2)
    ll = model.log_marginal(x)
    np.testing.assert_allclose(model.affine_image(scale, shift).log_marginal(x), ll, atol=1e-9)
    split = model.split_component(1)
    assert split.n_components == 4
    np.testing.assert_allclose(split.log_marginal(x), ll, atol=1e-9)


def test_profile_towards_an_affine_image_has_two_equal_minima():
    model = ReluGMM.random(2, seed=11)
    x, _, _ = model.sample(500, seed=3)
    direction = model.affine_image(-1.0, 0.0).vector() - model.vector()
    prof = likelihood_profile(model, x, direction, [0.0, 0.5, 1.0])
    assert prof[0] == pytest.approx(model.nll(x), abs=1e-12)
    assert prof[2] == pytest.approx(prof[0], abs=1e-9) and prof[1] > prof[0] + 0.1


def test_without_weak_injectivity_a_component_can_flip_unnoticed():
    """f(z) = c |z| + d: the mean of one component can change sign without changing p(x), and
    that parameter is not an affine image of the truth (the other component stays)."""
    fold = ReluGMM(
        w1=[1.0, -1.0],
        b1=[0.0, 0.0],
        w2=[[1.0, 1.0], [0.5, 0.5]],
        b2=[0.0, 0.0],
        means=[1.0, 2.5],
        log_scales=np.log([0.4, 0.5]),
        logits=[0.0, 0.0],
        noise=0.2,
    )
    x, _, _ = fold.sample(400, seed=4)
    k = fold.coordinate_names.index("means[0]")
    prof = likelihood_profile(fold, x, k, [0.0, -1.0, -2.0])
    assert prof[2] == pytest.approx(prof[0], abs=1e-9) and prof[1] > prof[0]


def test_profile_minimum_is_near_the_truth_and_flags_a_minimum_on_the_edge():
    model = ReluGMM.random(2, seed=13)
    x, _, _ = model.sample(2000, seed=5)
    k = model.coordinate_names.index("means[0]")
    t_hat, se = profile_minimum(model, x, k, np.linspace(-1, 1, 9))
    assert 0 < se < 0.1 and abs(t_hat) < 4 * se
    t_edge, se_edge = profile_minimum(model, x, k, np.linspace(0.5, 1.0, 5))
    assert t_edge == 0.5 and np.isnan(se_edge)


def test_profile_study_shapes_and_misspecified_fits():
    sims = profile_study(n_sims=3, n_data=200, misspecified_every=3, seed=1)
    assert [s.true_components for s in sims] == [2, 3, 2]
    assert [s.misspecified for s in sims] == [False, False, True]
    assert sims[2].fitted_components == 3
    for s in sims:
        assert s.t_hat.shape == s.se.shape == (len(s.names),)
        assert isinstance(s.success(), bool)


def test_bad_parameters_are_rejected():
    with pytest.raises(ValueError, match="noise must be > 0, got -1"):
        ReluGMM([1.0], [0.0], [[1.0]], [0.0], [0.0], [0.0], [0.0], noise=-1)
    with pytest.raises(ValueError, match=r"w2 must be \(n, 1\) and b2 \(n,\), got \(1, 2\)"):
        ReluGMM([1.0], [0.0], [[1.0, 2.0]], [0.0], [0.0], [0.0], [0.0])
    model = ReluGMM.random(2, seed=0)
    with pytest.raises(ValueError, match=r"x must have shape \(N, 3\), got \(4, 2\)"):
        model.log_marginal(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="coordinate must be in"):
        likelihood_profile(model, np.zeros((4, 3)), 99, [0.0])
    with pytest.raises(ValueError, match="n_grid must be >= 3, got 2"):
        profile_study(n_sims=1, n_grid=2)
    with pytest.raises(ValueError, match="scale must be non-zero"):
        model.affine_image(0.0, 1.0)
