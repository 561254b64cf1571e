"""Collapse metrics, shared by every chapter: active units, KL to the prior, mutual information,
importance-weighted log-likelihood, cluster accuracy and the information a cluster label
carries; the smallest distance ratio of a decoder (an adversarial test of injectivity); and the
mean correlation coefficient (MCC) between the latents of two training runs, which measures
run-to-run stability.

The functions work with any model that exposes

* ``encode(x) -> torch.distributions.Distribution``: the approximate posterior q(z | x), batch
  shape (B,) and event shape (K,) (a Gaussian, a flow, or a mixture over a categorical latent);
* ``prior() -> Distribution``: p(z), event shape (K,);
* ``log_likelihood(x, z) -> Tensor``: log p(x | z), shape like ``z``'s batch dimensions.

Definitions follow the code of the lagging-encoder paper (He et al., 2019), which the source
papers' Table 1 uses: AU counts dimensions whose posterior mean varies across data points by at
least 0.01 (reported as a fraction); MI is estimated per mini-batch; the log-likelihood is the
IWAE estimate per data point.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
from torch import distributions as D

from lidvae_nb._checks import check_count


def _batches(data: torch.Tensor | Iterable, batch_size: int):
    """Yield tensors from a tensor (split along dim 0) or from an iterable of batches."""
    if isinstance(data, torch.Tensor):
        if data.dim() < 2:
            raise ValueError(f"data must be (N, ...) with N >= 1, got shape {tuple(data.shape)}")
        yield from data.split(batch_size)
        return
    for batch in data:
        yield batch[0] if isinstance(batch, list | tuple) else batch


def posterior_mean(q: D.Distribution, n_samples: int = 100) -> torch.Tensor:
    """E_q[z], closed form where the distribution has one, else a Monte Carlo average."""
    try:
        return q.mean
    except NotImplementedError:
        return q.sample((n_samples,)).mean(0)


@torch.no_grad()
def active_units(
    model, data, threshold: float = 0.01, batch_size: int = 500, fraction: bool = True
) -> float:
    """Active units: dimensions d with Var_x(E_q[z_d | x]) >= threshold.

    Returns the fraction of the K dimensions (the source papers' Table 1) or, with
    ``fraction=False``, the count.
    """
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0, got {threshold!r}")
    means = torch.cat([posterior_mean(model.encode(x)) for x in _batches(data, batch_size)])
    if means.shape[0] < 2:
        raise ValueError(f"active units need at least 2 data points, got {means.shape[0]}")
    variances = means.var(dim=0, unbiased=True)
    count = int((variances >= threshold).sum())
    return count / means.shape[1] if fraction else float(count)


def _kl_to_prior(q: D.Distribution, p: D.Distribution, n_samples: int) -> torch.Tensor:
    try:
        return D.kl_divergence(q, p)
    except NotImplementedError:
        z = q.sample((n_samples,))
        return (q.log_prob(z) - p.log_prob(z)).mean(0)


@torch.no_grad()
def kl_to_prior(model, data, batch_size: int = 500, n_samples: int = 100) -> float:
    """Mean over data points of KL(q(z | x) || p(z)); closed form where torch has it, else MC."""
    prior = model.prior()
    total, count = 0.0, 0
    for x in _batches(data, batch_size):
        kl = _kl_to_prior(model.encode(x), prior, n_samples)
        total += float(kl.sum())
        count += kl.shape[0]
    return total / count


@torch.no_grad()
def mutual_information(model, data, batch_size: int = 500, n_samples: int = 1) -> float:
    """He et al.'s estimate of I_q(x; z) = E_x E_q[log q(z | x)] - E_x E_q[log q(z)].

    Per mini-batch of B points, log q(z) is approximated by
    logsumexp_j log q(z | x_j) - log B with ``n_samples`` draws per point; batches are weighted
    by their size. Noise can make it slightly negative when the true value is near 0.
    """
    check_count("n_samples", n_samples)
    total, count = 0.0, 0
    for x in _batches(data, batch_size):
        q = model.encode(x)
        b = x.shape[0]
        if b < 2:
            continue
        z = q.sample((n_samples,))  # (S, B, K)
        log_q_own = q.log_prob(z)  # (S, B)
        # log q(z_si | x_j) for every sample s, point i and encoder j: (S, B, B)
        log_q_all = q.log_prob(z.unsqueeze(2))
        log_q_agg = torch.logsumexp(log_q_all, dim=2) - math.log(b)
        total += float((log_q_own - log_q_agg).mean(0).sum())
        count += b
    if count == 0:
        raise ValueError("mutual information needs batches of at least 2 data points")
    return total / count


def _inflated(q: D.Distribution, factor: float) -> D.Distribution:
    """q with its variances multiplied by ``factor``; q must be a diagonal Gaussian."""
    if factor == 1.0:
        return q
    base = q.base_dist if isinstance(q, D.Independent) else None
    if not isinstance(base, D.Normal):
        raise ValueError(
            "proposal_inflation != 1 needs a diagonal Gaussian q(z | x) "
            f"(Independent(Normal)), got {type(q).__name__}"
        )
    return D.Independent(D.Normal(base.loc, base.scale * math.sqrt(factor)), 1)


@torch.no_grad()
def iwae_log_likelihood(
    model,
    data,
    n_samples: int = 500,
    chunk_size: int = 100,
    batch_size: int = 100,
    proposal_inflation: float = 1.0,
) -> torch.Tensor:
    """IWAE estimate of log p(x) per point: logsumexp_s [log p(x, z_s) - log r(z_s | x)] - log S.

    The proposal r is q(z | x), or, with ``proposal_inflation`` = c > 1, the diagonal Gaussian q
    with its variances multiplied by c, which covers a peaked posterior better (Yacoby et al. use
    c = 2 and S = 5000). ``n_samples`` importance samples per point, drawn ``chunk_size`` at a time
    so that memory stays bounded. Returns a (N,) tensor; its mean is the test log-likelihood.
    """
    check_count("n_samples", n_samples)
    check_count("chunk_size", chunk_size)
    if not (math.isfinite(proposal_inflation) and proposal_inflation > 0):
        raise ValueError(f"proposal_inflation must be > 0, got {proposal_inflation!r}")
    prior = model.prior()
    out = []
    for x in _batches(data, batch_size):
        q = _inflated(model.encode(x), float(proposal_inflation))
        chunks = []
        left = n_samples
        while left > 0:
            s = min(chunk_size, left)
            z = q.sample((s,))  # (s, B, K)
            log_w = prior.log_prob(z) + model.log_likelihood(x, z) - q.log_prob(z)
            chunks.append(log_w)
            left -= s
        log_w = torch.cat(chunks, dim=0)
        out.append(torch.logsumexp(log_w, dim=0) - math.log(n_samples))
    return torch.cat(out)


def _contingency(labels, clusters) -> np.ndarray:
    """Counts (clusters x labels) of how often each cluster meets each label."""
    labels = np.asarray(labels).ravel()
    clusters = np.asarray(clusters).ravel()
    if labels.shape != clusters.shape or labels.size == 0:
        raise ValueError(
            f"labels and clusters must be non-empty and of equal length, got {labels.shape} and "
            f"{clusters.shape}"
        )
    label_ids, label_idx = np.unique(labels, return_inverse=True)
    cluster_ids, cluster_idx = np.unique(clusters, return_inverse=True)
    counts = np.zeros((cluster_ids.size, label_ids.size), dtype=np.int64)
    np.add.at(counts, (cluster_idx, label_idx), 1)
    return counts


def cluster_accuracy(labels, clusters) -> float:
    """Accuracy of cluster assignments after the best one-to-one matching to labels (Hungarian).

    Works with any number of clusters and classes; unmatched clusters count as errors.
    """
    from scipy.optimize import linear_sum_assignment

    counts = _contingency(labels, clusters)
    rows, cols = linear_sum_assignment(-counts)
    return float(counts[rows, cols].sum() / counts.sum())


def majority_accuracy(labels, clusters) -> float:
    """Accuracy when each cluster predicts its most frequent label (majority vote), as the original
    LIDVAE code counts it. Several clusters may predict one label, so it is never below
    :func:`cluster_accuracy` (the one-to-one Hungarian matching)."""
    counts = _contingency(labels, clusters)
    return float(counts.max(1).sum() / counts.sum())


@torch.no_grad()
def learning_curve_point(
    model,
    data,
    labels=None,
    *,
    bound_samples: int = 10,
    iwae_samples: int = 50,
    batch_size: int = 100,
) -> dict[str, float]:
    """What the original LIDVAE code logs once an epoch, beside the per-image IWAE, on ``data``:

    * ``elbo``: the ELBO (one sample), mean per point; ``kl_term`` its KL term, and for the
      mixture models ``kl_y`` (KL(q(y | x) || p(y))) and ``kl_z`` (E_q(y|x) KL(q(z | x, y) ||
      p(z | y))), the columns of that code's log;
    * ``ref_bound``: that code's estimator, the log-mean-exp over ``bound_samples`` draws of the
      ELBO averaged over all of ``data`` (it averages the bound over the images before the
      log-mean-exp, so it is about the ELBO and never tighter than the per-image IWAE); the
      original also leaves out the entropy of q(y | x), at most log K nats, which is kept here;
    * ``iwae``: the per-image IWAE estimate with ``iwae_samples`` samples (0: skipped);
    * for models with ``cluster_probs``, given ``labels``: ``acc_majority``
      (:func:`majority_accuracy`, the original's count) and ``acc_hungarian``
      (:func:`cluster_accuracy`).
    """
    bound_samples = check_count("bound_samples", bound_samples)
    iwae_samples = check_count("iwae_samples", iwae_samples, minimum=0)
    n = sum(len(x) for x in _batches(data, batch_size))
    draws = []
    first: dict[str, float] = {}
    for s in range(bound_samples):
        total = 0.0
        for x in _batches(data, batch_size):
            out = model.loss(x)
            total += float(out["loss"]) * len(x)
            if s == 0:
                for key, value in out.items():
                    if key != "loss":
                        first[key] = first.get(key, 0.0) + float(value.sum())
        draws.append(-total / n)
    point = {
        "elbo": draws[0],
        "ref_bound": float(torch.logsumexp(torch.tensor(draws), 0)) - math.log(bound_samples),
    }
    point.update({k: v / n for k, v in first.items() if k != "rec"})
    if iwae_samples:
        point["iwae"] = float(iwae_log_likelihood(model, data, n_samples=iwae_samples).mean())
    if hasattr(model, "cluster_probs") and labels is not None:
        probs = torch.cat([model.cluster_probs(x) for x in _batches(data, batch_size)])
        clusters = probs.argmax(1).cpu().numpy()
        point["acc_majority"] = majority_accuracy(labels, clusters)
        point["acc_hungarian"] = cluster_accuracy(labels, clusters)
    return point


@torch.no_grad()
def cluster_information(probs: torch.Tensor) -> tuple[float, float]:
    """``(I(y; x), mean H(q(y | x)))`` in nats from the rows q(y | x_i) of ``probs`` (N, C).

    I(y; x) = H(mean_i q(y | x_i)) - mean_i H(q(y | x_i)) is the mutual information between the
    data and the categorical latent under the encoder: zero exactly when q(y | x) is the same for
    every x (a collapsed label), at most log C.
    """
    if probs.dim() != 2 or probs.shape[0] == 0:
        raise ValueError(f"probs must be (N, C) with N >= 1, got shape {tuple(probs.shape)}")
    total = probs.sum(1)
    if probs.min() < 0 or not torch.allclose(total, torch.ones_like(total), atol=1e-4):
        raise ValueError("each row of probs must be a probability vector (non-negative, sum 1)")
    mean_entropy = D.Categorical(probs=probs).entropy().mean()
    return float(D.Categorical(probs=probs.mean(0)).entropy() - mean_entropy), float(mean_entropy)


def closest_pair_ratio(
    decoder, latent_dim: int, n_starts: int = 128, steps: int = 200, seed: int = 0, box: float = 3.0
) -> tuple[float, np.ndarray, np.ndarray]:
    """The smallest ``|f(z) - f(z')| / |z - z'|`` an adversary finds for the map ``decoder``.

    Adam (learning rate 0.05) minimises the log of the ratio over ``n_starts`` random pairs
    at once for ``steps`` steps, with both codes kept in the box ``[-box, box]^latent_dim``
    (``box * tanh`` of free parameters). Returns ``(ratio, z, z')`` for the best pair whose
    codes are still more than 1e-3 apart. An injective decoder with the bound of Proposition 2
    keeps the ratio above ``gamma_1 gamma_2``; a decoder that folds the space gives a ratio
    near zero, at two distinct codes.
    """
    check_count("latent_dim", latent_dim)
    check_count("n_starts", n_starts)
    check_count("steps", steps)
    if not box > 0:
        raise ValueError(f"box must be > 0, got {box!r}")
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(2, n_starts, latent_dim, generator=gen).requires_grad_(True)
    opt = torch.optim.Adam([a], lr=0.05)
    for _ in range(steps):
        z, z2 = box * torch.tanh(a)
        gap = (decoder(z) - decoder(z2)).norm(dim=1)
        log_ratio = torch.log(gap + 1e-12) - torch.log((z - z2).norm(dim=1) + 1e-12)
        opt.zero_grad()
        log_ratio.sum().backward()
        opt.step()
    with torch.no_grad():
        z, z2 = box * torch.tanh(a)
        distance = (z - z2).norm(dim=1)
        ratio = (decoder(z) - decoder(z2)).norm(dim=1) / distance
        i = int(torch.where(distance > 1e-3, ratio, torch.inf).argmin())
    if not math.isfinite(float(ratio[i])):
        raise RuntimeError("every pair of codes merged into one point; no ratio to report")
    return float(ratio[i]), z[i].numpy(), z2[i].numpy()


@torch.no_grad()
def collapse_report(
    model, data, *, iwae_samples: int = 500, batch_size: int = 500, labels=None
) -> dict[str, float]:
    """Every collapse metric of the model on ``data`` (held-out data, as in Table 1), in one dict.

    Keys: ``au`` (fraction), ``kl``, ``mi``, ``log_likelihood`` (IWAE, mean per point; skipped with
    ``iwae_samples=0``) and, for models with ``cluster_probs(x)``,
    ``cluster_mi`` (I(y; x) under the encoder, :func:`cluster_information`), ``cluster_entropy``
    (mean entropy of q(y | x), in nats) and, given ``labels``, ``cluster_accuracy``.
    """
    was_training = model.training
    model.eval()
    try:
        report = {
            "au": active_units(model, data, batch_size=batch_size),
            "kl": kl_to_prior(model, data, batch_size=batch_size),
            "mi": mutual_information(model, data, batch_size=batch_size),
        }
        if iwae_samples:
            ll = iwae_log_likelihood(model, data, n_samples=iwae_samples)
            report["log_likelihood"] = float(ll.mean())
        if hasattr(model, "cluster_probs"):
            probs = torch.cat([model.cluster_probs(x) for x in _batches(data, batch_size)])
            report["cluster_mi"], report["cluster_entropy"] = cluster_information(probs)
            if labels is not None:
                report["cluster_accuracy"] = cluster_accuracy(labels, probs.argmax(1).cpu().numpy())
    finally:
        model.train(was_training)
    return report


def _standardise_latent(name: str, z) -> np.ndarray:
    z = np.asarray(z.detach().cpu() if isinstance(z, torch.Tensor) else z, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] < 2 or z.shape[1] < 1:
        raise ValueError(f"{name} must have shape (N, K) with N >= 2 and K >= 1, got {z.shape}")
    if not np.all(np.isfinite(z)):
        raise ValueError(f"{name} must be finite, got NaN or inf entries")
    sd = z.std(axis=0)
    flat = np.flatnonzero(sd <= 1e-12 * (1.0 + np.abs(z).max(axis=0)))
    if flat.size:
        raise ValueError(f"{name} has constant columns {flat.tolist()}: correlation is undefined")
    return (z - z.mean(axis=0)) / sd


def mean_correlation_coefficient(z1, z2, kind: str = "strong") -> float:
    """Mean correlation coefficient (MCC) between two representations of the same N points.

    ``z1`` (N, K1) and ``z2`` (N, K2), for example the posterior means of two training runs on
    the same held-out data. Two kinds, as in Khemakhem et al. (2020) and Kivva et al. (2022):

    * ``"strong"``: the absolute Pearson correlations between the columns of z1 and of z2,
      matched one to one so that their sum is largest (Hungarian algorithm); the mean over the
      min(K1, K2) matched pairs. It is 1 when z2 is z1 up to a permutation, rescaling (signs
      included) and shift of its coordinates.
    * ``"weak"``: the mean of the min(K1, K2) canonical correlations (CCA): the MCC after the
      best linear map of each side, hence 1 when z2 is any invertible affine image of z1.

    Both are near 0 for independent representations (for "weak", about sqrt(K / N) from
    in-sample fitting).
    """
    from scipy.optimize import linear_sum_assignment

    if kind not in ("strong", "weak"):
        raise ValueError(f"kind must be 'strong' or 'weak', got {kind!r}")
    a, b = _standardise_latent("z1", z1), _standardise_latent("z2", z2)
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"z1 and z2 must describe the same points: got {a.shape[0]} and {b.shape[0]} rows"
        )
    n = a.shape[0]
    if kind == "strong":
        corr = np.abs(a.T @ b / n)
        rows, cols = linear_sum_assignment(-corr)
        return float(corr[rows, cols].mean())
    # Canonical correlations: singular values of Q_a^T Q_b for orthonormal bases of the columns.
    qa, ra = np.linalg.qr(a)
    qb, rb = np.linalg.qr(b)
    for name, r in (("z1", ra), ("z2", rb)):
        d = np.abs(np.diag(r))
        if d.min() <= 1e-10 * d.max():
            raise ValueError(
                f"{name} has linearly dependent columns: canonical correlations need "
                "full column rank"
            )
    rho = np.linalg.svd(qa.T @ qb, compute_uv=False)
    return float(np.clip(rho, 0.0, 1.0).mean())


def pairwise_mcc(latents, kind: str = "strong") -> np.ndarray:
    """:func:`mean_correlation_coefficient` of every pair (i < j) of a list of representations
    of the same points (one per training run): an array of len(latents) * (len - 1) / 2 values."""
    latents = list(latents)
    if len(latents) < 2:
        raise ValueError(f"need at least 2 representations, got {len(latents)}")
    return np.array(
        [
            mean_correlation_coefficient(latents[i], latents[j], kind)
            for i in range(len(latents))
            for j in range(i + 1, len(latents))
        ]
    )


# --- tests of distributions (Yacoby et al.'s LiBI and its evaluation) -------------------------


def henze_zirkler(z: torch.Tensor) -> torch.Tensor:
    """The Henze-Zirkler statistic of the sample ``z`` (n, d): small when z looks Gaussian.

    HZ = n [ n^-2 sum_jk exp(-b^2 D_jk / 2)
    - 2 (1 + b^2)^(-d/2) n^-1 sum_j exp(-b^2 D_j / (2 + 2 b^2)) + (1 + 2 b^2)^(-d/2) ],
    with D_jk the squared Mahalanobis distance between z_j and z_k and D_j that of z_j from the
    mean, both under the sample covariance (divided by n), and the smoothing
    b = ((2d + 1) n / 4)^(1 / (d + 4)) / sqrt 2 (Henze and Zirkler, 1990). Differentiable in z;
    affine invariant. Raises ValueError when the sample covariance is singular.
    """
    if z.dim() != 2 or z.shape[0] < 3:
        raise ValueError(f"z must have shape (n, d) with n >= 3, got {tuple(z.shape)}")
    n, d = z.shape
    centred = z - z.mean(0)
    cov = centred.T @ centred / n
    chol, info = torch.linalg.cholesky_ex(cov)
    if int(info) != 0:
        raise ValueError("the sample covariance of z is singular: the statistic is undefined")
    w = torch.linalg.solve_triangular(chol, centred.T, upper=False).T  # whitened, (n, d)
    d_j = (w**2).sum(1)
    d_jk = (d_j[:, None] + d_j[None, :] - 2 * w @ w.T).clamp_min(0)
    b2 = (((2 * d + 1) * n / 4) ** (1 / (d + 4)) / math.sqrt(2)) ** 2
    return n * (
        torch.exp(-b2 / 2 * d_jk).sum() / n**2
        - 2 * (1 + b2) ** (-d / 2) * torch.exp(-b2 / (2 * (1 + b2)) * d_j).mean()
        + (1 + 2 * b2) ** (-d / 2)
    )


def smooth_knn_statistic(
    x: torch.Tensor, y: torch.Tensor, alphas=(0.5, 1.0, 2.0, 5.0, 10.0), scale: str = "median"
) -> torch.Tensor:
    """The smooth 1-nearest-neighbour two-sample statistic (Djolonga and Krause, 2017).

    Every point of the pooled sample spreads one unit of weight over the other points, w_ij =
    ``softmax_j(-alpha |u_i - u_j| / s)`` (the soft nearest neighbour), averaged over ``alphas``;
    T is the weight on pairs drawn from different samples. Returned standardised under the
    permutation null, -(T - E T) / sd T, so that it is near 0 on average when x and y come from one
    distribution and grows as they differ (the sign used by Yacoby et al.'s Table 1).

    ``x`` (n1, D) and ``y`` (n2, D), or batches (R, n1, D) and (R, n2, D) of R independent tests
    (then the result has shape (R,)). The distance unit s is the median pooled distance of each
    test (``scale="median"``, so the statistic does not depend on the data's units) or 1
    (``scale="none"``). Differentiable in x and y.
    """
    if x.dim() != y.dim() or x.dim() not in (2, 3) or x.shape[-1] != y.shape[-1]:
        raise ValueError(
            "x and y must be (n, D) or (R, n, D) with the same D, got shapes "
            f"{tuple(x.shape)} and {tuple(y.shape)}"
        )
    if scale not in ("median", "none"):
        raise ValueError(f"scale must be 'median' or 'none', got {scale!r}")
    alphas = tuple(float(a) for a in alphas)
    if not alphas or min(alphas) <= 0:
        raise ValueError(f"alphas must be positive numbers, got {alphas!r}")
    single = x.dim() == 2
    if single:
        x, y = x.unsqueeze(0), y.unsqueeze(0)
    n1, n2 = x.shape[1], y.shape[1]
    n = n1 + n2
    if n1 < 2 or n2 < 2:
        raise ValueError(f"each sample needs at least 2 points, got {n1} and {n2}")
    u = torch.cat([x, y], 1)
    dist = torch.cdist(u, u)
    eye = torch.eye(n, dtype=torch.bool, device=u.device)
    if scale == "median":
        off = dist.masked_select(~eye).reshape(dist.shape[0], -1)
        dist = dist / off.median(-1).values.detach().clamp_min(1e-12)[:, None, None]
    dist = dist.masked_fill(eye, math.inf)
    w = sum(torch.softmax(-a * dist, -1) for a in alphas) / len(alphas)
    group = torch.arange(n, device=u.device) >= n1
    cross = group[:, None] != group[None, :]
    t = (w * cross).sum((-2, -1))
    # Permutation moments of T = sum over unordered pairs e of s_e c_e, where s_e = w_ij + w_ji and
    # c_e = 1 when the pair is split between the samples. With S = sum s_e, Q = sum s_e^2 and
    # V = sum_i (strength of node i)^2: E T = 2 chi1 S and
    # Var T = chi1 chi2 Q + chi1 (1 - chi2) V + chi1 (chi2 - 4 chi1) S^2.
    s = w + w.transpose(-2, -1)
    total = s.sum((-2, -1)) / 2
    squares = (s**2).sum((-2, -1)) / 2
    strengths = (s.sum(-1) ** 2).sum(-1)
    chi1 = n1 * n2 / (n * (n - 1))
    chi2 = 4 * (n1 - 1) * (n2 - 1) / ((n - 2) * (n - 3))
    mean = 2 * chi1 * total
    var = (
        chi1 * chi2 * squares + chi1 * (1 - chi2) * strengths + chi1 * (chi2 - 4 * chi1) * total**2
    )
    out = -(t - mean) / var.clamp_min(1e-12).sqrt()
    return out[0] if single else out
