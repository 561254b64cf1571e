"""Models: shapes, ELBO pieces against direct computations, injectivity, save/load."""

import pytest
import torch
from torch import distributions as D

from lidvae_nb import metrics
from lidvae_nb.models import MODELS, ModelConfig, build_model

X = torch.rand(12, 6).bernoulli()


def cfg(**kw):
    base = dict(data_dim=6, latent_dim=2, hidden=16, n_clusters=3, likelihood="bernoulli")
    base.update(kw)
    return ModelConfig(**base)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("flow_layers", [0, 2])
def test_interface_shapes_and_gradients(name, flow_layers):
    torch.manual_seed(0)
    model = build_model(name, cfg(flow_layers=flow_layers))
    q = model.encode(X)
    assert q.batch_shape == (12,) and q.event_shape == (2,)
    assert model.prior().event_shape == (2,)
    z = q.sample((5,))
    assert model.log_likelihood(X, z).shape == (5, 12)
    out = model.loss(X)
    assert out["loss"].dim() == 0 and out["rec"].shape == (12,) and out["kl"].shape == (12,)
    out["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"


@pytest.mark.parametrize("name", ["vae", "lidvae"])
def test_vae_kl_is_the_closed_form_gaussian_kl(name):
    torch.manual_seed(0)
    model = build_model(name, cfg())
    q = model.encode(X)
    mu, sigma = q.base_dist.loc, q.base_dist.scale
    expected = 0.5 * (sigma**2 + mu**2 - 1 - 2 * sigma.log()).sum(-1)
    torch.testing.assert_close(model.loss(X)["kl"], expected.detach())


@pytest.mark.parametrize("name", ["gmvae", "lidgmvae"])
def test_gmvae_elbo_is_a_lower_bound_with_y_summed_exactly(name):
    """The analytic-in-y ELBO lies below the IWAE estimate of log p(x) (which converges to it)."""
    torch.manual_seed(0)
    model = build_model(name, cfg())
    with torch.no_grad():
        elbo = -torch.stack([model.loss(X)["rec"] + model.loss(X)["kl"] for _ in range(50)]).mean(0)
        ll = metrics.iwae_log_likelihood(model, X, n_samples=2000)
    assert torch.all(elbo <= ll + 0.05)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_save_load_round_trip_restores_every_parameter(name, tmp_path):
    torch.manual_seed(0)
    model = build_model(name, cfg(flow_layers=2))
    torch.save(model.state_dict(), tmp_path / "m.pt")
    torch.manual_seed(1)
    fresh = build_model(name, cfg(flow_layers=2))
    fresh.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    assert set(model.state_dict()) == set(fresh.state_dict())
    for key, value in model.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value, msg=key)
    z = torch.randn(4, 2)
    torch.testing.assert_close(fresh.decode(z).mean, model.decode(z).mean)


@pytest.mark.parametrize("name", ["lidvae", "lidgmvae"])
def test_identifiable_decoders_are_injective(name):
    """Distinct z give distinct likelihoods, and z is recovered from the decoder's output."""
    torch.manual_seed(0)
    model = build_model(name, cfg(data_dim=5)).double()
    z = torch.randn(64, 2, dtype=torch.float64)
    logits = model.decoder(z)
    z_back = model.decoder.inverse(logits)
    torch.testing.assert_close(z_back, z, atol=1e-6, rtol=0)
    far = model.decoder(z + 1e-3)
    assert torch.all((far - logits).abs().amax(-1) > 0)


def test_a_classical_decoder_can_be_flat_in_z():
    """The MLP decoder can ignore z entirely (zero last layer): the collapse LIDVAE rules out."""
    model = build_model("vae", cfg())
    torch.nn.init.zeros_(model.decoder.net[-1].weight)
    a, b = model.decode(torch.randn(3, 2)), model.decode(torch.randn(3, 2))
    torch.testing.assert_close(a.log_prob(X[:3]), b.log_prob(X[:3]))


def test_bad_configuration_and_input_are_rejected():
    with pytest.raises(ValueError, match="likelihood must be one of .* got 'poisson'"):
        cfg(likelihood="poisson")
    with pytest.raises(ValueError, match=r"latent_dim \(7\) must not exceed data_dim \(6\)"):
        build_model("lidvae", cfg(latent_dim=7))
    assert build_model("vae", cfg(latent_dim=7)).loss(X)["loss"].isfinite()
    with pytest.raises(ValueError, match="model must be one of .* got 'vqvae'"):
        build_model("vqvae", cfg())
    with pytest.raises(ValueError, match=r"x must have shape \(B, 6\), got \(12, 5\)"):
        build_model("vae", cfg()).encode(X[:, :5])
    with pytest.raises(
        ValueError, match=r"Bernoulli likelihood needs data in \[0, 1\], got values in"
    ):
        build_model("gmvae", cfg()).loss(X * 10 - 3)
    assert isinstance(build_model("gmvae", cfg()).prior(), D.MixtureSameFamily)
