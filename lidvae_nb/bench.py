"""What identifiability costs: the training-step time of a VAE and of LIDVAE (chapter 12).

``python -m lidvae_nb.bench`` (``make bench``) times one training step (forward, backward and an
Adam step) of three models on the same batch, measured in one run with the models alternated so
that the machine's load affects all alike, and prints one ``name: value`` line per result:

* ``vae``: encoder MLP + MLP decoder;
* ``lidvae_autograd``: the same encoder, the injective decoder ``g2(beta^T g1(z))`` whose Brenier
  maps are computed by autograd with ``create_graph=True`` (the original code's way): training
  then differentiates a gradient, a double backward;
* ``lidvae_closed_form``: the same decoder with the maps written out as a reverse pass
  (:meth:`lidvae_nb.icnn.ICNN.gradient`): one ordinary backward pass.

A fourth variant, ``lidvae_closed_form_unfolded``, switches off one optimisation of the closed
form (folding the lift ``beta^T`` into ``g2``'s input products) to show what it is worth. Where
CUDA is available the models are timed on the GPU too, with ``torch.compile`` of the closed form
added (the double backward of the autograd maps does not compile).

The functions (:func:`build_models`, :func:`compare`, :func:`step_time`, :func:`sweep`,
:func:`multiply_adds`) are reused by chapter 12. Absolute times depend on the machine; the
ratios are the result.
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from lidvae_nb.icnn import set_gradient
from lidvae_nb.models import FIRST_SETTINGS, GaussianEncoder, ModelConfig, build_model

__all__ = [
    "BenchConfig",
    "VARIANTS",
    "build_models",
    "make_batch",
    "make_step",
    "step_time",
    "compare",
    "medians_ms",
    "measure",
    "ratios",
    "sweep",
    "multiply_adds",
    "run",
    "main",
]

#: The variants every comparison times, in this order.
VARIANTS = ("vae", "lidvae_autograd", "lidvae_closed_form", "lidvae_closed_form_unfolded")

#: The benchmark's targets: LIDVAE (closed form) / VAE at most this on CPU ...
TARGET_CLOSED_FORM_OVER_VAE = 2.0
#: ... and the closed form at least this many times faster than autograd.
TARGET_AUTOGRAD_OVER_CLOSED_FORM = 1.4


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark setting; the defaults are the paper's image setting (Wang et al., Sec. 5).

    ``width`` and ``depth`` are the ICNN's (and the VAE's MLP decoder's hidden size and number of
    hidden layers); the encoder (``encoder_hidden``, ``encoder_depth``) is the same for all.
    """

    data_dim: int = 784
    latent_dim: int = 64
    width: int = 512
    depth: int = 2
    encoder_hidden: int = 512
    encoder_depth: int = 2
    batch: int = 100
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self):
        for name in ("data_dim", "latent_dim", "width", "depth", "encoder_hidden", "batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")


def _model_config(cfg: BenchConfig) -> ModelConfig:
    return ModelConfig(
        data_dim=cfg.data_dim,
        latent_dim=cfg.latent_dim,
        hidden=cfg.width,
        encoder_depth=cfg.encoder_depth,
        decoder_depth=cfg.depth,
        likelihood="bernoulli",
        **FIRST_SETTINGS,  # the decoder chapter 12 measures: the zero-one lift folds into g2
    )


def build_models(
    cfg: BenchConfig, device: str | torch.device = "cpu", variants: Iterable[str] = VARIANTS
) -> dict[str, nn.Module]:
    """The models to compare, on ``device``: one encoder (same weights) for all, and one LIDVAE
    decoder (same weights) for every LIDVAE variant, which differ only in how the maps run."""
    variants = list(variants)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"variants must be among {VARIANTS}, got {unknown}")
    torch.manual_seed(cfg.seed)
    mcfg = _model_config(cfg)
    encoder = GaussianEncoder(cfg.data_dim, cfg.latent_dim, cfg.encoder_hidden, cfg.encoder_depth)
    vae, lidvae = build_model("vae", mcfg), build_model("lidvae", mcfg)
    models = {}
    for name in variants:
        model = copy.deepcopy(vae if name == "vae" else lidvae)
        model.encoder = copy.deepcopy(encoder)
        if name == "lidvae_autograd":
            set_gradient(model, "autograd")
        if name == "lidvae_closed_form_unfolded":
            model.decoder.fold_lift = False
        models[name] = model.to(device)
    return models


def make_batch(cfg: BenchConfig, device: str | torch.device = "cpu") -> torch.Tensor:
    """A batch of binary 'images' (B, data_dim), pixels on with probability 0.2 as in MNIST."""
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    return torch.bernoulli(torch.full((cfg.batch, cfg.data_dim), 0.2), generator=gen).to(device)


def make_step(
    model: nn.Module,
    lr: float = 1e-3,
    compile: bool = False,
    backend: str = "inductor",
    optimizer: bool = True,
) -> Callable:
    """One training step of ``model`` as a function of the batch: zero the gradients, the negative
    ELBO forward, backward, an Adam step (its own optimiser, default settings as the trainer's).

    ``optimizer=False`` leaves out the Adam step (forward + backward only). ``compile=True``
    wraps the loss in ``torch.compile`` with ``backend`` (the first call compiles; not for the
    autograd maps, whose double backward does not compile)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr) if optimizer else None

    def loss_fn(x):
        return model.loss(x)["loss"]

    loss = torch.compile(loss_fn, backend=backend) if compile else loss_fn

    def step(x: torch.Tensor) -> None:
        model.zero_grad(set_to_none=True)
        loss(x).backward()
        if opt is not None:
            opt.step()

    return step


def _sync(x: torch.Tensor) -> None:
    if x.is_cuda:
        torch.cuda.synchronize(x.device)


def compare(
    steps: dict[str, nn.Module | Callable],
    x: torch.Tensor,
    repeats: int = 30,
    warmup: int = 3,
    lr: float = 1e-3,
) -> dict[str, np.ndarray]:
    """Seconds per training step of each model, ``repeats`` values each, on the same batch ``x``.

    The models are alternated step by step (starting from a different one each round), so that a
    change in the machine's load touches all alike. A value of ``steps`` is a model (stepped by
    :func:`make_step`) or a ready step function of ``x``.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
    fns = {k: make_step(v, lr) if isinstance(v, nn.Module) else v for k, v in steps.items()}
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name](x)
    times = {name: np.empty(repeats) for name in names}
    for r in range(repeats):
        for i in range(len(names)):
            name = names[(r + i) % len(names)]
            _sync(x)
            start = time.perf_counter()
            fns[name](x)
            _sync(x)
            times[name][r] = time.perf_counter() - start
    return times


def step_time(
    model: nn.Module, x: torch.Tensor, repeats: int = 30, warmup: int = 3, lr: float = 1e-3
) -> np.ndarray:
    """Seconds per training step of one model, ``repeats`` values (see :func:`compare`)."""
    return compare({"model": model}, x, repeats, warmup, lr)["model"]


def medians_ms(times: dict[str, np.ndarray]) -> dict[str, float]:
    """Median milliseconds per step of each entry of :func:`compare`'s result."""
    return {name: 1e3 * float(np.median(t)) for name, t in times.items()}


def sweep(
    knob: str,
    values: Iterable[int],
    base: BenchConfig | None = None,
    repeats: int = 10,
    warmup: int = 2,
    variants: Iterable[str] = VARIANTS,
    device: str | torch.device = "cpu",
) -> list[dict]:
    """Median step times while one knob of :class:`BenchConfig` (``width``, ``depth``,
    ``batch``, ...) takes each of ``values``: one dict per value, ``{knob: value, variant: ms}``."""
    base = base or BenchConfig()
    if knob not in BenchConfig.__dataclass_fields__:
        raise ValueError(f"knob must be a field of BenchConfig, got {knob!r}")
    rows = []
    for value in values:
        cfg = replace(base, **{knob: value})
        times = compare(
            build_models(cfg, device, variants), make_batch(cfg, device), repeats, warmup
        )
        rows.append({knob: value, **medians_ms(times)})
    return rows


def multiply_adds(
    cfg: BenchConfig | None = None, variants: Iterable[str] = VARIANTS
) -> dict[str, float]:
    """Multiply-adds per example of one forward + backward pass (no optimiser step) in matrix
    products, counted by ``torch.utils.flop_counter`` on a real step: the cost floor that the
    measured times are set against."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = cfg or BenchConfig()
    x = make_batch(cfg)
    counts = {}
    for name, model in build_models(cfg, "cpu", variants).items():
        with FlopCounterMode(display=False) as counter:
            model.loss(x)["loss"].backward()
        counts[name] = counter.get_total_flops() / 2 / cfg.batch
    return counts


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _verdict(ok: bool) -> str:
    return "met" if ok else "not met"


def ratios(ms: dict[str, float], prefix: str = "", suffix: str = "") -> dict[str, float]:
    """The ratios ``make bench`` prints, from one dict of median times (``name: ms``)."""
    vae, auto = ms["vae"], ms["lidvae_autograd"]
    closed, unfolded = ms["lidvae_closed_form"], ms["lidvae_closed_form_unfolded"]
    out = {
        f"{prefix}ratio_lidvae_closed_form_over_vae{suffix}": closed / vae,
        f"{prefix}ratio_lidvae_autograd_over_vae{suffix}": auto / vae,
        f"{prefix}ratio_autograd_over_closed_form{suffix}": auto / closed,
        f"{prefix}ratio_unfolded_over_closed_form{suffix}": unfolded / closed,
    }
    if "lidvae_closed_form_compiled" in ms:
        compiled = ms["lidvae_closed_form_compiled"]
        out[f"{prefix}ratio_compiled_closed_form_over_vae{suffix}"] = compiled / vae
        out[f"{prefix}ratio_autograd_over_compiled_closed_form{suffix}"] = auto / compiled
    return {k: round(v, 3) for k, v in out.items()}


def measure(
    cfg: BenchConfig | None = None,
    device: str | torch.device = "cpu",
    repeats: int = 30,
    warmup: int = 3,
    compiled: bool | None = None,
) -> dict[str, dict[str, float]]:
    """Median milliseconds of every variant at ``cfg`` on ``device``: ``"step"`` (forward,
    backward, Adam step) and ``"forward_backward"`` (no optimiser), all alternated in one
    :func:`compare` on the same batch. ``compiled`` (default: on CUDA only) adds
    ``lidvae_closed_form_compiled``, the closed-form model under ``torch.compile``."""
    cfg = cfg or BenchConfig()
    if compiled is None:
        compiled = torch.device(device).type == "cuda"
    models = build_models(cfg, device)
    if compiled:
        models["lidvae_closed_form_compiled"] = copy.deepcopy(models["lidvae_closed_form"])
    steps = {}
    for name, model in models.items():
        compile_it = name.endswith("_compiled")
        steps[name] = make_step(model, cfg.lr, compile=compile_it)
        steps[f"{name}/fb"] = make_step(model, cfg.lr, compile=compile_it, optimizer=False)
    ms = medians_ms(compare(steps, make_batch(cfg, device), repeats, warmup))
    return {
        "step": {k: v for k, v in ms.items() if not k.endswith("/fb")},
        "forward_backward": {k[: -len("/fb")]: v for k, v in ms.items() if k.endswith("/fb")},
    }


def run(
    cfg: BenchConfig | None = None,
    repeats: int = 100,
    warmup: int = 3,
    cuda: bool | None = None,
) -> dict[str, object]:
    """Every result of ``make bench``, in print order: :func:`measure` on the CPU and its ratios;
    where CUDA is available (and ``cuda`` is not False) the same on the GPU, with
    ``torch.compile`` of the closed form; last, multiply-adds per example."""
    cfg = cfg or BenchConfig()
    out: dict[str, object] = {
        "device": f"cpu ({_cpu_name()})",
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "setting": (
            f"data_dim={cfg.data_dim} latent_dim={cfg.latent_dim} icnn_width={cfg.width} "
            f"icnn_depth={cfg.depth} batch={cfg.batch} encoder={cfg.encoder_hidden}x"
            f"{cfg.encoder_depth} optimizer=Adam repeats={repeats}"
        ),
    }
    cuda_ok = torch.cuda.is_available()
    devices = ["cpu", "cuda"] if cuda_ok and cuda is not False else ["cpu"]
    for device in devices:
        prefix = "" if device == "cpu" else "cuda_"
        if device == "cuda":
            out["cuda_device"] = torch.cuda.get_device_name()
        result = measure(cfg, device, repeats, warmup)
        step_ms, fb_ms = result["step"], result["forward_backward"]
        for name, value in step_ms.items():
            out[f"{prefix}{name}_step_ms"] = round(value, 2)
        out.update(ratios(step_ms, prefix, ""))
        for name, value in fb_ms.items():
            out[f"{prefix}{name}_forward_backward_ms"] = round(value, 2)
        out.update(ratios(fb_ms, prefix, "_forward_backward"))
        if device == "cpu":
            ratio_vae = step_ms["lidvae_closed_form"] / step_ms["vae"]
            ratio_auto = step_ms["lidvae_autograd"] / step_ms["lidvae_closed_form"]
            out["target_closed_form_over_vae_at_most_2.0"] = _verdict(
                ratio_vae <= TARGET_CLOSED_FORM_OVER_VAE
            )
            out["target_autograd_over_closed_form_at_least_1.4"] = _verdict(
                ratio_auto >= TARGET_AUTOGRAD_OVER_CLOSED_FORM
            )
    if "cuda" not in devices:
        out["cuda"] = (
            "not available: GPU timings and torch.compile skipped (CPU only)"
            if not cuda_ok
            else "skipped on request"
        )
    for name, value in multiply_adds(cfg).items():
        out[f"{name}_mmac_per_example"] = round(value / 1e6, 3)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=100, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads (default 1: on a shared machine extra threads wait on each other)",
    )
    parser.add_argument("--batch", type=int, default=BenchConfig.batch)
    parser.add_argument("--width", type=int, default=BenchConfig.width)
    parser.add_argument("--depth", type=int, default=BenchConfig.depth)
    parser.add_argument("--no-cuda", action="store_true", help="skip the GPU even if present")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = BenchConfig(batch=args.batch, width=args.width, depth=args.depth)
    for name, value in run(cfg, args.repeats, args.warmup, cuda=not args.no_cuda).items():
        print(f"{name}: {value}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
