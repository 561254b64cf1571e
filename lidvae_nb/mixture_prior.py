"""Identifiability under mixture priors (Kivva et al., 2022): piecewise-affine decoders.

- :func:`check_injectivity`: the activation regions of a ReLU or leaky-ReLU MLP met by a sample,
  each region's affine map, and whether the network is injective (F3) or weakly injective (F2)
  as far as that sample can tell.
- :class:`ReluGMM`: the model x = f(z) + eps with a one-hidden-layer ReLU decoder f, a
  one-dimensional Gaussian-mixture prior on z and Gaussian noise. f is affine on finitely many
  intervals, and on each one the integral over z has a closed form (a Gaussian times a normal
  CDF difference), so the marginal likelihood is exact; a grid quadrature checks it.
- :func:`likelihood_profile` and :func:`profile_study`: negative log-likelihood profiles through
  the true parameter, and the simulation study of Kivva et al.'s Sec. 4 (random decoders, J = 2
  or 3 components, misspecified J, decoders that are not injective).

Everything is numpy float64.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from scipy.special import log_ndtr, logsumexp

from lidvae_nb._checks import check_count

_LOG_2PI = float(np.log(2.0 * np.pi))


# --------------------------------------------------------------------------------------------
# Injectivity of a piecewise-affine network, on a sample
# --------------------------------------------------------------------------------------------
def _layers(net) -> list[tuple[str, object]]:
    """The network as a list of ('affine', (W, b)) and ('act', slope) steps, float64 numpy."""
    from torch import nn

    if not isinstance(net, nn.Sequential) and isinstance(getattr(net, "net", None), nn.Sequential):
        net = net.net  # an MLPDecoder and the like
    if not isinstance(net, nn.Sequential):
        raise ValueError(
            f"net must be a torch.nn.Sequential of Linear, ReLU and LeakyReLU layers, "
            f"got {type(net).__name__}"
        )
    steps: list[tuple[str, object]] = []
    for layer in net:
        if isinstance(layer, nn.Sequential):
            steps += _layers(layer)
        elif isinstance(layer, nn.Linear):
            w = layer.weight.detach().cpu().double().numpy()
            b = (
                layer.bias.detach().cpu().double().numpy()
                if layer.bias is not None
                else np.zeros(w.shape[0])
            )
            steps.append(("affine", (w, b)))
        elif isinstance(layer, nn.ReLU):
            steps.append(("act", 0.0))
        elif isinstance(layer, nn.LeakyReLU):
            steps.append(("act", float(layer.negative_slope)))
        elif isinstance(layer, nn.Identity):
            continue
        else:
            raise ValueError(
                f"layer {type(layer).__name__} is not piecewise affine: expected Linear, ReLU, "
                "LeakyReLU or Identity"
            )
    if not steps or steps[0][0] != "affine":
        raise ValueError("net must start with a Linear layer")
    return steps


def _forward(steps, z: np.ndarray, with_jacobian: bool = False):
    """f(z) (N, n); with the Jacobian (N, n, m), the activation pattern (N, hidden units) and
    each point's smallest |pre-activation| relative to its size (0 on a kink)."""
    h = z
    jac = np.broadcast_to(np.eye(z.shape[1]), (z.shape[0], z.shape[1], z.shape[1]))
    pattern, margin = [], np.full(z.shape[0], np.inf)
    for kind, p in steps:
        if kind == "affine":
            w, b = p
            h = h @ w.T + b
            if with_jacobian:
                jac = np.einsum("ij,njk->nik", w, jac)
        else:
            on = h > 0
            slope = np.where(on, 1.0, p)
            if with_jacobian:
                size = 1.0 + np.abs(h).max(1)
                margin = np.minimum(margin, np.abs(h).min(1) / size)
                jac = jac * slope[:, :, None]
                pattern.append(on)
            h = h * slope
    if not with_jacobian:
        return h
    pattern = np.concatenate(pattern, 1) if pattern else np.zeros((z.shape[0], 0), bool)
    return h, jac, pattern, margin


def _region_constraints(steps, pattern_row: np.ndarray, m: int):
    """Linear inequalities G z <= g that keep z in the closed activation region of a pattern."""
    a, c = np.eye(m), np.zeros(m)
    rows, rhs = [], []
    k = 0
    for kind, p in steps:
        if kind == "affine":
            w, b = p
            a, c = w @ a, w @ c + b
        else:
            on = pattern_row[k : k + a.shape[0]]
            k += a.shape[0]
            sign = np.where(on, -1.0, 1.0)  # on: -(a z + c) <= 0; off: a z + c <= 0
            rows.append(sign[:, None] * a)
            rhs.append(-sign * c)
            slope = np.where(on, 1.0, p)
            a, c = slope[:, None] * a, slope * c
    if not rows:
        return np.zeros((0, m)), np.zeros(0)
    return np.concatenate(rows), np.concatenate(rhs)


def _in_region_image(steps, pattern_row, a, b, x, tol) -> bool:
    """Is x in the image of the closed region of ``pattern_row``, where f(z) = a z + b? (an LP)"""
    from scipy.optimize import linprog

    m = a.shape[1]
    g, h = _region_constraints(steps, pattern_row, m)
    res = linprog(
        np.zeros(m),
        A_ub=g if g.size else None,
        b_ub=h + tol if g.size else None,
        A_eq=a,
        b_eq=x - b,
        bounds=[(None, None)] * m,
        method="highs",
    )
    # a is rank deficient, so a feasible x has a whole polyhedron of preimages in the region.
    return res.status == 0


def relu_network(w1, b1, w2, b2, slope: float = 0.0):
    """The one-hidden-layer network z -> w2 act(w1 z + b1) + b2 as a float64
    ``torch.nn.Sequential``; act is the ReLU, or the leaky ReLU when ``slope`` > 0.
    Shapes: w1 (h, m), b1 (h,), w2 (n, h), b2 (n,)."""
    import torch
    from torch import nn

    w1, b1, w2, b2 = (torch.as_tensor(np.asarray(a, dtype=np.float64)) for a in (w1, b1, w2, b2))
    if w1.dim() != 2 or b1.shape != (w1.shape[0],) or w2.dim() != 2 or w2.shape[1] != w1.shape[0]:
        raise ValueError(
            f"expected w1 (h, m), b1 (h,), w2 (n, h), b2 (n,), got {tuple(w1.shape)}, "
            f"{tuple(b1.shape)}, {tuple(w2.shape)}, {tuple(b2.shape)}"
        )
    if b2.shape != (w2.shape[0],):
        raise ValueError(f"b2 must have shape ({w2.shape[0]},), got {tuple(b2.shape)}")
    act = nn.ReLU() if slope == 0 else nn.LeakyReLU(slope)
    net = nn.Sequential(nn.Linear(w1.shape[1], w1.shape[0]), act, nn.Linear(*w2.T.shape)).double()
    with torch.no_grad():
        net[0].weight.copy_(w1)
        net[0].bias.copy_(b1)
        net[2].weight.copy_(w2)
        net[2].bias.copy_(b2)
    return net


@dataclass
class InjectivityReport:
    """What a sample says about a piecewise-affine map f: R^m -> R^n.

    ``region_ranks``: rank of the linear part of f on each activation region met by the sample;
    ``unique``: per sample point, True when its region has full column rank and no other region
    met by the sample holds a second preimage of its image; ``witness``: two distinct points with
    the same image, when one was found. Sample points lying on a kink (a pre-activation within
    ``tol`` of 0) belong to no open region and are not assessed: their region is -1 and their
    ``unique`` entry False.
    """

    latent_dim: int
    n_points: int
    region_ranks: np.ndarray
    region_of_point: np.ndarray
    unique: np.ndarray
    witness: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def n_regions(self) -> int:
        return int(self.region_ranks.size)

    @property
    def on_kink(self) -> np.ndarray:
        return self.region_of_point < 0

    @property
    def full_rank(self) -> bool:
        """Every region met has an injective linear part (rank m)."""
        return bool(np.all(self.region_ranks == self.latent_dim))

    @property
    def n_overlapping(self) -> int:
        """Sample points in full-rank regions whose image has a second preimage."""
        full = (self.region_ranks[self.region_of_point] == self.latent_dim) & ~self.on_kink
        return int(np.sum(full & ~self.unique))

    @property
    def injective(self) -> bool:
        """Injectivity (F3) on the sample; full-rank regions whose images do not overlap."""
        return self.full_rank and self.n_overlapping == 0

    @property
    def weakly_injective(self) -> bool:
        """Weak injectivity (F2) on the sample; a point with a unique, full-rank preimage.

        With finitely many regions, points with infinitely many preimages lie in the images of
        rank-deficient regions, which have lower dimension than a full-rank region's image, so
        condition (ii) of (F2) holds as soon as one region has full rank; condition (i) needs a
        point whose image no other region reaches.
        """
        return bool(np.any(self.unique))


def check_injectivity(net, z, tol: float = 1e-7) -> InjectivityReport:
    """Check (F2) and (F3) of Kivva et al. for a ReLU or leaky-ReLU MLP on a sample ``z`` (N, m).

    ``net`` is a ``torch.nn.Sequential`` of Linear, ReLU, LeakyReLU (or a module holding one as
    ``.net``). For each activation region met by the sample, the linear part A_r of f is read off
    the Jacobian; a region has full rank when rank(A_r) = m. For each sample point x_i = f(z_i)
    and each full-rank region s, the unique solution of A_s z + b_s = x_i is computed and kept
    when f maps it to x_i and it differs from z_i: a second preimage. Rank-deficient regions are
    tested by a linear program (is x_i in the image of the closed region?). The answer holds for
    the regions the sample meets, which is why the sample should cover the prior's support.
    """
    steps = _layers(net)
    z = np.asarray(z, dtype=np.float64)
    m = steps[0][1][0].shape[1]
    if z.ndim != 2 or z.shape[1] != m or z.shape[0] < 1:
        raise ValueError(f"z must have shape (N, {m}) with N >= 1, got {z.shape}")
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol!r}")
    x, jac, pattern, margin = _forward(steps, z, with_jacobian=True)
    inside = margin > tol
    if not np.any(inside):
        raise ValueError(f"all {len(z)} points of z lie on kinks of the network")
    n_all = len(z)
    z, x, jac, pattern = z[inside], x[inside], jac[inside], pattern[inside]
    _, first, region_of_point = np.unique(pattern, axis=0, return_index=True, return_inverse=True)
    region_of_point = region_of_point.ravel()
    a_regions = jac[first]  # (R, n, m)
    b_regions = x[first] - np.einsum("rnm,rm->rn", a_regions, z[first])
    ranks = np.array([np.linalg.matrix_rank(a, tol=tol) for a in a_regions])
    scale = 1.0 + np.abs(x).max(axis=1)
    unique = ranks[region_of_point] == m
    witness = None
    for r in range(len(first)):
        a, b = a_regions[r], b_regions[r]
        if ranks[r] == m:
            z_star = (x - b) @ np.linalg.pinv(a).T
            hits = (np.abs(_forward(steps, z_star) - x).max(1) <= tol * scale) & (
                np.abs(z_star - z).max(1) > tol * (1.0 + np.abs(z).max(1))
            )
        else:
            # Candidates: points whose image lies in the affine hull of the region's image.
            sol, *_ = np.linalg.lstsq(a, (x - b).T, rcond=None)
            close = np.abs(a @ sol + b[:, None] - x.T).max(0) <= tol * scale
            close &= region_of_point != r
            hits = np.zeros(len(z), bool)
            for i in np.flatnonzero(close & unique):
                hits[i] = _in_region_image(steps, pattern[first[r]], a, b, x[i], tol)
        if witness is None and ranks[r] == m and np.any(hits & unique):
            i = int(np.flatnonzero(hits & unique)[0])
            witness = (z[i].copy(), z_star[i].copy())
        unique &= ~hits
    regions_all = np.full(n_all, -1)
    regions_all[inside] = region_of_point
    unique_all = np.zeros(n_all, bool)
    unique_all[inside] = unique
    return InjectivityReport(m, n_all, ranks, regions_all, unique_all, witness)


# --------------------------------------------------------------------------------------------
# One-hidden-layer ReLU decoder, 1-D Gaussian-mixture prior: exact marginal likelihood
# --------------------------------------------------------------------------------------------
def _log_ndtr_diff(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """log(Phi(hi) - Phi(lo)) for lo <= hi, accurate in both tails; -inf where lo == hi."""
    flip = lo > 0
    lo, hi = np.where(flip, -hi, lo), np.where(flip, -lo, hi)
    log_hi, log_lo = log_ndtr(hi), log_ndtr(lo)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = log_hi + np.log1p(-np.exp(log_lo - log_hi))
    return np.where(hi > lo, out, -np.inf)


def _pieces(w1, b1, w2, b2, slope):
    """Intervals where a one-hidden-layer (leaky-)ReLU map R -> R^n is affine, batched.

    Parameters carry a leading batch shape (...); returns lo, hi (..., h + 1) and a, c
    (..., h + 1, n) with f(z) = a_k z + c_k on [lo_k, hi_k]. A unit with w1 = 0 is constant and
    puts its kink at +inf, giving an empty last interval.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        kinks = np.where(w1 != 0, -b1 / w1, np.inf)
    kinks = np.sort(kinks, axis=-1)
    lead = kinks.shape[:-1]
    lo = np.concatenate([np.full((*lead, 1), -np.inf), kinks], -1)
    hi = np.concatenate([kinks, np.full((*lead, 1), np.inf)], -1)
    with np.errstate(invalid="ignore"):
        inside = np.where(
            np.isfinite(lo) & np.isfinite(hi),
            (lo + hi) / 2,
            np.where(np.isfinite(hi), hi - 1.0, np.where(np.isfinite(lo), lo + 1.0, 0.0)),
        )
    pre = inside[..., :, None] * w1[..., None, :] + b1[..., None, :]  # (..., K, h)
    d = np.where(pre > 0, 1.0, slope)
    a = np.einsum("...kh,...nh->...kn", d * w1[..., None, :], w2)
    c = np.einsum("...kh,...nh->...kn", d * b1[..., None, :], w2) + b2[..., None, :]
    return lo, hi, a, c


def _log_marginal(p: dict, noise: float, slope: float, x: np.ndarray) -> np.ndarray:
    """log p(x) (..., N) for parameters ``p`` with a leading batch shape (...) and x (N, n).

    On a piece where f(z) = a z + c, N(z; mu, s^2) N(x; a z + c, sigma^2 I) is a Gaussian in z
    with precision P = 1/s^2 + |a|^2/sigma^2 times a constant; its integral over the piece is
    that constant times sqrt(2 pi / P) times a difference of normal CDFs.
    """
    lo, hi, a, c = _pieces(p["w1"], p["b1"], p["w2"], p["b2"], slope)
    var = noise**2
    n = x.shape[-1]
    # axes: (..., N, J, K); the small factors are computed on (..., 1, J, K) first.
    r = x[..., :, None, :] - c[..., None, :, :]  # (..., N, K, n)
    ar = np.einsum("...ikd,...kd->...ik", r, a)[..., :, None, :]  # (..., N, 1, K)
    rr = np.einsum("...ikd,...ikd->...ik", r, r)[..., :, None, :]
    s2 = np.exp(2 * p["log_scales"])[..., None, :, None]  # (..., 1, J, 1)
    mu = p["means"][..., None, :, None]
    prec = 1.0 / s2 + (a * a).sum(-1)[..., None, None, :] / var  # (..., 1, J, K)
    root = np.sqrt(prec)
    # mean of z given x on the piece, in units of its sd: root * mean = alpha + beta * ar
    alpha, beta = mu / s2 / root, 1.0 / (var * root)
    lo, hi = lo[..., None, None, :], hi[..., None, None, :]
    log_w = p["logits"] - logsumexp(p["logits"], axis=-1, keepdims=True)
    const = (
        log_w[..., None, :, None]
        - 0.5 * np.log(s2)
        - 0.5 * n * (_LOG_2PI + np.log(var))
        - mu**2 / (2 * s2)
        - 0.5 * np.log(prec)
    )
    scaled_mean = alpha + beta * ar  # (..., N, J, K)
    with np.errstate(invalid="ignore"):
        log_mass = _log_ndtr_diff(lo * root - scaled_mean, hi * root - scaled_mean)
    terms = const - rr / (2 * var) + 0.5 * scaled_mean**2 + log_mass
    return logsumexp(terms.reshape(*terms.shape[:-2], -1), axis=-1)


PARAMETER_GROUPS = ("w1", "b1", "w2", "b2", "means", "log_scales", "logits")


@dataclass
class ReluGMM:
    """x = W2 relu(w1 z + b1) + b2 + eps, z ~ sum_j lambda_j N(mu_j, s_j^2), eps ~ N(0, sigma^2 I).

    Shapes: ``w1``, ``b1`` (h,); ``w2`` (n, h); ``b2`` (n,); ``means``, ``log_scales``, ``logits``
    (J,), with lambda = softmax(logits) and s = exp(log_scales). ``noise`` (sigma) is known and
    not a parameter of the profiles. ``slope`` > 0 turns the ReLU into a leaky ReLU.
    """

    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray
    means: np.ndarray
    log_scales: np.ndarray
    logits: np.ndarray
    noise: float = 0.2
    slope: float = 0.0

    def __post_init__(self):
        for name in PARAMETER_GROUPS:
            setattr(self, name, np.array(getattr(self, name), dtype=np.float64))
        h, j = self.w1.shape[0], self.means.shape[0]
        if self.w1.ndim != 1 or self.b1.shape != (h,) or h < 1:
            raise ValueError(
                f"w1 and b1 must have shape (h,) with h >= 1, got {self.w1.shape}, {self.b1.shape}"
            )
        if self.w2.ndim != 2 or self.w2.shape[1] != h or self.b2.shape != (self.w2.shape[0],):
            raise ValueError(
                f"w2 must be (n, {h}) and b2 (n,), got {self.w2.shape} and {self.b2.shape}"
            )
        if j < 1 or self.log_scales.shape != (j,) or self.logits.shape != (j,):
            raise ValueError(
                f"means, log_scales and logits must share a shape (J,), got {self.means.shape}, "
                f"{self.log_scales.shape}, {self.logits.shape}"
            )
        if not self.noise > 0:
            raise ValueError(f"noise must be > 0, got {self.noise!r}")
        if not 0 <= self.slope < 1:
            raise ValueError(f"slope must be in [0, 1), got {self.slope!r}")

    # -------------------------------------------------------------------------- basic pieces
    @property
    def data_dim(self) -> int:
        return self.w2.shape[0]

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @property
    def weights(self) -> np.ndarray:
        return np.exp(self.logits - logsumexp(self.logits))

    def decoder(self, z) -> np.ndarray:
        """f(z): (N,) -> (N, n)."""
        pre = np.asarray(z, dtype=np.float64)[:, None] * self.w1 + self.b1
        return np.where(pre > 0, pre, self.slope * pre) @ self.w2.T + self.b2

    def decoder_network(self):
        """f as a ``torch.nn.Sequential`` (float64), for :func:`check_injectivity`."""
        return relu_network(self.w1[:, None], self.b1, self.w2, self.b2, self.slope)

    def pieces(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The intervals on which f is affine: (lo, hi) (K,) each, and f(z) = a_k z + c_k with
        ``a`` and ``c`` (K, n)."""
        return _pieces(self.w1, self.b1, self.w2, self.b2, self.slope)

    # -------------------------------------------------------------------------- likelihood
    def _check_x(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.data_dim:
            raise ValueError(f"x must have shape (N, {self.data_dim}), got {x.shape}")
        return x

    def params(self) -> dict[str, np.ndarray]:
        return {g: getattr(self, g) for g in PARAMETER_GROUPS}

    def log_marginal(self, x) -> np.ndarray:
        """log p(x), exact (no quadrature error): (N, n) -> (N,).

        f is affine on each interval between its kinks; there the integral over z of
        N(z; mu_j, s_j^2) N(x; a z + c, sigma^2 I) is a Gaussian integral over an interval,
        in closed form.
        """
        return _log_marginal(self.params(), self.noise, self.slope, self._check_x(x))

    def log_marginal_quadrature(self, x, n_grid: int = 20001, width: float = 10.0) -> np.ndarray:
        """log p(x) by the trapezoid rule on a z grid reaching ``width`` prior scales beyond the
        outermost component mean (the reference for :meth:`log_marginal`)."""
        x = self._check_x(x)
        s = np.exp(self.log_scales)
        grid = np.linspace((self.means - width * s).min(), (self.means + width * s).max(), n_grid)
        log_prior = logsumexp(
            self.logits[:, None]
            - logsumexp(self.logits)
            - 0.5 * ((grid - self.means[:, None]) / s[:, None]) ** 2
            - np.log(s)[:, None]
            - 0.5 * _LOG_2PI,
            axis=0,
        )
        out = np.empty(len(x))
        fz = self.decoder(grid)  # (G, n)
        w = np.full(n_grid, grid[1] - grid[0])
        w[[0, -1]] /= 2
        for start in range(0, len(x), 256):
            xb = x[start : start + 256]
            sq = ((xb[:, None, :] - fz[None]) ** 2).sum(-1)
            log_lik = -sq / (2 * self.noise**2) - 0.5 * self.data_dim * (
                _LOG_2PI + 2 * np.log(self.noise)
            )
            out[start : start + 256] = logsumexp(log_lik + log_prior + np.log(w), axis=1)
        return out

    def nll(self, x) -> float:
        """Mean negative log-likelihood per point."""
        return float(-self.log_marginal(x).mean())

    def sample(self, n: int, seed=0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x (n, data_dim), z (n,), component (n,)) drawn from the model."""
        check_count("n", n)
        rng = np.random.default_rng(seed)
        comp = rng.choice(self.n_components, size=int(n), p=self.weights)
        z = self.means[comp] + np.exp(self.log_scales[comp]) * rng.normal(size=int(n))
        x = self.decoder(z) + self.noise * rng.normal(size=(int(n), self.data_dim))
        return x, z, comp

    # -------------------------------------------------------------------------- parameters
    def vector(self) -> np.ndarray:
        """Every parameter in one flat vector, in the order of :attr:`coordinate_names`."""
        return np.concatenate([getattr(self, g).ravel() for g in PARAMETER_GROUPS])

    @property
    def coordinate_names(self) -> list[str]:
        """A readable name for every entry of :meth:`vector`, such as ``"w1[0, 1]"``."""
        names = []
        for g in PARAMETER_GROUPS:
            value = getattr(self, g)
            names += [f"{g}[{', '.join(map(str, i))}]" for i in np.ndindex(value.shape)]
        return names

    def with_vector(self, v) -> ReluGMM:
        """A copy with every parameter taken from the flat vector ``v``."""
        v = np.asarray(v, dtype=np.float64)
        if v.shape != (len(self.vector()),):
            raise ValueError(f"v must have shape ({len(self.vector())},), got {v.shape}")
        out, k = {}, 0
        for g in PARAMETER_GROUPS:
            shape = getattr(self, g).shape
            size = int(np.prod(shape))
            out[g] = v[k : k + size].reshape(shape)
            k += size
        return replace(self, **out)

    def affine_image(self, scale: float, shift: float) -> ReluGMM:
        """The same distribution of x written in the latent z' = scale * z + shift (scale != 0):
        the equivalence up to which Theorem 3.5 identifies the model."""
        if scale == 0:
            raise ValueError("scale must be non-zero, got 0")
        w1 = self.w1 / scale
        return replace(
            self,
            w1=w1,
            b1=self.b1 - w1 * shift,
            means=scale * self.means + shift,
            log_scales=self.log_scales + np.log(abs(scale)),
        )

    def split_component(self, j: int = 0) -> ReluGMM:
        """The same distribution with J + 1 components: component ``j`` cut into two equal
        halves (an over-specified J that still contains the truth)."""
        if not 0 <= j < self.n_components:
            raise ValueError(f"j must be in [0, {self.n_components}), got {j!r}")
        logits = self.logits - logsumexp(self.logits)
        half = logits[j] - np.log(2.0)
        return replace(
            self,
            means=np.append(self.means, self.means[j]),
            log_scales=np.append(self.log_scales, self.log_scales[j]),
            logits=np.append(np.where(np.arange(len(logits)) == j, half, logits), half),
        )

    @classmethod
    def random(
        cls,
        n_components: int = 2,
        n_hidden: int = 3,
        data_dim: int = 3,
        noise: float = 0.2,
        seed=0,
    ) -> ReluGMM:
        """A random model: component means N(0, 1.5^2), scales in [0.3, 0.8], weights from a
        Dirichlet(3) kept above 0.1; decoder weights N(0, 1) with ``|w1| >= 0.5`` and each hidden
        unit's kink within one scale of a component's mean, so that every unit changes f where
        the data lie."""
        rng = np.random.default_rng(seed)
        j = n_components
        means = np.sort(rng.normal(0.0, 1.5, size=j))
        log_scales = np.log(rng.uniform(0.3, 0.8, size=j))
        lam = rng.dirichlet(np.full(j, 3.0))
        lam = np.maximum(lam, 0.1)
        lam /= lam.sum()
        w1 = rng.normal(size=n_hidden)
        w1 = np.sign(w1) * np.maximum(np.abs(w1), 0.5)
        comp = rng.choice(j, size=n_hidden, p=lam)
        kinks = means[comp] + np.exp(log_scales[comp]) * rng.uniform(-1, 1, size=n_hidden)
        return cls(
            w1=w1,
            b1=-w1 * kinks,
            w2=rng.normal(size=(data_dim, n_hidden)),
            b2=0.5 * rng.normal(size=data_dim),
            means=means,
            log_scales=log_scales,
            logits=np.log(lam),
            noise=noise,
        )


# --------------------------------------------------------------------------------------------
# Profiles and the simulation study
# --------------------------------------------------------------------------------------------
def _direction(model: ReluGMM, direction) -> np.ndarray:
    theta = model.vector()
    if isinstance(direction, int | np.integer):
        if not 0 <= direction < theta.size:
            raise ValueError(f"coordinate must be in [0, {theta.size}), got {direction}")
        d = np.zeros_like(theta)
        d[direction] = 1.0
        return d
    d = np.asarray(direction, dtype=np.float64)
    if d.shape != theta.shape:
        raise ValueError(f"direction must have shape {theta.shape}, got {d.shape}")
    return d


def likelihood_profile(model: ReluGMM, x, direction, ts) -> np.ndarray:
    """Mean negative log-likelihood of the points ``x`` at theta + t * direction, for each t in
    ``ts``: (T,).

    ``direction``: a flat vector like :meth:`ReluGMM.vector`, or an int, the index of one
    coordinate (the profile along that parameter alone, the others held at their values).
    """
    x = model._check_x(x)
    d = _direction(model, direction)
    ts = np.atleast_1d(np.asarray(ts, dtype=np.float64))
    thetas = model.vector()[None] + ts[:, None] * d[None]  # (T, P)
    params, k = {}, 0
    for g in PARAMETER_GROUPS:
        shape = getattr(model, g).shape
        size = int(np.prod(shape))
        params[g] = thetas[:, k : k + size].reshape(len(ts), *shape)
        k += size
    return -_log_marginal(params, model.noise, model.slope, x).mean(-1)


def profile_minimum(
    model: ReluGMM, x, direction, ts, zooms: int = 3, n_zoom: int = 5
) -> tuple[float, float]:
    """Where the likelihood profile along ``direction`` is lowest, and its standard error.

    The lowest point of the grid ``ts`` is bracketed by its neighbours, and the bracket is
    scanned again with ``n_zoom`` points, ``zooms`` times; the vertex of the parabola through the
    last three points around the minimum gives t_hat, its curvature c the standard error
    se = 1 / sqrt(N c), the asymptotic standard deviation of a one-parameter maximum-likelihood
    estimate from the N points ``x``. A minimum on the edge of ``ts`` (the profile still falling
    where the scan stops) gives (edge, nan); a flat profile gives se = inf.
    """
    ts = np.asarray(ts, dtype=np.float64)
    if ts.ndim != 1 or ts.size < 3 or not np.all(np.diff(ts) > 0):
        raise ValueError(
            f"ts must be an increasing grid of at least 3 points, got shape {ts.shape}"
        )
    if int(n_zoom) != n_zoom or n_zoom < 3 or n_zoom % 2 == 0:
        raise ValueError(f"n_zoom must be an odd integer >= 3, got {n_zoom!r}")
    x = model._check_x(x)
    values = likelihood_profile(model, x, direction, ts)
    i = int(np.argmin(values))
    if i in (0, ts.size - 1):
        return float(ts[i]), float("nan")
    grid = ts
    for _ in range(zooms):
        grid = np.linspace(grid[i - 1], grid[i + 1], n_zoom)
        values = likelihood_profile(model, x, direction, grid)
        i = int(np.clip(np.argmin(values), 1, n_zoom - 2))
    h = grid[i + 1] - grid[i]
    left, mid, right = values[i - 1 : i + 2]
    second = left - 2 * mid + right
    if not second > 0:
        return float(grid[i]), float("inf")
    t_hat = grid[i] - h * (right - left) / (2 * second)
    return float(t_hat), float(1.0 / np.sqrt(len(x) * second / h**2))


@dataclass
class Simulation:
    """One simulated model and the likelihood profiles through its true parameter.

    Per profiled coordinate: ``t_hat`` (where the profile is lowest; the truth is t = 0) and
    ``se`` (its standard error; nan when the minimum sits on the edge of the scanned range).
    """

    seed: int
    true_components: int
    fitted_components: int
    injective: bool
    weakly_injective: bool
    names: list[str]
    t_hat: np.ndarray
    se: np.ndarray
    model: ReluGMM = field(repr=False)
    data: np.ndarray = field(repr=False)

    @property
    def z_scores(self) -> np.ndarray:
        """The ratios ``t_hat / se``, close to standard normal when the minimiser sits at the truth
        up to sampling noise."""
        return self.t_hat / self.se

    def success(self, threshold: float = 4.0) -> bool:
        """Every profile's minimiser lies inside the scanned range and within ``threshold``
        standard errors of the truth."""
        z = self.z_scores
        return bool(np.all(np.isfinite(z)) and np.all(np.abs(z) <= threshold))

    @property
    def misspecified(self) -> bool:
        return self.fitted_components != self.true_components


def profile_study(
    n_sims: int = 50,
    n_data: int = 400,
    n_grid: int = 9,
    span: float = 1.0,
    misspecified_every: int = 3,
    n_hidden: int = 3,
    data_dim: int = 3,
    seed: int = 0,
) -> list[Simulation]:
    """Kivva et al.'s Sec. 4 study: random one-layer ReLU decoders with J = 2 or 3 components.

    For each simulation: a random :class:`ReluGMM` (J alternating 2, 3), ``n_data`` points
    drawn from it, and the exact negative log-likelihood along every coordinate of the
    parameter over t in [-span, span] (``n_grid`` points, the truth at t = 0). Every
    ``misspecified_every``-th simulation fits J + 1 components instead (one true component split
    in two, so that the truth is still in the model); 0 turns that off. The decoder's
    injectivity is checked on 2000 draws from the prior.
    """
    for name, value in (("n_sims", n_sims), ("n_data", n_data), ("n_grid", n_grid)):
        check_count(name, value)
    if n_grid < 3:
        raise ValueError(f"n_grid must be >= 3, got {n_grid}")
    if not span > 0:
        raise ValueError(f"span must be > 0, got {span!r}")
    ts = np.linspace(-span, span, n_grid)
    out = []
    for i in range(n_sims):
        s = seed * 100_003 + i
        true_j = 2 + i % 2
        truth = ReluGMM.random(true_j, n_hidden, data_dim, seed=s)
        x, _, _ = truth.sample(n_data, seed=s + 1)
        _, z, _ = truth.sample(2000, seed=s + 2)
        report = check_injectivity(truth.decoder_network(), z[:, None])
        fitted = truth
        if misspecified_every and i % misspecified_every == misspecified_every - 1:
            fitted = truth.split_component(int(np.argmax(truth.weights)))
        minima = np.array([profile_minimum(fitted, x, k, ts) for k in range(fitted.vector().size)])
        out.append(
            Simulation(
                seed=s,
                true_components=true_j,
                fitted_components=fitted.n_components,
                injective=report.injective,
                weakly_injective=report.weakly_injective,
                names=fitted.coordinate_names,
                t_hat=minima[:, 0],
                se=minima[:, 1],
                model=fitted,
                data=x,
            )
        )
    return out
