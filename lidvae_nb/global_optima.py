"""Problematic global optima of the VAE objective (Yacoby, Pan and Doshi-Velez, 2020, Sec. 1).

Both of the paper's examples are linear-Gaussian models,

    z ~ N(0, I_K),    x | z ~ N(W z, diag psi),

so that the marginal p(x), the posterior p(z | x), the mutual information I(X; Z) and the VAE
objective are all available in closed form:

* Eq. 5 (Appendix C.1), :func:`scalar_model`: K = D = 1, W = theta and psi = sigma^2 - theta^2.
  Every theta in [0, sigma] gives the same marginal N(0, sigma^2) and a posterior that a Gaussian
  q(z | x) represents exactly, so the global optima of the objective are a whole interval of
  theta, along which I(X; Z) runs from 0 to infinity.
* Eq. 3 (Appendices C.2, C.3), :func:`cholesky_model`: W = Cholesky(A A^T + B) and
  psi = sigma^2 - diag B with B diagonal. The marginal is N(0, A A^T + sigma^2 I) whatever B is,
  but the posterior is correlated, so a mean-field q(z | x) cannot match it.

The objective is the one of the paper's Eq. 2, a constant away from the negative ELBO,

    L(theta, phi) = KL[p_data(x) || p_theta(x)] + E_{p_data(x)} KL[q_phi(z | x) || p_theta(z | x)]
                  = -ELBO(theta, phi) - H[p_data],

evaluated exactly for zero-mean Gaussian data by :func:`population_loss`. The closed forms use
NumPy in float64; :class:`LinearGaussianVAE` is the same model as a ``torch.nn.Module`` with a
linear mean-field encoder, trainable by :class:`lidvae_nb.trainer.Trainer`.

Note: the paper's appendix calls Eq. 5 "Case 1" and Eq. 3 "Case 2", the other way round from its
main text; this module names the examples by equation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import minimize
from torch import distributions as D
from torch import nn

from lidvae_nb._checks import check_count
from lidvae_nb.models import StandardNormalVAE

# --- closed forms (NumPy, float64) -------------------------------------------------------------


def _matrix(name: str, value, shape: tuple[int | None, int | None] | None = None) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    ok = arr.ndim == 2 and np.all(np.isfinite(arr))
    if ok and shape is not None:
        ok = all(want is None or got == want for got, want in zip(arr.shape, shape, strict=True))
    if not ok:
        want = "x".join("n" if s is None else str(s) for s in shape) if shape else "2-d"
        raise ValueError(f"{name} must be a finite {want} matrix, got {value!r}")
    return arr


def _covariance(name: str, value) -> np.ndarray:
    """A symmetric positive-definite matrix, or a ValueError naming it."""
    cov = _matrix(name, value)
    if cov.shape[0] != cov.shape[1] or not np.allclose(cov, cov.T):
        raise ValueError(f"{name} must be a symmetric square matrix, got {value!r}")
    if np.linalg.eigvalsh(cov).min() <= 0:
        raise ValueError(f"{name} must be positive definite, got {value!r}")
    return cov


def _variances(name: str, value, size: int, what: str) -> np.ndarray:
    """``value`` as ``size`` finite positive floats, or a ValueError naming it."""
    out = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if out.shape != (size,) or not np.all(np.isfinite(out)) or not np.all(out > 0):
        raise ValueError(f"{name} must hold {size} positive {what}, got {value!r}")
    return out


def gaussian_kl(mean0, cov0, mean1, cov1) -> float:
    """KL[N(mean0, cov0) || N(mean1, cov1)] for full covariance matrices (K, K)."""
    cov0, cov1 = _covariance("cov0", cov0), _covariance("cov1", cov1)
    diff = np.asarray(mean1, dtype=np.float64) - np.asarray(mean0, dtype=np.float64)
    k = cov0.shape[0]
    trace = np.trace(np.linalg.solve(cov1, cov0))
    maha = diff @ np.linalg.solve(cov1, diff)
    logdet = np.linalg.slogdet(cov1)[1] - np.linalg.slogdet(cov0)[1]
    return float(0.5 * (trace + maha - k + logdet))


def mean_field_fit(cov) -> np.ndarray:
    """The variances (K,) of the diagonal Gaussian closest to N(m, cov) in KL[q || p].

    Appendix C.3: KL[N(m, diag v) || N(m, cov)] splits into one term per coordinate,
    -log v_i + v_i (cov^{-1})_ii, minimised at v_i = 1 / (cov^{-1})_ii.
    """
    precision = np.linalg.inv(_covariance("cov", cov))
    return 1.0 / np.diag(precision)


def mean_field_gap(cov) -> float:
    """min over diagonal q of KL[q || N(m, cov)] = (sum_i log (cov^{-1})_ii + log det cov) / 2.

    Zero exactly when ``cov`` is diagonal; the price of the mean-field family.
    """
    cov = _covariance("cov", cov)
    precision = np.linalg.inv(cov)
    return float(0.5 * (np.log(np.diag(precision)).sum() + np.linalg.slogdet(cov)[1]))


@dataclass(frozen=True)
class MeanField:
    """A linear mean-field encoder q(z | x) = N(gain @ x, diag var): gain (K, D), var (K,)."""

    gain: np.ndarray
    var: np.ndarray

    def __post_init__(self):
        gain = _matrix("gain", self.gain)
        var = _variances("var", self.var, gain.shape[0], "variances (one per row of gain)")
        object.__setattr__(self, "gain", gain)
        object.__setattr__(self, "var", var)

    def aggregate_cov(self, data_cov) -> np.ndarray:
        """Cov (K, K) of the aggregate posterior E_{p_data}[q(z | x)] for data ~ N(0, data_cov)."""
        data_cov = _covariance("data_cov", data_cov)
        return self.gain @ data_cov @ self.gain.T + np.diag(self.var)


@dataclass(frozen=True)
class LinearGaussian:
    """z ~ N(0, I_K), x | z ~ N(W z, diag psi): W (D, K), psi (D,) positive."""

    W: np.ndarray
    psi: np.ndarray

    def __post_init__(self):
        W = _matrix("W", self.W)
        psi = _variances("psi", self.psi, W.shape[0], "noise variances (one per row of W)")
        object.__setattr__(self, "W", W)
        object.__setattr__(self, "psi", psi)

    @property
    def latent_dim(self) -> int:
        return self.W.shape[1]

    def marginal_cov(self) -> np.ndarray:
        """Cov of p(x) = N(0, W W^T + diag psi), (D, D)."""
        return self.W @ self.W.T + np.diag(self.psi)

    def joint_cov(self) -> np.ndarray:
        """Cov of p(x, z), (D + K, D + K), x first: [[W W^T + diag psi, W], [W^T, I]]."""
        top = np.hstack([self.marginal_cov(), self.W])
        bottom = np.hstack([self.W.T, np.eye(self.latent_dim)])
        return np.vstack([top, bottom])

    def posterior_precision(self) -> np.ndarray:
        """The precision of p(z | x), I + W^T diag(1/psi) W (K, K); the same for every x."""
        return np.eye(self.latent_dim) + self.W.T @ (self.W / self.psi[:, None])

    def posterior_cov(self) -> np.ndarray:
        return np.linalg.inv(self.posterior_precision())

    def posterior_gain(self) -> np.ndarray:
        """G (K, D) with E[z | x] = G x: the posterior covariance times W^T diag(1/psi)."""
        return self.posterior_cov() @ (self.W / self.psi[:, None]).T

    def mutual_information(self) -> float:
        """I(X; Z) = (log det Cov(x) - sum_d log psi_d) / 2, in nats (Appendix C.2, Eq. 22)."""
        return float(0.5 * (np.linalg.slogdet(self.marginal_cov())[1] - np.log(self.psi).sum()))

    def best_mean_field(self) -> MeanField:
        """phi*(theta): the mean-field encoder minimising E_x KL[q(z | x) || p(z | x)].

        Its mean is the exact posterior mean (linear in x, so the encoder can represent it) and
        its variances are those of :func:`mean_field_fit` applied to the posterior covariance.
        """
        return MeanField(self.posterior_gain(), mean_field_fit(self.posterior_cov()))

    def posterior_matching_gap(self) -> float:
        """min over mean-field phi of E_x KL[q_phi(z | x) || p(z | x)] (the paper's Figure 1A)."""
        return mean_field_gap(self.posterior_cov())


def posterior_matching(model: LinearGaussian, encoder: MeanField, data_cov) -> float:
    """E_{x ~ N(0, data_cov)} KL[q(z | x) || p(z | x)] for a linear mean-field encoder."""
    data_cov = _covariance("data_cov", data_cov)
    if encoder.gain.shape != model.W.T.shape:
        raise ValueError(
            f"encoder gain must have shape {model.W.T.shape} (K, D), got {encoder.gain.shape}"
        )
    precision = model.posterior_precision()
    delta = encoder.gain - model.posterior_gain()
    k = model.latent_dim
    value = (
        np.sum(np.diag(precision) * encoder.var)
        - k
        - np.linalg.slogdet(precision)[1]
        - np.log(encoder.var).sum()
        + np.trace(delta.T @ precision @ delta @ data_cov)
    )
    return float(0.5 * value)


def population_loss(model: LinearGaussian, encoder: MeanField | None, data_cov) -> float:
    """L(theta, phi) of the paper's Eq. 2 for data ~ N(0, data_cov): MLE term + PM term.

    ``encoder=None`` uses the best mean-field encoder, phi*(theta) = argmin_phi L(theta, phi).
    """
    data_cov = _covariance("data_cov", data_cov)
    if data_cov.shape != (model.W.shape[0],) * 2:
        raise ValueError(
            f"data_cov must be {model.W.shape[0]}x{model.W.shape[0]}, got shape {data_cov.shape}"
        )
    d = data_cov.shape[0]
    mle = gaussian_kl(np.zeros(d), data_cov, np.zeros(d), model.marginal_cov())
    encoder = model.best_mean_field() if encoder is None else encoder
    return mle + posterior_matching(model, encoder, data_cov)


# --- the two examples --------------------------------------------------------------------------


def _check_sigma(sigma: float) -> float:
    if not (np.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
    return float(sigma)


def scalar_model(theta: float, sigma: float) -> LinearGaussian:
    """Eq. 5: x | z ~ N(theta z, sigma^2 - theta^2), z ~ N(0, 1), for 0 <= theta < sigma.

    (The main text writes the range as [0, sigma^2]; the noise variance is non-negative exactly
    on [0, sigma], as Appendix C.1 says. theta = sigma, noise-free, has no density and is left
    out.)
    """
    sigma = _check_sigma(sigma)
    if not (np.isfinite(theta) and 0 <= theta < sigma):
        raise ValueError(f"theta must lie in [0, sigma) = [0, {sigma}), got {theta!r}")
    return LinearGaussian(np.array([[float(theta)]]), np.array([sigma**2 - theta**2]))


def scalar_mutual_information(theta, sigma: float) -> np.ndarray:
    """I_theta(X; Z) = log(sigma^2 / (sigma^2 - theta^2)) / 2 for Eq. 5, elementwise in theta.

    Appendix C.1's Eq. 15 has an extra "- 4" inside the bracket, which would make the mutual
    information negative near theta = 0; it is left out here (and checked by integration in the
    tests).
    """
    sigma = _check_sigma(sigma)
    theta = np.asarray(theta, dtype=np.float64)
    if np.any(~np.isfinite(theta)) or np.any(theta < 0) or np.any(theta >= sigma):
        raise ValueError(f"theta must lie in [0, sigma) = [0, {sigma}), got {theta!r}")
    return 0.5 * np.log(sigma**2 / (sigma**2 - theta**2))


def scalar_posterior(x, theta: float, sigma: float) -> tuple[np.ndarray, float]:
    """p_theta(z | x) for Eq. 5, as (mean, variance) = (theta x / sigma^2, 1 - theta^2 / sigma^2).

    The mean has the shape of x; the variance is the same for every x.
    """
    model = scalar_model(theta, sigma)
    x = np.asarray(x, dtype=np.float64)
    return model.posterior_gain()[0, 0] * x, float(model.posterior_cov()[0, 0])


def cholesky_model(A, b, sigma2: float) -> LinearGaussian:
    """Eq. 3: x | z ~ N(Cholesky(A A^T + B) z, sigma2 I - B), z ~ N(0, I), B = diag(b).

    A is (D, D); each b_d must lie in [0, sigma2) so that the noise has a density.
    """
    if not (np.isfinite(sigma2) and sigma2 > 0):
        raise ValueError(f"sigma2 must be a finite number > 0, got {sigma2!r}")
    A = _matrix("A", A)
    if A.shape[0] != A.shape[1]:
        raise ValueError(f"A must be a square matrix, got shape {A.shape}")
    b = np.atleast_1d(np.asarray(b, dtype=np.float64))
    if b.shape != (A.shape[0],) or np.any(~np.isfinite(b)) or np.any(b < 0) or np.any(b >= sigma2):
        raise ValueError(
            f"b (the diagonal of B) must hold {A.shape[0]} values in [0, sigma2) = [0, {sigma2}), "
            f"got {b!r}"
        )
    lower = np.linalg.cholesky(A @ A.T + np.diag(b))
    return LinearGaussian(lower, sigma2 - b)


def fit_cholesky_A(
    data_cov, b, sigma2: float, restarts: int = 10, seed: int = 0
) -> tuple[np.ndarray, float]:
    """(theta*, L(theta*, phi*)): the A minimising L(A, phi*(A)) of Eq. 3 with B = diag(b) fixed.

    The minimisation is over the D x D entries of A by BFGS from ``restarts`` random starts; the
    objective depends on A through A A^T only, so A* is defined up to an orthogonal factor.
    """
    data_cov = _covariance("data_cov", data_cov)
    check_count("restarts", restarts)
    d = data_cov.shape[0]
    cholesky_model(np.eye(d), b, sigma2)  # validates b and sigma2 once

    def objective(flat):
        return population_loss(cholesky_model(flat.reshape(d, d), b, sigma2), None, data_cov)

    rng = np.random.default_rng(seed)
    scale = math.sqrt(np.trace(data_cov) / d)
    best = None
    for _ in range(int(restarts)):
        res = minimize(objective, scale * rng.normal(size=d * d), method="BFGS", tol=1e-12)
        if best is None or res.fun < best.fun:
            best = res
    return best.x.reshape(d, d), float(best.fun)


# --- the same models in torch, for training ----------------------------------------------------


class ScalarDecoder(nn.Module):
    """Eq. 5's decoder with theta = sigma * sigmoid(raw) learned, so 0 < theta < sigma always.

    ``forward()`` returns (W (1, 1), psi (1,)).
    """

    def __init__(self, sigma: float, theta_init: float):
        super().__init__()
        self.sigma = _check_sigma(sigma)
        if not (np.isfinite(theta_init) and 0 < theta_init < self.sigma):
            raise ValueError(
                f"theta_init must lie in (0, sigma) = (0, {self.sigma}), got {theta_init!r}"
            )
        u = theta_init / self.sigma
        self.raw_theta = nn.Parameter(torch.tensor(math.log(u / (1 - u))))

    @property
    def theta(self) -> torch.Tensor:
        return self.sigma * torch.sigmoid(self.raw_theta)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        theta = self.theta
        return theta.reshape(1, 1), (self.sigma**2 - theta**2).reshape(1)


class CholeskyDecoder(nn.Module):
    """Eq. 3's decoder, learning A with B fixed (``learn="A"``) or B with A fixed (``"B"``).

    A learned B is parameterised as b = sigma2 * sigmoid(raw), so 0 < b_d < sigma2.
    ``forward()`` returns (W = Cholesky(A A^T + B) (D, D), psi = sigma2 - b (D,)).
    """

    def __init__(self, A, b, sigma2: float, learn: str = "A"):
        super().__init__()
        cholesky_model(A, b, sigma2)  # validates the starting point
        if learn not in ("A", "B"):
            raise ValueError(f"learn must be 'A' or 'B', got {learn!r}")
        self.sigma2, self.learn = float(sigma2), learn
        A = torch.as_tensor(np.asarray(A), dtype=torch.float32)
        b = torch.as_tensor(np.asarray(b), dtype=torch.float32)
        if learn == "A":
            self.A = nn.Parameter(A.clone())
            self.register_buffer("_b", b.clone())
        else:
            if torch.any(b <= 0):
                raise ValueError(f"a learned b must start inside (0, sigma2), got {b.tolist()}")
            self.register_buffer("A", A.clone())
            u = b / self.sigma2
            self.raw_b = nn.Parameter(torch.log(u / (1 - u)))

    @property
    def b(self) -> torch.Tensor:
        return self._b if self.learn == "A" else self.sigma2 * torch.sigmoid(self.raw_b)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.b
        cov = self.A @ self.A.T + torch.diag(b)
        return torch.linalg.cholesky(cov), self.sigma2 - b


class LinearMeanFieldEncoder(nn.Module):
    """q(z | x) = N(gain x, diag exp(2 log_scale)): the exact posterior's form, made diagonal."""

    def __init__(self, data_dim: int, latent_dim: int):
        super().__init__()
        bound = 1.0 / math.sqrt(data_dim)
        self.gain = nn.Parameter(torch.empty(latent_dim, data_dim).uniform_(-bound, bound))
        self.log_scale = nn.Parameter(torch.zeros(latent_dim))

    def forward(self, x: torch.Tensor) -> D.Distribution:
        scale = self.log_scale.exp().expand(x.shape[0], -1)
        return D.Independent(D.Normal(x @ self.gain.T, scale), 1)


class LinearGaussianVAE(StandardNormalVAE):
    """A VAE with a linear-Gaussian decoder (:class:`ScalarDecoder` or :class:`CholeskyDecoder`)
    and a linear mean-field encoder, with the interface of :mod:`lidvae_nb.models`.

    ``n_samples`` reparameterised draws estimate E_q[log p(x | z)] (1: the usual VAE estimator);
    ``n_samples=0`` uses its closed form, the same objective without Monte Carlo noise.
    """

    def __init__(self, decoder: nn.Module, n_samples: int = 1):
        super().__init__()
        check_count("n_samples", n_samples, minimum=0)
        self.decoder = decoder
        W, _ = decoder()
        self.data_dim, self.latent_dim = W.shape
        self.encoder = LinearMeanFieldEncoder(self.data_dim, self.latent_dim)
        self.n_samples = int(n_samples)
        self.register_buffer("_zeros", torch.zeros(self.latent_dim))

    def decode(self, z: torch.Tensor) -> D.Distribution:
        """p(x | z) for z (..., K): batch shape (...), event (D,)."""
        W, psi = self.decoder()
        return D.Independent(D.Normal(z @ W.T, psi.sqrt()), 1)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.decode(z).log_prob(x)

    def marginal(self) -> D.Distribution:
        """p_theta(x) = N(0, W W^T + diag psi)."""
        W, psi = self.decoder()
        cov = W @ W.T + torch.diag(psi)
        return D.MultivariateNormal(torch.zeros(self.data_dim, device=W.device), cov)

    def loss(self, x: torch.Tensor, beta: float = 1.0) -> dict:
        """Negative ELBO (``loss``, beta-weighted KL), ``rec`` and ``kl`` per point."""
        q = self.encode(x)
        kl = D.kl_divergence(q, self.prior())
        if self.n_samples == 0:
            W, psi = self.decoder()
            mean, var = q.base_dist.loc, q.base_dist.variance
            resid = x - mean @ W.T
            spread = (var.unsqueeze(1) * W**2).sum(-1)  # diag(W diag(var) W^T), (B, D)
            rec = 0.5 * (torch.log(2 * math.pi * psi) + (resid**2 + spread) / psi).sum(-1)
        else:
            z = q.rsample((self.n_samples,))
            rec = -self.log_likelihood(x, z).mean(0)
        return {"loss": (rec + beta * kl).mean(), "rec": rec.detach(), "kl_term": kl.detach()}

    @torch.no_grad()
    def closed_form(self) -> tuple[LinearGaussian, MeanField]:
        """The current (theta, phi) as float64 closed-form objects."""
        W, psi = self.decoder()
        gain = self.encoder.gain.double().cpu().numpy()
        var = (2 * self.encoder.log_scale.double()).exp().cpu().numpy()
        return LinearGaussian(W.double().cpu().numpy(), psi.double().cpu().numpy()), MeanField(
            gain, var
        )
