"""Gaussian mixture models: exact posteriors of the cluster labels, maximum likelihood by EM, and a
Pyro model of the mixture weights for NUTS.

Two kinds of latent variable live in a GMM. The local labels z_i have the exact posterior
p(z_i | x_i) = responsibilities; the global weights pi have a posterior that only MCMC gives.
Chapter 03 shows both collapsing onto their priors when the model has more components than the
data need. Everything on the EM side is numpy float64.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

_LOG_2PI = np.log(2.0 * np.pi)


# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------
def _as_data(X) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X must be a matrix (n, d), got shape {X.shape}")
    if X.shape[0] < 1:
        raise ValueError(f"X must hold at least one point, got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError("X must be finite, got NaN or inf entries")
    return X


def _as_params(means, covs, weights=None):
    """Check (K, d) means, (K, d, d) symmetric positive definite covariances and (K,) weights on
    the simplex; return them as float64 arrays and the Cholesky factors of the covariances."""
    means = np.asarray(means, dtype=np.float64)
    covs = np.asarray(covs, dtype=np.float64)
    if means.ndim != 2 or means.shape[0] < 1:
        raise ValueError(f"means must have shape (K, d) with K >= 1, got shape {means.shape}")
    K, d = means.shape
    if covs.shape != (K, d, d):
        raise ValueError(
            f"covs must have shape (K, d, d) = {(K, d, d)} to match means {means.shape}, "
            f"got shape {covs.shape}"
        )
    if not (np.all(np.isfinite(means)) and np.all(np.isfinite(covs))):
        raise ValueError("means and covs must be finite")
    chols = np.empty_like(covs)
    for k in range(K):
        if not np.allclose(covs[k], covs[k].T, rtol=1e-10, atol=1e-12):
            raise ValueError(f"covs[{k}] must be symmetric, got {covs[k].tolist()}")
        try:
            chols[k] = np.linalg.cholesky(covs[k])
        except np.linalg.LinAlgError:
            eig = np.linalg.eigvalsh(covs[k])
            raise ValueError(
                f"covs[{k}] must be positive definite, got eigenvalues {eig.tolist()}"
            ) from None
    if weights is None:
        return means, covs, None, chols
    return means, covs, _as_weights(weights, K), chols


def _as_weights(weights, K: int | None = None) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.shape[0] < 1:
        raise ValueError(f"weights must be a vector (K,), got shape {w.shape}")
    if K is not None and w.shape[0] != K:
        raise ValueError(f"weights must have shape ({K},) to match the means, got shape {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"weights must be finite and >= 0, got {w.tolist()}")
    if abs(w.sum() - 1.0) > 1e-8:
        raise ValueError(f"weights must sum to 1, got {w.tolist()} (sum {w.sum():.12g})")
    return w


def _check_count(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------------------------
# the model: sampling, densities, exact posteriors of the labels
# --------------------------------------------------------------------------------------------
def sample_gmm(means, covs, weights, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` points from the mixture sum_k weights[k] N(means[k], covs[k]).

    means (K, d), covs (K, d, d), weights (K,). Returns X (n, d) float64 and the labels z (n,).
    """
    n = _check_count("n", n)
    means, covs, weights, chols = _as_params(means, covs, weights)
    rng = np.random.default_rng(seed)
    z = rng.choice(len(weights), size=n, p=weights)
    eps = rng.standard_normal((n, means.shape[1]))
    X = means[z] + np.einsum("nij,nj->ni", chols[z], eps)
    return X, z


def component_log_densities(X, means, covs) -> np.ndarray:
    """log N(x_i | means[k], covs[k]) for every point and component: X (n, d) -> (n, K).

    Identical components give bit-identical columns (the same arithmetic runs for each).
    """
    X = _as_data(X)
    means, covs, _, chols = _as_params(means, covs)
    if X.shape[1] != means.shape[1]:
        raise ValueError(f"X has shape {X.shape} but means have shape {means.shape}: d differs")
    return _log_densities(X, means, chols)


def _log_densities(X, means, chols) -> np.ndarray:
    """Unchecked core of component_log_densities, from the Cholesky factors (K, d, d)."""
    d = X.shape[1]
    # Mahalanobis distance through the Cholesky factor: |L_k^{-1}(x_i - mu_k)|^2.
    inv_chols = np.linalg.inv(chols)
    maha = np.empty((X.shape[0], means.shape[0]))
    for k in range(means.shape[0]):
        white = (X - means[k]) @ inv_chols[k].T
        maha[:, k] = np.einsum("ni,ni->n", white, white)
    logdet = 2.0 * np.sum(np.log(np.diagonal(chols, axis1=1, axis2=2)), axis=1)
    return -0.5 * (d * _LOG_2PI + logdet + maha)


def _scaled_from_logp(logp, w):
    """weights[k] * exp(logp[i, k] - m_i) (n, K) and the shift m_i (n,).

    m_i is the largest component log density among components of positive weight. Working with
    the shift rather than log weights keeps identical components exact: every exponent is 0.0,
    so the row is the weight vector itself.
    """
    live = w > 0
    shift = np.max(logp[:, live], axis=1)
    scaled = np.zeros_like(logp)
    scaled[:, live] = w[live] * np.exp(logp[:, live] - shift[:, None])
    return scaled, shift


def _scaled_joint(X, means, covs, weights):
    """Checked inputs -> _scaled_from_logp."""
    logp = component_log_densities(X, means, covs)
    w = _as_weights(weights, logp.shape[1])
    return _scaled_from_logp(logp, w)


def pointwise_log_likelihood(X, means, covs, weights) -> np.ndarray:
    """log p(x_i) = log sum_k weights[k] N(x_i | means[k], covs[k]) for each point: (n,)."""
    scaled, shift = _scaled_joint(X, means, covs, weights)
    return shift + np.log(np.sum(scaled, axis=1))


def log_likelihood(X, means, covs, weights) -> float:
    """Total log-likelihood sum_i log p(x_i) of X (n, d) under the mixture (K components)."""
    return float(np.sum(pointwise_log_likelihood(X, means, covs, weights)))


def responsibilities(X, means, covs, weights) -> np.ndarray:
    """The exact posterior of the labels, p(z_i = k | x_i): X (n, d) -> (n, K), rows sum to 1.

    When all components are identical, each row equals ``weights`` exactly (Theorem 1: a flat
    likelihood in z_i gives posterior = prior).
    """
    scaled, _ = _scaled_joint(X, means, covs, weights)
    return scaled / np.sum(scaled, axis=1, keepdims=True)


def _kl_rows(P: np.ndarray, Q: np.ndarray) -> np.ndarray:
    """KL(P[i] || Q[i]) per row, with 0 log 0 = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(P > 0, P * (np.log(P) - np.log(Q)), 0.0)
    return np.sum(terms, axis=-1)


def posterior_kl_to_prior(resp, weights) -> np.ndarray:
    """KL(p(z_i | x_i) || p(z_i)) per point, from responsibilities (n, K) and prior weights (K,).

    Returns (n,). It is 0 for every point exactly when the posterior has collapsed (Definition 1);
    its maximum, for a label known with certainty under equal weights, is log K.
    """
    resp = np.asarray(resp, dtype=np.float64)
    w = _as_weights(weights)
    if resp.ndim != 2 or resp.shape[1] != w.shape[0]:
        raise ValueError(
            f"resp must have shape (n, {w.shape[0]}) to match weights, got {resp.shape}"
        )
    return _kl_rows(resp, np.broadcast_to(w, resp.shape))


def mutual_information(resp) -> float:
    """I(z; x) under the fitted model with x drawn from the data: mean_i KL(p(z | x_i) || r_bar),
    r_bar the average responsibility (the aggregate posterior). resp (n, K) -> float.

    mean_i KL(p(z | x_i) || prior) = I(z; x) + KL(r_bar || prior), so the mean KL to the prior
    is an upper bound; the two agree when the aggregate posterior equals the prior.
    """
    resp = np.asarray(resp, dtype=np.float64)
    if resp.ndim != 2:
        raise ValueError(f"resp must have shape (n, K), got {resp.shape}")
    rbar = resp.mean(axis=0)
    return float(np.mean(_kl_rows(resp, np.broadcast_to(rbar, resp.shape))))


# --------------------------------------------------------------------------------------------
# maximum likelihood by EM
# --------------------------------------------------------------------------------------------
@dataclass
class EMResult:
    """A fitted mixture: means (K, d), covs (K, d, d), weights (K,), and the log-likelihood
    after each iteration (``trace[0]`` is at the initial parameters)."""

    means: np.ndarray
    covs: np.ndarray
    weights: np.ndarray
    trace: np.ndarray = field(repr=False)
    converged: bool
    learned_weights: bool

    @property
    def log_likelihood(self) -> float:
        return float(self.trace[-1])

    @property
    def n_iter(self) -> int:
        return len(self.trace) - 1


def fit_em(
    X,
    K: int,
    weights=None,
    *,
    n_iter: int = 1000,
    tol: float = 1e-10,
    seed: int = 0,
    reg: float = 0.0,
    init_means=None,
) -> EMResult:
    """Maximum-likelihood K-component Gaussian mixture (full covariances) by EM.

    X (n, d). ``weights``: None keeps them fixed at 1/K (the GMVAE's prior Categorical(1/K));
    an array (K,) keeps them fixed at that value; the string ``"learn"`` estimates them too.
    Starts from K distinct data points chosen by ``seed`` (or ``init_means`` (K, d)) with the
    data's covariance. Stops when the mean log-likelihood per point rises by less than ``tol``, or
    after ``n_iter`` iterations. ``reg`` adds reg * I to each covariance (0 keeps EM exact, so the
    log-likelihood never decreases).
    """
    X = _as_data(X)
    K = _check_count("K", K)
    n_iter = _check_count("n_iter", n_iter, minimum=0)
    n, d = X.shape
    if n < K:
        raise ValueError(f"need at least K = {K} points, got n = {n}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol!r}")
    if not reg >= 0:
        raise ValueError(f"reg must be >= 0, got {reg!r}")
    learn = isinstance(weights, str)
    if learn and weights != "learn":
        raise ValueError(f"weights must be None, an array (K,) or 'learn', got {weights!r}")
    w = np.full(K, 1.0 / K) if (weights is None or learn) else _as_weights(weights, K)

    if init_means is None:
        rng = np.random.default_rng(seed)
        means = X[rng.choice(n, size=K, replace=False)].copy()
    else:
        means = np.array(init_means, dtype=np.float64)
        if means.shape != (K, d):
            raise ValueError(f"init_means must have shape {(K, d)}, got {means.shape}")
    cov0 = np.atleast_2d(np.cov(X.T, bias=True)) + reg * np.eye(d)
    if n == 1 or np.linalg.eigvalsh(cov0)[0] <= 0:
        cov0 = cov0 + 1e-6 * np.eye(d)
    covs = np.repeat(cov0[None], K, axis=0)

    trace = []
    converged = False
    for it in range(n_iter + 1):
        # E-step; its normaliser is also the log-likelihood at the current parameters.
        try:
            chols = np.linalg.cholesky(covs)
        except np.linalg.LinAlgError:
            raise ValueError(
                "a fitted covariance became singular; use reg > 0 or fewer components"
            ) from None
        scaled, shift = _scaled_from_logp(_log_densities(X, means, chols), w)
        total = np.sum(scaled, axis=1)
        trace.append(float(np.sum(shift + np.log(total))))
        if it > 0 and (trace[-1] - trace[-2]) / n < tol:
            converged = True
            break
        if it == n_iter:
            break
        resp = scaled / total[:, None]
        nk = resp.sum(axis=0)
        if np.any(nk <= 0):
            raise ValueError(
                f"a component lost all its points (counts {nk.tolist()}); "
                "try another seed or fewer components"
            )
        means = (resp.T @ X) / nk[:, None]  # M-step
        for k in range(K):
            diff = X - means[k]
            covs[k] = (resp[:, k, None] * diff).T @ diff / nk[k] + reg * np.eye(d)
            covs[k] = 0.5 * (covs[k] + covs[k].T)
        if learn:
            w = nk / n
    return EMResult(means, covs.copy(), w, np.asarray(trace), converged, learn)


def one_component_fit(X) -> tuple[np.ndarray, np.ndarray]:
    """The maximum-likelihood single Gaussian: the sample mean (d,) and biased covariance (d, d)."""
    X = _as_data(X)
    return X.mean(axis=0), np.atleast_2d(np.cov(X.T, bias=True))


def collapse_curve(
    ns,
    n_seeds: int,
    *,
    mean=(0.0, 0.0),
    cov=((1.0, 0.0), (0.0, 1.0)),
    K: int = 2,
    n_iter: int = 1000,
    tol: float = 1e-10,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Fit K-component, equal-weight GMMs by EM to one-Gaussian data sets of growing size.

    For each n in ``ns`` and each of ``n_seeds`` data sets, returns (len(ns), n_seeds) arrays:
    ``kl`` the mean KL(p(z_i | x_i) || Categorical(1/K)), ``mi`` the mutual information,
    ``gain`` the log-likelihood per point gained over the collapsed fit (both components equal to
    the one-Gaussian MLE), ``sep`` the largest distance between fitted means.
    """
    ns = [_check_count("n", v) for v in ns]
    n_seeds = _check_count("n_seeds", n_seeds)
    mean = np.asarray(mean, dtype=np.float64)
    cov = np.asarray(cov, dtype=np.float64)
    out = {key: np.empty((len(ns), n_seeds)) for key in ("kl", "mi", "gain", "sep")}
    prior = np.full(K, 1.0 / K)
    for a, n in enumerate(ns):
        for s in range(n_seeds):
            data_seed = seed + 1000 * a + s
            X, _ = sample_gmm(mean[None], cov[None], [1.0], n, seed=data_seed)
            fit = fit_em(X, K, n_iter=n_iter, tol=tol, seed=data_seed)
            resp = responsibilities(X, fit.means, fit.covs, fit.weights)
            m1, c1 = one_component_fit(X)
            out["kl"][a, s] = posterior_kl_to_prior(resp, prior).mean()
            out["mi"][a, s] = mutual_information(resp)
            collapsed = log_likelihood(X, m1[None], c1[None], [1.0])
            out["gain"][a, s] = (fit.log_likelihood - collapsed) / n
            gaps = fit.means[:, None, :] - fit.means[None, :, :]
            out["sep"][a, s] = np.sqrt(np.max(np.sum(gaps**2, axis=-1)))
    return out


def ellipse_points(mean, cov, n_std: float = 2.0, num: int = 100) -> np.ndarray:
    """Points (num, 2) on the contour at ``n_std`` Mahalanobis units of a 2-d Gaussian."""
    mean = np.asarray(mean, dtype=np.float64)
    cov = np.asarray(cov, dtype=np.float64)
    if mean.shape != (2,) or cov.shape != (2, 2):
        raise ValueError(f"need a 2-d Gaussian, got mean {mean.shape} and cov {cov.shape}")
    t = np.linspace(0.0, 2.0 * np.pi, num)
    circle = np.stack([np.cos(t), np.sin(t)], axis=1)
    return mean + n_std * circle @ np.linalg.cholesky(cov).T


def plot_fit(ax, X, means, covs, weights, title: str = ""):
    """Scatter X (n, 2) coloured by p(z_i = 2 | x_i) (component index 1) with each fitted
    component's 1- and 2-sigma ellipses; returns the scatter for a colour bar."""
    resp = responsibilities(X, means, covs, weights)
    sc = ax.scatter(X[:, 0], X[:, 1], c=resp[:, 1], s=8, vmin=0.0, vmax=1.0, cmap="coolwarm")
    styles = ("-", "--", ":", "-.")
    for k in range(len(means)):
        for n_std in (1.0, 2.0):
            pts = ellipse_points(means[k], covs[k], n_std)
            ax.plot(
                pts[:, 0],
                pts[:, 1],
                color="k",
                ls=styles[k % 4],
                lw=1.2,
                label=f"component {k + 1} (1, 2 sd)" if n_std == 1.0 else None,
            )
        ax.plot(*means[k], marker="x", color="k", ms=7)
    ax.set(xlabel="$x_1$", ylabel="$x_2$", title=title)
    ax.set_aspect("equal", adjustable="datalim")
    return sc


# --------------------------------------------------------------------------------------------
# the global latent: a Pyro model of the mixture weights
# --------------------------------------------------------------------------------------------
def mixture_weights_model(
    X,
    K: int,
    alpha=1.0,
    fixed_means=None,
    fixed_scales=None,
    mean_prior_scale: float = 3.0,
    scale_prior_scale: float = 1.0,
):
    """Pyro model: pi ~ Dirichlet(alpha 1_K), x_i ~ sum_k pi_k N(mu_k, diag(sigma_k^2)).

    X is a float64 tensor (n, d). The labels z_i are summed out (``MixtureSameFamily`` takes a
    logsumexp over components), so every latent site is continuous and NUTS can run. Sites:
    ``pi`` (K,); unless fixed, ``mu`` (K, d) with prior N(0, mean_prior_scale^2) and ``sigma``
    (K, d) with prior LogNormal(0, scale_prior_scale^2). ``fixed_means`` (K, d) and
    ``fixed_scales`` (K, d) replace those sites by constants.
    """
    import pyro
    import pyro.distributions as dist
    import torch

    X = torch.as_tensor(X, dtype=torch.float64)
    if X.dim() != 2:
        raise ValueError(f"X must be a matrix (n, d), got shape {tuple(X.shape)}")
    K = _check_count("K", K)
    n, d = X.shape
    conc = torch.as_tensor(alpha, dtype=torch.float64) * torch.ones(K, dtype=torch.float64)
    if conc.shape != (K,) or not bool(torch.all(conc > 0)):
        raise ValueError(f"alpha must be > 0, a scalar or shape ({K},), got {alpha!r}")
    pi = pyro.sample("pi", dist.Dirichlet(conc))
    with pyro.plate("components", K):
        if fixed_means is None:
            loc = pyro.sample(
                "mu", dist.Normal(torch.zeros(d, dtype=torch.float64), mean_prior_scale).to_event(1)
            )
        else:
            loc = torch.as_tensor(fixed_means, dtype=torch.float64)
        if fixed_scales is None:
            scale = pyro.sample(
                "sigma",
                dist.LogNormal(torch.zeros(d, dtype=torch.float64), scale_prior_scale).to_event(1),
            )
        else:
            scale = torch.as_tensor(fixed_scales, dtype=torch.float64)
    if loc.shape != (K, d) or scale.shape != (K, d):
        raise ValueError(
            f"means and scales must have shape {(K, d)}, got {tuple(loc.shape)} "
            f"and {tuple(scale.shape)}"
        )
    mixture = dist.MixtureSameFamily(
        dist.Categorical(probs=pi), dist.Normal(loc, scale).to_event(1)
    )
    with pyro.plate("data", n):
        pyro.sample("x", mixture, obs=X)


def order_by_first_mean(pi, mu):
    """Undo label switching in MCMC samples: sort the components of each draw by the first
    coordinate of their mean. pi (S, K), mu (S, K, d) -> the same, reordered."""
    import torch

    order = torch.argsort(mu[..., 0], dim=-1)
    pi_sorted = torch.gather(pi, -1, order)
    mu_sorted = torch.gather(mu, 1, order[..., None].expand_as(mu))
    return pi_sorted, mu_sorted
