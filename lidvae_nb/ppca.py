"""Probabilistic PCA (PPCA) in closed form: sampling, marginal likelihood, exact posterior,
KL to the prior, and maximum likelihood (Tipping & Bishop, 1999).

Convention (the one of Wang, Blei & Cunningham, Sec. 4.2): ``W`` has shape (q, d), a latent
``z`` in R^q and an observation ``x`` in R^d, with

    p(z) = N(0, I_q),   p(x | z) = N(W^T z, sigma^2 I_d),   so   p(x) = N(0, W^T W + sigma^2 I_d).

Row ``j`` of ``W`` is the loading vector of latent ``z_j`` (a column in Tipping & Bishop's
d x q convention). The model has no offset, as in the paper: the maximum-likelihood fit uses the
second-moment matrix ``S = X^T X / n`` about zero. Everything is computed in float64; array
inputs may be numpy arrays or torch tensors, and outputs are numpy arrays or Python floats.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.distributions import Independent, MultivariateNormal, Normal

# ----------------------------------------------------------------------------- input checks


def _as_array(value, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be an array of numbers, got {value!r}") from err
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must hold finite numbers only, got {arr!r}")
    return arr


def _check_sigma(sigma) -> float:
    try:
        s = float(sigma)
    except (TypeError, ValueError) as err:
        raise ValueError(f"sigma must be a number > 0, got {sigma!r}") from err
    if not (math.isfinite(s) and s > 0):
        raise ValueError(f"sigma must be > 0, got {s}")
    return s


def _check_W(W) -> np.ndarray:
    W = _as_array(W, "W")
    if W.ndim != 2 or 0 in W.shape:
        raise ValueError(f"W must be a non-empty matrix (q, d), got shape {W.shape}")
    return W


def _check_X(X, W: np.ndarray, name: str = "X") -> tuple[np.ndarray, bool]:
    """X as an (n, d) array and whether it was a single point (d,)."""
    X = _as_array(X, name)
    single = X.ndim == 1
    X2 = X[None, :] if single else X
    if X2.ndim != 2 or X2.shape[1] != W.shape[1]:
        raise ValueError(
            f"{name} has shape {X.shape} but W has shape {W.shape}: "
            f"{name} must be ({W.shape[1]},) or (n, {W.shape[1]})"
        )
    if X2.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one point, got shape {X.shape}")
    return X2, single


def _check_q(q, d: int, max_q: int) -> int:
    if isinstance(q, bool) or not isinstance(q, (int, np.integer)) or not 1 <= q <= max_q:
        raise ValueError(f"q must be an integer in [1, {max_q}] for d = {d}, got {q!r}")
    return int(q)


# ----------------------------------------------------------------------------- distributions


def prior(q: int) -> Independent:
    """The prior p(z) = N(0, I_q) as a torch distribution (float64, event shape (q,))."""
    zeros = torch.zeros(q, dtype=torch.float64)
    return Independent(Normal(zeros, torch.ones_like(zeros)), 1)


def likelihood(z: torch.Tensor, W: torch.Tensor, sigma: float) -> Independent:
    """p(x | z) = N(W^T z, sigma^2 I_d) for a batch of latents ``z`` (..., q); event shape (d,)."""
    loc = z @ W
    return Independent(Normal(loc, torch.full_like(loc, sigma)), 1)


def marginal(W: torch.Tensor, sigma: float) -> MultivariateNormal:
    """The marginal p(x) = N(0, W^T W + sigma^2 I_d) as a torch distribution; W (q, d)."""
    d = W.shape[1]
    cov = W.T @ W + sigma**2 * torch.eye(d, dtype=W.dtype)
    return MultivariateNormal(torch.zeros(d, dtype=W.dtype), covariance_matrix=cov)


# ----------------------------------------------------------------------------- sampling


def sample_ppca(W, sigma, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` points from the PPCA with loadings W (q, d) and noise sd ``sigma``.

    Returns ``(X, Z)``: observations (n, d) and the latents that generated them (n, q).
    """
    W = _check_W(W)
    sigma = _check_sigma(sigma)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    rng = np.random.default_rng(seed)
    q, d = W.shape
    Z = rng.standard_normal((n, q))
    X = Z @ W + sigma * rng.standard_normal((n, d))
    return X, Z


# ----------------------------------------------------------------------------- closed forms


def log_marginal_likelihood(X, W, sigma) -> float:
    """log p(X; W, sigma) = sum_i log N(x_i; 0, W^T W + sigma^2 I_d), for X (n, d) or x (d,)."""
    W = _check_W(W)
    sigma = _check_sigma(sigma)
    X, _ = _check_X(X, W)
    dist = marginal(torch.from_numpy(W), sigma)
    return float(dist.log_prob(torch.from_numpy(X)).sum())


def posterior(X, W, sigma) -> tuple[np.ndarray, np.ndarray]:
    """The exact posterior p(z | x) = N(mean, cov) for each row of X.

    With M = I_q + W W^T / sigma^2: cov = M^{-1} (q, q), shared by every point, and
    mean = M^{-1} W x / sigma^2. Returns ``(means, cov)``: means (n, q) for X (n, d), or (q,)
    for a single x (d,).
    """
    W = _check_W(W)
    sigma = _check_sigma(sigma)
    X2, single = _check_X(X, W)
    q = W.shape[0]
    precision = np.eye(q) + W @ W.T / sigma**2
    cov = np.linalg.inv(precision)
    cov = (cov + cov.T) / 2
    means = np.linalg.solve(precision, W @ X2.T / sigma**2).T
    return (means[0] if single else means), cov


def kl_posterior_prior(X, W, sigma) -> np.ndarray | float:
    """KL(p(z | x_i) || p(z)) for each row of X, in nats: (n,) for X (n, d), a float for x (d,).

    For N(m, C) against N(0, I_q): ``(tr C + |m|^2 - q - log det C) / 2``.
    """
    means, cov = posterior(X, W, sigma)
    q = cov.shape[0]
    _, logdet = np.linalg.slogdet(cov)
    kl = 0.5 * (np.trace(cov) + np.sum(means**2, axis=-1) - q - logdet)
    kl = np.maximum(kl, 0.0)  # exact zero when the posterior is the prior, not -1e-17
    return float(kl) if np.ndim(kl) == 0 else kl


def log_likelihood_grid(x, W, sigma, z1_grid, z2_grid) -> np.ndarray:
    """log p(x | z; W, sigma) on a grid of two-dimensional latents (q must be 2).

    Returns an array (len(z2_grid), len(z1_grid)) whose entry [i, j] is the log-likelihood at
    z = (z1_grid[j], z2_grid[i]), the layout ``matplotlib.contourf(z1_grid, z2_grid, L)`` expects.
    """
    W = _check_W(W)
    sigma = _check_sigma(sigma)
    if W.shape[0] != 2:
        raise ValueError(f"log_likelihood_grid needs q = 2 latents, got W of shape {W.shape}")
    x2, single = _check_X(x, W, "x")
    if not single:
        raise ValueError(f"x must be a single point ({W.shape[1]},), got shape {x2.shape}")
    z1 = _as_array(z1_grid, "z1_grid")
    z2 = _as_array(z2_grid, "z2_grid")
    if z1.ndim != 1 or z2.ndim != 1 or z1.size == 0 or z2.size == 0:
        raise ValueError(
            f"z1_grid and z2_grid must be non-empty vectors, got shapes {z1.shape} and {z2.shape}"
        )
    Z1, Z2 = np.meshgrid(z1, z2)
    z = torch.from_numpy(np.stack([Z1, Z2], axis=-1))
    lik = likelihood(z, torch.from_numpy(W), sigma)
    return lik.log_prob(torch.from_numpy(x2[0])).numpy()


def unnormalized_log_posterior(x, W, sigma) -> Callable[[torch.Tensor], torch.Tensor]:
    """z (q,) -> log p(z) + log p(x | z; W, sigma), a torch scalar: the target for HMC."""
    W = _check_W(W)
    sigma = _check_sigma(sigma)
    x2, single = _check_X(x, W, "x")
    if not single:
        raise ValueError(f"x must be a single point ({W.shape[1]},), got shape {x2.shape}")
    W_t = torch.from_numpy(W)
    x_t = torch.from_numpy(x2[0])
    p_z = prior(W.shape[0])

    def log_prob(z: torch.Tensor) -> torch.Tensor:
        z = z.to(torch.float64)
        return p_z.log_prob(z) + likelihood(z, W_t, sigma).log_prob(x_t)

    return log_prob


# ----------------------------------------------------------------------------- maximum likelihood


@dataclass(frozen=True)
class MLFit:
    """A maximum-likelihood PPCA fit.

    W: loadings (q, d); sigma: the noise sd (held fixed or fitted); eigenvalues: all d
    eigenvalues of S = X^T X / n, descending; eigenvectors: (d, d), column k for eigenvalue k.
    """

    W: np.ndarray
    sigma: float
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray

    @property
    def row_norms(self) -> np.ndarray:
        """``|w_j|`` for each latent j (q,): ``sqrt(max(lambda_j - sigma^2, 0))``."""
        return np.linalg.norm(self.W, axis=1)


def second_moment_eigh(X) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (d,) descending and eigenvectors (d, d) (columns) of S = X^T X / n.

    Each eigenvector's sign is fixed so that its largest-magnitude entry is positive, which makes
    fits of the same data comparable across sigma.
    """
    X = _as_array(X, "X")
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"X must be a matrix (n, d) with n >= 1, got shape {X.shape}")
    S = X.T @ X / X.shape[0]
    lam, U = np.linalg.eigh(S)
    lam, U = lam[::-1].copy(), U[:, ::-1].copy()
    lead = np.argmax(np.abs(U), axis=0)
    U *= np.sign(U[lead, np.arange(U.shape[1])])
    return lam, U


def fit_ml(X, q: int, sigma=None, rotation=None) -> MLFit:
    """Maximum-likelihood PPCA in closed form (Tipping & Bishop, 1999), for X (n, d).

    With ``sigma`` given it is held fixed; with ``sigma=None`` it is fitted too: sigma^2 is then
    the mean of the d - q discarded eigenvalues of S. The loadings are

        W = R diag(sqrt(max(lambda_j - sigma^2, 0))) U_q^T        (q, d),

    with U_q the top-q eigenvectors of S and R an orthogonal (q, q) ``rotation`` (default I):
    every R gives the same likelihood. Row j is exactly zero when lambda_j <= sigma^2.
    """
    lam, U = second_moment_eigh(X)
    d = lam.size
    if sigma is None:
        q = _check_q(q, d, d - 1)
        sigma = math.sqrt(max(float(np.mean(lam[q:])), 0.0))
        if sigma == 0.0:
            raise ValueError("the discarded eigenvalues are all 0: the ML sigma is 0; pass sigma")
    else:
        q = _check_q(q, d, d)
        sigma = _check_sigma(sigma)
    scale = np.sqrt(np.maximum(lam[:q] - sigma**2, 0.0))
    W = scale[:, None] * U[:, :q].T
    if rotation is not None:
        R = _as_array(rotation, "rotation")
        if R.shape != (q, q) or not np.allclose(R @ R.T, np.eye(q), atol=1e-10):
            raise ValueError(f"rotation must be an orthogonal ({q}, {q}) matrix, got {R!r}")
        W = R @ W
    return MLFit(W=W, sigma=sigma, eigenvalues=lam, eigenvectors=U)


def ml_mean_kl(eigenvalues, q: int, sigma) -> float:
    """The average over the data of KL(p(z | x_i) || p(z)) at the ML loadings, in closed form.

    At W_ML (sigma fixed) the posterior of latent j has variance sigma^2 / lambda_j and the
    data-average of its squared mean is 1 - sigma^2 / lambda_j when lambda_j > sigma^2, and is the
    prior otherwise; the KL terms then sum to  sum_{j <= q} max(0, log(lambda_j / sigma^2)) / 2.
    """
    lam = _as_array(eigenvalues, "eigenvalues")
    if lam.ndim != 1:
        raise ValueError(f"eigenvalues must be a vector, got shape {lam.shape}")
    q = _check_q(q, lam.size, lam.size)
    sigma = _check_sigma(sigma)
    top = np.sort(lam)[::-1][:q]
    return float(0.5 * np.sum(np.maximum(np.log(np.maximum(top, 1e-300) / sigma**2), 0.0)))


def fit_gradient(X, q: int, sigma, seed: int = 0, max_iter: int = 2000) -> np.ndarray:
    """Maximise log p(X; W, sigma) over W (q, d) by L-BFGS from a random N(0, 1) start.

    A check on :func:`fit_ml` that uses no eigen-decomposition; sigma is held fixed. The data
    enter through S = X^T X / n: with C = W^T W + sigma^2 I_d, the mean negative log-likelihood
    is (d log(2 pi) + log det C + tr(C^{-1} S)) / 2; its gradient in W is
    W (C^{-1} - C^{-1} S C^{-1}).
    Returns W (q, d).
    """
    from scipy.linalg import cho_factor, cho_solve
    from scipy.optimize import minimize

    X = _as_array(X, "X")
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"X must be a matrix (n, d) with n >= 1, got shape {X.shape}")
    d = X.shape[1]
    q = _check_q(q, d, d)
    sigma = _check_sigma(sigma)
    S = X.T @ X / X.shape[0]

    def loss_and_grad(flat):
        W = flat.reshape(q, d)
        factor = cho_factor(W.T @ W + sigma**2 * np.eye(d))
        C_inv_S = cho_solve(factor, S)
        loss = 2 * np.log(np.diag(factor[0])).sum() + np.trace(C_inv_S)
        grad = W @ (cho_solve(factor, np.eye(d)) - cho_solve(factor, C_inv_S.T))
        return loss / 2, grad.ravel()

    start = np.random.default_rng(seed).standard_normal(q * d)
    result = minimize(
        loss_and_grad,
        start,
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": max_iter, "gtol": 1e-12, "ftol": 1e-15},
    )
    return result.x.reshape(q, d)
