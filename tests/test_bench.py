"""The cost benchmark (lidvae_nb.bench) on tiny sizes: it runs, prints ``name: value`` lines, and
the optimised closed-form decoder it times is the same map, with the same gradients, as autograd's
double backward. No timing is asserted: benchmarks print ratios, tests check properties."""

from __future__ import annotations

import re

import pytest
import torch

from lidvae_nb import bench
from lidvae_nb.icnn import InjectiveDecoder, ZeroOneLift, set_gradient

TINY = bench.BenchConfig(
    data_dim=30, latent_dim=4, width=8, depth=2, encoder_hidden=8, encoder_depth=1, batch=6
)


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_models_share_the_encoder_and_the_lidvae_decoder():
    models = bench.build_models(TINY)
    assert list(models) == list(bench.VARIANTS)
    states = {name: m.encoder.state_dict() for name, m in models.items()}
    for state in states.values():
        for key, value in state.items():
            assert torch.equal(value, states["vae"][key])
    dec = {n: m.decoder.state_dict() for n, m in models.items() if n != "vae"}
    for state in dec.values():
        for key, value in state.items():
            assert torch.equal(value, dec["lidvae_closed_form"][key])
    assert models["lidvae_autograd"].decoder.g2.gradient == "autograd"
    assert models["lidvae_closed_form"].decoder.g2.gradient == "closed_form"
    assert models["lidvae_closed_form"].decoder.fold_lift
    assert not models["lidvae_closed_form_unfolded"].decoder.fold_lift


def test_compare_alternates_and_returns_one_time_per_repeat():
    models = bench.build_models(TINY, variants=["vae", "lidvae_closed_form"])
    calls = []

    def counted(x):
        calls.append("fn")

    times = bench.compare({**models, "fn": counted}, bench.make_batch(TINY), repeats=3, warmup=1)
    assert set(times) == {"vae", "lidvae_closed_form", "fn"}
    assert all(t.shape == (3,) and bool((t > 0).all()) for t in times.values())
    assert len(calls) == 4  # one warm-up call and three timed ones
    ms = bench.medians_ms(times)
    assert ms["vae"] > 0
    assert bench.step_time(models["vae"], bench.make_batch(TINY), repeats=2).shape == (2,)
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        bench.compare(models, bench.make_batch(TINY), repeats=0)


def test_a_training_step_changes_the_parameters():
    model = bench.build_models(TINY, variants=["lidvae_closed_form"])["lidvae_closed_form"]
    before = [p.detach().clone() for p in model.parameters()]
    bench.make_step(model, lr=1e-2)(bench.make_batch(TINY))
    changed = [not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True)]
    assert all(changed)


def test_sweep_gives_one_row_per_value():
    rows = bench.sweep("width", [4, 8], TINY, repeats=2, warmup=1, variants=["vae"])
    assert [r["width"] for r in rows] == [4, 8]
    assert all(r["vae"] > 0 for r in rows)
    with pytest.raises(ValueError, match="knob must be a field of BenchConfig, got 'colour'"):
        bench.sweep("colour", [1], TINY)
    with pytest.raises(ValueError, match="width must be a positive integer, got 0"):
        bench.BenchConfig(width=0)
    with pytest.raises(ValueError, match="variants must be among"):
        bench.build_models(TINY, variants=["gmvae"])


def test_multiply_adds_order_the_variants():
    cfg = bench.BenchConfig(
        data_dim=60, latent_dim=4, width=16, encoder_hidden=16, encoder_depth=1, batch=5
    )
    mads = bench.multiply_adds(cfg)
    # the double backward costs more than the closed form; folding the lift saves products
    assert mads["vae"] < mads["lidvae_closed_form"] < mads["lidvae_closed_form_unfolded"]
    assert mads["lidvae_closed_form_unfolded"] < mads["lidvae_autograd"]


def test_main_prints_name_value_lines(capsys):
    args = ["--repeats", "2", "--warmup", "1", "--width", "8", "--depth", "1", "--batch", "4"]
    assert bench.main([*args, "--no-cuda", "--threads", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    pattern = re.compile(r"^[a-z0-9_.]+: \S.*$")
    assert all(pattern.match(line) for line in lines), lines
    values = dict(line.split(": ", 1) for line in lines)
    for key in (
        "device",
        "torch_version",
        "threads",
        "vae_step_ms",
        "lidvae_autograd_step_ms",
        "lidvae_closed_form_step_ms",
        "ratio_lidvae_closed_form_over_vae",
        "ratio_autograd_over_closed_form",
        "target_closed_form_over_vae_at_most_2.0",
        "target_autograd_over_closed_form_at_least_1.4",
        "cuda",
    ):
        assert key in values, key
    assert values["threads"] == "1"
    assert float(values["ratio_lidvae_closed_form_over_vae"]) > 0
    assert values["target_autograd_over_closed_form_at_least_1.4"] in ("met", "not met")
    ratio = float(values["lidvae_closed_form_step_ms"]) / float(values["vae_step_ms"])
    assert float(values["ratio_lidvae_closed_form_over_vae"]) == pytest.approx(ratio, rel=0.01)


def test_compiled_closed_form_step_matches_eager():
    # The GPU run compiles the closed-form step with inductor; here a backend without a compiler
    # checks that the closed form traces and that the compiled step is the same computation.
    models = bench.build_models(TINY, variants=["lidvae_closed_form"])
    eager = models["lidvae_closed_form"]
    compiled = bench.build_models(TINY, variants=["lidvae_closed_form"])["lidvae_closed_form"]
    x = bench.make_batch(TINY)
    for step in (
        bench.make_step(eager),
        bench.make_step(compiled, compile=True, backend="aot_eager"),
    ):
        torch.manual_seed(5)
        step(x)
    for p, q in zip(eager.parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


# ------------------------------------------- the optimised closed form that the benchmark times


@pytest.mark.parametrize("k,d,depth", [(3, 10, 2), (4, 12, 3), (5, 5, 1), (6, 50, 2)])
def test_folded_closed_form_decoder_has_the_gradients_of_the_double_backward(k, d, depth):
    torch.manual_seed(k + d)
    dec = InjectiveDecoder(k, d, width=12, depth=depth).double()
    with torch.no_grad():
        for p in dec.parameters():
            p.add_(0.5 * torch.randn_like(p))
    z = torch.randn(9, k, dtype=torch.float64, requires_grad=True)
    target = torch.randn(9, d, dtype=torch.float64)
    results = {}
    for mode, fold in (("autograd", True), ("closed_form", True), ("closed_form", False)):
        set_gradient(dec, mode)
        dec.fold_lift = fold
        dec.zero_grad()
        z.grad = None
        out = dec(z)
        (out - target).square().sum().backward()
        results[mode, fold] = [out.detach(), z.grad.clone()] + [
            p.grad.clone() for p in dec.parameters()
        ]
    reference = results["autograd", True]
    for key in (("closed_form", True), ("closed_form", False)):
        for got, want in zip(results[key], reference, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("k,d", [(64, 784), (3, 10), (5, 5), (1, 7)])
def test_sum_copies_is_x_beta_transpose_with_its_gradient(k, d):
    lift = ZeroOneLift(k, d).double()
    x = torch.randn(3, 2, d, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(lift.sum_copies(x), x @ lift.beta.T, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(lift.sum_copies, (x,))
    v = torch.randn(4, k, dtype=torch.float64)
    assert torch.equal(lift.copy(v), lift(v))


def test_gradient_rejects_a_lift_onto_another_dimension():
    dec = InjectiveDecoder(2, 6, width=4)
    with pytest.raises(ValueError, match=r"lift must map onto R\^6, got a lift onto R\^7"):
        dec.g2.potential_net.gradient(torch.zeros(3, 2), ZeroOneLift(2, 7))
    with pytest.raises(ValueError, match=r"v must have shape \(B, 2\), got \(3, 3\)"):
        dec.g2.potential_net.gradient(torch.zeros(3, 3), dec.lift)
