"""One trainer for every model and every training scheme.

Schemes (``TrainConfig.scheme``):

* ``"elbo"``: the plain VAE objective;
* ``"beta"``: beta-VAE, the KL term weighted by ``beta`` (0.2 in the source papers);
* ``"anneal"``: KL annealing, beta moving linearly from ``anneal_start`` to ``anneal_to`` (1 by
  default; another value gives beta-VAE with annealing) in ``anneal_epochs``;
* ``"lagging"``: lagging ("aggressive") inference networks (He et al., 2019): while aggressive, the
  encoder is updated on fresh batches until its loss stops improving (at most
  ``lagging_max_inner`` steps) before each decoder step; aggressive mode ends when the mutual
  information on validation data stops rising;
* ``"savae"``: semi-amortised VAE (Kim et al., 2018): ``savae_steps`` steps of SVI (size
  ``savae_lr``, each point's gradient norm clipped at ``savae_max_grad_norm`` as in Kim et al.'s
  code) refine the encoder's Gaussian parameters; the decoder is trained at the refined
  parameters and the encoder through the unrolled refinement (exact Hessian-vector products by
  autograd).

The trainer seeds everything, uses CUDA when present, shows tqdm progress, writes checkpoints
atomically and resumes from them (``torch.load(weights_only=True)``), logs one JSON line per
epoch, and stops with an error naming the step on a NaN or infinite loss, leaving the last good
checkpoint in place. After every optimiser step it calls ``project_()`` on each module that has
one (:func:`lidvae_nb.icnn.project_constraints`: projected ICNN weights, the learned lift).

The optimiser is Adam or RMSprop. RMSprop's ``rmsprop_alpha`` (decay of the squared-gradient
average), ``rmsprop_eps``, ``momentum`` and ``rmsprop_init`` (the average's starting value) are
settings, so that both PyTorch's defaults (0.99, 1e-8, 0, 0) and TensorFlow 1's RMSProp of the
original LIDVAE code (decay 0.9, epsilon 1e-10, momentum 0.5 there, the average starting at 1)
can be stated; ``reduction="sum"`` differentiates the batch's summed loss instead of its mean,
as that code did (it changes what ``grad_clip`` clips).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import distributions as D
from torch import nn
from tqdm import tqdm

from lidvae_nb._checks import check_count, check_positive
from lidvae_nb.icnn import project_constraints

SCHEMES = ("elbo", "beta", "anneal", "lagging", "savae")
OPTIMIZERS = ("adam", "rmsprop")
REDUCTIONS = ("mean", "sum")


@dataclass
class TrainConfig:
    """Everything that defines a training run, besides the model and the data."""

    epochs: int = 50
    batch_size: int = 100
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.0
    rmsprop_alpha: float = 0.99
    rmsprop_eps: float = 1e-8
    rmsprop_init: float = 0.0
    reduction: str = "mean"
    grad_clip: float | None = 5.0
    scheme: str = "elbo"
    beta: float = 0.2
    anneal_epochs: float = 10.0
    anneal_start: float = 0.1
    anneal_to: float = 1.0
    lagging_max_inner: int = 100
    savae_steps: int = 10
    savae_lr: float = 1.0
    savae_max_grad_norm: float = 5.0
    seed: int = 0
    device: str | None = None
    checkpoint_dir: str | None = None
    checkpoint_every: int = 1
    progress: bool = True

    def __post_init__(self):
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {SCHEMES}, got {self.scheme!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {self.reduction!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not 0 < self.rmsprop_alpha < 1:
            raise ValueError(f"rmsprop_alpha must be in (0, 1), got {self.rmsprop_alpha!r}")
        if not self.rmsprop_eps > 0:
            raise ValueError(f"rmsprop_eps must be > 0, got {self.rmsprop_eps!r}")
        if not self.rmsprop_init >= 0:
            raise ValueError(f"rmsprop_init must be >= 0, got {self.rmsprop_init!r}")
        if self.optimizer == "adam" and (self.momentum or self.rmsprop_init):
            raise ValueError(
                f"momentum and rmsprop_init are RMSprop settings; with optimizer 'adam' they must "
                f"be 0, got momentum={self.momentum!r}, rmsprop_init={self.rmsprop_init!r}"
            )
        for name in (
            "epochs",
            "batch_size",
            "lagging_max_inner",
            "savae_steps",
            "checkpoint_every",
        ):
            check_count(name, getattr(self, name))
        for name in ("lr", "beta", "anneal_epochs", "anneal_to", "savae_lr", "savae_max_grad_norm"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not 0 <= self.anneal_start <= 1:
            raise ValueError(f"anneal_start must be in [0, 1], got {self.anneal_start!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {self.grad_clip!r}")


def _accumulate(sums: dict, out: dict, n: int) -> None:
    """Add a loss dict's batch to running sums: ``loss`` (a mean) times ``n``, the per-point
    tensors (``rec``, ``kl_term``, ``kl_y``, ...) summed."""
    sums["loss"] = sums.get("loss", 0.0) + float(out["loss"].detach()) * n
    for key, value in out.items():
        if key != "loss":
            sums[key] = sums.get(key, 0.0) + float(value.sum())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _encoder_parameters(model: nn.Module) -> list[nn.Parameter]:
    names = ("encoder", "cluster_net")
    return [p for n, p in model.named_parameters() if n.split(".")[0] in names]


def _decoder_parameters(model: nn.Module) -> list[nn.Parameter]:
    enc = {id(p) for p in _encoder_parameters(model)}
    return [p for p in model.parameters() if id(p) not in enc]


def _check_refinable(model: nn.Module, who: str) -> None:
    if not hasattr(model, "loss_from_q") or len(model.encoder.flows) > 0:
        raise ValueError(
            f"{who} refines a Gaussian q(z | x): it needs a VAE or LIDVAE without flow layers, "
            f"got {type(model).__name__} with "
            f"flow_layers={getattr(getattr(model, 'cfg', None), 'flow_layers', '?')}"
        )


def svi_refine(
    model: nn.Module,
    x: torch.Tensor,
    steps: int,
    lr: float,
    beta: float = 1.0,
    create_graph: bool = False,
    max_grad_norm: float = 5.0,
) -> list[torch.Tensor]:
    """SA-VAE's refinement of q(z | x) (Kim et al., 2018): the encoder's Gaussian parameters
    ``[mu, raw_sigma]`` for each point of ``x``, then ``steps`` gradient steps of size ``lr`` on
    that point's negative ELBO (one reparameterised sample per step), each point's gradient
    (over mu and raw_sigma together) clipped to norm ``max_grad_norm``. Without the clipping a
    784-pixel Bernoulli likelihood gives gradients in the hundreds and the refinement diverges.

    With ``create_graph`` the steps stay on the tape, so the encoder can be trained through them
    (training); without it they are taken on detached copies (evaluation, also under
    ``torch.no_grad``) and the refined parameters come back detached.
    """
    steps = check_count("steps", steps, minimum=0)
    lr, max_grad_norm = check_positive("lr", lr), check_positive("max_grad_norm", max_grad_norm)
    with torch.enable_grad():
        lam = list(model.encoder.params(x))
        if not create_graph:
            lam = [p.detach().requires_grad_() for p in lam]
        for _ in range(steps):
            q = model.encoder.distribution(*lam)
            # Sum over the batch so that each point's parameters take a step of size lr.
            inner = model.loss_from_q(x, q, beta)["loss"] * x.shape[0]
            grads = torch.autograd.grad(inner, lam, create_graph=create_graph)
            norm = torch.cat(grads, -1).norm(dim=-1, keepdim=True)
            shrink = (max_grad_norm / (norm + 1e-12)).clamp(max=1.0)
            lam = [p - lr * shrink * g for p, g in zip(lam, grads, strict=True)]
            if not create_graph:
                lam = [p.detach().requires_grad_() for p in lam]
    return lam if create_graph else [p.detach() for p in lam]


class SemiAmortized(nn.Module):
    """A VAE trained by the ``savae`` scheme, seen as it was trained: its q(z | x) is the
    encoder's output refined by :func:`svi_refine`. Pass this, not the bare model, to the metrics
    (:func:`lidvae_nb.metrics.collapse_report`): the bare encoder only gives the starting point of
    the refinement, and the ELBO never asked it to be a good posterior on its own.
    """

    def __init__(self, model: nn.Module, steps: int, lr: float, max_grad_norm: float = 5.0):
        super().__init__()
        _check_refinable(model, "SemiAmortized")
        self.model = model
        self.steps = check_count("steps", steps, minimum=0)
        self.lr = check_positive("lr", lr)
        self.max_grad_norm = check_positive("max_grad_norm", max_grad_norm)

    @property
    def cfg(self):
        return self.model.cfg

    def prior(self):
        return self.model.prior()

    def encode(self, x: torch.Tensor):
        """The refined q(z | x): batch (B,), event (K,)."""
        self.model._check(x)
        lam = svi_refine(self.model, x, self.steps, self.lr, max_grad_norm=self.max_grad_norm)
        return self.model.encoder.distribution(*lam)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.model.log_likelihood(x, z)

    def loss(self, x: torch.Tensor, beta: float = 1.0) -> dict:
        """Negative ELBO under the refined q(z | x)."""
        return self.model.loss_from_q(x, self.encode(x), beta)


class Trainer:
    """Fits ``model`` (any model of :mod:`lidvae_nb.models`) under ``config``.

    ``batch_transform`` is applied to every training batch (for example dynamic binarisation).
    """

    CHECKPOINT = "checkpoint.pt"
    PREVIOUS = "checkpoint.prev.pt"
    LOG = "log.jsonl"

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        batch_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        self.cfg = config
        self.device = torch.device(config.device) if config.device else default_device()
        seed_everything(config.seed)
        self.model = model.to(self.device)
        self.batch_transform = batch_transform
        self.opt = self._optimizer(list(model.parameters()))
        if config.scheme == "lagging":
            self.enc_opt = self._optimizer(_encoder_parameters(model))
            self.dec_opt = self._optimizer(_decoder_parameters(model))
        self.epoch = 0
        self.step = 0
        self.history: list[dict] = []
        self.aggressive = config.scheme == "lagging"
        self.best_mi = -math.inf
        self.dir = Path(config.checkpoint_dir) if config.checkpoint_dir else None
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._resume()

    # --- set-up -------------------------------------------------------------------------------
    def _optimizer(self, params):
        cfg = self.cfg
        # foreach: one kernel per step for all parameters instead of one per tensor (on CPU
        # torch picks the per-tensor loop by default, which dominates small models' steps)
        if cfg.optimizer == "adam":
            return torch.optim.Adam(params, lr=cfg.lr, foreach=True)
        opt = torch.optim.RMSprop(
            params,
            lr=cfg.lr,
            alpha=cfg.rmsprop_alpha,
            eps=cfg.rmsprop_eps,
            momentum=cfg.momentum,
            foreach=True,
        )
        if cfg.rmsprop_init > 0:  # TensorFlow 1 starts the squared-gradient average at 1
            for p in params:
                state = opt.state[p]
                state["step"] = torch.tensor(0.0)
                state["square_avg"] = torch.full_like(p, cfg.rmsprop_init)
                if cfg.momentum > 0:
                    state["momentum_buffer"] = torch.zeros_like(p)
        return opt

    def beta_at(self, step: int, steps_per_epoch: int) -> float:
        """The weight of the KL term at a given step under the configured scheme."""
        if self.cfg.scheme == "beta":
            return self.cfg.beta
        if self.cfg.scheme == "anneal":
            frac = min(1.0, step / (self.cfg.anneal_epochs * steps_per_epoch))
            start, end = self.cfg.anneal_start, self.cfg.anneal_to
            return start + (end - start) * frac
        return 1.0

    # --- checkpoints --------------------------------------------------------------------------
    def _state(self) -> dict:
        state = {
            "model": self.model.state_dict(),
            "opt": self.opt.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "history": self.history,
            "aggressive": self.aggressive,
            "best_mi": self.best_mi,
            "config": dataclasses.asdict(self.cfg),
            "torch_rng": torch.get_rng_state(),
        }
        if self.cfg.scheme == "lagging":
            state["enc_opt"] = self.enc_opt.state_dict()
            state["dec_opt"] = self.dec_opt.state_dict()
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def save(self, path: Path | None = None) -> Path:
        """Write a checkpoint atomically (temporary file, then rename). In the run's folder the
        checkpoint it replaces is kept as ``checkpoint.prev.pt``, to fall back on."""
        default = path is None
        path = self.dir / self.CHECKPOINT if default else Path(path)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self._state(), tmp)
        if default and path.exists():
            os.replace(path, self.dir / self.PREVIOUS)
        os.replace(tmp, path)
        return path

    def _resume(self) -> None:
        """Load the newest readable checkpoint of the run's folder. An unreadable one (truncated
        by a kill mid-write on a file system without atomic renames, or corrupted) is moved
        aside as ``*.corrupt`` with a warning that names it, and the previous checkpoint, or
        else a fresh start, takes its place; the per-epoch log is rewritten to match."""
        import warnings

        for name in (self.CHECKPOINT, self.PREVIOUS):
            path = self.dir / name
            if not path.exists():
                continue
            try:
                state = torch.load(path, map_location=self.device, weights_only=True)
                if not isinstance(state, dict) or "model" not in state or "config" not in state:
                    raise ValueError("not a checkpoint of this trainer")
            except Exception as err:  # noqa: BLE001 - any unreadable file is treated alike
                aside = path.with_name(path.name + ".corrupt")
                os.replace(path, aside)
                fallback = name == self.CHECKPOINT and (self.dir / self.PREVIOUS).exists()
                reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
                warnings.warn(
                    f"checkpoint {path} is unreadable ({type(err).__name__}: {reason}); moved to "
                    f"{aside.name}, falling back to "
                    + ("the previous checkpoint" if fallback else "a fresh start"),
                    RuntimeWarning,
                    stacklevel=3,
                )
                continue
            self._load_state(state, path)
            break
        log = self.dir / self.LOG
        if log.exists() or self.history:
            lines = [json.dumps(r) for r in self.history if r.get("epoch", 0) > 0]
            log.write_text("".join(line + "\n" for line in lines))

    def _load_state(self, state: dict, path: Path) -> None:
        saved = state["config"]
        for key in ("scheme", "batch_size", "seed"):
            if saved.get(key) != getattr(self.cfg, key):
                raise ValueError(
                    f"checkpoint {path} was written with {key}={saved.get(key)!r}, "
                    f"but this run has {key}={getattr(self.cfg, key)!r}"
                )
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        if self.cfg.scheme == "lagging":
            self.enc_opt.load_state_dict(state["enc_opt"])
            self.dec_opt.load_state_dict(state["dec_opt"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.history = state["history"]
        self.aggressive, self.best_mi = state["aggressive"], state["best_mi"]
        torch.set_rng_state(state["torch_rng"].cpu())
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])

    # --- one step of each scheme --------------------------------------------------------------
    def _check_finite(self, loss: torch.Tensor, what: str = "loss") -> None:
        if not torch.isfinite(loss):
            where = f"step {self.step} (epoch {self.epoch + 1})"
            kept = (
                f"; the last good checkpoint is {self.dir / self.CHECKPOINT}"
                if self.dir is not None and (self.dir / self.CHECKPOINT).exists()
                else ""
            )
            raise FloatingPointError(f"non-finite {what} ({float(loss.detach())}) at {where}{kept}")

    def _apply(self, opts, loss: torch.Tensor, params=None, batch: int = 1) -> None:
        """One step of each optimiser in ``opts`` on ``loss`` (a batch mean; times ``batch`` under
        ``reduction="sum"``), the gradient clipped over ``params``, then the constraints."""
        opts = opts if isinstance(opts, list | tuple) else [opts]
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        (loss * batch if self.cfg.reduction == "sum" else loss).backward()
        if self.cfg.grad_clip is not None:
            params = params if params is not None else list(self.model.parameters())
            nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        for opt in opts:
            opt.step()
        project_constraints(self.model)

    def _plain_step(self, x: torch.Tensor, beta: float) -> dict:
        out = self.model.loss(x, beta=beta)
        self._check_finite(out["loss"])
        self._apply(self.opt, out["loss"], batch=x.shape[0])
        return out

    def _lagging_step(self, x: torch.Tensor, beta: float, sample_batch) -> dict:
        if not self.aggressive:
            # After the aggressive phase both parts go on with their own optimisers, whose state
            # is kept (as He et al. do): a fresh optimiser would restart RMSprop's average.
            out = self.model.loss(x, beta=beta)
            self._check_finite(out["loss"])
            self._apply([self.enc_opt, self.dec_opt], out["loss"], batch=x.shape[0])
            return out
        enc_params = _encoder_parameters(self.model)
        best, since_best = math.inf, 0
        for inner in range(self.cfg.lagging_max_inner):
            xb = x if inner == 0 else sample_batch()
            out = self.model.loss(xb, beta=beta)
            self._check_finite(out["loss"], "encoder loss")
            self._apply(self.enc_opt, out["loss"], enc_params, batch=xb.shape[0])
            value = float(out["loss"].detach())
            if value < best - 1e-4:
                best, since_best = value, 0
            else:
                since_best += 1
                if since_best >= 10:
                    break
        out = self.model.loss(x, beta=beta)
        self._check_finite(out["loss"])
        self._apply(self.dec_opt, out["loss"], _decoder_parameters(self.model), batch=x.shape[0])
        return out

    def _savae_step(self, x: torch.Tensor, beta: float) -> dict:
        model = self.model
        _check_refinable(model, "scheme 'savae'")
        cfg = self.cfg
        lam = svi_refine(
            model, x, cfg.savae_steps, cfg.savae_lr, beta, True, cfg.savae_max_grad_norm
        )
        # Decoder: ELBO at the refined parameters, held fixed.
        fixed = model.encoder.distribution(*(p.detach() for p in lam))
        out = model.loss_from_q(x, fixed, beta)
        self._check_finite(out["loss"])
        # Encoder: the same objective, differentiated through the unrolled SVI steps.
        enc_loss = model.loss_from_q(x, model.encoder.distribution(*lam), beta)["loss"]
        self._check_finite(enc_loss, "encoder loss")
        enc_params = _encoder_parameters(model)
        enc_grads = torch.autograd.grad(enc_loss, enc_params, allow_unused=True)
        self.opt.zero_grad(set_to_none=True)
        scale = x.shape[0] if self.cfg.reduction == "sum" else 1
        (out["loss"] * scale).backward()
        for p, g in zip(enc_params, enc_grads, strict=True):
            p.grad = None if g is None else g * scale
        if self.cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        project_constraints(model)
        return out

    # --- evaluation ---------------------------------------------------------------------------
    def inference_model(self) -> nn.Module:
        """The model as its scheme infers with it: :class:`SemiAmortized` for ``savae`` (q(z | x)
        refined as in training), the model itself otherwise. Evaluate this one."""
        if self.cfg.scheme == "savae":
            cfg = self.cfg
            return SemiAmortized(self.model, cfg.savae_steps, cfg.savae_lr, cfg.savae_max_grad_norm)
        return self.model

    @torch.no_grad()
    def evaluate(self, data: torch.Tensor) -> dict:
        """Negative ELBO (``loss``), reconstruction (``rec``) and the ELBO's KL term
        (``kl_term``; for the mixture models also ``kl_y`` and ``kl_z``) on ``data`` (means per
        point), and MI, under the scheme's q(z | x) (:meth:`inference_model`)."""
        from lidvae_nb.metrics import mutual_information

        model = self.inference_model()
        self.model.eval()
        try:
            totals: dict[str, float] = {}
            for x in data.split(max(self.cfg.batch_size, 500)):
                x = x.to(self.device)
                _accumulate(totals, model.loss(x), x.shape[0])
            result = {k: v / data.shape[0] for k, v in totals.items()}
            if data.shape[0] >= 2:
                result["mi"] = mutual_information(model, data.to(self.device))
            return result
        finally:
            self.model.train()

    def _monitor(self, monitor) -> dict:
        model = self.inference_model()
        self.model.eval()
        try:
            with torch.no_grad():
                return dict(monitor(model))
        finally:
            self.model.train()

    # --- the loop -----------------------------------------------------------------------------
    def fit(
        self,
        train: torch.Tensor,
        val: torch.Tensor | None = None,
        monitor: Callable[[nn.Module], dict] | None = None,
    ) -> list[dict]:
        """Train for the remaining epochs of ``config.epochs`` (all of them unless resumed).

        ``train`` and ``val`` are (N, D) tensors. ``monitor``, if given, is called with the
        inference model (:meth:`inference_model`, in eval mode, under ``no_grad``) before the first
        step (a record with epoch 0) and after every epoch; the dict it returns joins that
        epoch's record. Returns the history: one dict per epoch.
        """
        if train.dim() != 2 or train.shape[0] < 1:
            raise ValueError(
                f"train must be a non-empty (N, D) tensor, got shape {tuple(train.shape)}"
            )
        cfg = self.cfg
        n = train.shape[0]
        steps_per_epoch = max(1, math.ceil(n / cfg.batch_size))
        gen = torch.Generator()

        def prepare(idx):
            x = train[idx].to(self.device)
            return self.batch_transform(x) if self.batch_transform is not None else x

        def sample_batch():
            return prepare(torch.randint(0, n, (min(cfg.batch_size, n),), generator=gen))

        self.model.train()
        # Argument validation of torch.distributions is off while training: a NaN must surface
        # as a non-finite loss that names its step, not as a constraint error deep inside a
        # Normal. (It also saves time.) The previous setting is restored afterwards.
        validate = D.Distribution._validate_args
        D.Distribution.set_default_validate_args(False)
        if monitor is not None and self.step == 0 and not self.history:
            self.history.append({"epoch": 0, "step": 0, **self._monitor(monitor)})
        bar = tqdm(
            total=cfg.epochs,
            initial=self.epoch,
            desc=type(self.model).__name__,
            disable=not cfg.progress,
            leave=False,
        )
        try:
            while self.epoch < cfg.epochs:
                start = time.perf_counter()
                # The order depends on (seed, epoch) only: a resumed run sees the same batches.
                gen.manual_seed(cfg.seed * 1_000_003 + self.epoch)
                sums: dict[str, float] = {}
                order = torch.randperm(n, generator=gen)
                for idx in order.split(cfg.batch_size):
                    x = prepare(idx)
                    beta = self.beta_at(self.step, steps_per_epoch)
                    if cfg.scheme == "lagging":
                        out = self._lagging_step(x, beta, sample_batch)
                    elif cfg.scheme == "savae":
                        out = self._savae_step(x, beta)
                    else:
                        out = self._plain_step(x, beta)
                    self.step += 1
                    _accumulate(sums, out, x.shape[0])
                self.epoch += 1
                record = {
                    "epoch": self.epoch,
                    "step": self.step,
                    "beta": beta,
                    **{f"train_{k}": v / n for k, v in sums.items()},
                    "seconds": round(time.perf_counter() - start, 4),
                }
                if val is not None:
                    record.update({f"val_{k}": v for k, v in self.evaluate(val).items()})
                if monitor is not None:
                    record.update(self._monitor(monitor))
                if cfg.scheme == "lagging":
                    record["aggressive"] = self.aggressive
                    if self.aggressive and val is not None:
                        if record["val_mi"] <= self.best_mi:
                            self.aggressive = False
                        self.best_mi = max(self.best_mi, record["val_mi"])
                self.history.append(record)
                if self.dir is not None:
                    with open(self.dir / self.LOG, "a") as f:
                        f.write(json.dumps(record) + "\n")
                    if self.epoch % cfg.checkpoint_every == 0 or self.epoch == cfg.epochs:
                        self.save()
                bar.update(1)
                bar.set_postfix(loss=f"{record['train_loss']:.3f}")
        finally:
            bar.close()
            D.Distribution.set_default_validate_args(validate)
        return self.history


def _one_thread() -> None:
    torch.set_num_threads(1)


def run_parallel(
    fn: Callable, jobs: list[dict], workers: int = 1, desc: str = "fits", progress: bool = True
) -> list:
    """``[fn(**job) for job in jobs]``, in ``workers`` processes (spawn context, one torch thread
    each) when ``workers`` > 1, with a progress bar; results in the order of ``jobs``.

    Many small fits use two cores better as two one-thread processes than as one two-thread
    process. ``fn`` must be importable (a module-level function of a package), since spawned
    workers import it afresh; each job should seed its own random streams, so that the results
    do not depend on ``workers``.
    """
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    check_count("workers", workers)
    jobs = list(jobs)
    bar = tqdm(total=len(jobs), desc=desc, disable=not progress)
    try:
        if workers == 1:
            out = []
            for job in jobs:
                out.append(fn(**job))
                bar.update(1)
            return out
        pool = ProcessPoolExecutor(
            workers, mp_context=get_context("spawn"), initializer=_one_thread
        )
        with pool:
            futures = [pool.submit(fn, **job) for job in jobs]
            for f in futures:
                f.add_done_callback(lambda _: bar.update(1))
            return [f.result() for f in futures]
    finally:
        bar.close()
