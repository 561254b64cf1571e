"""VAE, GMVAE and their latent-identifiable counterparts, LIDVAE and LIDGMVAE.

All four share one shape, which the trainer and the metrics rely on:

* ``encode(x)``: q(z | x) as a ``torch.distributions.Distribution``, batch (B,), event (K,);
* ``prior()``: p(z), event (K,);
* ``log_likelihood(x, z)``: log p(x | z), for z with any leading sample dimensions;
* ``loss(x, beta=1.0)``: a dict with the negative ELBO (``loss``, scalar, beta-weighted KL),
  ``rec`` and ``kl`` (per data point), used by every training scheme.

The latent-identifiable models differ from their classical counterparts only in the decoder:
an injective map g2(beta^T g1(z)) built from Brenier maps (:mod:`lidvae_nb.icnn`) replaces the MLP,
so that p(x | z) is injective in z for every parameter value (Wang et al., Definition 3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import distributions as D
from torch import nn

from lidvae_nb._checks import check_count

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


@dataclass
class ModelConfig:
    """Sizes and choices shared by every model.

    ``decoder_depth`` counts hidden layers of the MLP decoder, or of each ICNN in the injective
    decoder; ``n_clusters`` is used by the mixture models only; ``flow_layers`` > 0 adds RealNVP
    coupling layers to q(z | x) (the paper's flexible family for images).

    ``fixed_prior_means`` (mixture models only) fixes the component means at distinct points
    instead of learning them, as Wang et al.'s Example 1 does (see :func:`spread_means`); the
    component scales stay learned.
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
    fixed_prior_means: bool = False

    def __post_init__(self):
        for name in ("data_dim", "latent_dim", "hidden", "encoder_depth", "decoder_depth"):
            check_count(name, getattr(self, name))
        check_count("n_clusters", self.n_clusters)
        check_count("flow_layers", self.flow_layers, minimum=0)
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")


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
    """One RealNVP coupling layer: half of z rescales and shifts the other half.

    A ``torch.distributions.Transform`` with learnable parameters, so that
    ``TransformedDistribution(q0, [couplings])`` gives rsample and log_prob of the flow.
    """

    domain = D.constraints.real_vector
    codomain = D.constraints.real_vector
    bijective = True

    def __init__(self, dim: int, hidden: int, flip: bool):
        D.Transform.__init__(self, cache_size=0)
        nn.Module.__init__(self)
        self.dim, self.flip = dim, flip
        self.n_keep = dim // 2 if not flip else dim - dim // 2
        self.net = mlp([self.n_keep, hidden, 2 * (dim - self.n_keep)], nn.Tanh)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def __hash__(self):
        return nn.Module.__hash__(self)

    def _split(self, z):
        a, b = z[..., : self.n_keep], z[..., self.n_keep :]
        return (b, a) if self.flip else (a, b)

    def _join(self, keep, change):
        return torch.cat([change, keep] if self.flip else [keep, change], -1)

    def _params(self, keep):
        log_s, t = self.net(keep).chunk(2, -1)
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
        log_s, _ = self._params(keep)
        return log_s.sum(-1)


class GaussianEncoder(nn.Module):
    """x -> q(z | x) = N(mu(x), diag sigma(x)^2), optionally pushed through RealNVP couplings."""

    def __init__(self, in_dim: int, latent_dim: int, hidden: int, depth: int, flow_layers: int = 0):
        super().__init__()
        self.net = mlp([in_dim] + [hidden] * depth + [2 * latent_dim])
        self.flows = nn.ModuleList(
            AffineCoupling(latent_dim, hidden, flip=bool(i % 2)) for i in range(flow_layers)
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
    )


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
        self.encoder = GaussianEncoder(
            cfg.data_dim, cfg.latent_dim, cfg.hidden, cfg.encoder_depth, cfg.flow_layers
        )
        self.decoder = self._make_decoder(cfg)
        self.lik = _Likelihood(cfg.likelihood, cfg.data_dim)
        self.register_buffer("_zeros", torch.zeros(cfg.latent_dim))

    def _make_decoder(self, cfg: ModelConfig) -> nn.Module:
        return MLPDecoder(cfg.latent_dim, cfg.data_dim, cfg.hidden, cfg.decoder_depth)

    def prior(self) -> D.Distribution:
        return D.Independent(D.Normal(self._zeros, torch.ones_like(self._zeros)), 1)

    def loss_from_q(self, x: torch.Tensor, q: D.Distribution, beta: float = 1.0) -> dict:
        """Negative ELBO with a given q(z | x) (one reparameterised sample per point)."""
        z = q.rsample()
        rec = -self.log_likelihood(x, z)
        if len(self.encoder.flows) == 0:
            kl = D.kl_divergence(q, self.prior())
        else:
            kl = q.log_prob(z) - self.prior().log_prob(z)
        return {"loss": (rec + beta * kl).mean(), "rec": rec.detach(), "kl": kl.detach()}

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

    The means mu_y start at 2 * N(0, I) and are learned, or are fixed by
    ``ModelConfig.fixed_prior_means`` (:func:`spread_means`)."""

    injective = False

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        c, k = cfg.n_clusters, cfg.latent_dim
        self.cluster_net = mlp([cfg.data_dim] + [cfg.hidden] * cfg.encoder_depth + [c])
        self.encoder = GaussianEncoder(
            cfg.data_dim + c, k, cfg.hidden, cfg.encoder_depth, cfg.flow_layers
        )
        if cfg.fixed_prior_means:
            self.register_buffer("prior_means", spread_means(c, k))
        else:
            self.prior_means = nn.Parameter(2.0 * torch.randn(c, k))
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
        kl = (probs * kl_z).sum(-1) + kl_y
        return {"loss": (rec + beta * kl).mean(), "rec": rec.detach(), "kl": kl.detach()}


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
        self.encoder = GaussianEncoder(
            cfg.data_dim, k, cfg.hidden, cfg.encoder_depth, cfg.flow_layers
        )
        self.decoder = MLPDecoder(k, cfg.data_dim, cfg.hidden, cfg.decoder_depth)
        self.lik = _Likelihood(cfg.likelihood, cfg.data_dim)
        self.prior_logits = nn.Parameter(torch.zeros(c))
        self.prior_means = nn.Parameter(2.0 * torch.randn(c, k))
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
        return {"loss": (rec + beta * kl).mean(), "rec": rec.detach(), "kl": kl.detach()}


MODELS = {"vae": VAE, "lidvae": LIDVAE, "gmvae": GMVAE, "lidgmvae": LIDGMVAE, "vade": VaDE}


def build_model(name: str, cfg: ModelConfig) -> nn.Module:
    """A model by name: one of ``MODELS`` ('vae', 'lidvae', 'gmvae', 'lidgmvae', 'vade')."""
    if name not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {name!r}")
    return MODELS[name](cfg)
