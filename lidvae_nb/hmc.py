"""A thin wrapper over Pyro's NUTS sampler: exact (asymptotically) posterior sampling with no
variational approximation, for the chapters that must rule inference out as a cause of collapse."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator

import torch

from lidvae_nb._checks import check_count


def _pyro():
    """Import Pyro without the 'IProgress not found' warning its tqdm import gives in Jupyter."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="IProgress not found")
        import pyro
        from pyro.infer import MCMC, NUTS
    return pyro, MCMC, NUTS


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` torch threads, then restore. NUTS on small models is a long chain of tiny
    tensor operations, for which one thread is several times faster than two."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _check_counts(num_samples: int, warmup: int) -> None:
    check_count("num_samples", num_samples)
    check_count("warmup", warmup, minimum=0)


def sample_log_prob(
    log_prob: Callable[[torch.Tensor], torch.Tensor],
    init: torch.Tensor,
    *,
    num_samples: int = 1000,
    warmup: int = 500,
    seed: int = 0,
    target_accept: float = 0.8,
    progress: bool = False,
    threads: int | None = 1,
) -> torch.Tensor:
    """Draw ``num_samples`` NUTS samples from the unnormalised density ``exp(log_prob(x))`` on R^d.

    ``log_prob`` maps a tensor shaped like ``init`` (d,) to a scalar. Returns a tensor
    (num_samples, d) in ``init``'s dtype. The sampler adapts its step size and a diagonal mass
    matrix during ``warmup``. ``threads`` sets torch's thread count for the run (None: leave it).
    """
    _, MCMC, NUTS = _pyro()
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
    with _threads(threads):
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
    threads: int | None = 1,
    **kwargs,
) -> dict[str, torch.Tensor]:
    """NUTS samples of every latent site of a Pyro ``model(*args, **kwargs)``, keyed by site name.

    Constrained sites (a simplex, a positive scale) are sampled in Pyro's unconstrained space and
    returned in their own space.
    """
    pyro, MCMC, NUTS = _pyro()
    _check_counts(num_samples, warmup)
    pyro.set_rng_seed(seed)
    kernel = NUTS(model, target_accept_prob=target_accept, adapt_mass_matrix=True)
    mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=warmup, disable_progbar=not progress)
    with _threads(threads):
        mcmc.run(*args, **kwargs)
    return {k: v.detach() for k, v in mcmc.get_samples().items()}


def effective_sample_size(samples: torch.Tensor) -> torch.Tensor:
    """Effective sample size of each coordinate of one chain's samples (S, d) -> (d,)."""
    _pyro()
    from pyro.ops.stats import effective_sample_size as ess

    samples = torch.as_tensor(samples)
    if samples.dim() != 2 or samples.shape[0] < 4:
        raise ValueError(f"samples must be (S, d) with S >= 4, got shape {tuple(samples.shape)}")
    return ess(samples.unsqueeze(0), chain_dim=0, sample_dim=1)
