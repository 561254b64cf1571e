"""The trainer: schemes, resumption from checkpoints, NaN handling, logs."""

import json
import math

import pytest
import torch

from lidvae_nb.data import pinwheel
from lidvae_nb.models import ModelConfig, build_model
from lidvae_nb.trainer import TrainConfig, Trainer

X, _ = pinwheel(60, 5, seed=0)
XV, _ = pinwheel(20, 5, seed=1)


def small(name="vae", **kw):
    torch.manual_seed(0)
    return build_model(name, ModelConfig(data_dim=2, latent_dim=2, hidden=16, n_clusters=3, **kw))


def config(**kw):
    base = dict(epochs=2, batch_size=50, progress=False, seed=0)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize(
    "name, scheme",
    [
        ("vae", "elbo"),
        ("vae", "beta"),
        ("vae", "anneal"),
        ("vae", "lagging"),
        ("vae", "savae"),
        ("gmvae", "elbo"),
        ("gmvae", "lagging"),
    ],
)
def test_every_scheme_trains_and_lowers_the_loss(name, scheme):
    model = small(name)
    trainer = Trainer(
        model, config(epochs=6, scheme=scheme, savae_steps=2, savae_lr=0.1, lagging_max_inner=5)
    )
    history = trainer.fit(X, XV)
    assert len(history) == 6
    assert all(math.isfinite(h["train_loss"]) for h in history)
    assert history[-1]["val_loss"] < Trainer(small(name), config()).evaluate(XV)["loss"]


def test_beta_schedule():
    t = Trainer(small(), config(scheme="anneal", anneal_epochs=2, anneal_start=0.2))
    assert t.beta_at(0, 10) == pytest.approx(0.2)
    assert t.beta_at(10, 10) == pytest.approx(0.6)
    assert t.beta_at(100, 10) == 1.0
    assert Trainer(small(), config(scheme="beta", beta=0.2)).beta_at(5, 10) == 0.2
    # beta-VAE with annealing: the same ramp, ending at anneal_to
    to5 = Trainer(small(), config(scheme="anneal", anneal_epochs=2, anneal_start=0.1, anneal_to=5))
    assert to5.beta_at(10, 10) == pytest.approx(2.55)
    assert to5.beta_at(100, 10) == pytest.approx(5.0)
    with pytest.raises(ValueError, match="anneal_to"):
        config(anneal_to=0.0)
    assert Trainer(small(), config(scheme="elbo")).beta_at(5, 10) == 1.0


def test_resume_gives_the_same_result_as_an_uninterrupted_run(tmp_path):
    straight = Trainer(small(), config(epochs=4, checkpoint_dir=str(tmp_path / "a")))
    straight.fit(X)
    first = Trainer(small(), config(epochs=2, checkpoint_dir=str(tmp_path / "b")))
    first.fit(X)
    resumed = Trainer(small(), config(epochs=4, checkpoint_dir=str(tmp_path / "b")))
    assert resumed.epoch == 2
    resumed.fit(X)
    for (name, a), (_, b) in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, msg=f"parameter {name} differs after resuming")
    lines = (tmp_path / "b" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4]


def test_checkpoint_round_trip_restores_every_parameter(tmp_path):
    trainer = Trainer(small("gmvae"), config(epochs=1, checkpoint_dir=str(tmp_path)))
    trainer.fit(X)
    fresh = Trainer(small("gmvae"), config(epochs=1, checkpoint_dir=str(tmp_path)))
    for (name, a), (_, b) in zip(
        trainer.model.state_dict().items(), fresh.model.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, msg=name)


def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path):
    trainer = Trainer(small(), config(epochs=1, checkpoint_dir=str(tmp_path)))
    trainer.fit(X)
    saved = (tmp_path / "checkpoint.pt").read_bytes()
    bad = X.clone()
    bad[7, 0] = float("nan")
    trainer.cfg.epochs = 2
    with pytest.raises(FloatingPointError, match=r"non-finite loss .* at step \d+ \(epoch 2\)"):
        trainer.fit(bad)
    assert (tmp_path / "checkpoint.pt").read_bytes() == saved


def test_a_checkpoint_from_another_run_is_refused(tmp_path):
    Trainer(small(), config(epochs=1, checkpoint_dir=str(tmp_path))).fit(X)
    with pytest.raises(ValueError, match="scheme='elbo'.*scheme='beta'"):
        Trainer(small(), config(epochs=1, scheme="beta", checkpoint_dir=str(tmp_path)))


def test_bad_configuration_is_rejected_with_the_value_named():
    with pytest.raises(ValueError, match="scheme must be one of .* got 'magic'"):
        TrainConfig(scheme="magic")
    with pytest.raises(ValueError, match="epochs must be a positive integer, got 0"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="lr must be > 0, got -0.1"):
        TrainConfig(lr=-0.1)
    with pytest.raises(ValueError, match=r"train must be a non-empty \(N, D\) tensor"):
        Trainer(small(), config()).fit(torch.zeros(5))
    with pytest.raises(ValueError, match="'savae' refines a Gaussian q"):
        Trainer(small("gmvae"), config(scheme="savae")).fit(X)


def test_savae_is_evaluated_with_the_refined_posterior_it_was_trained_with():
    from lidvae_nb.trainer import SemiAmortized, svi_refine

    torch.manual_seed(0)
    trainer = Trainer(small(), config(epochs=4, scheme="savae", savae_steps=5, savae_lr=0.05))
    trainer.fit(X)
    model = trainer.model
    seen = trainer.inference_model()
    assert (
        isinstance(seen, SemiAmortized) and Trainer(small(), config()).inference_model() is not None
    )
    # No steps: the encoder's own q; the refined parameters come back detached, even under no_grad.
    mu, raw = model.encoder.params(XV)
    with torch.no_grad():
        same = svi_refine(model, XV, steps=0, lr=0.05)
        refined = svi_refine(model, XV, steps=5, lr=0.05)
    assert torch.equal(same[0], mu.detach()) and torch.equal(same[1], raw.detach())
    assert not refined[0].requires_grad and not torch.equal(refined[0], mu.detach())
    # The refinement lowers the negative ELBO (averaged over samples) below the bare encoder's.
    torch.manual_seed(1)
    with torch.no_grad():
        bare = sum(float(model.loss(XV)["loss"]) for _ in range(50)) / 50
    torch.manual_seed(1)
    with torch.no_grad():
        better = sum(float(seen.loss(XV)["loss"]) for _ in range(50)) / 50
    assert better < bare
    # The trainer's validation uses the refined q too.
    assert trainer.evaluate(XV)["loss"] == pytest.approx(better, rel=0.05)
    with pytest.raises(ValueError, match="flow layers"):
        SemiAmortized(small("gmvae"), 2, 0.1)
    # Each point's step is clipped to max_grad_norm * lr, however steep its ELBO.
    with torch.no_grad():
        one = svi_refine(model, XV * 50, steps=1, lr=1.0, max_grad_norm=0.5)
        start = model.encoder.params(XV * 50)
    moved = torch.cat([one[0] - start[0], one[1] - start[1]], -1).norm(dim=-1)
    assert moved.max() <= 0.5 + 1e-5 and moved.max() > 0.4


def test_svi_refinement_settings_are_checked_by_name():
    from lidvae_nb.trainer import SemiAmortized, svi_refine

    model = small()
    for kwargs, name in (
        ({"steps": -1}, "steps"),
        ({"lr": 0.0}, "lr"),
        ({"max_grad_norm": -1.0}, "max_grad_norm"),
    ):
        settings = {"steps": 2, "lr": 0.1, "max_grad_norm": 5.0, **kwargs}
        with pytest.raises(ValueError, match=name):
            svi_refine(model, XV, **settings)
        with pytest.raises(ValueError, match=name):
            SemiAmortized(model, **settings)


def test_rmsprop_from_ones_takes_tensorflow_1s_first_step():
    # TF1's RMSProp: ms = 0.9 * 1 + 0.1 g^2, step = lr * g / sqrt(ms) (momentum 0 here).
    model = small()
    before = [p.detach().clone() for p in model.parameters()]
    cfg = config(
        optimizer="rmsprop",
        rmsprop_alpha=0.9,
        rmsprop_init=1.0,
        rmsprop_eps=1e-10,
        lr=0.01,
        grad_clip=None,
        epochs=1,
        batch_size=60,
    )
    trainer = Trainer(model, cfg)
    torch.manual_seed(123)
    out = model.loss(X)
    grads = torch.autograd.grad(out["loss"], list(model.parameters()))
    torch.manual_seed(123)
    trainer._plain_step(X, 1.0)
    for p, p0, g in zip(model.parameters(), before, grads, strict=True):
        expected = p0 - 0.01 * g / (0.9 + 0.1 * g * g).sqrt()
        torch.testing.assert_close(p.detach(), expected, atol=1e-6, rtol=1e-5)


def test_summed_reduction_scales_the_gradient_by_the_batch():
    grads = {}
    for reduction in ("mean", "sum"):
        model = small()
        trainer = Trainer(model, config(optimizer="rmsprop", grad_clip=None, reduction=reduction))
        torch.manual_seed(5)
        trainer._plain_step(X, 1.0)
        grads[reduction] = torch.cat([p.grad.ravel() for p in model.parameters()])
    torch.testing.assert_close(grads["sum"], grads["mean"] * len(X), rtol=1e-4, atol=1e-3)


def test_lagging_keeps_both_optimisers_after_the_aggressive_phase():
    model = small()
    trainer = Trainer(model, config(scheme="lagging", optimizer="rmsprop", lagging_max_inner=3))
    trainer.fit(X, XV)
    trainer.aggressive = False
    enc_step = trainer.enc_opt.state[next(iter(trainer.enc_opt.state))]["step"].item()
    trainer._lagging_step(X, 1.0, None)
    assert trainer.enc_opt.state[next(iter(trainer.enc_opt.state))]["step"].item() == enc_step + 1
    assert len(trainer.opt.state) == 0  # the joint optimiser is never used by this scheme


def test_the_monitor_runs_before_training_and_after_every_epoch():
    calls = []

    def monitor(model):
        calls.append(model.training)
        return {"probe": float(len(calls))}

    history = Trainer(small(), config(epochs=3)).fit(X, None, monitor)
    assert [h["step"] for h in history][0] == 0 and [h.get("probe") for h in history] == [
        1,
        2,
        3,
        4,
    ]
    assert calls == [False] * 4  # evaluated in eval mode


def test_mixture_models_log_both_kl_terms():
    history = Trainer(small("gmvae"), config(epochs=1)).fit(X, XV)
    rec = history[-1]
    for split in ("train", "val"):
        assert math.isclose(
            rec[f"{split}_kl_term"], rec[f"{split}_kl_y"] + rec[f"{split}_kl_z"], rel_tol=1e-6
        )


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(reduction="max"), "reduction must be one of"),
        (dict(optimizer="rmsprop", momentum=1.0), "momentum must be in"),
        (dict(optimizer="rmsprop", rmsprop_alpha=1.0), "rmsprop_alpha"),
        (dict(optimizer="adam", momentum=0.5), "RMSprop settings"),
        (dict(optimizer="rmsprop", rmsprop_init=-1.0), "rmsprop_init"),
    ],
)
def test_bad_optimiser_settings_are_named(changes, match):
    with pytest.raises(ValueError, match=match):
        config(**changes)


def test_a_truncated_checkpoint_falls_back_to_the_previous_one_with_a_warning(tmp_path):
    Trainer(small(), config(epochs=2, checkpoint_dir=str(tmp_path))).fit(X)
    assert (tmp_path / "checkpoint.prev.pt").exists()
    data = (tmp_path / "checkpoint.pt").read_bytes()
    (tmp_path / "checkpoint.pt").write_bytes(data[: len(data) // 3])  # killed mid-write
    with pytest.warns(RuntimeWarning, match="checkpoint.pt is unreadable.*previous checkpoint"):
        trainer = Trainer(small(), config(epochs=3, checkpoint_dir=str(tmp_path)))
    assert trainer.epoch == 1 and (tmp_path / "checkpoint.pt.corrupt").exists()
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 1  # the log follows
    trainer.fit(X)
    assert trainer.epoch == 3
    assert [json.loads(line)["epoch"] for line in (tmp_path / "log.jsonl").open()] == [1, 2, 3]


def test_an_unreadable_checkpoint_without_a_previous_one_restarts_the_run(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "log.jsonl").write_text('{"epoch": 1}\n')
    with pytest.warns(RuntimeWarning, match="fresh start"):
        trainer = Trainer(small(), config(checkpoint_dir=str(tmp_path)))
    assert trainer.epoch == 0 and (tmp_path / "log.jsonl").read_text() == ""
    restarted = trainer.fit(X)[-1]["train_loss"]
    fresh = Trainer(small(), config()).fit(X)[-1]["train_loss"]
    assert restarted == fresh  # the same as a run that never had a checkpoint
