"""A thin wrapper over Pyro's NUTS sampler: exact (asymptotically) posterior sampling with no
variational approximation, for the chapters that must rule inference out as a cause of collapse."""

from __future__ import annotations

from collections.abc import Callable

import torch


def _check_counts(num_samples: int, warmup: int) -> None:
    if int(num_samples) != num_samples or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    if int(warmup) != warmup or warmup < 0:
        raise ValueError(f"warmup must be a non-negative integer, got {warmup!r}")


def sample_log_prob(
    log_prob: Callable[[torch.Tensor], torch.Tensor],
    init: torch.Tensor,
    *,
    num_samples: int = 1000,
    warmup: int = 500,
    seed: int = 0,
    target_accept: float = 0.8,
    progress: bool = False,
) -> torch.Tensor:
    """Draw ``num_samples`` NUTS samples from the unnormalised density ``exp(log_prob(x))`` on R^d.

    ``log_prob`` maps a tensor shaped like ``init`` (d,) to a scalar. Returns a tensor
    (num_samples, d) in ``init``'s dtype. The sampler adapts its step size and a diagonal mass
    matrix during ``warmup``.
    """
    from pyro.infer import MCMC, NUTS

    _check_counts(num_samples, warmup)
    init = torch.as_tensor(init)
    if init.dim() != 1:
        raise ValueError(f"init must be a vector (d,), got shape {tuple(init.shape)}")
    value = log_prob(init)
    if value.dim() != 0 or not torch.isfinite(value):
        raise ValueError(f"log_prob(init) must be a finite scalar, got {value!r}")

    def potential(params):
        return -log_prob(params["x"])

    torch.manual_seed(seed)
    kernel = NUTS(potential_fn=potential, target_accept_prob=target_accept, adapt_mass_matrix=True)
    mcmc = MCMC(
        kernel,
        num_samples=num_samples,
        warmup_steps=warmup,
        initial_params={"x": init.clone()},
        disable_progbar=not progress,
    )
    mcmc.run()
    return mcmc.get_samples()["x"].detach()


def sample_model(
    model: Callable,
    *args,
    num_samples: int = 1000,
    warmup: int = 500,
    seed: int = 0,
    target_accept: float = 0.8,
    progress: bool = False,
    **kwargs,
) -> dict[str, torch.Tensor]:
    """NUTS samples of every latent site of a Pyro ``model(*args, **kwargs)``, keyed by site name.

    Constrained sites (a simplex, a positive scale) are sampled in Pyro's unconstrained space and
    returned in their own space.
    """
    import pyro
    from pyro.infer import MCMC, NUTS

    _check_counts(num_samples, warmup)
    pyro.set_rng_seed(seed)
    kernel = NUTS(model, target_accept_prob=target_accept, adapt_mass_matrix=True)
    mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=warmup, disable_progbar=not progress)
    mcmc.run(*args, **kwargs)
    return {k: v.detach() for k, v in mcmc.get_samples().items()}
