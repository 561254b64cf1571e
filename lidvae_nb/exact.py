"""Exact posteriors of a one-dimensional latent on a grid: no sampling, no variational inference.

The prior is discretised on an evenly spaced grid (weights proportional to the density at the
nodes), and Bayes' rule is applied node by node, so every quantity below is exact for the
discretised model. Chapter 01 uses these to watch Theorem 1 happen: the posterior equals the prior
exactly when the likelihood is flat in z, and the KL divergence between them grows with how much
the likelihood varies.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp


def make_grid(lo: float = -8.0, hi: float = 8.0, n: int = 2001) -> np.ndarray:
    """An evenly spaced grid of ``n`` nodes on [lo, hi]."""
    if not np.isfinite(lo) or not np.isfinite(hi) or not lo < hi:
        raise ValueError(f"need finite lo < hi, got lo={lo!r}, hi={hi!r}")
    if int(n) != n or n < 3:
        raise ValueError(f"n must be an integer >= 3, got {n!r}")
    return np.linspace(lo, hi, int(n))


def _as_log_weights(log_density: np.ndarray, name: str) -> np.ndarray:
    log_density = np.asarray(log_density, dtype=np.float64)
    if log_density.ndim != 1 or log_density.size < 2:
        raise ValueError(f"{name} must be a vector over the grid, got shape {log_density.shape}")
    if np.isnan(log_density).any() or np.isposinf(log_density).any():
        raise ValueError(f"{name} must be finite or -inf, got a NaN or +inf value")
    return log_density - logsumexp(log_density)


def grid_posterior(
    log_likelihood: np.ndarray, log_prior: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised log weights of the prior and of the posterior on the grid.

    Args:
        log_likelihood: (G,) or (N, G): log p(x_i | z = grid_j) for one or N data points, each
            with its own latent z_i (local latents: the joint posterior factorises over i).
        log_prior: (G,) log prior density at the grid nodes (any additive constant).

    Returns:
        The pair ``(log_prior_w, log_post_w)``, of shapes (G,) and, like ``log_likelihood``,
        (G,) or (N, G); each row sums to one after exponentiation.
    """
    log_prior_w = _as_log_weights(log_prior, "log_prior")
    log_likelihood = np.asarray(log_likelihood, dtype=np.float64)
    if log_likelihood.shape[-1] != log_prior_w.shape[0] or log_likelihood.ndim not in (1, 2):
        raise ValueError(
            f"log_likelihood must be (G,) or (N, G) with G = {log_prior_w.shape[0]} grid nodes, "
            f"got shape {log_likelihood.shape}"
        )
    if np.isnan(log_likelihood).any():
        raise ValueError("log_likelihood contains NaN")
    joint = log_likelihood + log_prior_w
    return log_prior_w, joint - logsumexp(joint, axis=-1, keepdims=True)


def kl_divergence(log_p: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    """KL(p || q) between distributions on the same grid, given normalised log weights.

    ``log_p`` may be (G,) or (N, G) (one KL per row); ``log_q`` is broadcast against it.
    """
    log_p = np.asarray(log_p, dtype=np.float64)
    log_q = np.asarray(log_q, dtype=np.float64)
    if log_p.shape[-1] != log_q.shape[-1]:
        raise ValueError(f"grids differ: log_p has shape {log_p.shape}, log_q {log_q.shape}")
    p = np.exp(log_p)
    # 0 * log 0 = 0: nodes where p vanishes contribute nothing, whatever q is there.
    diff = np.subtract(
        log_p, log_q, out=np.zeros(np.broadcast_shapes(log_p.shape, log_q.shape)), where=p > 0
    )
    return (p * diff).sum(axis=-1)


def posterior_kl(log_likelihood: np.ndarray, log_prior: np.ndarray) -> np.ndarray:
    """KL(p(z | x) || p(z)) on the grid: one value per data point (rows of ``log_likelihood``)."""
    log_prior_w, log_post_w = grid_posterior(log_likelihood, log_prior)
    return kl_divergence(log_post_w, log_prior_w)


def loglik_oscillation(log_likelihood: np.ndarray) -> np.ndarray:
    """Delta = max_z log p(x | z) - min_z log p(x | z) over the grid (0 iff flat in z)."""
    log_likelihood = np.asarray(log_likelihood, dtype=np.float64)
    return log_likelihood.max(axis=-1) - log_likelihood.min(axis=-1)


def loglik_prior_variance(log_likelihood: np.ndarray, log_prior: np.ndarray) -> np.ndarray:
    """Var_{p(z)}[log p(x | z)]: how much the log-likelihood varies where the prior puts mass."""
    log_prior_w = _as_log_weights(log_prior, "log_prior")
    w = np.exp(log_prior_w)
    ll = np.asarray(log_likelihood, dtype=np.float64)
    mean = (w * ll).sum(axis=-1, keepdims=True)
    return (w * (ll - mean) ** 2).sum(axis=-1)


def gaussian_posterior_kl(x: np.ndarray, a: float, noise: float = 1.0) -> np.ndarray:
    """Closed form of KL(p(z | x) || p(z)) for z ~ N(0, 1), x | z ~ N(a z, noise^2).

    The posterior is N(m, v) with v = 1 / (1 + a^2 / noise^2) and m = v a x / noise^2.
    """
    if not noise > 0:
        raise ValueError(f"noise must be > 0, got {noise!r}")
    x = np.asarray(x, dtype=np.float64)
    v = 1.0 / (1.0 + a**2 / noise**2)
    m = v * a * x / noise**2
    return 0.5 * (v + m**2 - 1.0 - np.log(v))
