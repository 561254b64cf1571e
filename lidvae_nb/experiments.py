"""The image and text experiments (Wang et al., Table 1): one run per (data set, method, decoder
depth, seed), each stored as one JSON file, skipped when already done and resumed from its
checkpoint when interrupted.

Methods (:data:`METHODS`, each a model of :mod:`lidvae_nb.models` and a scheme of
:class:`lidvae_nb.trainer.TrainConfig`): ``vae``, ``savae`` (semi-amortised), ``lagging`` (lagging
inference networks), ``beta`` (beta-VAE, beta = 0.2 by default), ``lidvae``, ``gmvae`` and
``lidgmvae``. Image data sets (:data:`DATASETS`): ``mnist``, ``fashion_mnist`` and ``omniglot``
from :mod:`lidvae_nb.data`; the models see 784 pixels under a Bernoulli likelihood.

Text data sets (:data:`TEXT_DATASETS`): ``synthetic_text`` (drawn from a known LSTM sequential VAE,
:func:`lidvae_nb.data.synthetic_text`) and ``yahoo`` (:func:`lidvae_nb.data.yahoo`). There the
methods ``vae``, ``savae``, ``lagging`` and ``beta`` train the LSTM
:class:`~lidvae_nb.models.SequentialVAE` and ``lidvae`` the
:class:`~lidvae_nb.models.LIDSVAE` (:data:`TEXT_MODEL`); the mixture methods do not apply.

A grid is a TOML file: four lists that are crossed, and settings shared by every run (any field
of :class:`RunSpec`)::

    datasets = ["mnist", "fashion_mnist", "omniglot"]
    methods = ["vae", "savae", "lagging", "beta", "lidvae", "gmvae", "lidgmvae"]
    depths = [2]
    seeds = [0, 1, 2]
    epochs = 50
    n_train = 20000

Figure 1a-b's pinwheel study (GMVAE against LIDGMVAE, learned or fixed component means,
continuous or binarised data) is :func:`pinwheel_study`, one :func:`pinwheel_run` per model and
seed.

Run it with ``python -m lidvae_nb.experiments GRID.toml --out DIR [--workers N] [--data-root
PATH]``; read the results with :func:`collect`, average them over seeds with :func:`summarize`
and time them with :func:`throughput`. Each run writes ``DIR/<run id>.json`` (metrics,
spec, training history, provenance) and keeps its checkpoint and per-epoch log in
``DIR/<run id>/``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import time
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import torch

from lidvae_nb import data as _data
from lidvae_nb._checks import check_count, check_positive
from lidvae_nb.metrics import (
    cluster_accuracy,
    cluster_information,
    collapse_report,
    iwae_log_likelihood,
    learning_curve_point,
)
from lidvae_nb.models import FIRST_SETTINGS, ModelConfig, build_model
from lidvae_nb.report import provenance
from lidvae_nb.trainer import TrainConfig, Trainer, run_parallel

#: Each method as (model name for :func:`lidvae_nb.models.build_model`, trainer scheme).
METHODS = {
    "vae": ("vae", "elbo"),
    "savae": ("vae", "savae"),
    "lagging": ("vae", "lagging"),
    "beta": ("vae", "beta"),
    "lidvae": ("lidvae", "elbo"),
    "gmvae": ("gmvae", "elbo"),
    "lidgmvae": ("lidgmvae", "elbo"),
}
#: The image data sets, by name, with their loaders (``split``, ``root``, ``verify``).
DATASETS = {
    "mnist": _data.mnist,
    "fashion_mnist": _data.fashion_mnist,
    "omniglot": _data.omniglot,
}
#: The text data sets (see :func:`load_data`).
TEXT_DATASETS = ("synthetic_text", "yahoo")
#: The text model that takes the place of each image model (``build_model`` names).
TEXT_MODEL = {"vae": "svae", "lidvae": "lidsvae"}
#: The pixels per image (28 x 28); every model here has ``data_dim`` 784 and a Bernoulli likelihood.
IMAGE_DIM = 784
#: The grid file's lists and the :class:`RunSpec` field each one sets.
GRID_LISTS = {"datasets": "dataset", "methods": "method", "depths": "depth", "seeds": "seed"}
#: The original LIDVAE code's image configuration (its published Fashion-MNIST run) as run
#: settings: a learned dense beta, projected non-negative ICNN weights, no quadratic term beyond a
#: small floor that keeps the maps injective, the data-space ICNN's one layer as wide as the data,
#: a 2-layer shift-only RealNVP (hidden 128) on q(z | x, y), learned prior means starting near 0
#: (Keras' Glorot initialisation of a dense layer of the one-hot label: sd about 0.16), depth 1,
#: TensorFlow 1's RMSProp (decay 0.9, momentum 0.5, epsilon 1e-10, average starting at 1) on the
#: batch's summed loss, clipped at norm 5, 20,000 training images.
REFERENCE_SETTINGS = {
    "depth": 1,
    "n_train": 20_000,
    "batch_size": 100,
    "latent_dim": 64,
    "hidden": 512,
    "n_clusters": 10,
    "lift": "learned",
    "icnn_weights": "projected",
    "icnn_alpha": 1e-3,
    "icnn_quadratic_init": 1e-3,
    "data_width": IMAGE_DIM,
    "flow_layers": 2,
    "flow_hidden": 128,
    "flow_shift_only": True,
    "prior_mean_scale": 0.16,
    "optimizer": "rmsprop",
    "lr": 1e-3,
    "momentum": 0.5,
    "rmsprop_alpha": 0.9,
    "rmsprop_eps": 1e-10,
    "rmsprop_init": 1.0,
    "reduction": "sum",
    "grad_clip": 5.0,
}
#: The image grids' configuration since the replication of chapter 10 (``10_table_full``,
#: ``10_depth_full``, ``10_book``, ``10_smoke`` state it): the reference configuration's model
#: and optimiser, with a Gaussian q(z | x) instead of its RealNVP layers (the one change that cost
#: nothing in the ablation, and the family SA-VAE refines, so that every method of Table 1 shares
#: it). The sizes of a run (depth, images, steps) are the grid's own.
IMAGE_SETTINGS = {
    **{
        k: v
        for k, v in REFERENCE_SETTINGS.items()
        if k not in ("depth", "n_train", "batch_size", "latent_dim", "hidden", "n_clusters")
    },
    "flow_layers": 0,
    "flow_hidden": 0,
    "flow_shift_only": False,
}
#: The values that a stored spec lacking one of these fields ran with, which were the code's
#: behaviour before the field existed (read by :meth:`RunSpec.from_stored`), so that a default
#: that changes later never relabels an old result.
STORED_DEFAULTS = {
    **FIRST_SETTINGS,
    "data_width": 0,
    "flow_hidden": 0,
    "flow_shift_only": False,
    "momentum": 0.0,
    "rmsprop_alpha": 0.99,
    "rmsprop_eps": 1e-8,
    "rmsprop_init": 0.0,
    "reduction": "mean",
    "monitor_images": 0,
}
#: Spec fields that do not change a run's result (a stored result is reused whatever they are).
_NOT_RESULT_FIELDS = ("verify",)
#: Spec fields that only RMSprop reads (:meth:`RunSpec.train_config` passes them to it alone).
_RMSPROP_FIELDS = ("momentum", "rmsprop_alpha", "rmsprop_eps", "rmsprop_init")
#: Spec fields that may grow between an interrupted run and its continuation.
_RESUMABLE_FIELDS = ("epochs",)
_TAG = re.compile(r"[A-Za-z0-9_.]*")


@dataclass
class RunSpec:
    """One run of the image experiments. Defaults follow the paper's image settings (RMSprop,
    learning rate 1e-3, batch 100, gradient clip 5, a 20,000-image training subsample, 64 latent
    dimensions).

    ``depth`` is the decoder depth (hidden layers of the MLP, or of each ICNN of the injective
    decoder); ``encoder_depth`` that of the encoder. ``n_val`` images of the training file are
    held out for validation (used by the lagging scheme's stopping rule and logged every epoch),
    ``n_train`` are drawn from the rest, and ``n_test`` from the test file (0: all of it); the
    draws depend on ``data_seed`` only, so every method and seed sees the same images. Training
    batches are binarised afresh at every step (dynamic binarisation); validation and test images
    are binarised once, with a seed fixed by ``data_seed``. ``n_clusters`` is used by the mixture
    models only, as is ``fixed_prior_means`` (component means fixed at distinct points, as in
    Example 1 of Wang et al.; see :class:`lidvae_nb.models.ModelConfig`); ``beta`` by ``beta``,
    ``savae_*`` by ``savae``, ``lagging_max_inner`` by ``lagging``. ``iwae_samples`` importance
    samples per test image give the log-likelihood (0: skip it). ``tag`` (letters, digits, ``_``,
    ``.``) is appended to the run id to tell apart variants that differ in other settings.
    ``verify`` checks the data files' SHA-256.

    Text runs (``dataset`` in :data:`TEXT_DATASETS`) read ``n_train``, ``n_val`` and ``n_test``
    as documents (see :func:`load_data`), ``embed_dim``, ``lstm_hidden`` and ``lstm_layers`` as
    the LSTMs' sizes, ``hidden`` and ``depth`` as the width and depth of LIDSVAE's ICNNs (and
    ``hidden`` as that of the flow layers), ``vocab_size`` as the number of ordinary words
    (0: every word of the training documents for Yahoo, 1,000 for the synthetic corpus) and
    ``max_len`` as the longest document in words (0: no limit for Yahoo, 30 for the synthetic
    corpus); ``encoder_depth`` does not apply (a one-layer LSTM encoder). The defaults are the
    image settings; a text grid sets at least ``batch_size`` and ``latent_dim``. The image runs
    ignore the text fields.

    The injective decoder's parts (``lift``, ``icnn_weights``, ``icnn_alpha``,
    ``icnn_quadratic_init``, ``data_width``), the posterior flow (``flow_layers``, ``flow_hidden``,
    ``flow_shift_only``) and the mixture prior (``prior_mean_scale``) are the fields of
    :class:`lidvae_nb.models.ModelConfig` of the same names; the optimiser's (``momentum``,
    ``rmsprop_alpha``, ``rmsprop_eps``, ``rmsprop_init``, ``reduction``) those of
    :class:`lidvae_nb.trainer.TrainConfig`. :data:`REFERENCE_SETTINGS` holds the original LIDVAE
    code's image configuration in these terms. The defaults of these fields are those of
    :data:`IMAGE_SETTINGS` (the best configuration per step that chapter 10's ablation found,
    keeping the decoder injective); before that replication they were the values in
    :data:`STORED_DEFAULTS`, which a grid must state to rerun the runs made then.

    ``monitor_images`` > 0 evaluates the model before training and after every epoch on that many
    of the test images (the first of the run's test draw) with
    :func:`lidvae_nb.metrics.learning_curve_point` (``monitor_bound_samples`` draws for the
    original code's estimator, ``monitor_iwae_samples`` for the per-image IWAE), into the
    history as ``test_elbo``, ``test_ref_bound``, ``test_iwae``, ``test_acc_majority``, ...

    Dict-like: ``spec["method"]``, ``dict(spec)``, ``to_dict()``, ``from_dict(d)``.
    """

    dataset: str = "mnist"
    method: str = "vae"
    depth: int = 2
    seed: int = 0
    epochs: int = 50
    n_train: int = 20_000
    n_val: int = 1_000
    n_test: int = 10_000
    batch_size: int = 100
    lr: float = 1e-3
    optimizer: str = "rmsprop"
    grad_clip: float = 5.0
    latent_dim: int = 64
    hidden: int = 512
    encoder_depth: int = 2
    n_clusters: int = 10
    flow_layers: int = 0
    flow_hidden: int = 0
    flow_shift_only: bool = False
    fixed_prior_means: bool = False
    prior_mean_scale: float = IMAGE_SETTINGS["prior_mean_scale"]
    lift: str = IMAGE_SETTINGS["lift"]
    icnn_weights: str = IMAGE_SETTINGS["icnn_weights"]
    icnn_alpha: float = IMAGE_SETTINGS["icnn_alpha"]
    icnn_quadratic_init: float = IMAGE_SETTINGS["icnn_quadratic_init"]
    data_width: int = IMAGE_SETTINGS["data_width"]
    momentum: float = IMAGE_SETTINGS["momentum"]
    rmsprop_alpha: float = IMAGE_SETTINGS["rmsprop_alpha"]
    rmsprop_eps: float = IMAGE_SETTINGS["rmsprop_eps"]
    rmsprop_init: float = IMAGE_SETTINGS["rmsprop_init"]
    reduction: str = IMAGE_SETTINGS["reduction"]
    monitor_images: int = 0
    monitor_bound_samples: int = 10
    monitor_iwae_samples: int = 50
    iwae_samples: int = 500
    embed_dim: int = 128
    lstm_hidden: int = 256
    lstm_layers: int = 1
    vocab_size: int = 0
    max_len: int = 0
    beta: float = 0.2
    savae_steps: int = 10
    savae_lr: float = 1.0
    lagging_max_inner: int = 100
    data_seed: int = 0
    tag: str = ""
    verify: bool = True

    def __post_init__(self):
        known = (*DATASETS, *TEXT_DATASETS)
        if self.dataset not in known:
            raise ValueError(f"dataset must be one of {known}, got {self.dataset!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {tuple(METHODS)}, got {self.method!r}")
        if self.is_text and METHODS[self.method][0] not in TEXT_MODEL:
            usable = tuple(m for m, (model, _) in METHODS.items() if model in TEXT_MODEL)
            raise ValueError(
                f"method {self.method!r} has no text model; on the text data set "
                f"{self.dataset!r} the methods are {usable}"
            )
        for name in (
            "depth",
            "epochs",
            "n_train",
            "batch_size",
            "latent_dim",
            "hidden",
            "encoder_depth",
            "n_clusters",
            "savae_steps",
            "lagging_max_inner",
            "monitor_bound_samples",
            "embed_dim",
            "lstm_hidden",
            "lstm_layers",
        ):
            setattr(self, name, check_count(name, getattr(self, name)))
        for name in (
            "seed",
            "data_seed",
            "n_val",
            "n_test",
            "flow_layers",
            "iwae_samples",
            "vocab_size",
            "max_len",
            "monitor_images",
            "monitor_iwae_samples",
        ):
            setattr(self, name, check_count(name, getattr(self, name), minimum=0))
        for name in ("lr", "grad_clip", "beta", "savae_lr"):
            setattr(self, name, check_positive(name, getattr(self, name)))
        if not self.is_text and self.latent_dim > IMAGE_DIM:
            raise ValueError(f"latent_dim must be at most {IMAGE_DIM}, got {self.latent_dim}")
        if self.optimizer not in ("adam", "rmsprop"):
            raise ValueError(f"optimizer must be 'adam' or 'rmsprop', got {self.optimizer!r}")
        if not isinstance(self.tag, str) or not _TAG.fullmatch(self.tag):
            raise ValueError(f"tag may hold only letters, digits, '_' and '.', got {self.tag!r}")
        for name in ("verify", "fixed_prior_means", "flow_shift_only"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        # The model's and the trainer's own checks name any other bad setting.
        self.model_config(1000 if self.is_text else None)
        self.train_config()
        if self.method == "savae" and self.flow_layers > 0:
            raise ValueError(
                f"method 'savae' refines a Gaussian q(z | x) and needs flow_layers=0, got "
                f"flow_layers={self.flow_layers}"
            )
        if self.method == "lagging" and self.n_val < 2:
            raise ValueError(
                f"method 'lagging' stops its aggressive phase on validation MI and needs "
                f"n_val >= 2, got n_val={self.n_val}"
            )

    # --- dict-like ----------------------------------------------------------------------------
    def keys(self):
        return [f.name for f in dataclasses.fields(self)]

    def __getitem__(self, key: str):
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_stored(cls, values: dict) -> RunSpec:
        """The spec of a stored result: a field it lacks (it was stored before the field existed)
        takes the value the code had then (:data:`STORED_DEFAULTS`), not today's default."""
        return cls.from_dict({**STORED_DEFAULTS, **values})

    @classmethod
    def from_dict(cls, values: dict) -> RunSpec:
        """A spec from a dict; a ValueError names any key that is not a field."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f"unknown run setting(s) {unknown}; the settings are {names}")
        return cls(**values)

    def replace(self, **changes) -> RunSpec:
        return dataclasses.replace(self, **changes)

    # --- identity -----------------------------------------------------------------------------
    @property
    def run_id(self) -> str:
        """``<dataset>-<method>-d<depth>-s<seed>``, then ``-<tag>`` if there is one."""
        base = f"{self.dataset}-{self.method}-d{self.depth}-s{self.seed}"
        return f"{base}-{self.tag}" if self.tag else base

    @property
    def is_text(self) -> bool:
        """Whether the data set is a text corpus (:data:`TEXT_DATASETS`)."""
        return self.dataset in TEXT_DATASETS

    @property
    def model_name(self) -> str:
        """The :func:`lidvae_nb.models.build_model` name: the method's image model, or for a text
        data set the matching text model (:data:`TEXT_MODEL`)."""
        name = METHODS[self.method][0]
        return TEXT_MODEL[name] if self.is_text else name

    @property
    def scheme(self) -> str:
        return METHODS[self.method][1]

    def model_config(self, data_dim: int | None = None) -> ModelConfig:
        """The model's sizes. ``data_dim`` is the vocabulary size of a text run (special tokens
        included: ``len(vocab)`` of :func:`load_data`); the image runs have 784 pixels."""
        if self.is_text:
            if data_dim is None:
                raise ValueError(
                    f"run {self.run_id} is a text run: pass data_dim, the vocabulary size "
                    "(len(load_data(spec)['vocab']))"
                )
            data_dim = check_count("data_dim", data_dim)
        elif data_dim not in (None, IMAGE_DIM):
            raise ValueError(f"the image runs have data_dim {IMAGE_DIM}, got {data_dim!r}")
        return ModelConfig(
            data_dim=IMAGE_DIM if data_dim is None else data_dim,
            latent_dim=self.latent_dim,
            hidden=self.hidden,
            encoder_depth=self.encoder_depth,
            decoder_depth=self.depth,
            likelihood="bernoulli",
            n_clusters=self.n_clusters,
            flow_layers=self.flow_layers,
            flow_hidden=self.flow_hidden,
            flow_shift_only=self.flow_shift_only,
            fixed_prior_means=self.fixed_prior_means,
            prior_mean_scale=self.prior_mean_scale,
            lift=self.lift,
            icnn_weights=self.icnn_weights,
            icnn_alpha=self.icnn_alpha,
            icnn_quadratic_init=self.icnn_quadratic_init,
            data_width=self.data_width,
            embed_dim=self.embed_dim,
            lstm_hidden=self.lstm_hidden,
            lstm_layers=self.lstm_layers,
        )

    def train_config(self, checkpoint_dir=None, device=None, progress=False) -> TrainConfig:
        """The trainer's settings; ``momentum`` and the ``rmsprop_*`` fields apply only to
        ``optimizer = "rmsprop"`` (another optimiser gets the trainer's defaults for them)."""
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            optimizer=self.optimizer,
            **{k: self[k] for k in _RMSPROP_FIELDS if self.optimizer == "rmsprop"},
            reduction=self.reduction,
            grad_clip=self.grad_clip,
            scheme=self.scheme,
            beta=self.beta,
            lagging_max_inner=self.lagging_max_inner,
            savae_steps=self.savae_steps,
            savae_lr=self.savae_lr,
            seed=self.seed,
            device=device,
            checkpoint_dir=None if checkpoint_dir is None else str(checkpoint_dir),
            progress=progress,
        )


# --- grids --------------------------------------------------------------------------------------


def expand_grid(grid: dict) -> list[RunSpec]:
    """The runs of a grid given as a dict (the contents of a grid file): the cartesian product of
    the lists ``datasets``, ``methods``, ``depths`` and ``seeds`` (in that order), every other
    key a setting shared by all runs.

    An optional table ``variants`` (``[variants.NAME]`` in TOML) crosses the product once more
    with named sets of changed settings: each variant's runs take its settings over the shared
    ones and its name as their ``tag`` (an ablation is one grid file)."""
    grid = dict(grid)
    variants = grid.pop("variants", None)
    if variants is not None:
        if not isinstance(variants, dict) or not variants:
            raise ValueError(f"grid key 'variants' must be a non-empty table, got {variants!r}")
        specs = []
        for name, changes in variants.items():
            if not isinstance(changes, dict) or "tag" in changes:
                raise ValueError(
                    f"variant {name!r} must be a table of settings other than 'tag' (its name is "
                    f"the tag), got {changes!r}"
                )
            try:
                specs += expand_grid({**grid, **changes, "tag": name})
            except ValueError as err:
                raise ValueError(f"variant {name!r}: {err}") from err
        _check_unique(specs)
        return specs
    missing = [key for key in GRID_LISTS if key not in grid]
    if missing:
        raise ValueError(f"the grid lacks the list(s) {missing}; it needs {list(GRID_LISTS)}")
    lists = {}
    for key in GRID_LISTS:
        value = grid.pop(key)
        if not isinstance(value, list) or not value:
            raise ValueError(f"grid key {key!r} must be a non-empty list, got {value!r}")
        lists[key] = value
    crossed = sorted(set(grid) & set(GRID_LISTS.values()))
    if crossed:
        raise ValueError(
            f"set {crossed} through the lists {[k for k, v in GRID_LISTS.items() if v in crossed]}"
        )
    shared = RunSpec.from_dict(grid).to_dict()  # validates the shared settings once
    specs = [
        RunSpec.from_dict({**shared, "dataset": d, "method": m, "depth": k, "seed": s})
        for d, m, k, s in product(*lists.values())
    ]
    _check_unique(specs)
    return specs


def load_grid(path) -> list[RunSpec]:
    """The runs of the TOML grid file ``path`` (see :func:`expand_grid` and the module's help)."""
    import tomllib

    with open(path, "rb") as f:
        grid = tomllib.load(f)
    try:
        return expand_grid(grid)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err


def _check_unique(specs) -> None:
    seen, dup = set(), set()
    for spec in specs:
        (dup if spec.run_id in seen else seen).add(spec.run_id)
    if dup:
        raise ValueError(f"runs with the same id would share one result file: {sorted(dup)}")


# --- one run ------------------------------------------------------------------------------------


def load_data(spec: RunSpec, data_root=None) -> dict:
    """The run's data. Images: float tensors (N, 784) in [0, 1]: ``train`` (grey levels,
    binarised per batch while training), ``val`` and ``test`` (binarised once, fixed by
    ``data_seed``), and ``test_labels`` (int64, or None for Omniglot). ``val`` is None when
    ``n_val`` is 0. Text: see :func:`load_text`."""
    if spec.is_text:
        return load_text(spec, data_root)
    loader = DATASETS[spec.dataset]
    x, _ = loader("train", root=data_root, verify=spec.verify)
    if spec.n_val + spec.n_train > len(x):
        raise ValueError(
            f"{spec.dataset} has {len(x)} training images, fewer than n_train + n_val = "
            f"{spec.n_train} + {spec.n_val}"
        )
    train_idx, val_idx, _ = _data.split_indices(len(x), spec.n_val, seed=spec.data_seed)
    train, _ = _data.subsample(x[train_idx], None, spec.n_train, seed=spec.data_seed)
    xt, yt = loader("test", root=data_root, verify=spec.verify)
    if spec.n_test > len(xt):
        raise ValueError(
            f"{spec.dataset} has {len(xt)} test images, fewer than n_test = {spec.n_test}"
        )
    if spec.n_test:
        xt, yt = _data.subsample(xt, yt, spec.n_test, seed=spec.data_seed)
    gen = torch.Generator().manual_seed(1_000_003 * spec.data_seed + 17)
    val = _data.binarize(x[val_idx], generator=gen) if spec.n_val else None
    return {
        "train": train,
        "val": val,
        "test": _data.binarize(xt, generator=gen),
        "test_labels": yt,
    }


#: Test documents of the synthetic corpus when ``n_test`` is 0 (the paper's evaluation size).
SYNTHETIC_TEST_DOCS = 10_000


def load_text(spec: RunSpec, data_root=None) -> dict:
    """The documents of a text run as padded token ids (:func:`lidvae_nb.data.pad_batch`):
    ``train``, ``val`` (None when ``n_val`` is 0) and ``test``, LongTensors (N, T + 2); ``vocab``
    (the :class:`~lidvae_nb.data.Vocabulary`), ``test_labels`` (None) and ``test_tokens`` (the
    test set's predicted tokens, its words and one ``</s>`` per document, for the perplexity).

    ``synthetic_text``: ``n_train + n_val + n_test`` sentences (``n_test`` 0: 10,000) drawn with
    seed ``data_seed`` from the true model of :func:`lidvae_nb.data.synthetic_text`
    (``vocab_size`` words, 0: 1,000; at most ``max_len`` words, 0: 30), in that order; the
    vocabulary is the generator's. ``true_model`` is that model and ``test_latents`` the
    latents that generated the test sentences.

    ``yahoo``: the documents of at most ``max_len`` tokens (0: all). The validation split stands
    in for the training data (the training split is not available offline): ``n_val`` of its
    documents are held out for validation and ``n_train`` drawn from the rest; ``n_test`` are
    drawn from the test split (0: all), every draw fixed by ``data_seed``. The vocabulary is built
    on the training documents alone (the ``vocab_size`` most frequent words, 0: all of them); any
    other word becomes ``<unk>``.
    """
    if not spec.is_text:
        raise ValueError(
            f"load_text reads the text data sets {TEXT_DATASETS}, got dataset {spec.dataset!r}"
        )
    if spec.dataset == "synthetic_text":
        n_test = spec.n_test or SYNTHETIC_TEST_DOCS
        max_len = spec.max_len or 30
        words = spec.vocab_size or 1000
        x, z, true_model = _data.synthetic_text(
            spec.n_train + spec.n_val + n_test,
            seed=spec.data_seed,
            vocab_size=words,
            min_len=min(10, max_len),
            max_len=max_len,
        )
        vocab = _data.Vocabulary.numbered(words)
        train = x[: spec.n_train]
        val = x[spec.n_train : spec.n_train + spec.n_val] if spec.n_val else None
        test = x[spec.n_train + spec.n_val :]
        extra = {"true_model": true_model, "test_latents": z[spec.n_train + spec.n_val :]}
    else:
        max_len = spec.max_len or None
        limit = f" of at most {spec.max_len} tokens" if spec.max_len else ""
        docs = _data.yahoo("val", root=data_root, max_len=max_len, verify=spec.verify)
        if spec.n_val + spec.n_train > len(docs):
            raise ValueError(
                f"yahoo's validation split has {len(docs)} documents{limit}, fewer than "
                f"n_train + n_val = {spec.n_train} + {spec.n_val}"
            )
        train_idx, val_idx, _ = _data.split_indices(len(docs), spec.n_val, seed=spec.data_seed)
        order = torch.randperm(len(train_idx), generator=_generator(spec.data_seed))
        train_docs = [docs[train_idx[i]] for i in order[: spec.n_train].tolist()]
        val_docs = [docs[i] for i in val_idx.tolist()]
        test_docs = _data.yahoo("test", root=data_root, max_len=max_len, verify=spec.verify)
        if spec.n_test > len(test_docs):
            raise ValueError(
                f"yahoo's test split has {len(test_docs)} documents{limit}, fewer than "
                f"n_test = {spec.n_test}"
            )
        if spec.n_test:
            pick = torch.randperm(len(test_docs), generator=_generator(spec.data_seed + 1))
            test_docs = [test_docs[i] for i in pick[: spec.n_test].tolist()]
        size = spec.vocab_size + len(_data.Vocabulary.SPECIALS) if spec.vocab_size else None
        vocab = _data.Vocabulary.build(train_docs, max_size=size)
        train = _data.pad_batch(train_docs, vocab)
        val = _data.pad_batch(val_docs, vocab) if val_docs else None
        test = _data.pad_batch(test_docs, vocab)
        extra = {}
    return {
        "train": train,
        "val": val,
        "test": test,
        "vocab": vocab,
        "test_labels": None,
        "test_tokens": int((test[:, 1:] != _data.Vocabulary.PAD).sum()),
        **extra,
    }


def true_model_report(
    spec: RunSpec,
    steps: int = 3000,
    batch_size: int = 64,
    lr: float = 1e-3,
    n_pairs: int = 50_000,
    iwae_samples: int | None = None,
    n_checks: int = 3,
    progress: bool = False,
) -> dict:
    """The collapse metrics of the model that generated a ``synthetic_text`` run's corpus,
    on the run's test sentences: what a model that fits the data exactly would score.

    The true decoder is known, its encoder is not. It is fitted here by the sleep phase of
    wake-sleep: ``n_pairs`` pairs z ~ p(z), x ~ p(x | z) are drawn from the true model (seeded
    by the run's ``seed``), and log q(z | x) is maximised over them for ``steps`` Adam steps of
    ``batch_size`` pairs, the decoder fixed. That minimises KL(p(z | x) || q(z | x)) on average,
    so q covers the true posterior rather than fitting inside it: a good proposal for the
    importance-sampled log-likelihood (``iwae_samples``, default the run's), which is still a
    lower bound. The bound is evaluated ``n_checks`` times along the way, evenly spaced, so its
    convergence can be judged.

    Returns :func:`lidvae_nb.metrics.collapse_report` with ``perplexity``, plus
    ``encoder_steps``, ``final_nll`` (the last 50 steps' mean -log q(z | x)),
    ``log_p_x_given_true_z`` (the test sentences' mean log p(x | z) at the latents that drew
    them), ``checks`` (``{"steps", "log_likelihood"}`` along the way) and ``seconds``.
    """
    from tqdm import tqdm

    if not isinstance(spec, RunSpec):
        spec = RunSpec.from_dict(dict(spec))
    if spec.dataset != "synthetic_text":
        raise ValueError(
            f"only the synthetic corpus has a known true model, got dataset {spec.dataset!r}"
        )
    steps = check_count("steps", steps)
    batch_size = check_count("batch_size", batch_size)
    n_pairs = check_count("n_pairs", n_pairs)
    n_checks = check_count("n_checks", n_checks)
    lr = check_positive("lr", lr)
    iwae_samples = spec.iwae_samples if iwae_samples is None else iwae_samples
    iwae_samples = check_count("iwae_samples", iwae_samples)
    start = time.perf_counter()
    sets = load_text(spec)
    model, test = sets["true_model"], sets["test"]
    for param in model.parameters():
        param.requires_grad_(False)
    encoder = model.encoder
    for param in encoder.parameters():
        param.requires_grad_(True)
    gen = torch.Generator().manual_seed(spec.seed)
    torch.manual_seed(spec.seed)
    # The pairs, drawn in chunks (sampling is word by word, so large batches pay off).
    zs, xs = [], []
    with torch.no_grad():
        for lo in range(0, n_pairs, 1000):
            z = model.prior().sample((min(1000, n_pairs - lo),))
            zs.append(z)
            xs.append(model.sample(z, generator=gen))
    width = max(x.shape[1] for x in xs)
    x_all = torch.cat([torch.nn.functional.pad(x, (0, width - x.shape[1])) for x in xs])
    z_all = torch.cat(zs)

    def bound() -> float:
        model.eval()
        with torch.no_grad():
            value = float(iwae_log_likelihood(model, test, n_samples=iwae_samples).mean())
        model.train()
        return value

    optimiser = torch.optim.Adam(encoder.parameters(), lr=lr)
    check_at = {round(steps * (k + 1) / n_checks) for k in range(n_checks)}
    losses, checks = [], []
    model.train()
    for step in tqdm(range(1, steps + 1), desc="true model's encoder", disable=not progress):
        idx = torch.randint(0, n_pairs, (min(batch_size, n_pairs),), generator=gen)
        loss = -model.encode(x_all[idx]).log_prob(z_all[idx]).mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the encoder's loss is {loss.item()} at step {step}")
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
        if step in check_at and step != steps:
            checks.append({"steps": step, "log_likelihood": bound()})
    model.eval()
    with torch.no_grad():
        report = collapse_report(model, test, iwae_samples=iwae_samples)
        report["log_p_x_given_true_z"] = float(
            model.log_likelihood(test, sets["test_latents"]).mean()
        )
    checks.append({"steps": steps, "log_likelihood": report["log_likelihood"]})
    report["perplexity"] = _perplexity(report["log_likelihood"], len(test), sets["test_tokens"])
    tail = losses[-50:]
    report.update(
        encoder_steps=steps,
        final_nll=sum(tail) / len(tail),
        checks=checks,
        seconds=time.perf_counter() - start,
    )
    return report


class RunLocked(RuntimeError):
    """The run is being trained by another live process (its lock is held)."""


#: A lock left by a process on another machine counts as abandoned after this many seconds (no
#: run of the stored grids takes this long; a lock of this machine is judged by its process).
LOCK_STALE_SECONDS = 6 * 3600


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def read_lock(run_dir) -> dict | None:
    """The holder of a run's lock (``pid``, ``host``, ``started``, ``stale``), or None."""
    import socket

    path = Path(run_dir) / "lock"
    try:
        holder = json.loads(path.read_text())
        pid, host, started = int(holder["pid"]), str(holder["host"]), float(holder["started"])
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, json.JSONDecodeError):  # half-written or foreign
        return {"pid": None, "host": None, "started": path.stat().st_mtime, "stale": True}
    if host == socket.gethostname():
        stale = not _pid_alive(pid)
    else:
        stale = time.time() - started > LOCK_STALE_SECONDS
    return {"pid": pid, "host": host, "started": started, "stale": stale}


@contextlib.contextmanager
def run_lock(run_dir):
    """Hold ``run_dir/lock`` while the block runs; :class:`RunLocked` if a live process holds it.

    The lock file is created exclusively and names its process and machine. A lock whose
    process is dead (same machine) or that is older than :data:`LOCK_STALE_SECONDS` (another
    machine) is stale: it is removed and taken, so a killed worker never blocks a run for good.
    """
    import socket

    path = Path(run_dir) / "lock"
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            holder = read_lock(run_dir)
            if holder is None or holder["stale"]:
                path.unlink(missing_ok=True)
                continue
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(holder["started"]))
            raise RunLocked(
                f"run {Path(run_dir).name} is being trained by process {holder['pid']} on "
                f"{holder['host']} since {since} UTC (lock {path}); it is left to that process"
            ) from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    else:
        raise RunLocked(f"could not take the lock {path}: other processes keep taking it")
    try:
        yield
    finally:
        try:
            if json.loads(path.read_text()).get("pid") == me["pid"]:
                path.unlink()
        except (FileNotFoundError, json.JSONDecodeError):
            pass


def _perplexity(log_likelihood: float, n_docs: int, tokens: int) -> float:
    """exp(-log-likelihood per predicted token), from the mean log-likelihood per document."""
    return math.exp(-log_likelihood * n_docs / tokens)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(1_000_003 * seed + 29)


def _comparable(spec: dict, ignore=()) -> dict:
    # Through RunSpec: a spec stored before a field was added reads as that field's default.
    spec = RunSpec.from_stored(spec).to_dict()
    return {k: v for k, v in spec.items() if k not in _NOT_RESULT_FIELDS and k not in ignore}


def _differences(a: dict, b: dict) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _write_json(path: Path, record: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)


def run_one(spec: RunSpec, out_dir, data_root=None, device=None, progress: bool = False) -> dict:
    """Train and evaluate one run; store it as ``out_dir/<run id>.json`` and return it.

    A run whose result file exists, with the same spec, is not run again: the stored result is
    returned. The checkpoint (and a per-epoch ``log.jsonl``) lives in ``out_dir/<run id>/``, so
    an interrupted run resumes where it stopped, and a finished run asked again with more
    ``epochs`` continues training. Any other change of the spec for an existing run is an error
    (use another ``tag`` or ``out_dir``).

    The result holds ``id``, ``spec``, ``metrics`` (on the test images:
    :func:`lidvae_nb.metrics.collapse_report`, that is ``au``, ``kl``, ``mi``,
    ``log_likelihood`` and, for the mixture models, ``cluster_mi``, ``cluster_entropy`` and,
    where the data set has labels, ``cluster_accuracy``; for text also ``perplexity``, the
    exponential of minus the test log-likelihood per predicted token, words and ``</s>``),
    ``history`` (one record per epoch), ``epochs``, ``resumed_from_epoch``, ``n_images`` (for
    text: documents), ``error`` (None, or the message of a stop on a non-finite loss, in which
    case ``metrics`` is empty) and ``provenance`` (:func:`lidvae_nb.report.provenance` plus
    ``epochs``); a text run also ``vocab_size`` and ``test_tokens``, and keeps its vocabulary
    in ``out_dir/<run id>/vocab.json``.
    """
    if not isinstance(spec, RunSpec):
        spec = RunSpec.from_dict(dict(spec))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result_path = out_dir / f"{spec.run_id}.json"
    spec_dict = spec.to_dict()
    if result_path.exists():
        stored = json.loads(result_path.read_text())
        if _comparable(stored["spec"]) == _comparable(spec_dict):
            return stored
        changed = _differences(_comparable(stored["spec"]), _comparable(spec_dict))
        if set(changed) - set(_RESUMABLE_FIELDS):
            raise ValueError(
                f"{result_path} holds run {spec.run_id} with other settings ({changed} differ); "
                "give this run another tag or out_dir, or delete the old result and its folder"
            )
    run_dir = out_dir / spec.run_id
    run_dir.mkdir(exist_ok=True)
    with run_lock(run_dir):
        if result_path.exists():  # another worker may have finished it meanwhile
            stored = json.loads(result_path.read_text())
            if _comparable(stored["spec"]) == _comparable(spec_dict):
                return stored
        spec_path = run_dir / "spec.json"
        if spec_path.exists():
            saved = json.loads(spec_path.read_text())
            changed = _differences(
                _comparable(saved, _RESUMABLE_FIELDS), _comparable(spec_dict, _RESUMABLE_FIELDS)
            )
            if changed:
                raise ValueError(
                    f"the checkpoint in {run_dir} was written with other settings ({changed} "
                    "differ); give this run another tag or out_dir, or delete that folder"
                )
        _write_json(spec_path, spec_dict)

        start = time.perf_counter()
        sets = load_data(spec, data_root)
        vocab = sets.get("vocab")
        if vocab is not None:
            vocab.save(run_dir / "vocab.json")
        torch.manual_seed(spec.seed)
        model = build_model(
            spec.model_name, spec.model_config(None if vocab is None else len(vocab))
        )
        trainer = Trainer(
            model,
            spec.train_config(checkpoint_dir=run_dir, device=device, progress=progress),
            batch_transform=None if spec.is_text else _data.binarize,
        )
        resumed_from = trainer.epoch
        if resumed_from > spec.epochs:
            raise ValueError(
                f"the checkpoint in {run_dir} has {resumed_from} epochs, more than epochs = "
                f"{spec.epochs}"
            )
        val = sets["val"]
        error, metrics = None, {}
        monitor = None
        if spec.monitor_images:
            monitor = _monitor(spec, sets, trainer.device)
        try:
            trainer.fit(sets["train"], None if val is None else val.to(trainer.device), monitor)
        except FloatingPointError as err:  # the trainer's stop on a non-finite loss
            error = str(err)
        if error is None:
            labels = sets["test_labels"]
            metrics = collapse_report(
                trainer.inference_model(),  # SA-VAE: q(z | x) refined as in training
                sets["test"].to(trainer.device),
                iwae_samples=spec.iwae_samples,
                labels=None if labels is None else labels.numpy(),
            )
            if spec.is_text and "log_likelihood" in metrics:
                metrics["perplexity"] = _perplexity(
                    metrics["log_likelihood"], len(sets["test"]), sets["test_tokens"]
                )
        prov = provenance(spec_dict, time.perf_counter() - start)
        prov["epochs"] = trainer.epoch
        record = {
            "id": spec.run_id,
            "spec": spec_dict,
            "metrics": metrics,
            "error": error,
            "epochs": trainer.epoch,
            "resumed_from_epoch": resumed_from,
            "n_images": {
                "train": len(sets["train"]),
                "val": 0 if val is None else len(val),
                "test": len(sets["test"]),
            },
            "history": trainer.history,
            "provenance": prov,
        }
        if vocab is not None:
            record["vocab_size"] = len(vocab)
            record["test_tokens"] = sets["test_tokens"]
        _write_json(result_path, record)
        return json.loads(result_path.read_text())


# --- grids of runs ------------------------------------------------------------------------------


def _monitor(spec: RunSpec, sets: dict, device):
    """The per-epoch evaluation of ``monitor_images`` test images (see :class:`RunSpec`)."""
    n = spec.monitor_images
    if n > len(sets["test"]):
        raise ValueError(
            f"monitor_images = {n} is more than the run's {len(sets['test'])} test images"
        )
    x = sets["test"][:n].to(device)
    labels = sets["test_labels"]
    labels = None if labels is None else labels[:n].numpy()

    def monitor(model) -> dict:
        point = learning_curve_point(
            model,
            x,
            labels,
            bound_samples=spec.monitor_bound_samples,
            iwae_samples=spec.monitor_iwae_samples,
        )
        return {f"test_{k}": v for k, v in point.items()}

    return monitor


def _run_job(spec: RunSpec, out_dir: str, data_root, device, threads: int | None) -> dict | None:
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return run_one(spec, out_dir, data_root=data_root, device=device)
    except RunLocked as err:
        print(f"skipped: {err}", flush=True)
        return None


def run_grid(
    specs,
    out_dir,
    workers: int = 1,
    data_root=None,
    executor=None,
    device=None,
    progress: bool = True,
) -> list[dict]:
    """Run every spec (:func:`run_one`) and return the results in the order of ``specs``.

    ``workers`` > 1 runs them in that many processes (spawn context, one thread each); 1 runs
    them here, one after the other. Runs already stored in ``out_dir`` are skipped, and
    interrupted ones resume, so a grid can be restarted as it is. A run that another live
    process is training (its lock is held, :func:`run_lock`) is skipped with a message and left
    out of the returned list, so several workers, or machines sharing ``out_dir``, can work
    through one grid.

    ``executor``, if given, replaces the process pool: any object whose ``submit(fn, *args)``
    returns a future with ``result()``, such as a ``concurrent.futures`` executor or a
    ``submitit`` executor for a cluster (``submitit.AutoExecutor(folder=...)`` with
    ``update_parameters(...)`` set as the cluster needs; its jobs must see ``out_dir`` and the
    data; the tests run it with ``submitit.LocalExecutor``). ``workers`` is then ignored.
    """
    from tqdm import tqdm

    specs = [s if isinstance(s, RunSpec) else RunSpec.from_dict(dict(s)) for s in specs]
    _check_unique(specs)
    workers = check_count("workers", workers)
    out_dir = str(Path(out_dir))
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    root = None if data_root is None else str(data_root)
    bar = tqdm(total=len(specs), desc="runs", disable=not progress)
    try:
        if executor is None and workers == 1:
            out = []
            for spec in specs:
                out.append(_run_job(spec, out_dir, root, device, None))
                bar.update(1)
            return [r for r in out if r is not None]
        if executor is not None:
            futures = [executor.submit(_run_job, s, out_dir, root, device, None) for s in specs]
            out = []
            for f in futures:
                out.append(f.result())
                bar.update(1)
            return [r for r in out if r is not None]
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(_run_job, s, out_dir, root, device, 1) for s in specs]
            for f in futures:
                f.add_done_callback(lambda _: bar.update(1))
            return [r for r in (f.result() for f in futures) if r is not None]
    finally:
        bar.close()


def grid_status(specs, out_dir, workers: int = 1) -> dict:
    """Where a grid stands in ``out_dir``: each run ``done`` (its result is stored), ``running``
    (a live process holds its lock), ``partial`` (a checkpoint is there, nobody runs it) or
    ``left``, with the epochs each has (from its log), and an estimate of the time left.

    The estimate takes, for each unfinished run, the mean wall time of the finished runs of the
    same data set, method and depth (or of all finished runs when there are none), times the
    share of its epochs still to train, summed and divided by ``workers``. Returns ``{"runs":
    [{"id", "state", "epochs_done", "epochs"}], "counts": {state: n}, "seconds_left": float or
    None}`` (None when nothing has finished to estimate from).
    """
    specs = [s if isinstance(s, RunSpec) else RunSpec.from_dict(dict(s)) for s in specs]
    workers = check_count("workers", workers)
    out_dir = Path(out_dir)
    runs, walls = [], {}
    for spec in specs:
        result_path = out_dir / f"{spec.run_id}.json"
        run_dir = out_dir / spec.run_id
        log = run_dir / Trainer.LOG
        done_epochs = len(log.read_text().splitlines()) if log.exists() else 0
        state = "left"
        if result_path.exists():
            stored = json.loads(result_path.read_text())
            if _comparable(stored["spec"]) == _comparable(spec.to_dict()):
                state, done_epochs = "done", spec.epochs
                wall = stored["provenance"]["wall_seconds"]
                walls.setdefault((spec.dataset, spec.method, spec.depth), []).append(wall)
        if state != "done":
            holder = read_lock(run_dir)
            if holder is not None and not holder["stale"]:
                state = "running"
            elif (run_dir / Trainer.CHECKPOINT).exists():
                state = "partial"
        runs.append(
            {"id": spec.run_id, "state": state, "epochs_done": done_epochs, "epochs": spec.epochs}
        )
    every = [w for ws in walls.values() for w in ws]
    seconds = None
    if every:
        seconds = 0.0
        for spec, run in zip(specs, runs, strict=True):
            if run["state"] == "done":
                continue
            same = walls.get((spec.dataset, spec.method, spec.depth), every)
            seconds += (
                sum(same) / len(same) * (1 - min(run["epochs_done"], spec.epochs) / spec.epochs)
            )
        seconds /= workers
    counts = {
        state: sum(r["state"] == state for r in runs)
        for state in ("done", "running", "partial", "left")
    }
    return {"runs": runs, "counts": counts, "seconds_left": seconds}


def format_grid_status(status: dict) -> str:
    """:func:`grid_status` as the lines ``--status`` prints."""
    lines = [
        f"{r['state']:8s} {r['epochs_done']:>4d}/{r['epochs']:<4d} {r['id']}"
        for r in status["runs"]
    ]
    counts = ", ".join(f"{n} {state}" for state, n in status["counts"].items())
    left = status["seconds_left"]
    eta = (
        "unknown (no finished run to estimate from)"
        if left is None
        else f"about {left / 3600:.1f} h"
    )
    return "\n".join(lines + [f"{len(status['runs'])} runs: {counts}; time left {eta}"])


def collect(out_dir) -> list[dict]:
    """Every result stored in ``out_dir`` (the ``<run id>.json`` files), sorted by run id."""
    results = []
    for path in sorted(Path(out_dir).glob("*.json")):
        record = json.loads(path.read_text())
        if isinstance(record, dict) and "id" in record and "spec" in record:
            results.append(record)
    return sorted(results, key=lambda r: r["id"])


def load_model(spec, out_dir, device=None):
    """The trained model of a stored run, from its checkpoint in ``out_dir/<run id>/``, in eval
    mode (for analyses beyond the metrics the run stored). A text run's vocabulary is
    ``Vocabulary.load(out_dir / run_id / "vocab.json")``."""
    if not isinstance(spec, RunSpec):
        spec = RunSpec.from_stored(dict(spec))
    run_dir = Path(out_dir) / spec.run_id
    if not (run_dir / Trainer.CHECKPOINT).exists():
        raise FileNotFoundError(
            f"no checkpoint for run {spec.run_id} in {run_dir} (expected {Trainer.CHECKPOINT})"
        )
    data_dim = None
    if spec.is_text:
        data_dim = len(_data.Vocabulary.load(run_dir / "vocab.json"))
    model = build_model(spec.model_name, spec.model_config(data_dim))
    trainer = Trainer(model, spec.train_config(checkpoint_dir=run_dir, device=device))
    return trainer.model.eval()


def icnn_weight_summary(results, out_dir, device=None) -> list[dict]:
    """How large the non-negative ICNN weights of stored injective-decoder runs have grown: for
    each run (its checkpoint in ``out_dir``) and for the same model freshly initialised with the
    run's seed, the mean of the output weights ``w`` of ``g1`` and ``g2`` (the weights that
    scale each ICNN's contribution to the map). Returns ``[{"id", "tag", "seed", "steps", "g1_w",
    "g2_w", "g1_w_init", "g2_w_init"}]``, runs without an injective decoder left out."""
    out = []
    for record in results:
        spec = RunSpec.from_stored(record["spec"])
        if spec.model_name not in ("lidvae", "lidgmvae") or record.get("error"):
            continue
        model = load_model(spec, out_dir, device=device)
        torch.manual_seed(spec.seed)
        fresh = build_model(spec.model_name, spec.model_config())
        entry = {
            "id": record["id"],
            "tag": spec.tag,
            "seed": spec.seed,
            "steps": record["history"][-1]["step"],
        }
        for name, m in (("", model), ("_init", fresh)):
            for g in ("g1", "g2"):
                w = getattr(m.decoder, g).potential_net.positive_weights()[-1]
                entry[f"{g}_w{name}"] = float(w.detach().mean())
        out.append(entry)
    return out


def label_posteriors(
    results, out_dir, n_images: int = 500, n_samples: int = 50, data_root=None, device=None
) -> list[dict]:
    """For each stored mixture-model run with labels: the information the cluster label carries
    under the encoder, q(y | x), and under the fitted model itself, p(y | x) (by importance
    sampling, :meth:`lidvae_nb.models.GMVAE.label_posterior`), on the first ``n_images`` test
    images.

    The two tell apart the two ways a label can collapse: a non-identifiable label has
    p(y | x) = p(y), so nothing can be learned about it; an encoder stuck in a poor optimum has
    q(y | x) = q(y) while p(y | x) still varies with x. Each entry holds ``id``, ``encoder`` and
    ``model`` (each ``{"mi", "entropy", "accuracy"}``), ``n_images`` and ``n_samples``.
    """
    from lidvae_nb.metrics import cluster_accuracy, cluster_information

    n_images = check_count("n_images", n_images)
    n_samples = check_count("n_samples", n_samples)
    out, loaded = [], {}
    for record in results:
        spec = RunSpec.from_stored(record["spec"])
        if spec.model_name not in ("gmvae", "lidgmvae") or record.get("error"):
            continue
        # Runs that differ only in method, depth or seed share their images: read them once.
        key = (spec.dataset, spec.n_train, spec.n_val, spec.n_test, spec.data_seed)
        if key not in loaded:
            loaded[key] = load_data(spec, data_root)
        sets = loaded[key]
        if sets["test_labels"] is None:
            continue
        model = load_model(spec, out_dir, device=device)
        device_ = next(model.parameters()).device
        x, labels = sets["test"][:n_images].to(device_), sets["test_labels"][:n_images].numpy()
        torch.manual_seed(spec.seed)
        with torch.no_grad():
            q = torch.cat([model.cluster_probs(b) for b in x.split(100)])
            p = torch.cat([model.label_posterior(b, n_samples) for b in x.split(20)])
        entry = {"id": record["id"], "n_images": len(x), "n_samples": n_samples}
        for name, probs in (("encoder", q), ("model", p)):
            mi, entropy = cluster_information(probs.cpu())
            acc = cluster_accuracy(labels, probs.argmax(1).cpu().numpy())
            entry[name] = {"mi": mi, "entropy": entropy, "accuracy": acc}
        out.append(entry)
    return out


#: The metrics of Table 1 (images), in the paper's order, as :func:`collect` stores them.
TABLE_METRICS = ("au", "kl", "mi", "log_likelihood")


#: The learning-curve measurements of a monitored run's history (see ``RunSpec.monitor_images``).
CURVE_KEYS = (
    "test_elbo",
    "test_ref_bound",
    "test_iwae",
    "test_acc_majority",
    "test_acc_hungarian",
    "test_kl_y",
    "test_kl_z",
)


def learning_curves(results, keys=CURVE_KEYS, by=("dataset", "method", "depth", "tag")) -> dict:
    """Mean and sd over seeds of monitored runs' learning curves.

    Groups the runs by their ``by`` fields and returns ``{key: {"n": runs, "steps": array,
    name: (means, sds), ...}}``, the arrays over the steps that every run of the group recorded
    (sd with ``ddof=1``, NaN for a single run). Failed runs and runs without a monitored
    history are left out; a name that the group's runs do not all have is left out too.
    """
    import numpy as np

    groups: dict = {}
    for record in results:
        if record.get("error") or not any("test_elbo" in h for h in record["history"]):
            continue
        groups.setdefault(tuple(record["spec"][f] for f in by), []).append(record)
    out = {}
    for key, records in groups.items():
        tables = [{h["step"]: h for h in r["history"] if "test_elbo" in h} for r in records]
        steps = sorted(set.intersection(*(set(t) for t in tables)))
        entry = {"n": len(records), "steps": np.array(steps)}
        for name in keys:
            if not all(name in t[step] for t in tables for step in steps):
                continue
            values = np.array([[t[step][name] for step in steps] for t in tables])
            sd = values.std(0, ddof=1) if len(records) > 1 else np.full(len(steps), np.nan)
            entry[name] = (values.mean(0), sd)
        out[key] = entry
    return out


def summarize(
    results, metrics=TABLE_METRICS, by=("dataset", "method", "depth"), over=("seed",)
) -> dict:
    """Mean and standard deviation of each metric over the runs of a group: the runs with the
    same ``by`` fields, which may differ only in the ``over`` fields (the seeds, by default).

    Returns ``{key: {"n": runs, "failed": runs stopped on a non-finite loss, metric: (mean, sd),
    ...}}`` with ``key`` the tuple of the ``by`` fields of the runs' specs, in the order first
    met. ``sd`` is the sample standard deviation (``ddof=1``), NaN for a single run; a metric
    that no finished run of a group has is left out of that group. Failed runs are counted,
    not averaged. Runs of one group that differ in another setting (a ``tag``, ``epochs``, ...)
    are an error that names the settings, so that variants are never averaged together.
    """
    import numpy as np

    names = RunSpec().keys()
    unknown = [f for f in (*by, *over) if f not in names]
    if unknown:
        raise ValueError(f"unknown run setting(s) {unknown}; the settings are {names}")
    free = set(by) | set(over) | set(_NOT_RESULT_FIELDS)
    groups: dict = {}
    for record in results:
        groups.setdefault(tuple(record["spec"][f] for f in by), []).append(record)
    out = {}
    for key, records in groups.items():
        first = records[0]["spec"]
        differ = sorted(
            {
                f
                for r in records
                for f in names
                if f not in free and r["spec"].get(f) != first.get(f)
            }
        )
        if differ:
            raise ValueError(
                f"the runs of group {key} differ in {differ} as well as in {list(over)}; "
                f"add those settings to by= or over=, or summarise the variants apart"
            )
        done = [r for r in records if not r.get("error")]
        row = {"n": len(records), "failed": len(records) - len(done)}
        for name in metrics:
            values = np.array([r["metrics"][name] for r in done if name in r["metrics"]], float)
            if len(values):
                sd = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
                row[name] = (float(values.mean()), sd)
        out[key] = row
    return out


def throughput(result: dict) -> float:
    """Training images (documents, for text) per second of one stored run: those seen over the
    seconds its epochs took (the per-epoch ``seconds`` of the history, which leave out
    validation)."""
    history = result["history"]
    seconds = sum(h["seconds"] for h in history)
    if not history or seconds <= 0:
        raise ValueError(f"run {result.get('id')!r} has no timed epochs to measure throughput from")
    return result["n_images"]["train"] * len(history) / seconds


# --------------------------------------------------------------------------------------------
# Figure 1a-b: GMVAE against LIDGMVAE on pinwheel data

#: Figure 1a-b's four models, each name mapped to (the model for
#: :func:`lidvae_nb.models.build_model`, whether the component means are fixed at distinct
#: points as in Example 1 rather than learned).
PINWHEEL_VARIANTS = {
    "GMVAE": ("gmvae", False),
    "LIDGMVAE": ("lidgmvae", False),
    "GMVAE, fixed means": ("gmvae", True),
    "LIDGMVAE, fixed means (Example 1)": ("lidgmvae", True),
}


def pinwheel_pixels(x: torch.Tensor) -> torch.Tensor:
    """The pixel probabilities sigmoid(10 x) of binarised pinwheel: a pixel is, in effect, the
    sign of its coordinate."""
    return torch.sigmoid(10 * x)


def pinwheel_run(
    variant: str,
    likelihood: str,
    epochs: int,
    seed: int,
    n_per_arm: int,
    iwae_samples: int = 200,
    n_test_per_arm: int = 200,
    hidden: int = 64,
) -> dict:
    """Fit one model of :data:`PINWHEEL_VARIANTS` to five-arm pinwheel data and measure its label.

    ``likelihood`` "gaussian" fits the points; "bernoulli" fits binarised points, a pixel
    ``b_j ~ Bernoulli(sigmoid(10 x_j))`` drawn afresh at every step for training and once (seed
    ``77 + seed``) for the test set. Training data come from seed ``1000 + seed``, test data from
    ``5000 + seed``; the model (code of 2 dimensions, width ``hidden``, the first settings of
    :data:`lidvae_nb.models.FIRST_SETTINGS`) trains with Adam, batch 100, for ``epochs``.

    Returns the model and its test data (``x_test`` the points, ``x_test_in`` what the model
    sees, ``y_test`` the arms) with: ``mi`` and ``entropy``, I(y; x) and the mean entropy of the
    encoder's q(y | x) (:func:`~lidvae_nb.metrics.cluster_information`); ``model_mi``, the same
    for the model's own p(y | x) (``GMVAE.label_posterior``, ``iwae_samples`` samples); ``acc``,
    the Hungarian cluster accuracy; ``ll``, the IWAE test log-likelihood per point; ``probs``,
    q(y | x) on the test set; and ``separation``, the closest pair of component means in units
    of the components' mean scale.
    """
    if variant not in PINWHEEL_VARIANTS:
        raise ValueError(f"variant must be one of {list(PINWHEEL_VARIANTS)}, got {variant!r}")
    if likelihood not in ("bernoulli", "gaussian"):
        raise ValueError(f"likelihood must be 'bernoulli' or 'gaussian', got {likelihood!r}")
    name, fixed = PINWHEEL_VARIANTS[variant]
    x_train, _ = _data.pinwheel(check_count("n_per_arm", n_per_arm), 5, seed=1000 + seed)
    x_test, y_test = _data.pinwheel(
        check_count("n_test_per_arm", n_test_per_arm), 5, seed=5000 + seed
    )
    x_test_in = x_test
    if likelihood == "bernoulli":
        x_train = pinwheel_pixels(x_train)
        x_test_in = torch.bernoulli(
            pinwheel_pixels(x_test), generator=torch.Generator().manual_seed(77 + seed)
        )
    torch.manual_seed(seed)
    config = ModelConfig(
        data_dim=2,
        latent_dim=2,
        hidden=hidden,
        n_clusters=5,
        likelihood=likelihood,
        fixed_prior_means=fixed,
        **FIRST_SETTINGS,
    )
    model = build_model(name, config)
    binarise = torch.bernoulli if likelihood == "bernoulli" else None
    train = TrainConfig(epochs=epochs, batch_size=100, seed=seed, progress=False)
    Trainer(model, train, batch_transform=binarise).fit(x_train)
    model.eval()
    with torch.no_grad():
        probs = model.cluster_probs(x_test_in)
        mi, entropy = cluster_information(probs)
        torch.manual_seed(seed)
        own = torch.cat([model.label_posterior(b, iwae_samples) for b in x_test_in.split(200)])
        ll = float(iwae_log_likelihood(model, x_test_in, n_samples=iwae_samples).mean())
        scale = torch.nn.functional.softplus(model.prior_raw_scales).mean()
        gaps = torch.cdist(model.prior_means, model.prior_means) + 1e9 * torch.eye(5)
        separation = float(gaps.min() / scale)
    return {
        "variant": variant,
        "seed": seed,
        "model": model,
        "x_test": x_test,
        "x_test_in": x_test_in,
        "y_test": y_test,
        "mi": mi,
        "entropy": entropy,
        "model_mi": cluster_information(own)[0],
        "acc": cluster_accuracy(y_test.numpy(), probs.argmax(1).numpy()),
        "ll": ll,
        "probs": probs,
        "separation": separation,
    }


def pinwheel_study(
    likelihood: str,
    epochs: int,
    seeds: int,
    n_per_arm: int,
    iwae_samples: int = 200,
    workers: int = 1,
    progress: bool = False,
) -> list[dict]:
    """:func:`pinwheel_run` for every variant and seed ``0 .. seeds - 1`` (seed-major order), in
    ``workers`` processes (:func:`lidvae_nb.trainer.run_parallel`); each run seeds itself, so the
    results do not depend on ``workers``."""
    jobs = [
        dict(
            variant=variant,
            likelihood=likelihood,
            epochs=epochs,
            seed=seed,
            n_per_arm=n_per_arm,
            iwae_samples=iwae_samples,
        )
        for seed in range(check_count("seeds", seeds))
        for variant in PINWHEEL_VARIANTS
    ]
    return run_parallel(pinwheel_run, jobs, workers, f"pinwheel ({likelihood})", progress)


def main(argv=None) -> None:
    """``python -m lidvae_nb.experiments GRID.toml --out DIR``: run the image experiments of a
    grid file, one JSON result per run in DIR (runs already there are skipped)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("grid", help="TOML grid file")
    parser.add_argument("--out", required=True, help="folder of the results and checkpoints")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes")
    parser.add_argument("--data-root", default=None, help="data folder (default: $LIDVAE_DATA)")
    parser.add_argument("--device", default=None, help="torch device (default: CUDA if present)")
    parser.add_argument(
        "--label-posteriors",
        metavar="FILE",
        default=None,
        help="then write q(y | x) against p(y | x) of the grid's mixture runs to this JSON file",
    )
    parser.add_argument("--label-images", type=int, default=500, help="test images for that")
    parser.add_argument(
        "--label-samples", type=int, default=50, help="importance samples per image and cluster"
    )
    parser.add_argument(
        "--true-model",
        metavar="FILE",
        default=None,
        help="then write the true model's metrics on the grid's synthetic_text test set to this "
        "JSON file (true_model_report)",
    )
    parser.add_argument("--true-steps", type=int, default=3000, help="encoder steps for that")
    parser.add_argument("--true-pairs", type=int, default=50_000, help="pairs drawn for that")
    parser.add_argument(
        "--status",
        action="store_true",
        help="print where the grid stands in --out (done, running, partial, left; time left "
        "for --workers processes) and run nothing",
    )
    args = parser.parse_args(argv)
    specs = load_grid(args.grid)
    if args.status:
        print(format_grid_status(grid_status(specs, args.out, workers=args.workers)))
        return
    start = time.perf_counter()
    results = run_grid(
        specs, args.out, workers=args.workers, data_root=args.data_root, device=args.device
    )
    failed = [r["id"] for r in results if r.get("error")]
    print(f"{len(results)} runs in {args.out}" + (f"; stopped on NaN: {failed}" if failed else ""))
    if args.label_posteriors:
        entries = label_posteriors(
            results,
            args.out,
            n_images=args.label_images,
            n_samples=args.label_samples,
            data_root=args.data_root,
            device=args.device,
        )
        settings = {
            "grid": str(args.grid),
            "n_images": args.label_images,
            "n_samples": args.label_samples,
        }
        record = {
            "label_posteriors": entries,
            "provenance": provenance(settings, time.perf_counter() - start),
        }
        _write_json(Path(args.label_posteriors), record)
        print(f"label posteriors of {len(entries)} runs in {args.label_posteriors}")
    if args.true_model:
        synthetic = [s for s in specs if s.dataset == "synthetic_text"]
        if not synthetic:
            raise SystemExit(f"--true-model: the grid {args.grid} has no synthetic_text run")
        spec = synthetic[0].replace(seed=0)
        settings = {"steps": args.true_steps, "n_pairs": args.true_pairs, "batch_size": 64}
        begin = time.perf_counter()
        report = true_model_report(spec, **settings, progress=True)
        record = {
            "spec": spec.to_dict(),
            "metrics": report,
            "provenance": provenance(
                {**settings, "grid": str(args.grid)}, time.perf_counter() - begin
            ),
        }
        _write_json(Path(args.true_model), record)
        print(f"true model's metrics in {args.true_model}")


if __name__ == "__main__":
    main()
