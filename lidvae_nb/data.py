"""Data sets: synthetic generators (pinwheel) and loaders of the real data (MNIST so far)."""

from __future__ import annotations

import numpy as np
import torch

from lidvae_nb._checks import check_count


def pinwheel(
    n_per_class: int = 200,
    n_classes: int = 5,
    radial_std: float = 0.3,
    tangential_std: float = 0.05,
    rate: float = 0.25,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pinwheel data of Johnson et al. (2016): ``n_classes`` curved arms in the plane.

    Each arm is a Gaussian blob stretched along a radius and then bent by a rotation whose angle
    grows with the distance from the centre. Returns (x, labels): (N, 2) float32 and (N,) int64,
    N = n_classes * n_per_class, shuffled with ``seed``.
    """
    check_count("n_per_class", n_per_class)
    check_count("n_classes", n_classes)
    for name, value in (("radial_std", radial_std), ("tangential_std", tangential_std)):
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")
    rng = np.random.default_rng(seed)
    arm_angles = np.linspace(0, 2 * np.pi, n_classes, endpoint=False)
    labels = np.repeat(np.arange(n_classes), n_per_class)
    local = rng.normal(size=(labels.size, 2)) * np.array([radial_std, tangential_std])
    local[:, 0] += 1.0
    angles = arm_angles[labels] + rate * np.exp(local[:, 0])
    cos, sin = np.cos(angles), np.sin(angles)
    x = np.stack([local[:, 0] * cos - local[:, 1] * sin, local[:, 0] * sin + local[:, 1] * cos], 1)
    order = rng.permutation(labels.size)
    return (
        torch.as_tensor(x[order], dtype=torch.float32),
        torch.as_tensor(labels[order], dtype=torch.int64),
    )


MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def data_root(root=None):
    """The folder holding the real data sets: ``root``, else the ``LIDVAE_DATA`` variable."""
    import os
    from pathlib import Path

    root = root if root is not None else os.environ.get("LIDVAE_DATA")
    if not root:
        raise FileNotFoundError(
            "no data folder: pass root=... or set LIDVAE_DATA to the folder holding mnist/ etc."
        )
    return Path(root)


def _read_idx(path, magic: int) -> np.ndarray:
    """An IDX file (gzip) of unsigned bytes, as an array of the shape its header gives."""
    import gzip

    with gzip.open(path, "rb") as f:
        data = f.read()
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise ValueError(
            f"{path} is not an IDX file of the expected kind: magic {found:#x}, expected {magic:#x}"
        )
    ndim = magic & 0xFF
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(
            f"{path}: header says {shape} ({int(np.prod(shape))} bytes), found {body.size} bytes"
        )
    return body.reshape(shape)


def mnist(
    split: str = "train", root=None, n: int | None = None, binarize: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST from the IDX files in ``<root>/mnist/`` (``root``: see :func:`data_root`).

    Returns (x, labels): x (N, 784) float32 in [0, 1] (pixel / 255, or pixel > 127 as 0/1 with
    ``binarize``) and labels (N,) int64. ``n`` keeps the first n images.
    """
    if split not in MNIST_FILES:
        raise ValueError(f"split must be one of {sorted(MNIST_FILES)}, got {split!r}")
    if n is not None and (int(n) != n or n < 1):
        raise ValueError(f"n must be a positive integer or None, got {n!r}")
    folder = data_root(root) / "mnist"
    images_file, labels_file = (folder / name for name in MNIST_FILES[split])
    for path in (images_file, labels_file):
        if not path.is_file():
            raise FileNotFoundError(f"MNIST file not found: {path}")
    images = _read_idx(images_file, 0x803)
    labels = _read_idx(labels_file, 0x801)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels in {folder}")
    if n is not None:
        images, labels = images[: int(n)], labels[: int(n)]
    x = images.reshape(len(images), -1)
    x = (x > 127).astype(np.float32) if binarize else x.astype(np.float32) / 255.0
    return torch.from_numpy(x), torch.from_numpy(labels.astype(np.int64))
