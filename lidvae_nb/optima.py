"""Likelihood maximisers built by hand: the GMVAE's identifiable and collapsed global optima.

Wang et al. (Sec. 2.2) describe two parameter values of a Gaussian-mixture VAE that fit the data
equally well. Under the first the cluster label is identifiable; under the second every component
is the standard normal and a flexible decoder f carries the whole shape of the data, so the label
is non-identifiable and its posterior is the prior. In one dimension both can be written down
exactly: the second decoder is the monotone (quantile) map that pushes N(0, 1) onto the data's
mixture of Gaussians. The model is

    z ~ Categorical(weights),  w | z ~ N(means_z, sds_z^2),  x | w ~ N(f(w), sigma^2).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp, ndtr
from scipy.stats import norm

from lidvae_nb._checks import check_count


def _as_vector(name: str, value, size: int | None = None) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if arr.ndim != 1 or (size is not None and arr.size != size) or not np.all(np.isfinite(arr)):
        want = f"a finite vector of length {size}" if size is not None else "a finite vector"
        raise ValueError(f"{name} must be {want}, got {value!r}")
    return arr


@dataclass(frozen=True)
class Mixture1D:
    """A one-dimensional Gaussian mixture: weights (K,), means (K,), sds (K,)."""

    weights: np.ndarray
    means: np.ndarray
    sds: np.ndarray

    def __post_init__(self):
        w = _as_vector("weights", self.weights)
        m = _as_vector("means", self.means, w.size)
        s = _as_vector("sds", self.sds, w.size)
        if np.any(w < 0) or not np.isclose(w.sum(), 1.0):
            raise ValueError(f"weights must be non-negative and sum to 1, got {self.weights!r}")
        if np.any(s <= 0):
            raise ValueError(f"sds must be > 0, got {self.sds!r}")
        object.__setattr__(self, "weights", w)
        object.__setattr__(self, "means", m)
        object.__setattr__(self, "sds", s)

    def cdf(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)[..., None]
        return (self.weights * ndtr((x - self.means) / self.sds)).sum(-1)

    def logpdf(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)[..., None]
        return logsumexp(np.log(self.weights) + norm.logpdf(x, self.means, self.sds), axis=-1)

    def sample(self, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(x, labels), each (n,)."""
        check_count("n", n)
        rng = np.random.default_rng(seed)
        labels = rng.choice(self.weights.size, size=int(n), p=self.weights)
        return rng.normal(self.means[labels], self.sds[labels]), labels

    def convolve(self, sigma: float) -> Mixture1D:
        """The distribution of y + e, y from this mixture and e ~ N(0, sigma^2)."""
        if not sigma >= 0:
            raise ValueError(f"sigma must be >= 0, got {sigma!r}")
        return Mixture1D(self.weights, self.means, np.sqrt(self.sds**2 + sigma**2))


def quantile_map(target: Mixture1D, tol: float = 1e-12) -> Callable[[np.ndarray], np.ndarray]:
    """The increasing map T with T(w) ~ ``target`` when w ~ N(0, 1): T = F_target^{-1} o Phi.

    Evaluated by bisection on the mixture's CDF to ``tol``; T is the one-dimensional Brenier map
    from the standard normal to the mixture.
    """
    lo0 = float((target.means - 40 * target.sds).min())
    hi0 = float((target.means + 40 * target.sds).max())

    def T(w):
        w = np.asarray(w, dtype=np.float64)
        u = ndtr(w)
        lo = np.full(w.shape, lo0)
        hi = np.full(w.shape, hi0)
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            below = target.cdf(mid) < u
            lo = np.where(below, mid, lo)
            hi = np.where(below, hi, mid)
            if np.max(hi - lo) < tol:
                break
        # In the far tails the CDF rounds to 0 or 1; there the map follows the extreme component.
        far = (u < 1e-300) | (u > 1 - 1e-16)
        if np.any(far):
            k = np.where(w < 0, target.means.argmin(), target.means.argmax())
            lo = np.where(far, target.means[k] + target.sds[k] * w, lo)
            hi = lo
        return 0.5 * (lo + hi)

    return T


@dataclass
class GMVAE1D:
    """A one-dimensional GMVAE parameter value: component prior, decoder f and noise sigma."""

    prior: Mixture1D
    f: Callable[[np.ndarray], np.ndarray]
    sigma: float
    n_grid: int = 20001
    width: float = 10.0

    def __post_init__(self):
        if not self.sigma > 0:
            raise ValueError(f"sigma must be > 0, got {self.sigma!r}")
        if int(self.n_grid) != self.n_grid or self.n_grid < 101:
            raise ValueError(f"n_grid must be an integer >= 101, got {self.n_grid!r}")

    def component_loglik(self, x) -> np.ndarray:
        """log p(x | z = k) = log int N(w; mean_k, sd_k^2) N(x; f(w), sigma^2) dw, (n, K).

        Trapezoid rule on ``n_grid`` evenly spaced nodes over mean_k +- ``width`` sd_k; the grid
        must resolve sigma / max|f'| (the default does for the chapter's decoders).
        """
        x = _as_vector("x", x)
        out = np.empty((x.size, self.prior.weights.size))
        for k, (m, s) in enumerate(zip(self.prior.means, self.prior.sds, strict=True)):
            w = np.linspace(m - self.width * s, m + self.width * s, self.n_grid)
            log_wts = norm.logpdf(w, m, s) + np.log(w[1] - w[0])
            log_wts[[0, -1]] += np.log(0.5)
            fw = self.f(w)
            for start in range(0, x.size, 512):
                xs = x[start : start + 512, None]
                out[start : start + 512, k] = logsumexp(
                    norm.logpdf(xs, fw[None, :], self.sigma) + log_wts, axis=1
                )
        return out

    def loglik(self, x) -> np.ndarray:
        """log p(x) per point, (n,)."""
        return logsumexp(self.component_loglik(x) + np.log(self.prior.weights), axis=1)

    def label_posterior(self, x) -> np.ndarray:
        """p(z = k | x), (n, K): the exact posterior of the cluster label."""
        joint = self.component_loglik(x) + np.log(self.prior.weights)
        return np.exp(joint - logsumexp(joint, axis=1, keepdims=True))


def identity(w):
    return np.asarray(w, dtype=np.float64)


def collapsed_optimum(data_clusters: Mixture1D, K: int, sigma: float, **grid) -> GMVAE1D:
    """theta_2 of Wang et al. Sec. 2.2: K identical N(0, 1) components and the decoder T that
    pushes N(0, 1) onto the data's clusters, so that p(x) is unchanged and p(z | x) = 1/K."""
    check_count("K", K)
    prior = Mixture1D(np.full(K, 1.0 / K), np.zeros(K), np.ones(K))
    return GMVAE1D(prior, quantile_map(data_clusters), sigma, **grid)
