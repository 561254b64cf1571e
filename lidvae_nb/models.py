"""VAE, GMVAE and their latent-identifiable counterparts, LIDVAE and LIDGMVAE.

All four share one shape, which the trainer and the metrics rely on:

* ``encode(x)``: q(z | x) as a ``torch.distributions.Distribution``, batch (B,), event (K,);
* ``prior()``: p(z), event (K,);
* ``log_likelihood(x, z)``: log p(x | z), for z with any leading sample dimensions;
* ``loss(x, beta=1.0)``: a dict with the negative ELBO (``loss``, scalar, beta-weighted KL),
  ``rec`` and ``kl_term`` (per data point; the ELBO's whole KL term, for the mixture models
  KL(q(y | x) || p(y)) + E_q(y|x) KL(q(z | x, y) || p(z | y)), which they also give apart as
  ``kl_y`` and ``kl_z``), used by every training scheme. Table 1's KL is another quantity, the
  marginal KL(q(z | x) || p(z)) of :func:`lidvae_nb.metrics.kl_to_prior`.

The latent-identifiable models differ from their classical counterparts only in the decoder:
an injective map g2(beta^T g1(z)) built from Brenier maps (:mod:`lidvae_nb.icnn`) replaces the MLP,
so that p(x | z) is injective in z for every parameter value (Wang et al., Definition 3).

For text, :class:`SequentialVAE` (the LSTM VAE of He et al., 2019) and :class:`LIDSVAE` (Wang et
al., Example 2) have the same interface on padded token ids x (B, L) (see
:func:`lidvae_nb.data.pad_batch`); ``build_model`` knows them as 'svae' and 'lidsvae'
(``TEXT_MODELS``).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import distributions as D
from torch import nn

from lidvae_nb._checks import check_count
from lidvae_nb.data import Vocabulary
from lidvae_nb.icnn import LIFTS, WEIGHTS

LIKELIHOODS = ("bernoulli", "gaussian")


def _flat(f, z: torch.Tensor) -> torch.Tensor:
    """Apply a (B, K) -> (B, D) map to z with any leading dimensions (..., K) -> (..., D)."""
    lead = z.shape[:-1]
    return f(z.reshape(-1, z.shape[-1])).reshape(*lead, -1)


def _check_data(cfg: ModelConfig, x: torch.Tensor) -> None:
    """x must be (B, D); under a Bernoulli likelihood its values must lie in [0, 1]."""
    if x.dim() != 2 or x.shape[1] != cfg.data_dim:
        raise ValueError(f"x must have shape (B, {cfg.data_dim}), got {tuple(x.shape)}")
    if cfg.likelihood == "bernoulli":
        lo, hi = float(x.min()), float(x.max())
        if lo < 0 or hi > 1:
            raise ValueError(
                f"a Bernoulli likelihood needs data in [0, 1], got values in [{lo:.4g}, {hi:.4g}]"
            )


def mlp(sizes: list[int], activation=nn.ReLU) -> nn.Sequential:
    """Linear layers with ``activation`` between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


#: The models' injective-decoder and prior defaults before chapter 10's replication, the settings
#: that chapters 4, 7, 9 and 12 were made with, and which they state
#: (``ModelConfig(..., **FIRST_SETTINGS)``), so that their results do not move with the defaults.
FIRST_SETTINGS = {
    "lift": "zero_one",
    "icnn_weights": "softplus",
    "icnn_alpha": 0.1,
    "icnn_quadratic_init": 1.0,
    "prior_mean_scale": 2.0,
}


@dataclass
class ModelConfig:
    """Sizes and choices shared by every model.

    ``decoder_depth`` counts hidden layers of the MLP decoder, or of each ICNN in the injective
    decoder; ``n_clusters`` is used by the mixture models only; ``flow_layers`` > 0 adds RealNVP
    coupling layers to q(z | x) (the paper's flexible family for images).

    ``fixed_prior_means`` (mixture models only) fixes the component means at distinct points
    instead of learning them, as Wang et al.'s Example 1 does (see :func:`spread_means`); the
    component scales stay learned. Learned means start at ``prior_mean_scale * N(0, I)``.

    ``flow_hidden`` sizes the coupling networks (0: ``hidden``); ``flow_shift_only`` makes each
    coupling a shift (volume preserving, as the original code's RealNVP).

    The injective decoder (LIDVAE, LIDGMVAE) reads ``lift`` (``"zero_one"``: the fixed zero-one
    ``beta``; ``"learned"``: a dense full-rank map, :class:`lidvae_nb.icnn.LearnedLift`),
    ``icnn_weights`` (``"softplus"`` or ``"projected"``, see :class:`lidvae_nb.icnn.ICNN`),
    ``icnn_alpha`` (the strong-convexity floor), ``icnn_quadratic_init`` (the quadratic
    coefficient's start) and ``data_width`` (the first layer of the data-space ICNN; 0:
    ``hidden``). LIDSVAE reads ``icnn_weights``, ``icnn_alpha`` and ``icnn_quadratic_init``; its
    lift is always the zero-one one. The defaults follow chapter 10's replication and ablation: the
    original code's learned lift, projected weights and learned means starting at 0.16 N(0, I),
    with the strongly monotone quadratic term (``icnn_alpha`` 0.1, start 1), which learned as fast
    per step as the original's floor of 1e-3 and keeps the numerical inverse well conditioned (at
    1e-3 the inverse of a fresh LIDGMVAE with a 2-d latent failed to converge for 1 point of 64).
    The image runner, :class:`lidvae_nb.experiments.RunSpec`, keeps the original's floor, as its
    stored runs do. Until the replication the defaults were the zero-one lift, softplus weights
    and ``prior_mean_scale`` 2 (:data:`FIRST_SETTINGS`).

    The text models (:class:`SequentialVAE`, :class:`LIDSVAE`) read ``data_dim`` as the
    vocabulary size V (special tokens included, ``len(vocab)``) and use ``embed_dim`` (word
    embeddings), ``lstm_hidden`` (LSTM width H, encoder and decoder) and ``lstm_layers`` (decoder
    LSTM depth); ``hidden`` and ``decoder_depth`` size LIDSVAE's ICNNs, ``hidden`` the flow
    layers; ``likelihood`` and ``encoder_depth`` do not apply to them (categorical words, a
    one-layer LSTM encoder). The image models ignore the three text fields.
    """

    data_dim: int
    latent_dim: int = 2
    hidden: int = 128
    encoder_depth: int = 2
    decoder_depth: int = 2
    likelihood: str = "gaussian"
    n_clusters: int = 5
    flow_layers: int = 0
    icnn_alpha: float = 0.1
    icnn_weights: str = "projected"
    icnn_quadratic_init: float = 1.0
    lift: str = "learned"
    data_width: int = 0
    flow_hidden: int = 0
    flow_shift_only: bool = False
    fixed_prior_means: bool = False
    prior_mean_scale: float = 0.16
    embed_dim: int = 128
    lstm_hidden: int = 256
    lstm_layers: int = 1

    def __post_init__(self):
        for name in (
            "data_dim",
            "latent_dim",
            "hidden",
            "encoder_depth",
            "decoder_depth",
            "embed_dim",
            "lstm_hidden",
            "lstm_layers",
        ):
            check_count(name, getattr(self, name))
        check_count("n_clusters", self.n_clusters)
        for name in ("flow_layers", "data_width", "flow_hidden"):
            check_count(name, getattr(self, name), minimum=0)
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")
        if self.lift not in LIFTS:
            raise ValueError(f"lift must be one of {LIFTS}, got {self.lift!r}")
        if self.icnn_weights not in WEIGHTS:
            raise ValueError(f"icnn_weights must be one of {WEIGHTS}, got {self.icnn_weights!r}")
        for name in ("icnn_alpha", "icnn_quadratic_init", "prior_mean_scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"{name} must be a number > 0, got {value!r}")
        if self.icnn_quadratic_init < self.icnn_alpha:
            raise ValueError(
                f"icnn_quadratic_init must be >= icnn_alpha = {self.icnn_alpha}, got "
                f"{self.icnn_quadratic_init!r}"
            )
        for name in ("flow_shift_only", "fixed_prior_means"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.flow_layers > 0 and self.latent_dim < 2:
            raise ValueError(
                f"flow layers couple two parts of z and need latent_dim >= 2, got "
                f"latent_dim={self.latent_dim} with flow_layers={self.flow_layers}"
            )

    @property
    def flow_width(self) -> int:
        """The coupling networks' hidden width (``flow_hidden``, or ``hidden`` when 0)."""
        return self.flow_hidden or self.hidden


class StandardNormalVAE(nn.Module):
    """The shared shape of a VAE with p(z) = N(0, I_K).

    Subclasses set ``self.data_dim``, ``self.encoder`` (x -> q(z | x)) and a buffer ``_zeros`` of
    size K, and get the data check, ``prior()`` and ``encode(x)``; used by
    :mod:`lidvae_nb.global_optima` and :mod:`lidvae_nb.libi`."""

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.data_dim:
            raise ValueError(f"x must have shape (B, {self.data_dim}), got {tuple(x.shape)}")

    def prior(self) -> D.Distribution:
        """p(z) = N(0, I_K), event (K,)."""
        return D.Independent(D.Normal(self._zeros, torch.ones_like(self._zeros)), 1)

    def encode(self, x: torch.Tensor) -> D.Distribution:
        """q(z | x): batch (B,), event (K,)."""
        self._check(x)
        return self.encoder(x)


class AffineCoupling(D.Transform, nn.Module):
    """One RealNVP coupling layer: one part of z rescales and shifts the other part.

    The first ``dim // 2`` coordinates condition the rest, or, with ``flip``, the last
    ``dim - dim // 2`` condition the first ``dim // 2`` (so alternating layers change every
    coordinate, for odd ``dim`` too). ``shift_only`` drops the scale (a volume-preserving shift,
    as in the original code's RealNVP). A ``torch.distributions.Transform`` with learnable
    parameters, so that ``TransformedDistribution(q0, [couplings])`` gives rsample and log_prob
    of the flow. (Pyro's ``AffineCoupling`` has no shift-only form and needs a separate
    permutation between layers; this one is a dozen lines.)
    """

    domain = D.constraints.real_vector
    codomain = D.constraints.real_vector
    bijective = True

    def __init__(self, dim: int, hidden: int, flip: bool, shift_only: bool = False):
        D.Transform.__init__(self, cache_size=0)
        nn.Module.__init__(self)
        dim, hidden = check_count("dim", dim), check_count("hidden", hidden)
        if dim < 2:
            raise ValueError(f"a coupling layer needs dim >= 2, got dim={dim}")
        self.dim, self.flip, self.shift_only = dim, bool(flip), bool(shift_only)
        self.split = dim // 2
        self.n_keep = dim - self.split if self.flip else self.split
        n_change = dim - self.n_keep
        self.net = mlp([self.n_keep, hidden, (1 if shift_only else 2) * n_change], nn.Tanh)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def __hash__(self):
        return nn.Module.__hash__(self)

    def _split(self, z):
        a, b = z[..., : self.split], z[..., self.split :]
        return (b, a) if self.flip else (a, b)  # (keep, change)

    def _join(self, keep, change):
        return torch.cat([change, keep] if self.flip else [keep, change], -1)

    def _params(self, keep):
        out = self.net(keep)
        if self.shift_only:
            return torch.zeros_like(out), out
        log_s, t = out.chunk(2, -1)
        return torch.tanh(log_s), t

    def _call(self, z):
        keep, change = self._split(z)
        log_s, t = self._params(keep)
        return self._join(keep, change * log_s.exp() + t)

    def _inverse(self, y):
        keep, change = self._split(y)
        log_s, t = self._params(keep)
        return self._join(keep, (change - t) * (-log_s).exp())

    def log_abs_det_jacobian(self, z, y):
        keep, _ = self._split(z)
        if self.shift_only:
            return z.new_zeros(z.shape[:-1])
        log_s, _ = self._params(keep)
        return log_s.sum(-1)


class GaussianEncoder(nn.Module):
    """x -> q(z | x) = N(mu(x), diag sigma(x)^2), optionally pushed through RealNVP couplings."""

    def __init__(
        self,
        in_dim: int,
        latent_dim: int,
        hidden: int,
        depth: int,
        flow_layers: int = 0,
        flow_hidden: int | None = None,
        shift_only: bool = False,
    ):
        super().__init__()
        self.net = mlp([in_dim] + [hidden] * depth + [2 * latent_dim])
        width = hidden if not flow_hidden else flow_hidden
        self.flows = nn.ModuleList(
            AffineCoupling(latent_dim, width, flip=bool(i % 2), shift_only=shift_only)
            for i in range(flow_layers)
        )

    @classmethod
    def from_config(cls, cfg: ModelConfig, in_dim: int) -> GaussianEncoder:
        """The encoder of a model with settings ``cfg`` reading ``in_dim`` inputs."""
        return cls(
            in_dim,
            cfg.latent_dim,
            cfg.hidden,
            cfg.encoder_depth,
            cfg.flow_layers,
            cfg.flow_width,
            cfg.flow_shift_only,
        )

    def params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, raw_sigma), each (B, K); sigma = softplus(raw_sigma) + 1e-5."""
        mu, raw_sigma = self.net(x).chunk(2, -1)
        return mu, raw_sigma

    def distribution(self, mu: torch.Tensor, raw_sigma: torch.Tensor) -> D.Distribution:
        base = D.Independent(D.Normal(mu, F.softplus(raw_sigma) + 1e-5), 1)
        if len(self.flows) == 0:
            return base
        return D.TransformedDistribution(base, list(self.flows))

    def forward(self, x: torch.Tensor) -> D.Distribution:
        return self.distribution(*self.params(x))


class MLPDecoder(nn.Module):
    """The classical decoder f(z): an unconstrained MLP, (..., K) -> (..., D)."""

    def __init__(self, latent_dim: int, data_dim: int, hidden: int, depth: int):
        super().__init__()
        self.net = mlp([latent_dim] + [hidden] * depth + [data_dim])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def _injective_decoder(cfg: ModelConfig) -> nn.Module:
    from lidvae_nb.icnn import InjectiveDecoder

    if cfg.latent_dim > cfg.data_dim:
        raise ValueError(
            f"latent_dim ({cfg.latent_dim}) must not exceed data_dim ({cfg.data_dim}): "
            "the injective decoder maps R^K into R^D with K <= D"
        )
    return InjectiveDecoder(
        cfg.latent_dim,
        cfg.data_dim,
        width=cfg.hidden,
        depth=cfg.decoder_depth,
        alpha=cfg.icnn_alpha,
        lift=cfg.lift,
        data_width=cfg.data_width or None,
        weights=cfg.icnn_weights,
        quadratic_init=cfg.icnn_quadratic_init,
    )


def _negative_elbo(model, x: torch.Tensor, q: D.Distribution, beta: float) -> dict:
    """``rec + beta * KL`` with one reparameterised draw of q(z | x), for any model with
    ``log_likelihood``, ``prior`` and a Gaussian ``encoder`` (KL in closed form without flows, by
    the draw with them): ``loss`` (scalar mean), ``rec`` and ``kl`` (B,)."""
    z = q.rsample()
    rec = -model.log_likelihood(x, z)
    if len(model.encoder.flows) == 0:
        kl = D.kl_divergence(q, model.prior())
    else:
        kl = q.log_prob(z) - model.prior().log_prob(z)
    return {"loss": (rec + beta * kl).mean(), "rec": rec.detach(), "kl_term": kl.detach()}


class _Likelihood(nn.Module):
    """p(x | decoder output): Bernoulli logits or a Gaussian with a learned per-dimension scale."""

    def __init__(self, kind: str, data_dim: int):
        super().__init__()
        self.kind = kind
        if kind == "gaussian":
            # scale = softplus(raw) + 1e-3, starting at 0.1
            self.raw_scale = nn.Parameter(torch.full((data_dim,), math.log(math.expm1(0.099))))

    def forward(self, out: torch.Tensor) -> D.Distribution:
        if self.kind == "bernoulli":
            return D.Independent(D.Bernoulli(logits=out), 1)
        return D.Independent(D.Normal(out, F.softplus(self.raw_scale) + 1e-3), 1)


class _LatentVariableModel(nn.Module):
    """What every model here shares: a ``ModelConfig`` in ``self.cfg``, data checks, and
    p(x | z) through ``self.decoder`` (mean or logits) and ``self.lik`` (the likelihood)."""

    def _check(self, x: torch.Tensor) -> None:
        _check_data(self.cfg, x)

    def decode(self, z: torch.Tensor) -> D.Distribution:
        """p(x | z) for z (..., K): batch shape (...), event (D,)."""
        return self.lik(_flat(self.decoder, z))

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x | z) for z with any leading sample dimensions."""
        return self.decode(z).log_prob(x)


class _GaussianEncoderModel(_LatentVariableModel):
    """Models whose q(z | x) is ``self.encoder(x)`` (VAE, LIDVAE, VaDE)."""

    def encode(self, x: torch.Tensor) -> D.Distribution:
        """q(z | x): batch (B,), event (K,)."""
        self._check(x)
        return self.encoder(x)


class VAE(_GaussianEncoderModel):
    """The classical VAE: z ~ N(0, I_K), x | z ~ EF(f(z)) with an MLP f."""

    injective = False

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = GaussianEncoder.from_config(cfg, cfg.data_dim)
        self.decoder = self._make_decoder(cfg)
        self.lik = _Likelihood(cfg.likelihood, cfg.data_dim)
        self.register_buffer("_zeros", torch.zeros(cfg.latent_dim))

    def _make_decoder(self, cfg: ModelConfig) -> nn.Module:
        return MLPDecoder(cfg.latent_dim, cfg.data_dim, cfg.hidden, cfg.decoder_depth)

    def prior(self) -> D.Distribution:
        return D.Independent(D.Normal(self._zeros, torch.ones_like(self._zeros)), 1)

    def loss_from_q(self, x: torch.Tensor, q: D.Distribution, beta: float = 1.0) -> dict:
        """Negative ELBO with a given q(z | x) (one reparameterised sample per point)."""
        return _negative_elbo(self, x, q, beta)

    def loss(self, x: torch.Tensor, beta: float = 1.0) -> dict:
        return self.loss_from_q(x, self.encode(x), beta)


class LIDVAE(VAE):
    """Latent-identifiable VAE (Wang et al., Definition 3): x | z ~ EF(g2(beta^T g1(z)))."""

    injective = True

    def _make_decoder(self, cfg: ModelConfig) -> nn.Module:
        return _injective_decoder(cfg)


def spread_means(n_clusters: int, latent_dim: int, radius: float = 2.0) -> torch.Tensor:
    """Distinct, equally long component means, (C, K).

    With ``latent_dim >= n_clusters`` these are ``radius`` times the unit vectors e_1, ..., e_C
    (the zero-one matrix beta_1 of Wang et al.'s Example 1, scaled); otherwise C points evenly
    spaced on a circle of that radius in the first two coordinates, or on the segment
    [-radius, radius] when the latent is one-dimensional.
    """
    c, k = check_count("n_clusters", n_clusters), check_count("latent_dim", latent_dim)
    if not radius > 0:
        raise ValueError(f"radius must be > 0, got {radius!r}")
    means = torch.zeros(c, k)
    if k >= c:
        means[torch.arange(c), torch.arange(c)] = radius
    elif k == 1:
        means[:, 0] = torch.linspace(-radius, radius, c)
    else:
        angle = torch.arange(c) * 2 * math.pi / c
        means[:, 0], means[:, 1] = radius * torch.cos(angle), radius * torch.sin(angle)
    return means


class GMVAE(_LatentVariableModel):
    """Gaussian-mixture VAE: y ~ Categorical(1/C), z | y ~ N(mu_y, diag softplus(s_y)),
    x | z ~ EF(f(z)); q(y | x) q(z | x, y), with y summed out exactly in the ELBO.

    The means mu_y start at ``prior_mean_scale`` * N(0, I) and are learned, or are fixed by
    ``ModelConfig.fixed_prior_means`` (:func:`spread_means`)."""

    injective = False

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        c, k = cfg.n_clusters, cfg.latent_dim
        self.cluster_net = mlp([cfg.data_dim] + [cfg.hidden] * cfg.encoder_depth + [c])
        self.encoder = GaussianEncoder.from_config(cfg, cfg.data_dim + c)
        if cfg.fixed_prior_means:
            self.register_buffer("prior_means", spread_means(c, k))
        else:
            self.prior_means = nn.Parameter(cfg.prior_mean_scale * torch.randn(c, k))
        self.prior_raw_scales = nn.Parameter(torch.zeros(c, k))
        self.decoder = self._make_decoder(cfg)
        self.lik = _Likelihood(cfg.likelihood, cfg.data_dim)

    def _make_decoder(self, cfg: ModelConfig) -> nn.Module:
        return MLPDecoder(cfg.latent_dim, cfg.data_dim, cfg.hidden, cfg.decoder_depth)

    def cluster_probs(self, x: torch.Tensor) -> torch.Tensor:
        """q(y | x), (B, C)."""
        self._check(x)
        return F.softmax(self.cluster_net(x), -1)

    def _component_priors(self) -> D.Distribution:
        return D.Independent(
            D.Normal(self.prior_means, F.softplus(self.prior_raw_scales) + 1e-4), 1
        )

    def prior(self) -> D.Distribution:
        c = self.cfg.n_clusters
        mix = D.Categorical(logits=torch.zeros(c, device=self.prior_means.device))
        return D.MixtureSameFamily(mix, self._component_priors())

    def _q_z_given_xy(self, x: torch.Tensor) -> D.Distribution:
        """q(z | x, y) for every y: batch (B, C), event (K,)."""
        b, c = x.shape[0], self.cfg.n_clusters
        onehot = torch.eye(c, device=x.device).expand(b, c, c)
        xy = torch.cat([x.unsqueeze(1).expand(b, c, x.shape[1]), onehot], -1)
        return self.encoder(xy)

    def encode(self, x: torch.Tensor) -> D.Distribution:
        """q(z | x) = sum_y q(y | x) q(z | x, y), a mixture (for the metrics)."""
        probs = self.cluster_probs(x)
        return D.MixtureSameFamily(D.Categorical(probs=probs), self._q_z_given_xy(x))

    @torch.no_grad()
    def label_posterior(self, x: torch.Tensor, n_samples: int = 200) -> torch.Tensor:
        """The model's own posterior p(y | x) ∝ p(y) p(x | y), (B, C), not the encoder's q(y | x).

        ``log p(x | y) = log E_{p(z|y)} p(x | z)`` is estimated by importance sampling with
        q(z | x, y) as the proposal (``n_samples`` draws per point and cluster), so the answer
        depends on the encoder only through the estimator's variance. Comparing it with
        :meth:`cluster_probs` separates a non-identifiable label (p(y | x) = p(y)) from an
        encoder that failed to find an informative posterior (q(y | x) = p(y) != p(y | x)).
        """
        self._check(x)
        n_samples = check_count("n_samples", n_samples)
        qz = self._q_z_given_xy(x)  # batch (B, C)
        z = qz.sample((n_samples,))  # (S, B, C, K)
        log_w = (
            self.log_likelihood(x.unsqueeze(1), z)
            + self._component_priors().log_prob(z)
            - qz.log_prob(z)
        )
        log_px_y = torch.logsumexp(log_w, 0) - math.log(n_samples)  # (B, C)
        return F.softmax(log_px_y, -1)  # the prior over y is uniform

    def loss(self, x: torch.Tensor, beta: float = 1.0) -> dict:
        """Negative ELBO, y summed out: E_q(y|x)[rec + KL(q(z|x,y) || p(z|y))] + KL(q(y|x) || p(y)).

        ``beta`` weights both KL terms (beta-VAE); the decoder runs once per cluster.
        """
        self._check(x)
        log_probs = F.log_softmax(self.cluster_net(x), -1)  # (B, C)
        probs = log_probs.exp()
        qz = self._q_z_given_xy(x)  # batch (B, C)
        z = qz.rsample()  # (B, C, K)
        rec_y = -self.log_likelihood(x.unsqueeze(1), z)  # (B, C)
        prior_y = self._component_priors()  # batch (C,)
        if len(self.encoder.flows) == 0:
            kl_z = D.kl_divergence(qz, prior_y)
        else:
            kl_z = qz.log_prob(z) - prior_y.log_prob(z)
        c = self.cfg.n_clusters
        kl_y = (probs * (log_probs + math.log(c))).sum(-1)
        rec = (probs * rec_y).sum(-1)
        kl_z = (probs * kl_z).sum(-1)
        kl = kl_z + kl_y
        return {
            "loss": (rec + beta * kl).mean(),
            "rec": rec.detach(),
            "kl_term": kl.detach(),
            "kl_y": kl_y.detach(),
            "kl_z": kl_z.detach(),
        }


class LIDGMVAE(GMVAE):
    """Latent-identifiable GMVAE (Wang et al., Example 1): mixture VAE, injective decoder."""

    injective = True

    def _make_decoder(self, cfg: ModelConfig) -> nn.Module:
        return _injective_decoder(cfg)


class VaDE(_GaussianEncoderModel):
    """Variational deep embedding (Jiang et al., 2016), the mixture VAE of Kivva et al.'s Sec. 4.

    c ~ Categorical(pi), z | c ~ N(mu_c, diag s_c^2) with pi, mu and s learned, x | z ~ EF(f(z))
    with an MLP f: the model (P1)-(F1) of Kivva et al. The encoder gives q(z | x) only; the
    cluster posterior is q(c | x) = gamma = p(c | z) at the sampled z, as in VaDE, so that
    the negative ELBO is rec + sum_c gamma_c KL(q(z | x) || p(z | c)) + KL(gamma || pi).
    :meth:`pretrain` gives VaDE's usual start: an autoencoder, then the mixture fitted to its
    codes by EM (:meth:`init_prior`).
    """

    injective = False

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        c, k = cfg.n_clusters, cfg.latent_dim
        self.encoder = GaussianEncoder.from_config(cfg, cfg.data_dim)
        self.decoder = MLPDecoder(k, cfg.data_dim, cfg.hidden, cfg.decoder_depth)
        self.lik = _Likelihood(cfg.likelihood, cfg.data_dim)
        self.prior_logits = nn.Parameter(torch.zeros(c))
        self.prior_means = nn.Parameter(cfg.prior_mean_scale * torch.randn(c, k))
        self.prior_raw_scales = nn.Parameter(torch.zeros(c, k))

    def _component_priors(self) -> D.Distribution:
        return D.Independent(
            D.Normal(self.prior_means, F.softplus(self.prior_raw_scales) + 1e-4), 1
        )

    def prior(self) -> D.Distribution:
        return D.MixtureSameFamily(
            D.Categorical(logits=self.prior_logits), self._component_priors()
        )

    def _log_joint_c(self, z: torch.Tensor) -> torch.Tensor:
        """log pi_c + log p(z | c) for z (..., K): (..., C)."""
        log_pi = F.log_softmax(self.prior_logits, -1)
        return log_pi + self._component_priors().log_prob(z.unsqueeze(-2))

    def cluster_probs(self, x: torch.Tensor) -> torch.Tensor:
        """p(c | z) at the encoder's mean of z: (B, C)."""
        q = self.encode(x)
        z = q.mean if len(self.encoder.flows) == 0 else q.sample((64,)).mean(0)
        return F.softmax(self._log_joint_c(z), -1)

    @torch.no_grad()
    def init_prior(self, z: torch.Tensor, seed: int = 0) -> None:
        """Set pi, mu and s to a diagonal Gaussian mixture fitted to codes z (N, K) by EM."""
        from lidvae_nb.gmm import fit_em

        z = torch.as_tensor(z)
        if z.dim() != 2 or z.shape[1] != self.cfg.latent_dim:
            raise ValueError(f"z must have shape (N, {self.cfg.latent_dim}), got {tuple(z.shape)}")
        fit = fit_em(
            z.detach().cpu().double().numpy(),
            self.cfg.n_clusters,
            "learn",
            seed=seed,
            reg=1e-6,
            n_iter=300,
            tol=1e-8,
        )
        like = self.prior_means
        self.prior_means.copy_(torch.as_tensor(fit.means, dtype=like.dtype))
        var = torch.as_tensor(fit.covs.diagonal(axis1=1, axis2=2).copy(), dtype=like.dtype)
        scale = (var.sqrt() - 1e-4).clamp_min(1e-3)
        self.prior_raw_scales.copy_(scale + torch.log(-torch.expm1(-scale)))
        self.prior_logits.copy_(torch.as_tensor(fit.weights, dtype=like.dtype).log())

    def pretrain(
        self, x: torch.Tensor, epochs: int = 50, beta: float = 0.05, seed: int = 0, **train
    ) -> list[dict]:
        """Train encoder and decoder as a nearly deterministic autoencoder (a VAE whose KL term
        is weighted by ``beta``), copy them here and fit the mixture prior to the codes of ``x``.

        Extra keyword arguments go to :class:`lidvae_nb.trainer.TrainConfig`. Returns the
        autoencoder's training history.
        """
        from lidvae_nb.metrics import posterior_mean
        from lidvae_nb.trainer import TrainConfig, Trainer

        autoencoder = VAE(self.cfg)
        config = TrainConfig(epochs=epochs, scheme="beta", beta=beta, seed=seed, **train)
        history = Trainer(autoencoder, config).fit(x)
        for name in ("encoder", "decoder", "lik"):
            getattr(self, name).load_state_dict(getattr(autoencoder, name).state_dict())
        device = next(autoencoder.parameters()).device
        with torch.no_grad():
            codes = torch.cat(
                [posterior_mean(autoencoder.encode(b.to(device))).cpu() for b in x.split(1000)]
            )
        self.init_prior(codes, seed=seed)
        return history

    def loss(self, x: torch.Tensor, beta: float = 1.0) -> dict:
        """Negative ELBO with gamma = p(c | z) at one reparameterised sample z ~ q(z | x)."""
        q = self.encode(x)
        z = q.rsample()
        rec = -self.log_likelihood(x, z)
        log_joint = self._log_joint_c(z)  # (B, C)
        if len(self.encoder.flows) == 0:
            gamma = F.softmax(log_joint, -1)
            log_gamma = F.log_softmax(log_joint, -1)
            base = q.base_dist
            q_wide = D.Independent(D.Normal(base.loc.unsqueeze(1), base.scale.unsqueeze(1)), 1)
            kl_z = D.kl_divergence(q_wide, self._component_priors())  # (B, C)
            log_pi = F.log_softmax(self.prior_logits, -1)
            kl = (gamma * kl_z).sum(-1) + (gamma * (log_gamma - log_pi)).sum(-1)
        else:
            # With gamma = p(c | z), sum_c gamma_c [log pi_c p(z | c) - log gamma_c] = log p(z).
            kl = q.log_prob(z) - torch.logsumexp(log_joint, -1)
        return {"loss": (rec + beta * kl).mean(), "rec": rec.detach(), "kl_term": kl.detach()}


# --- Text: sequential VAEs (He et al., 2019) and the LIDSVAE (Wang et al., Example 2) ---------


def _check_tokens(x, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Check padded token ids as :func:`lidvae_nb.data.pad_batch` makes them and return them
    trimmed to the longest row, (B, L) int64, with each row's length (B,) (``<s>`` to ``</s>``).

    Every row must read ``<s> w ... w </s> <pad> ...``: ids in [0, vocab_size), ``<s>`` first,
    one ``</s>`` that ends the sentence, padding only after it.
    """
    pad, bos, eos = Vocabulary.PAD, Vocabulary.BOS, Vocabulary.EOS
    ok_type = isinstance(x, torch.Tensor) and not (
        x.is_floating_point() or x.is_complex() or x.dtype == torch.bool
    )
    if not ok_type or x.dim() != 2 or x.shape[0] < 1 or x.shape[1] < 2:
        what = f"{x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else x
        raise ValueError(
            f"x must be integer token ids of shape (B, L), B >= 1, L >= 2 (as pad_batch makes "
            f"them), got {what!r}"
        )
    x = x.long()
    lo, hi = int(x.min()), int(x.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(
            f"token ids must lie in [0, {vocab_size}) (data_dim is the vocabulary size), got "
            f"values in [{lo}, {hi}]"
        )
    real = x != pad
    lengths = real.sum(1)
    pos = torch.arange(x.shape[1], device=x.device)
    bad = (real != (pos < lengths[:, None])).any(1)
    if bad.any():
        raise ValueError(
            f"row {int(bad.nonzero()[0])} of x has <pad> (id {pad}) inside the sentence: padding "
            "must come only after </s>"
        )
    bad = x[:, 0] != bos
    if bad.any():
        row = int(bad.nonzero()[0])
        raise ValueError(f"row {row} of x starts with id {int(x[row, 0])}, not <s> (id {bos})")
    bad = x.gather(1, (lengths - 1).clamp_min(0)[:, None]).squeeze(1) != eos
    if bad.any():
        raise ValueError(
            f"row {int(bad.nonzero()[0])} of x does not end with </s> (id {eos}) before its padding"
        )
    inner = (pos > 0) & (pos < lengths[:, None] - 1)
    bad = (((x == bos) | (x == eos)) & inner).any(1)
    if bad.any():
        raise ValueError(
            f"row {int(bad.nonzero()[0])} of x has <s> or </s> inside the sentence (ids {bos}, "
            f"{eos} only mark its two ends)"
        )
    return x[:, : int(lengths.max())], lengths


@contextlib.contextmanager
def _without_cudnn(active: bool):
    """Run the block with cuDNN off when ``active`` (its LSTM has no double backward)."""
    if not active or not torch.backends.cudnn.enabled:
        yield
        return
    torch.backends.cudnn.enabled = False
    try:
        yield
    finally:
        torch.backends.cudnn.enabled = True


class SequenceEncoder(nn.Module):
    """Token ids (B, L) -> q(z | x) = N(mu(x), diag sigma(x)^2) (He et al., 2019).

    Word embeddings, a one-layer LSTM, and a linear map from the LSTM output at each sentence's
    ``</s>`` (so the padding after it has no effect) to ``(mu, raw_sigma)``; optionally RealNVP
    couplings on top, as :class:`GaussianEncoder`, whose ``distribution`` it shares. It holds
    every inference parameter (its own embedding included), as the trainer's lagging scheme needs.
    """

    def __init__(
        self,
        vocab_size: int,
        latent_dim: int,
        embed_dim: int,
        hidden: int,
        flow_layers: int = 0,
        flow_hidden: int = 128,
    ):
        super().__init__()
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.lstm = nn.LSTM(embed_dim, hidden, batch_first=True)
        self.out = nn.Linear(hidden, 2 * latent_dim)
        self.flows = nn.ModuleList(
            AffineCoupling(latent_dim, flow_hidden, flip=bool(i % 2)) for i in range(flow_layers)
        )

    def params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, raw_sigma), each (B, K); sigma = softplus(raw_sigma) + 1e-5."""
        x, lengths = _check_tokens(x, self.vocab_size)
        states, _ = self.lstm(self.embed(x))  # (B, L, H)
        last = states[torch.arange(x.shape[0], device=x.device), lengths - 1]
        mu, raw_sigma = self.out(last).chunk(2, -1)
        return mu, raw_sigma

    distribution = GaussianEncoder.distribution

    def forward(self, x: torch.Tensor) -> D.Distribution:
        return self.distribution(*self.params(x))


class _LSTMDecoder(nn.Module):
    """The recurrent part of a text decoder: word embeddings and an LSTM whose initial state comes
    from z (``c_0 = W z + b`` for every layer, ``h_0 = tanh(c_0)``, as He et al.); with
    ``z_input`` z is also concatenated to the input embedding at every step."""

    z_input = True

    def __init__(self, vocab_size: int, latent_dim: int, embed_dim: int, hidden: int, layers: int):
        super().__init__()
        self.hidden, self.layers = hidden, layers
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.init_state = nn.Linear(latent_dim, layers * hidden)
        in_dim = embed_dim + (latent_dim if self.z_input else 0)
        self.lstm = nn.LSTM(in_dim, hidden, layers, batch_first=True)

    def initial_state(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(h_0, c_0), each (layers, N, H), from z (N, K)."""
        c0 = self.init_state(z).view(z.shape[0], self.layers, self.hidden).transpose(0, 1)
        c0 = c0.contiguous()
        return torch.tanh(c0), c0

    def run(self, tokens: torch.Tensor, z: torch.Tensor, state=None):
        """LSTM outputs (N, T, H) over the input tokens (N, T) and the final state; ``state`` None
        starts from :meth:`initial_state` (z is (N, K))."""
        emb = self.embed(tokens)
        if self.z_input:
            emb = torch.cat([emb, z.unsqueeze(1).expand(-1, tokens.shape[1], -1)], -1)
        if state is None:
            state = self.initial_state(z)
        return self.lstm(emb, state)


class SequenceDecoder(_LSTMDecoder):
    """He et al.'s LSTM decoder: z sets the initial state and joins the input at every step; a
    linear layer gives the logits of the tokens that can follow (every id but ``<pad>``, ``<s>``).
    """

    def __init__(self, vocab_size, latent_dim, embed_dim, hidden, layers, n_out):
        super().__init__(vocab_size, latent_dim, embed_dim, hidden, layers)
        self.out = nn.Linear(hidden, n_out)

    def logits(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Free logits (M, n_out) from LSTM outputs h (M, H); z (M, K) already entered the LSTM."""
        return self.out(h)


class InjectiveSequenceDecoder(_LSTMDecoder):
    """LIDSVAE's decoder (Wang et al., Example 2): logits ``g2(beta2^T g1([z, h_i]))``.

    ``h_i`` is the output of an LSTM over the previous words, started from z (the original code
    started it from ``ones_like(z)``, so z reached the decoder only through g1); ``g1`` is a
    :class:`~lidvae_nb.icnn.BrenierMap` on R^(K+H), ``beta2`` the zero-one lift
    R^(K+H) -> R^n_out and ``g2`` a Brenier map on R^n_out: for any history the map
    ``[z, h] -> logits`` is injective, and so is ``z -> [z, h_i(z)]``.

    Cost: ``g2``'s ICNN has input products of size n_out (about V) per hidden unit, so it adds
    about ``2 * depth * width * V`` parameters and, per token, the same number of
    multiply-adds as a ``width``-wide output layer ``depth`` times over (the lift is folded into
    the forward products, :meth:`~lidvae_nb.icnn.ICNN.gradient`). With V = 10,000 and width 256
    that is 5M parameters: keep ``width`` modest.
    """

    z_input = False

    def __init__(
        self,
        vocab_size,
        latent_dim,
        embed_dim,
        hidden,
        layers,
        n_out,
        width,
        depth,
        alpha,
        weights: str = "softplus",
        quadratic_init: float = 1.0,
    ):
        from lidvae_nb.icnn import BrenierMap, ZeroOneLift

        super().__init__(vocab_size, latent_dim, embed_dim, hidden, layers)
        icnn = {"alpha": alpha, "weights": weights, "quadratic_init": quadratic_init}
        self.g1 = BrenierMap(latent_dim + hidden, width, depth, **icnn)
        self.lift = ZeroOneLift(latent_dim + hidden, n_out)
        self.g2 = BrenierMap(n_out, width, depth, **icnn)

    def logits(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Free logits ``g2(beta2^T g1([z, h]))``, (M, n_out), from h (M, H) and z (M, K)."""
        return self.g2.forward_lifted(self.g1(torch.cat([z, h], -1)), self.lift)

    def inverse(self, logits: torch.Tensor, **solver) -> torch.Tensor:
        """Recover ``[z, h]`` (M, K + H) from the free logits (M, n_out), through the conjugates
        of g2 and g1 and the left inverse of the lift (``solver``: see BrenierMap.inverse)."""
        u = self.lift.left_inverse(self.g2.inverse(logits, **solver))
        return self.g1.inverse(u, **solver)


class _SequenceVAE(nn.Module):
    """The shared shape of the text VAEs: z ~ N(0, I_K), x_i | x_<i, z ~ Categorical(logits_i).

    x is a batch of padded token ids (B, L) as :func:`lidvae_nb.data.pad_batch` makes them:
    ``<s> w_1 ... w_n </s> <pad> ...``. p(x | z) is the product over the words and ``</s>`` of the
    next-token probabilities given the previous tokens; the padding is masked out (and trimmed),
    so a sentence has the same likelihood alone or in any batch. The next token ranges over every
    id but ``<pad>`` and ``<s>`` (their logits are -inf).

    The interface is the image models': ``prior()``, ``encode(x)``, ``log_likelihood(x, z)`` for z
    (..., B, K), ``loss(x, beta)``, ``loss_from_q(x, q, beta)``, and an ``encoder`` with
    ``params``, ``distribution`` and ``flows``, so every training scheme and collapse metric
    applies. ``data_dim`` of the :class:`ModelConfig` is the vocabulary size V.
    """

    injective = False
    #: The token whose logit is fixed at 0, if any (the reference category).
    _reference: int | None = None
    #: Upper bound on the number of logits computed at once by :meth:`log_likelihood` (rows are
    #: processed in chunks): memory stays bounded for many importance samples and a large V.
    max_logits = 2**24

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        v, k = cfg.data_dim, cfg.latent_dim
        specials = len(Vocabulary.SPECIALS)
        if v <= specials:
            raise ValueError(
                f"data_dim is the vocabulary size for a text model and must exceed the {specials} "
                f"special tokens, got {v}"
            )
        self.cfg = cfg
        fixed = {Vocabulary.PAD, Vocabulary.BOS}
        if self._reference is not None:
            fixed.add(self._reference)
        free = [i for i in range(v) if i not in fixed]
        self.encoder = SequenceEncoder(
            v, k, cfg.embed_dim, cfg.lstm_hidden, cfg.flow_layers, cfg.hidden
        )
        self.decoder = self._make_decoder(cfg, len(free))
        self.register_buffer("_zeros", torch.zeros(k))
        self.register_buffer("_free_ids", torch.tensor(free, dtype=torch.long), persistent=False)
        #: (min_len, max_len) in words; 0 means no limit (see :meth:`set_length_limits`).
        self.register_buffer("length_limits", torch.zeros(2, dtype=torch.long))

    def _make_decoder(self, cfg: ModelConfig, n_out: int) -> nn.Module:
        raise NotImplementedError

    @property
    def vocab_size(self) -> int:
        return self.cfg.data_dim

    def _check(self, x: torch.Tensor) -> None:
        """Raise a ValueError unless x is padded token ids (B, L) of this vocabulary."""
        _check_tokens(x, self.vocab_size)

    def set_length_limits(self, min_len: int = 0, max_len: int = 0) -> None:
        """Make the model itself bound sentence lengths: ``</s>`` gets probability 0 before
        ``min_len`` words and 1 after ``max_len`` words (0: no limit). Saved with the state dict.
        :func:`lidvae_nb.data.synthetic_text` uses it, so that its corpus is an exact sample."""
        min_len = check_count("min_len", min_len, minimum=0)
        max_len = check_count("max_len", max_len, minimum=0)
        if max_len and min_len > max_len:
            raise ValueError(
                f"min_len must be <= max_len, got min_len={min_len}, max_len={max_len}"
            )
        self.length_limits.copy_(torch.tensor([min_len, max_len]))

    def prior(self) -> D.Distribution:
        """p(z) = N(0, I_K), event (K,)."""
        return D.Independent(D.Normal(self._zeros, torch.ones_like(self._zeros)), 1)

    def encode(self, x: torch.Tensor) -> D.Distribution:
        """q(z | x): batch (B,), event (K,)."""
        return self.encoder(x)

    def next_token_logits(
        self, h: torch.Tensor, z: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        """Logits of the next token over the whole vocabulary, (M, V), from LSTM outputs h (M, H),
        latents z (M, K) and the number of words already generated (M,) (for the length limits).
        """
        free = self.decoder.logits(h, z)
        full = free.new_full((free.shape[0], self.vocab_size), -math.inf)
        if self._reference is not None:
            full[:, self._reference] = 0.0
        full = full.index_copy(1, self._free_ids, free)
        lo, hi = self.length_limits.tolist()
        eos = Vocabulary.EOS
        if lo > 0:
            early = torch.zeros_like(full, dtype=torch.bool)
            early[:, eos] = positions < lo
            full = full.masked_fill(early, -math.inf)
        if hi > 0:
            only_eos = torch.full_like(full[:1], -math.inf)
            only_eos[:, eos] = 0.0
            full = torch.where((positions >= hi).unsqueeze(1), only_eos, full)
        return full

    def _log_prob_rows(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x | z) for checked, trimmed rows x (N, L) and z (N, K): (N,)."""
        inputs, targets = x[:, :-1], x[:, 1:]
        states, _ = self.decoder.run(inputs, z)  # (N, L - 1, H)
        mask = targets != Vocabulary.PAD
        n, t = targets.shape
        positions = torch.arange(t, device=x.device).expand(n, t)[mask]
        rows = torch.arange(n, device=x.device).unsqueeze(1).expand(n, t)[mask]
        logits = self.next_token_logits(states[mask], z[rows], positions)
        log_p = -F.cross_entropy(logits, targets[mask], reduction="none")
        return log_p.new_zeros(n).index_add(0, rows, log_p)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x | z) per sentence: x (B, L) token ids, z (..., B, K) (or any shape whose
        leading dimensions broadcast against (B,)); returns the broadcast shape, e.g. (S, B).

        Rows are evaluated in chunks of at most ``max_logits`` logits.
        """
        x, _ = _check_tokens(x, self.vocab_size)
        k = self.cfg.latent_dim
        if not isinstance(z, torch.Tensor) or z.dim() < 1 or z.shape[-1] != k:
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"z must have shape (..., B, {k}), got {shape}")
        try:
            batch = torch.broadcast_shapes(z.shape[:-1], x.shape[:-1])
        except RuntimeError:
            raise ValueError(
                f"z {tuple(z.shape)} does not broadcast against x {tuple(x.shape)}: z must be "
                f"(..., {x.shape[0]}, {k})"
            ) from None
        length = x.shape[1]
        xs = x.expand(*batch, length).reshape(-1, length)
        zs = z.expand(*batch, k).reshape(-1, k)
        step = max(1, self.max_logits // (length * self.vocab_size))
        out = [
            self._log_prob_rows(xs[i : i + step], zs[i : i + step]) for i in range(0, len(xs), step)
        ]
        return torch.cat(out).reshape(batch)

    def loss_from_q(self, x: torch.Tensor, q: D.Distribution, beta: float = 1.0) -> dict:
        """Negative ELBO with a given q(z | x), one reparameterised sample per sentence.

        The SA-VAE scheme differentiates it twice (through its unrolled SVI steps); cuDNN's LSTM
        has no double backward, so on a GPU this runs the decoder's LSTM without cuDNN (slower;
        :meth:`loss` keeps cuDNN).
        """
        with _without_cudnn(x.is_cuda):
            return _negative_elbo(self, x, q, beta)

    def loss(self, x: torch.Tensor, beta: float = 1.0) -> dict:
        """Negative ELBO: ``loss`` (scalar, beta-weighted KL), ``rec`` and ``kl`` (B,) in nats per
        sentence."""
        return _negative_elbo(self, x, self.encode(x), beta)

    @torch.no_grad()
    def sample(
        self, z: torch.Tensor, max_len: int | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Sentences drawn from p(x | z) word by word, (N, max_len + 2) padded ids, from z (N, K).

        ``max_len`` defaults to the model's own limit (:meth:`set_length_limits`), else 30; a
        sentence that reaches ``max_len`` words is ended there (an exact draw only when that is
        the model's own limit or no sentence reaches it).
        """
        k = self.cfg.latent_dim
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[1] != k:
            raise ValueError(f"z must have shape (N, {k}), got {getattr(z, 'shape', z)!r}")
        limit = int(self.length_limits[1])
        max_len = check_count("max_len", max_len) if max_len is not None else (limit or 30)
        n = z.shape[0]
        out = torch.full((n, max_len + 2), Vocabulary.PAD, dtype=torch.long, device=z.device)
        out[:, 0] = Vocabulary.BOS
        finished = torch.zeros(n, dtype=torch.bool, device=z.device)
        tokens, state = out[:, :1], None
        for j in range(max_len + 1):
            h, state = self.decoder.run(tokens, z, state)
            positions = torch.full((n,), j, dtype=torch.long, device=z.device)
            logits = self.next_token_logits(h[:, 0], z, positions)
            if j == max_len:
                logits = torch.full_like(logits, -math.inf)
                logits[:, Vocabulary.EOS] = 0.0
            token = torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)
            token = token.masked_fill(finished, Vocabulary.PAD)
            out[:, j + 1] = token
            finished |= token == Vocabulary.EOS
            if finished.all():
                break
            tokens = token.unsqueeze(1)
        return out


class SequentialVAE(_SequenceVAE):
    """The LSTM sequential VAE of He et al. (2019) (Bowman et al., 2016): an LSTM encoder, and an
    LSTM decoder whose initial state comes from z and whose input is ``[embedding, z]`` at every
    step (:class:`SequenceDecoder`). Classical: nothing stops the decoder from ignoring z."""

    def _make_decoder(self, cfg: ModelConfig, n_out: int) -> nn.Module:
        return SequenceDecoder(
            cfg.data_dim, cfg.latent_dim, cfg.embed_dim, cfg.lstm_hidden, cfg.lstm_layers, n_out
        )


class LIDSVAE(_SequenceVAE):
    """Latent-identifiable sequential VAE (Wang et al., Example 2): the decoder's logits are
    ``g2(beta2^T g1([z, h_i]))`` with an LSTM state h_i started from z
    (:class:`InjectiveSequenceDecoder`), so p(x | z) is injective in z.

    A softmax does not change when a constant is added to every logit, so injective logits alone
    would not make the next-word distribution injective. Here the logit of ``<unk>`` is fixed at
    0 (the reference category of the categorical's minimal exponential-family form) and g2, on
    R^(V - 3), gives the others (``<pad>`` and ``<s>`` are never generated): then distinct logits
    are distinct distributions, and already the first word's distribution determines z.
    Needs ``latent_dim + lstm_hidden <= V - 3``.
    """

    injective = True
    _reference = Vocabulary.UNK

    def _make_decoder(self, cfg: ModelConfig, n_out: int) -> nn.Module:
        width = cfg.latent_dim + cfg.lstm_hidden
        if width > n_out:
            raise ValueError(
                f"latent_dim + lstm_hidden ({cfg.latent_dim} + {cfg.lstm_hidden} = {width}) must "
                f"not exceed data_dim - 3 ({n_out}): the injective decoder lifts [z, h] into the "
                "free logits"
            )
        return InjectiveSequenceDecoder(
            cfg.data_dim,
            cfg.latent_dim,
            cfg.embed_dim,
            cfg.lstm_hidden,
            cfg.lstm_layers,
            n_out,
            width=cfg.hidden,
            depth=cfg.decoder_depth,
            alpha=cfg.icnn_alpha,
            weights=cfg.icnn_weights,
            quadratic_init=cfg.icnn_quadratic_init,
        )


MODELS = {"vae": VAE, "lidvae": LIDVAE, "gmvae": GMVAE, "lidgmvae": LIDGMVAE, "vade": VaDE}


#: The text models, kept apart from ``MODELS`` (the image and toy models, which take data (B, D)).
TEXT_MODELS = {"svae": SequentialVAE, "lidsvae": LIDSVAE}


def build_model(name: str, cfg: ModelConfig) -> nn.Module:
    """A model by name: one of ``MODELS`` ('vae', 'lidvae', 'gmvae', 'lidgmvae', 'vade') or
    ``TEXT_MODELS`` ('svae', 'lidsvae'; ``cfg.data_dim`` is then the vocabulary size)."""
    known = {**MODELS, **TEXT_MODELS}
    if name not in known:
        raise ValueError(f"model must be one of {sorted(known)}, got {name!r}")
    return known[name](cfg)
