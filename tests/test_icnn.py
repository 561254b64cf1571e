"""Input-convex potentials and Brenier maps (lidvae_nb.icnn): convexity, monotonicity, the
closed-form gradient against autograd, inverses through the conjugate, and the injective decoder."""

from __future__ import annotations

import pytest
import torch

from lidvae_nb.icnn import ICNN, BrenierMap, InjectiveDecoder, InverseNotConverged, ZeroOneLift

DT = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # These networks are tiny: extra threads only add synchronisation cost on a busy machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def trained_map(dim=4, width=16, depth=2, alpha=0.1, seed=0, steps=5, flat=False):
    """A float64 BrenierMap with weights far from their initial values: parameters perturbed,
    then a few Adam steps towards a non-linear target. ``flat`` pushes the learnable quadratic
    down so that the strong-convexity floor ``alpha`` is nearly attained."""
    torch.manual_seed(seed)
    g = BrenierMap(dim, width, depth, alpha=alpha).to(DT)
    with torch.no_grad():
        for p in g.parameters():
            p.add_(torch.randn_like(p))
        if flat:
            g.potential_net.raw_quadratic.fill_(-30.0)
    opt = torch.optim.Adam(g.parameters(), lr=0.05)
    for _ in range(steps):
        u = torch.randn(64, dim, dtype=DT)
        loss = (g(u) - torch.sinh(u)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return g


def points(n, dim, seed=1, scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, dim, generator=gen, dtype=DT)


# ----------------------------------------------------------------------- closed form vs autograd


@pytest.mark.parametrize("width,depth", [(8, 1), (16, 2), (32, 3), (5, 4)])
def test_closed_form_map_equals_autograd_gradient(width, depth):
    g = trained_map(dim=3, width=width, depth=depth, seed=width + depth)
    u = points(200, 3)
    ref = g.forward_autograd(u)
    assert (g(u) - ref).abs().max().item() < 1e-10
    # and the potential really moved: the map is far from the identity
    assert (ref - u).abs().max().item() > 0.1


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_parameter_gradients_match_double_backward(depth):
    g = trained_map(dim=4, width=12, depth=depth, seed=depth)
    u, target = points(50, 4, seed=2), points(50, 4, seed=3)
    grads = {}
    for name, fn in (("closed", g.forward), ("autograd", g.forward_autograd)):
        g.zero_grad()
        (fn(u) - target).square().sum().backward()
        grads[name] = {
            k: torch.zeros_like(p) if p.grad is None else p.grad.clone()
            for k, p in g.named_parameters()
        }
    # every parameter trains through the map (no bias that would only place kinks)
    assert all(bool((v != 0).any()) for v in grads["closed"].values())
    for key, value in grads["autograd"].items():
        torch.testing.assert_close(grads["closed"][key], value, rtol=1e-9, atol=1e-11)


def test_every_raw_weight_entry_gets_a_gradient():
    # The original code's clamp(W, min=0.01) on an init below 0.01 gave these zero gradients.
    g = trained_map(dim=3, width=10, depth=3, seed=4)
    g.zero_grad()
    g(points(100, 3)).square().sum().backward()
    for raw in g.potential_net.raw_weights:
        assert raw.grad is not None and bool((raw.grad != 0).all())
    assert g.potential_net.raw_quadratic.grad.item() != 0


def test_positive_weights_are_positive_even_for_very_negative_raw_values():
    g = BrenierMap(3, 6, 3).to(DT)
    with torch.no_grad():
        for raw in g.potential_net.raw_weights:
            raw.fill_(-40.0)
    for W in g.potential_net.positive_weights():
        assert bool((W > 0).all())


def test_map_runs_under_no_grad_and_matches():
    g = trained_map(seed=5)
    u = points(20, 4)
    with torch.no_grad():
        y = g(u)
        y_ref = g.forward_autograd(u)
    assert not y.requires_grad
    torch.testing.assert_close(y, y_ref.detach(), rtol=0, atol=1e-10)


# ------------------------------------------------------------------ convexity and monotonicity


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_hessian_is_symmetric_with_eigenvalues_at_least_alpha(depth):
    alpha = 0.05
    g = trained_map(dim=5, width=12, depth=depth, alpha=alpha, seed=10 + depth, flat=True)
    u = points(40, 5, seed=4)
    H = g.jacobian(u, method="autograd")
    torch.testing.assert_close(H, H.transpose(1, 2), rtol=0, atol=1e-10)
    torch.testing.assert_close(g.jacobian(u), H, rtol=1e-10, atol=1e-10)
    eig = torch.linalg.eigvalsh(H)
    assert eig.min().item() >= alpha - 1e-10
    assert eig.max().item() > 10 * alpha  # the potential is far from a plain quadratic


def test_smallest_hessian_eigenvalue_is_the_quadratic_coefficient_when_width_below_dim():
    # The curvature of the network part is A_0^T diag(c) A_0, of rank <= width < dim.
    g = trained_map(dim=6, width=3, depth=2, seed=7)
    eig = torch.linalg.eigvalsh(g.jacobian(points(30, 6), method="autograd"))
    gamma = g.potential_net.quadratic_coefficient().item()
    torch.testing.assert_close(eig[:, 0], torch.full((30,), gamma, dtype=DT), rtol=0, atol=1e-10)


@pytest.mark.parametrize("depth", [1, 2])
def test_strong_monotonicity_on_random_pairs(depth):
    alpha = 0.05
    g = trained_map(dim=3, width=16, depth=depth, alpha=alpha, seed=20 + depth, flat=True)
    x, y = points(5000, 3, seed=5, scale=3.0), points(5000, 3, seed=6, scale=3.0)
    with torch.no_grad():
        ratio = ((g(x) - g(y)) * (x - y)).sum(1) / (x - y).square().sum(1)
    assert ratio.min().item() >= alpha * (1 - 1e-9)
    assert ratio.max().item() > 10 * alpha


def test_potential_is_convex_along_random_segments():
    g = trained_map(dim=3, width=16, depth=3, seed=8)
    x, y = points(500, 3, seed=7), points(500, 3, seed=8)
    t = torch.rand(500, 1, dtype=DT)
    with torch.no_grad():
        mid = g.potential(t * x + (1 - t) * y)
        chord = t[:, 0] * g.potential(x) + (1 - t[:, 0]) * g.potential(y)
    assert bool((mid <= chord + 1e-10).all())


# ------------------------------------------------------------------------------------ inverse


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_inverse_round_trips(depth):
    g = trained_map(dim=6, width=24, depth=depth, seed=30 + depth)
    u = points(64, 6, seed=9)
    with torch.no_grad():
        y = g(u)
    u_back = g.inverse(y)
    assert (u_back - u).abs().max().item() < 1e-8
    with torch.no_grad():
        residual = (g(u_back) - y).norm(dim=1)
    assert bool((residual <= 1e-10 * (1 + y.norm(dim=1))).all())  # the documented tolerance


def test_inverse_float32_at_init():
    torch.manual_seed(0)
    g = BrenierMap(50, 64, 2)
    u = torch.randn(16, 50)
    with torch.no_grad():
        u_back = g.inverse(g(u))
    assert (u_back - u).abs().max().item() < 1e-3


def test_inverse_reports_a_point_without_preimage():
    # In 1-d the leaky-ReLU kinks show as jumps of g; a value inside a jump has no preimage.
    g = trained_map(dim=1, width=8, depth=2, seed=11)
    grid = torch.linspace(-6, 6, 200001, dtype=DT).unsqueeze(1)
    with torch.no_grad():
        values = g(grid)[:, 0]
    jumps = values.diff()
    i = int(jumps.argmax())
    assert jumps[i].item() > 1e-3, "this map has no visible jump; pick another seed"
    y = 0.5 * (values[i] + values[i + 1]).reshape(1, 1)
    with pytest.raises(InverseNotConverged, match="did not converge"):
        g.inverse(y, max_iter=30)


# ------------------------------------------------------------------- lift and injective decoder


@pytest.mark.parametrize("k,d", [(1, 1), (3, 3), (3, 10), (64, 784)])
def test_zero_one_lift_is_injective_with_even_copies(k, d):
    lift = ZeroOneLift(k, d)
    beta = lift.beta
    assert beta.shape == (k, d)
    assert set(beta.unique().tolist()) <= {0.0, 1.0}
    assert bool((beta.sum(0) == 1).all())  # each output copies exactly one input
    counts = beta.sum(1)
    assert counts.min().item() >= 1 and counts.max().item() - counts.min().item() <= 1
    assert torch.linalg.matrix_rank(beta).item() == k
    z = points(7, k)
    torch.testing.assert_close(lift.left_inverse(lift(z)), z, rtol=0, atol=1e-12)
    assert "beta" in lift.state_dict() and not list(lift.parameters())


def test_decoder_recovers_z_and_separates_distinct_latents():
    torch.manual_seed(3)
    alpha = 0.2
    dec = InjectiveDecoder(3, 20, width=24, depth=2, alpha=alpha).to(DT)
    with torch.no_grad():
        for p in dec.parameters():
            p.add_(0.5 * torch.randn_like(p))
    z = points(40, 3, seed=12)
    with torch.no_grad():
        x = dec(z)
    assert x.shape == (40, 20)
    assert (dec.inverse(x) - z).abs().max().item() < 1e-6
    # |g2(b(g1(z))) - g2(b(g1(z')))| >= alpha^2 sqrt(min copies) |z - z'| for every pair
    dz = torch.cdist(z, z)
    dx = torch.cdist(x, x)
    bound = alpha**2 * dec.lift.counts.min().sqrt() * dz
    off = ~torch.eye(40, dtype=torch.bool)
    assert bool((dx[off] >= bound[off] * (1 - 1e-9)).all())
    assert dx[off].min().item() > 0


# ----------------------------------------------------------------------------- save and load


def test_state_dict_round_trip_restores_every_parameter(tmp_path):
    torch.manual_seed(0)
    dec = InjectiveDecoder(4, 12, width=16, depth=3, latent_width=8)
    with torch.no_grad():
        for p in dec.parameters():
            p.add_(torch.randn_like(p))
    state = dec.state_dict()
    n_params = sum(1 for _ in dec.parameters())
    assert sum(1 for k in state if k not in ("lift.beta", "lift.counts")) == n_params
    assert any("raw_weights" in k for k in state)
    path = tmp_path / "decoder.pt"
    torch.save(state, path)
    torch.manual_seed(1)
    fresh = InjectiveDecoder(4, 12, width=16, depth=3, latent_width=8)
    z = torch.randn(9, 4)
    with torch.no_grad():
        assert not torch.equal(fresh(z), dec(z))
        fresh.load_state_dict(torch.load(path, weights_only=True))
        assert torch.equal(fresh(z), dec(z))
    for (k1, p1), (k2, p2) in zip(
        dec.state_dict().items(), fresh.state_dict().items(), strict=True
    ):
        assert k1 == k2 and torch.equal(p1, p2)


# ------------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"dim": 0}, "dim must be an integer >= 1, got 0"),
        ({"dim": 2.5}, "dim must be an integer >= 1, got 2.5"),
        ({"width": 0}, "width must be an integer >= 1, got 0"),
        ({"depth": 0}, "depth must be an integer >= 1, got 0"),
        ({"alpha": 0.0}, r"alpha must be a finite number > 0, got 0.0"),
        ({"alpha": -1.0}, r"alpha must be a finite number > 0, got -1.0"),
        ({"slope": 1.0}, r"slope must be in \(0, 1\), got 1.0"),
        ({"slope": 0.0}, r"slope must be in \(0, 1\), got 0.0"),
    ],
)
def test_bad_constructor_arguments_are_rejected(kwargs, match):
    args = {"dim": 3, "width": 4, "depth": 2, "slope": 0.2, "alpha": 0.1} | kwargs
    with pytest.raises(ValueError, match=match):
        BrenierMap(**args)
    with pytest.raises(ValueError, match=match):
        ICNN(**args)


def test_bad_shapes_are_rejected_with_the_shape_in_the_message():
    g = BrenierMap(3, 4, 2)
    with pytest.raises(ValueError, match=r"u must have shape \(B, 3\), got \(5, 4\)"):
        g(torch.zeros(5, 4))
    with pytest.raises(ValueError, match=r"u must have shape \(B, 3\), got \(3,\)"):
        g.potential(torch.zeros(3))
    with pytest.raises(ValueError, match=r"y must have shape \(B, 3\), got \(2, 2\)"):
        g.inverse(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="method must be"):
        g.jacobian(torch.zeros(1, 3), method="numeric")
    with pytest.raises(ValueError, match="k must be <= d .* got k=5, d=3"):
        ZeroOneLift(5, 3)
    with pytest.raises(ValueError, match="k must be <= d .* got k=5, d=3"):
        InjectiveDecoder(5, 3)
    dec = InjectiveDecoder(2, 6, width=4)
    with pytest.raises(ValueError, match=r"z must have shape \(B, 2\), got \(4, 6\)"):
        dec(torch.zeros(4, 6))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 6\), got \(4, 2\)"):
        dec.inverse(torch.zeros(4, 2))


def test_inverse_can_return_residuals_instead_of_raising():
    g = trained_map(dim=1, width=8, depth=2, seed=11)
    grid = torch.linspace(-6, 6, 200001, dtype=DT).unsqueeze(1)
    with torch.no_grad():
        values = g(grid)[:, 0]
    i = int(values.diff().argmax())
    y = torch.stack([values[i] + 0.5 * values.diff()[i], values[i - 1000]]).reshape(2, 1)
    u, res = g.inverse(y, max_iter=30, return_residual=True)
    assert res[0].item() > 1e-4 and res[1].item() < 1e-9
    assert abs(u[1].item() - grid[i - 1000].item()) < 1e-9


def test_a_point_without_preimage_is_sent_to_a_kink_of_a_later_layer():
    g = trained_map(dim=2, width=16, depth=2, seed=13, steps=20)
    y = points(400, 2, seed=14, scale=3.0)
    u, res = g.inverse(y, return_residual=True)
    gap = res > 1e-8 * (1 + y.norm(dim=1))
    assert 0 < int(gap.sum()) < 400
    with torch.no_grad():
        pre = g.potential_net.preactivations(u[gap])
    # Newton approaches a kink only linearly, so "on" means within 1e-3 (a random point's
    # nearest kink is typically 0.1 away here).
    on_kink = (pre[1].abs().min(1).values < 1e-3) | (pre[-1].abs() < 1e-3)
    assert bool(on_kink.all())
    with torch.no_grad():
        pre_random = g.potential_net.preactivations(points(400, 2, seed=15))
    assert pre_random[1].abs().min(1).values.median().item() > 1e-2
    assert pre[0].shape == (int(gap.sum()), 16) and pre[-1].shape == (int(gap.sum()),)


def test_set_gradient_switches_every_map_and_both_agree():
    from lidvae_nb.icnn import InjectiveDecoder, set_gradient

    torch.manual_seed(0)
    dec = InjectiveDecoder(2, 5, width=8, depth=2).double()
    z = torch.randn(6, 2, dtype=torch.float64)
    closed = dec(z)
    set_gradient(dec, "autograd")
    assert dec.g1.gradient == dec.g2.gradient == "autograd"
    torch.testing.assert_close(dec(z), closed, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="gradient must be one of .* got 'numeric'"):
        set_gradient(dec, "numeric")


# ----------------------------------------------------------- projected weights and learned lifts


@pytest.mark.parametrize("weights", ["softplus", "projected"])
@pytest.mark.parametrize("first_width,depth", [(7, 1), (11, 2), (9, 3)])
def test_closed_form_map_equals_autograd_with_a_wider_first_layer(weights, first_width, depth):
    torch.manual_seed(first_width)
    g = BrenierMap(3, 6, depth, weights=weights, first_width=first_width).to(DT)
    with torch.no_grad():
        for p in g.parameters():
            p.add_(0.5 * torch.randn_like(p))
    g.potential_net.project_()
    assert g.potential_net.input_layers[0].out_features == first_width
    u = points(100, 3)
    assert (g(u) - g.forward_autograd(u)).abs().max().item() < 1e-10


def test_projected_weights_stay_non_negative_and_the_map_monotone_through_training():
    from lidvae_nb.icnn import project_constraints

    torch.manual_seed(0)
    g = BrenierMap(3, 16, 2, alpha=0.01, weights="projected", quadratic_init=0.01).to(DT)
    raws = list(g.potential_net.raw_weights)
    assert all((r >= 0).all() for r in raws) and any((r == 0).any() for r in raws)
    opt = torch.optim.SGD(g.parameters(), lr=0.5)
    for _ in range(20):  # a target that pulls the map down: weights are pushed below 0
        u = torch.randn(64, 3, dtype=DT)
        loss = (g(u) + 3 * u).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert any((r < 0).any() for r in raws)  # the plain step leaves the cone ...
        project_constraints(g)
        assert all((r >= 0).all() for r in raws)  # ... and the projection brings it back
    x, y = points(300, 3, seed=2), points(300, 3, seed=3)
    inner = ((g(x) - g(y)) * (x - y)).sum(1)
    assert (inner >= 0.01 * (x - y).square().sum(1) * (1 - 1e-9)).all()


def test_a_zero_projected_weight_still_gets_a_gradient():
    g = ICNN(3, 8, 2, weights="projected").to(DT)
    with torch.no_grad():
        g.raw_weights[0].zero_()
    g(points(20, 3)).sum().backward()
    assert g.raw_weights[0].grad.abs().sum() > 0


def test_learned_lift_keeps_full_rank_and_inverts_by_least_squares():
    from lidvae_nb.icnn import LearnedLift

    torch.manual_seed(0)
    lift = LearnedLift(4, 12, s_min=0.05, s_max=3.0).to(DT)
    with torch.no_grad():  # make it rank deficient and too large
        lift.linear.weight[:, 3] = lift.linear.weight[:, 0]
        lift.linear.weight.mul_(10.0)
    assert lift.smallest_singular_value() < 1e-8
    lift.project_()
    s = lift.singular_values()
    assert float(s[-1]) >= 0.05 * (1 - 1e-9) and float(s[0]) <= 3.0 * (1 + 1e-9)
    z = points(50, 4)
    torch.testing.assert_close(lift.left_inverse(lift(z)), z, atol=1e-9, rtol=0)


def test_the_trainer_keeps_the_learned_lift_full_rank():
    from lidvae_nb.models import ModelConfig, build_model
    from lidvae_nb.trainer import TrainConfig, Trainer

    cfg = ModelConfig(data_dim=6, latent_dim=3, hidden=8, decoder_depth=1, lift="learned")
    torch.manual_seed(0)
    model = build_model("lidvae", cfg)
    lift = model.decoder.lift
    lift.s_min, lift.s_max = 0.5, 0.6  # a narrow band: any real step leaves it
    lift.project_()
    Trainer(model, TrainConfig(epochs=2, batch_size=20, lr=0.05, progress=False)).fit(
        torch.randn(60, 6)
    )
    s = lift.singular_values()
    assert float(s[-1]) >= 0.5 * (1 - 1e-5) and float(s[0]) <= 0.6 * (1 + 1e-5)


@pytest.mark.parametrize("weights", ["softplus", "projected"])
def test_decoder_with_a_learned_lift_recovers_z(weights):
    torch.manual_seed(1)
    dec = InjectiveDecoder(
        3,
        10,
        width=12,
        depth=1,
        lift="learned",
        data_width=10,
        weights=weights,
        alpha=0.05,
        quadratic_init=0.05,
    ).to(DT)
    with torch.no_grad():
        for p in dec.parameters():
            p.add_(0.3 * torch.randn_like(p))
    from lidvae_nb.icnn import project_constraints

    project_constraints(dec)
    z = points(40, 3, scale=1.0)
    z_back = dec.inverse(dec(z))
    torch.testing.assert_close(z_back, z, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(weights="clamp"), "weights must be one of"),
        (dict(first_width=0), "first_width"),
        (dict(quadratic_init=0.01), "quadratic_init must be"),
    ],
)
def test_bad_icnn_settings_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ICNN(3, 4, 1, alpha=0.1, **kwargs)


def test_a_lift_narrower_than_the_latent_or_an_unknown_lift_is_refused():
    from lidvae_nb.icnn import LearnedLift

    with pytest.raises(ValueError, match="k must be <= d"):
        LearnedLift(5, 4)
    with pytest.raises(ValueError, match="s_min"):
        LearnedLift(2, 4, s_min=0.0)
    with pytest.raises(ValueError, match="lift must be one of"):
        InjectiveDecoder(2, 4, lift="dense")
