"""LiBI and the models and metrics of Yacoby et al.'s Table 1."""

import json
import math

import numpy as np
import pingouin
import pytest
import torch
from torch import distributions as D

from lidvae_nb.data import JTE_A, SYNTHETIC, jte_loading, mobius, synthetic, synthetic_mean
from lidvae_nb.libi import (
    LiBIConfig,
    LiBIStep1,
    SyntheticVAE,
    code_penalties,
    encoder_body,
    evaluate,
    fit_libi,
    fit_method,
    main,
    run_method,
    table_jobs,
    truth_decoder,
)
from lidvae_nb.metrics import henze_zirkler, iwae_log_likelihood, smooth_knn_statistic
from lidvae_nb.trainer import TrainConfig

# --- the data sets -----------------------------------------------------------------------------


def test_synthetic_data_sets_have_the_documented_shapes_and_are_seeded():
    for name, spec in SYNTHETIC.items():
        x, z = synthetic(name, 50, seed=3)
        assert x.shape == (50, spec["data_dim"]) and z.shape == (50, 2)
        assert torch.equal(x, synthetic(name, 50, seed=3)[0])
        assert not torch.equal(x, synthetic(name, 50, seed=4)[0])
    with pytest.raises(ValueError, match="'moebius'"):
        synthetic("moebius", 10)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        synthetic("mobius", 0)


def test_linear_jte_has_the_closed_form_covariance():
    x, _ = synthetic("linear_jte", 200_000, seed=0)
    A = np.array(JTE_A)
    expected = A @ A.T + 0.01 * np.eye(2)  # L L^T + (sigma2 I - B) = A A^T + sigma2 I
    np.testing.assert_allclose(np.cov(x.numpy().T), expected, atol=0.02)


def test_cubic_jte_is_the_cube_of_linear_jte_and_gaussian_lies_near_a_plane():
    z = torch.randn(100, 2, dtype=torch.float64)
    lin = synthetic_mean("linear_jte", z)
    torch.testing.assert_close(synthetic_mean("cubic_jte", z), lin**3)
    x, _ = synthetic("gaussian", 5000, seed=1)
    singular = torch.linalg.svdvals(x - x.mean(0))
    assert singular[2] / singular[1] < 0.01  # two directions hold only the 1e-6 noise


def test_mobius_is_the_complex_transform():
    point = torch.tensor([[0.5, -2.0]], dtype=torch.float64)
    w = 0.5 - 2.0j
    expected = (w + (1 + 4j)) / (w + (7 + 4j))
    torch.testing.assert_close(
        mobius(point)[0], torch.tensor([expected.real, expected.imag]).double()
    )


# --- the statistics ----------------------------------------------------------------------------


@pytest.mark.parametrize("n,d", [(20, 2), (300, 2), (150, 3), (100, 4)])
@pytest.mark.parametrize("shape", ["normal", "cubed", "uniform"])
def test_henze_zirkler_agrees_with_pingouin(n, d, shape):
    rng = np.random.default_rng(n + d)
    z = rng.standard_normal((n, d))
    if shape == "cubed":
        z[:, 0] = z[:, 0] ** 3
    elif shape == "uniform":
        z = rng.uniform(size=(n, d)) @ rng.standard_normal((d, d))
    ours = float(henze_zirkler(torch.tensor(z)))
    assert ours == pytest.approx(pingouin.multivariate_normality(z).hz, rel=1e-9)


def test_henze_zirkler_is_affine_invariant_differentiable_and_rejects_singular_samples():
    z = torch.randn(100, 2, dtype=torch.float64)
    moved = z @ torch.tensor([[2.0, 0.3], [0.0, 0.5]], dtype=torch.float64) + 4.0
    assert float(henze_zirkler(moved)) == pytest.approx(float(henze_zirkler(z)), rel=1e-9)
    small = torch.randn(12, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(henze_zirkler, (small,))
    with pytest.raises(ValueError, match="singular"):
        henze_zirkler(torch.ones(10, 2))
    with pytest.raises(ValueError, match=r"\(n, d\) with n >= 3"):
        henze_zirkler(torch.randn(2, 2))


def test_smooth_knn_is_standardised_under_the_permutation_null():
    # Fix a pooled sample (from two different distributions) and relabel it at random: the
    # standardised statistic must then have mean 0 and variance 1 exactly, whatever the data.
    gen = torch.Generator().manual_seed(0)
    pooled = torch.cat([torch.randn(30, 2, generator=gen), 2 + torch.randn(20, 2, generator=gen)])
    perms = torch.stack([torch.randperm(50, generator=gen) for _ in range(4000)])
    u = pooled[perms]  # (R, 50, 2)
    stats = smooth_knn_statistic(u[:, :30], u[:, 30:])
    assert abs(float(stats.mean())) < 0.05
    assert float(stats.std()) == pytest.approx(1.0, abs=0.05)


def test_smooth_knn_separates_equal_from_different_distributions():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(300, 100, 2, generator=gen)
    same = smooth_knn_statistic(x, torch.randn(300, 100, 2, generator=gen))
    shifted = smooth_knn_statistic(x, 0.5 + torch.randn(300, 100, 2, generator=gen))
    wider = smooth_knn_statistic(x, 2 * torch.randn(300, 100, 2, generator=gen))
    assert abs(float(same.mean())) < 0.15
    assert float(shifted.mean()) > 2 and float(wider.mean()) > 2
    # units do not matter with the median scale; a single test gives a scalar; it has gradients
    one = smooth_knn_statistic(x[0], 2 * x[1])
    assert one.shape == () and float(one) == pytest.approx(
        float(smooth_knn_statistic(1000 * x[0], 2000 * x[1])), rel=1e-4
    )
    y = x[1].clone().requires_grad_(True)
    smooth_knn_statistic(x[0], y).backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0


def test_smooth_knn_rejects_bad_input():
    with pytest.raises(ValueError, match="same D"):
        smooth_knn_statistic(torch.randn(5, 2), torch.randn(5, 3))
    with pytest.raises(ValueError, match="scale"):
        smooth_knn_statistic(torch.randn(5, 2), torch.randn(5, 2), scale="mad")
    with pytest.raises(ValueError, match="alphas"):
        smooth_knn_statistic(torch.randn(5, 2), torch.randn(5, 2), alphas=(1.0, -1.0))


# --- the model at the true parameters ------------------------------------------------------------


def true_linear_jte() -> SyntheticVAE:
    """The linear JTE model at the ground truth; q has the exact posterior's mean and marginal
    variances (wider than the mean-field fit, so that importance sampling is efficient)."""
    vae = SyntheticVAE("linear_jte")
    L = jte_loading(torch.tensor(JTE_A, dtype=torch.float64))
    psi = 0.004
    precision = torch.eye(2, dtype=torch.float64) + L.T @ L / psi
    cov = torch.linalg.inv(precision)
    with torch.no_grad():
        vae.decoder.A.copy_(torch.tensor(JTE_A))
        vae.encoder.loc.weight.copy_(cov @ L.T / psi)
        vae.encoder.loc.bias.zero_()
        vae.encoder.log_scale.bias.copy_(0.5 * torch.log(torch.diag(cov)))
    marginal = D.MultivariateNormal(torch.zeros(2), (L @ L.T + psi * torch.eye(2)).float())
    return vae, marginal


def test_log_likelihood_and_importance_sampling_match_the_closed_form():
    vae, marginal = true_linear_jte()
    x, _ = synthetic("linear_jte", 200, seed=5)
    z = torch.randn(7, 200, 2)
    expected = D.Independent(D.Normal(synthetic_mean("linear_jte", z), math.sqrt(0.004)), 1)
    torch.testing.assert_close(vae.log_likelihood(x, z), expected.log_prob(x))
    exact = marginal.log_prob(x)
    for inflation in (1.0, 2.0):
        est = iwae_log_likelihood(vae, x, n_samples=2000, proposal_inflation=inflation)
        assert abs(float((est - exact).mean())) < 0.01  # the reported average
        assert float((est - exact).abs().max()) < 0.3  # each point (a correlated posterior)
    with pytest.raises(ValueError, match="proposal_inflation"):
        iwae_log_likelihood(vae, x, proposal_inflation=0.0)


def test_evaluate_the_true_model_gives_its_log_likelihood_and_a_null_knn_statistic():
    vae, marginal = true_linear_jte()
    test, _ = synthetic("linear_jte", 300, seed=6)
    result = evaluate(vae, test, n_samples=1000, knn_repeats=300, knn_size=50)
    assert result["test_ll"] == pytest.approx(float(marginal.log_prob(test).mean()), abs=0.01)
    assert abs(result["s_knn"]) < 0.2


def test_inflating_a_non_gaussian_proposal_is_refused():
    class Mixture(SyntheticVAE):
        def encode(self, x):
            mix = D.Categorical(torch.ones(x.shape[0], 2))
            comp = D.Independent(D.Normal(torch.zeros(x.shape[0], 2, 2), 1.0), 1)
            return D.MixtureSameFamily(mix, comp)

    with pytest.raises(ValueError, match="diagonal Gaussian"):
        iwae_log_likelihood(Mixture("linear_jte"), torch.zeros(3, 2), proposal_inflation=2.0)


def test_synthetic_vae_rejects_bad_arguments():
    with pytest.raises(ValueError, match="decoder must be one of"):
        SyntheticVAE("mobius", decoder="mlp")
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        SyntheticVAE("gaussian").loss(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="eps_hz must be > 0"):
        LiBIConfig(eps_hz=0.0)
    with pytest.raises(ValueError, match="repeats must be a positive integer"):
        LiBIConfig(repeats=0)
    with pytest.raises(ValueError, match="method must be one of"):
        run_method("svi", "mobius", 0, 0, 1, 1)
    with pytest.raises(ValueError, match="eps_mu must be > 0"):
        LiBIConfig(eps_mu="0.5")
    with pytest.raises(ValueError, match="'moebius'"):
        truth_decoder("moebius")
    with pytest.raises(ValueError, match="'moebius'"):
        encoder_body("moebius")
    with pytest.raises(ValueError, match=r"epochs \(1\) must be at least repeats \(2\)"):
        fit_method("libi", "mobius", torch.zeros(5, 2), torch.zeros(5, 2), 1, 1, {"repeats": 2})
    with pytest.raises(ValueError, match="eval_every must be a positive integer"):
        fit_method("vae", "mobius", torch.zeros(5, 2), torch.zeros(5, 2), 1, 0)
    with pytest.raises(ValueError, match="restarts must be a positive integer"):
        table_jobs(["mobius"], 1, 0, 1, 1, {"vae": [{}]})


# --- LiBI --------------------------------------------------------------------------------------


def test_code_penalties_are_at_their_floor_for_whitened_codes():
    z = torch.randn(400, 2, dtype=torch.float64)
    z = z - z.mean(0)
    z = z @ torch.linalg.inv(torch.linalg.cholesky(z.T @ z / 400)).T
    pen = code_penalties(z, LiBIConfig(eps_hz=2.0))
    assert float(pen["sigma"]) == pytest.approx(1.0) and float(pen["mu"]) == pytest.approx(1.0)
    assert float(pen["hz"]) == pytest.approx(2.0 * math.exp(float(henze_zirkler(z))))
    squeezed = code_penalties(0.3 * z, LiBIConfig())  # Eq. 40's pull towards 0 is penalised
    assert float(squeezed["sigma"]) > 3.0
    # A badly scaled start (codes in the hundreds) gives a huge but finite loss, pointing back.
    far = (300 * z.float()).requires_grad_(True)
    pen = code_penalties(far, LiBIConfig())
    pen["total"].backward()
    total = float(pen["total"].detach())
    assert math.isfinite(total) and total > 1e21
    assert torch.isfinite(far.grad).all() and float((far.grad * far.detach()).sum()) > 0


def test_libi_step1_learns_standard_normal_codes_and_step2_leaves_the_likelihood_alone():
    train, _ = synthetic("linear_jte", 300, seed=0)
    val, _ = synthetic("linear_jte", 300, seed=1)
    torch.manual_seed(0)
    vae = SyntheticVAE("linear_jte")
    cfg = LiBIConfig(repeats=2, step1_epochs=300, step2_epochs=100)
    seen = []
    original = LiBIStep1.loss

    def spy(self, x, beta=1.0):
        seen.append((self.decoder.A.detach().clone(), self.codes.mean(x).detach()))
        return original(self, x, beta)

    LiBIStep1.loss = spy
    try:
        model, records = fit_libi(vae, train, val, cfg, TrainConfig(lr=0.01, progress=False))
    finally:
        LiBIStep1.loss = original
    assert [r["repeat"] for r in records] == [0, 1]
    assert all(p.requires_grad for p in vae.decoder.parameters())
    # The last call is step 1's objective on the validation data, after both steps.
    last_A, codes = seen[-1]
    assert float(codes.mean(0).norm()) < 0.1
    np.testing.assert_allclose(np.cov(codes.numpy().T), np.eye(2), atol=0.15)
    assert float(henze_zirkler(codes)) < 1.5
    # Step 2 froze the decoder: it is the same after step 2 as at the end of step 1.
    assert torch.equal(last_A, vae.decoder.A.detach())
    assert records[0]["val_step1"] != records[1]["val_step1"]
    best = min(records, key=lambda r: r["val_step1"])
    with torch.no_grad():
        assert float(model.loss(val)["loss"]) == pytest.approx(best["val_neg_elbo"], rel=0.05)


def test_libi_beats_the_vae_on_linear_jte():
    """Yacoby et al.'s Table 1, first column, in miniature: LiBI's model of p(x) is better."""
    vae = run_method("vae", "linear_jte", 0, 0, epochs=400, eval_every=100, n_samples=500)
    libi = run_method("libi", "linear_jte", 0, 0, epochs=400, eval_every=100, n_samples=500)
    assert libi["test_ll"] > vae["test_ll"] + 0.05
    assert libi["s_knn"] < vae["s_knn"] - 0.5


def test_the_command_line_writes_runs_with_provenance(tmp_path):
    out = tmp_path / "table.json"
    main(
        ["--out", str(out), "--data-seeds", "1", "--restarts", "1", "--epochs", "2"]
        + ["--eval-every", "1", "--samples", "10", "--knn-repeats", "2"]
        + ["--grids", json.dumps({"vae": [{}], "libi": [{"repeats": 1}]})]
    )
    record = json.loads(out.read_text())
    assert len(record["runs"]) == 2 * len(SYNTHETIC)
    prov = record["provenance"]
    assert prov["config"]["epochs"] == 2 and prov["versions"]["torch"] == torch.__version__
    assert set(prov) >= {"commit", "device", "wall_seconds"}
    assert all(math.isfinite(r["s_knn"]) for r in record["runs"])
