"""Yacoby et al. Sections 2-3: Likelihood Before Inference (LiBI) and the models of their Table 1.

:class:`SyntheticVAE` is the model every method of Table 1 trains on the four synthetic data sets
of :func:`lidvae_nb.data.synthetic`: a likelihood with the ground-truth process's architecture and
its noise variance held fixed, and a mean-field Gaussian q(z | x) with the paper's encoder
architectures (Appendix E). With ``decoder="injective"`` the likelihood is the Brenier-map decoder
of LIDVAE instead (:class:`lidvae_nb.icnn.InjectiveDecoder`), the book's extra column.

LiBI (:func:`fit_libi`) learns the likelihood first and the inference network second:

1. theta and an amortised code network h minimise -mean log p(x | h(x)) plus penalties that keep
   the codes {h(x_n)} standard normal (Eq. 44): eps_hz exp(HZ), ``exp(|Sigma - I|^2 / eps_sigma)``,
   ``exp(|mu|^2 / eps_mu)``, with HZ the Henze-Zirkler statistic and Sigma, mu the codes' covariance
   and mean;
2. with theta frozen, q(z | x) is fitted by the ELBO, which then minimises KL(q || p_theta(z | x));
3. h restarts at q's mean and the two steps repeat; the repetition whose step-1 objective on
   validation data is lowest is kept.

Every optimisation here runs through the one :class:`lidvae_nb.trainer.Trainer`, full batch.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass

import torch
from torch import distributions as D
from torch import nn

from lidvae_nb._checks import check_count, check_positive
from lidvae_nb.data import JTE_B, SYNTHETIC, _check_synthetic, jte_loading, synthetic
from lidvae_nb.metrics import henze_zirkler, iwae_log_likelihood, smooth_knn_statistic
from lidvae_nb.models import StandardNormalVAE
from lidvae_nb.report import provenance
from lidvae_nb.trainer import TrainConfig, Trainer, run_parallel

DECODERS = ("truth", "injective")
#: The methods of Table 1, and the book's extra column.
METHODS = ("vae", "beta_vae", "beta_vae_anneal", "lagging", "libi", "lidvae")


# --- architectures -------------------------------------------------------------------------------


class _SigmoidCubeRoot(nn.Module):
    """Half of the units through a sigmoid, the other half through a cube root (Appendix E's
    first hidden layer of the CubicJTE encoder, which must invert a cube)."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        a, b = h.chunk(2, -1)
        return torch.cat([torch.sigmoid(a), torch.sign(b) * (b.abs() + 1e-12) ** (1 / 3)], -1)


def encoder_body(name: str) -> tuple[nn.Module, int]:
    """The paper's encoder for data set ``name`` up to its output layer: (module, width)."""
    dim = _check_synthetic(name)["data_dim"]
    if name in ("linear_jte", "gaussian"):
        return nn.Identity(), dim
    if name == "mobius":
        return nn.Sequential(nn.Linear(dim, 50), nn.ReLU()), 50
    return nn.Sequential(nn.Linear(dim, 4), _SigmoidCubeRoot(), nn.Linear(4, 20), nn.ReLU()), 20


class MeanFieldEncoder(nn.Module):
    """q(z | x) = N(mu(x), diag sigma(x)^2), both heads on the paper's encoder body.

    ``mean(x)`` alone is LiBI's code network h(x)."""

    def __init__(self, name: str, latent_dim: int = 2):
        super().__init__()
        self.body, width = encoder_body(name)
        self.loc = nn.Linear(width, latent_dim)
        self.log_scale = nn.Linear(width, latent_dim)
        nn.init.zeros_(self.log_scale.weight)
        nn.init.constant_(self.log_scale.bias, -1.0)

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        return self.loc(self.body(x))

    def forward(self, x: torch.Tensor) -> D.Distribution:
        h = self.body(x)
        return D.Independent(D.Normal(self.loc(h), self.log_scale(h).exp()), 1)


class JTEDecoder(nn.Module):
    """f(z) = Cholesky(A A^T + B) z, cubed element-wise when ``cubic``; A learned, B fixed."""

    def __init__(self, cubic: bool = False):
        super().__init__()
        self.cubic = cubic
        self.A = nn.Parameter(torch.randn(2, 2) * 0.5 + torch.eye(2))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = z @ jte_loading(self.A, JTE_B).T
        return out**3 if self.cubic else out


class LinearDecoder(nn.Module):
    """f(z) = z^T A with A (K, D) learned (the "Gaussian" data set)."""

    def __init__(self, latent_dim: int, data_dim: int):
        super().__init__()
        self.A = nn.Parameter(torch.randn(latent_dim, data_dim) / math.sqrt(latent_dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.A


def truth_decoder(name: str) -> nn.Module:
    """A learnable decoder with the ground-truth process's architecture. For Mobius, whose
    ground truth the paper replaces by a network, the network is an MLP 2-50-50-2 (tanh)."""
    _check_synthetic(name)
    if name in ("linear_jte", "cubic_jte"):
        return JTEDecoder(cubic=name == "cubic_jte")
    if name == "gaussian":
        return LinearDecoder(2, SYNTHETIC[name]["data_dim"])
    return nn.Sequential(
        nn.Linear(2, 50), nn.Tanh(), nn.Linear(50, 50), nn.Tanh(), nn.Linear(50, 2)
    )


# --- the model -----------------------------------------------------------------------------------


class SyntheticVAE(StandardNormalVAE):
    """A VAE for Yacoby et al.'s data set ``name`` (see :data:`lidvae_nb.data.SYNTHETIC`).

    z ~ N(0, I_2), x | z ~ N(f(z), v I) with v the data set's true noise variance, fixed; f is
    :func:`truth_decoder` (``decoder="truth"``) or an injective Brenier-map decoder
    (``decoder="injective"``, width ``hidden``). q(z | x) is a :class:`MeanFieldEncoder`.
    Same interface as :mod:`lidvae_nb.models` (``encode``, ``prior``, ``log_likelihood``,
    ``loss``), plus ``sample``.
    """

    latent_dim = 2

    def __init__(self, name: str, decoder: str = "truth", hidden: int = 32):
        super().__init__()
        _check_synthetic(name)
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        self.name, self.kind = name, decoder
        self.data_dim = SYNTHETIC[name]["data_dim"]
        self.encoder = MeanFieldEncoder(name, self.latent_dim)
        if decoder == "truth":
            self.decoder = truth_decoder(name)
        else:
            from lidvae_nb.icnn import InjectiveDecoder

            self.decoder = InjectiveDecoder(
                self.latent_dim, self.data_dim, width=check_count("hidden", hidden), depth=2
            )
        self.register_buffer("noise_scale", torch.tensor(math.sqrt(SYNTHETIC[name]["noise_var"])))
        self.register_buffer("_zeros", torch.zeros(self.latent_dim))

    def decode(self, z: torch.Tensor) -> D.Distribution:
        """p(x | z) for z (..., 2): batch shape (...), event (D,)."""
        lead = z.shape[:-1]
        mean = self.decoder(z.reshape(-1, self.latent_dim)).reshape(*lead, self.data_dim)
        return D.Independent(D.Normal(mean, self.noise_scale.expand_as(mean)), 1)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.decode(z).log_prob(x)

    def loss(self, x: torch.Tensor, beta: float = 1.0) -> dict:
        """Negative ELBO (``loss``, KL weighted by ``beta``), ``rec`` and ``kl`` per point."""
        q = self.encode(x)
        rec = -self.log_likelihood(x, q.rsample())
        kl = D.kl_divergence(q, self.prior())
        return {"loss": (rec + beta * kl).mean(), "rec": rec.detach(), "kl_term": kl.detach()}

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` draws from p_theta(x), (n, D)."""
        check_count("n", n)
        z = torch.randn(n, self.latent_dim, generator=generator, device=self._zeros.device)
        mean = self.decoder(z)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device)
        return mean + self.noise_scale * noise


# --- LiBI ---------------------------------------------------------------------------------------


@dataclass
class LiBIConfig:
    """LiBI's settings: the penalty weights of Eq. 44, the repetitions R, and the epochs (full
    batch) of step 1 and step 2 in each repetition."""

    eps_hz: float = 1.0
    eps_sigma: float = 0.5
    eps_mu: float = 0.5
    repeats: int = 1
    step1_epochs: int = 2000
    step2_epochs: int = 2000

    def __post_init__(self):
        for name in ("eps_hz", "eps_sigma", "eps_mu"):
            check_positive(name, getattr(self, name))
        for name in ("repeats", "step1_epochs", "step2_epochs"):
            check_count(name, getattr(self, name))


#: Exponents above this continue linearly in the LiBI penalties (e^50 is about 5e21).
EXP_CAP = 50.0


def _capped_exp(u: torch.Tensor) -> torch.Tensor:
    """exp(u) up to u = EXP_CAP, then its tangent line: equal in value and slope at the cap, so
    a far-off start gives a huge finite loss whose gradient still points back, not an overflow."""
    top = math.exp(EXP_CAP)
    return torch.where(u <= EXP_CAP, torch.exp(u.clamp(max=EXP_CAP)), top * (1 + u - EXP_CAP))


def code_penalties(codes: torch.Tensor, cfg: LiBIConfig) -> dict:
    """The three penalties of Eq. 44 on the codes (n, K), and their sum (``total``).

    Each is exp of its exponent, continued linearly beyond an exponent of :data:`EXP_CAP` (in
    float32, exp overflows at 88, which codes of a badly scaled start reach at once)."""
    mean = codes.mean(0)
    centred = codes - mean
    cov = centred.T @ centred / codes.shape[0]
    eye = torch.eye(codes.shape[1], dtype=codes.dtype, device=codes.device)
    hz = henze_zirkler(codes)
    out = {
        "hz": cfg.eps_hz * _capped_exp(hz),
        "sigma": _capped_exp(((cov - eye) ** 2).sum() / cfg.eps_sigma),
        "mu": _capped_exp((mean**2).sum() / cfg.eps_mu),
    }
    out["total"] = out["hz"] + out["sigma"] + out["mu"]
    return out


class LiBIStep1(nn.Module):
    """LiBI's step-1 objective as a model the trainer can fit: the likelihood of ``vae`` and an
    amortised code network ``codes`` (a :class:`MeanFieldEncoder`; only its mean is used).

    ``loss(x)`` is Eq. 44 on the batch: -mean log p(x | h(x)) plus the code penalties, so the
    batch must be the whole training set (HZ, mean and covariance are statistics of all codes)."""

    def __init__(self, vae: SyntheticVAE, codes: MeanFieldEncoder, cfg: LiBIConfig):
        super().__init__()
        self.decoder, self.codes = vae.decoder, codes
        self.vae_ref = [vae]  # not a submodule: its encoder takes no part in step 1
        self.cfg = cfg

    def loss(self, x: torch.Tensor, beta: float = 1.0) -> dict:
        z = self.codes.mean(x)
        rec = -self.vae_ref[0].log_likelihood(x, z)
        try:
            penalty = code_penalties(z, self.cfg)["total"]
        except ValueError as err:  # codes on a line: the Henze-Zirkler statistic is undefined
            raise FloatingPointError(f"LiBI step 1: {err}") from err
        return {
            "loss": rec.mean() + penalty,
            "rec": rec.detach(),
            "kl_term": penalty.detach().expand_as(rec),
        }


def _train(model: nn.Module, x: torch.Tensor, epochs: int, cfg: TrainConfig, **changes) -> None:
    run = dataclasses.replace(cfg, epochs=epochs, batch_size=x.shape[0], **changes)
    Trainer(model, run).fit(x)


def fit_libi(
    vae: SyntheticVAE,
    train: torch.Tensor,
    val: torch.Tensor,
    cfg: LiBIConfig,
    train_cfg: TrainConfig,
) -> tuple[SyntheticVAE, list[dict]]:
    """Fit ``vae`` by LiBI; returns the selected model (a copy) and one record per repetition
    (the step-1 objective on ``val``, ``val_step1``, and the negative ELBO on ``val``).

    ``train_cfg`` gives the optimiser, learning rate and seed; batches are always the whole of
    ``train``. The repetition with the lowest ``val_step1`` is returned.
    """
    vae.train()
    codes = copy.deepcopy(vae.encoder)
    best, best_value, records = None, math.inf, []
    for t in range(cfg.repeats):
        step1 = LiBIStep1(vae, codes, cfg)
        _train(step1, train, cfg.step1_epochs, train_cfg, seed=train_cfg.seed + 1000 * t)
        decoder_params = list(vae.decoder.parameters())
        for p in decoder_params:
            p.requires_grad_(False)
        try:
            _train(vae, train, cfg.step2_epochs, train_cfg, seed=train_cfg.seed + 1000 * t + 1)
        finally:
            for p in decoder_params:
                p.requires_grad_(True)
        with torch.no_grad():
            value = float(step1.loss(val)["loss"])
            elbo = float(vae.loss(val)["loss"])
        records.append({"repeat": t, "val_step1": value, "val_neg_elbo": elbo})
        if value < best_value:
            best, best_value = copy.deepcopy(vae), value
        codes.load_state_dict(vae.encoder.state_dict())  # step 3: h starts at q's mean
    return best if best is not None else copy.deepcopy(vae), records


# --- the baselines and the table ----------------------------------------------------------------


def fit_vae(
    vae: SyntheticVAE,
    train: torch.Tensor,
    val: torch.Tensor,
    train_cfg: TrainConfig,
    epochs: int,
    eval_every: int,
) -> tuple[SyntheticVAE, list[dict]]:
    """Fit ``vae`` under ``train_cfg.scheme`` (full batch) and keep the checkpoint, among those
    every ``eval_every`` epochs, whose own objective (negative beta-ELBO at the scheme's final
    beta) on ``val`` is lowest. Returns (that model, the validation records)."""
    check_count("epochs", epochs)
    check_count("eval_every", eval_every)
    cfg = dataclasses.replace(train_cfg, epochs=eval_every, batch_size=train.shape[0])
    trainer = Trainer(vae, cfg)
    final_beta = {"beta": cfg.beta, "anneal": cfg.anneal_to}.get(cfg.scheme, 1.0)
    best, best_value, records = None, math.inf, []
    done = 0
    while done < epochs:
        done = min(epochs, done + eval_every)
        trainer.cfg.epochs = done
        trainer.fit(train, val if cfg.scheme == "lagging" else None)
        with torch.no_grad():
            value = float(vae.loss(val, beta=final_beta)["loss"])
        records.append({"epoch": done, "val_objective": value})
        if math.isfinite(value) and value < best_value:
            best, best_value = copy.deepcopy(vae), value
    return best if best is not None else copy.deepcopy(vae), records


def evaluate(
    vae: SyntheticVAE,
    test: torch.Tensor,
    n_samples: int = 5000,
    knn_repeats: int = 200,
    knn_size: int = 100,
    seed: int = 0,
) -> dict:
    """Table 1's two numbers for a fitted model.

    ``test_ll``: the mean over ``test`` of log p_theta(x) by importance sampling with q(z | x),
    its variance inflated by 2, ``n_samples`` samples. ``s_knn``: the smooth k-NN statistic of
    ``knn_size`` fresh draws from the true process against as many from p_theta(x), averaged
    over ``knn_repeats`` independent pairs of samples.
    """
    check_count("knn_repeats", knn_repeats)
    check_count("knn_size", knn_size)
    vae.eval()
    with torch.no_grad():
        ll = iwae_log_likelihood(
            vae, test, n_samples=n_samples, chunk_size=1000, batch_size=100, proposal_inflation=2.0
        )
        truth, _ = synthetic(vae.name, knn_repeats * knn_size, seed=10_000 + seed)
        gen = torch.Generator().manual_seed(20_000 + seed)
        model = vae.sample(knn_repeats * knn_size, generator=gen)
        shape = (knn_repeats, knn_size, vae.data_dim)
        pairs = zip(truth.reshape(shape).split(100), model.reshape(shape).split(100), strict=True)
        stat = torch.cat([smooth_knn_statistic(a, b) for a, b in pairs])
    vae.train()
    return {"test_ll": float(ll.mean()), "s_knn": float(stat.mean())}


def fit_method(
    method: str,
    name: str,
    train: torch.Tensor,
    val: torch.Tensor,
    epochs: int,
    eval_every: int,
    hp: dict | None = None,
    seed: int = 0,
    lr: float = 0.01,
) -> SyntheticVAE:
    """Fit ``method`` (one of :data:`METHODS`) on data set ``name`` from the seed ``seed`` and
    return the model its own validation objective selects.

    ``hp`` holds the method's hyper-parameters: ``beta`` (beta-VAE, and the value annealed to),
    ``eps_hz``, ``eps_sigma``, ``eps_mu`` and ``repeats`` (LiBI, whose steps 1 and 2 get
    ``epochs`` // ``repeats`` epochs each per repetition). Lagging inference networks are He et
    al.'s aggressive schedule, as in :class:`lidvae_nb.trainer.Trainer`. Training is full batch
    with Adam at ``lr``; checkpoints are compared every ``eval_every`` epochs (not LiBI).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    check_count("epochs", epochs)
    check_count("eval_every", eval_every)
    hp = dict(hp or {})
    torch.manual_seed(seed)
    vae = SyntheticVAE(name, decoder="injective" if method == "lidvae" else "truth")
    base = TrainConfig(lr=lr, seed=seed, progress=False)
    if method == "libi":
        repeats = check_count("repeats", hp.get("repeats", 1))
        if epochs < repeats:
            raise ValueError(
                f"epochs ({epochs}) must be at least repeats ({repeats}): each repetition "
                "gets epochs // repeats epochs per step"
            )
        cfg = LiBIConfig(
            eps_hz=hp.get("eps_hz", 1.0),
            eps_sigma=hp.get("eps_sigma", 0.5),
            eps_mu=hp.get("eps_mu", 0.5),
            repeats=repeats,
            step1_epochs=epochs // repeats,
            step2_epochs=epochs // repeats,
        )
        return fit_libi(vae, train, val, cfg, base)[0]
    changes = {
        "vae": {},
        "lidvae": {},
        "beta_vae": {"scheme": "beta", "beta": hp.get("beta", 1.0)},
        "beta_vae_anneal": {
            "scheme": "anneal",
            "anneal_to": hp.get("beta", 1.0),
            "anneal_start": 0.1,
            "anneal_epochs": max(1.0, epochs / 2),
        },
        "lagging": {"scheme": "lagging"},
    }[method]
    return fit_vae(vae, train, val, dataclasses.replace(base, **changes), epochs, eval_every)[0]


def run_method(
    method: str,
    name: str,
    data_seed: int,
    restart: int,
    epochs: int,
    eval_every: int,
    n_train: int = 500,
    hp: dict | None = None,
    n_samples: int = 5000,
    knn_repeats: int = 200,
    lr: float = 0.01,
) -> dict:
    """One cell of Table 1: :func:`fit_method` on data set ``name`` (its copy ``data_seed``:
    train, validation and test sets of ``n_train`` points each) from restart ``restart``, then
    :func:`evaluate`.

    Returns the two metrics, the wall time and the settings; a run that the trainer stops on a
    non-finite loss is returned with NaN metrics and the error message under ``error``, so that
    one diverged run does not end a whole table.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    hp = dict(hp or {})
    train, _ = synthetic(name, n_train, seed=3 * data_seed)
    val, _ = synthetic(name, n_train, seed=3 * data_seed + 1)
    test, _ = synthetic(name, n_train, seed=3 * data_seed + 2)
    seed = 1000 * data_seed + restart
    record = {"method": method, "data": name, "data_seed": data_seed, "restart": restart}
    start = time.perf_counter()
    try:
        model = fit_method(method, name, train, val, epochs, eval_every, hp, seed, lr)
    except FloatingPointError as err:  # the trainer's stop on a non-finite loss
        result = {"test_ll": math.nan, "s_knn": math.nan, "error": str(err)}
        seconds = time.perf_counter() - start
    else:
        seconds = time.perf_counter() - start
        result = evaluate(model, test, n_samples=n_samples, knn_repeats=knn_repeats, seed=seed)
    return {**record, **result, "fit_seconds": round(seconds, 2), "epochs": epochs, "hp": hp}


def _run_job(job: dict) -> dict:
    torch.set_num_threads(1)
    return run_method(**job)


def run_table(jobs: list[dict], workers: int = 1, progress: bool = True) -> list[dict]:
    """Run :func:`run_method` on every dict of keyword arguments in ``jobs``, in ``workers``
    processes (one thread each), with a progress bar; results in the order of ``jobs``."""
    return run_parallel(_run_job, [{"job": job} for job in jobs], workers, "Table 1", progress)


def table_jobs(
    names, data_seeds: int, restarts: int, epochs: int, eval_every: int, grids: dict, **common
) -> list[dict]:
    """Every (method, data set, copy, restart, hyper-parameter setting) of a Table 1 run.

    ``grids`` maps each method to a list of hyper-parameter dicts (a method left out is not run).
    """
    check_count("data_seeds", data_seeds)
    check_count("restarts", restarts)
    jobs = []
    for name in names:
        for method, settings in grids.items():
            for hp in settings:
                for d in range(data_seeds):
                    for r in range(restarts):
                        jobs.append(
                            dict(
                                method=method,
                                name=name,
                                data_seed=d,
                                restart=r,
                                epochs=epochs,
                                eval_every=eval_every,
                                hp=dict(hp),
                                **common,
                            )
                        )
    return jobs


def main(argv=None) -> None:
    """``python -m lidvae_nb.libi``: run a Table 1 grid and store it with its provenance."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--data-seeds", type=int, default=5)
    parser.add_argument("--restarts", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=30000)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--samples", type=int, default=5000, help="importance samples")
    parser.add_argument("--knn-repeats", type=int, default=20000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--grids", default="{}", help="JSON {method: [hp, ...]}; default: fixed")
    args = parser.parse_args(argv)
    grids = json.loads(args.grids) or {m: [DEFAULT_HP.get(m, {})] for m in METHODS}
    config = {k: v for k, v in vars(args).items() if k != "out"} | {"grids": grids}
    jobs = table_jobs(
        list(SYNTHETIC),
        args.data_seeds,
        args.restarts,
        args.epochs,
        args.eval_every,
        grids,
        n_samples=args.samples,
        knn_repeats=args.knn_repeats,
    )
    start = time.perf_counter()
    runs = run_table(jobs, workers=args.workers)
    record = {"provenance": provenance(config, time.perf_counter() - start), "runs": runs}
    with open(args.out, "w") as f:
        json.dump(record, f, indent=1)
    print(f"wrote {len(runs)} runs to {args.out}")


#: The hyper-parameters used when no grid is searched.
DEFAULT_HP = {
    "beta_vae": {"beta": 2.0},
    "beta_vae_anneal": {"beta": 2.0},
    "libi": {"eps_hz": 1.0, "eps_sigma": 0.5, "eps_mu": 0.5, "repeats": 2},
}


if __name__ == "__main__":
    main()
