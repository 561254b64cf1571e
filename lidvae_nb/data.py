"""Data sets: synthetic generators (pinwheel; Yacoby et al.'s four benchmarks) and loaders of the
real data (MNIST so far)."""

from __future__ import annotations

import math

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


# --- Yacoby et al.'s four synthetic benchmarks (their Appendix E) ------------------------------

#: Eq. 3's parameters A, the diagonal of B and sigma_eps^2 (the noise is N(0, sigma2 I - B)).
JTE_A = ((0.75, 0.25), (1.5, -1.0))
JTE_B = 0.006
JTE_SIGMA2 = 0.01
#: The "Gaussian" data set's loading, x = z^T A + noise (2 x 4).
GAUSSIAN_A = ((-0.7074, 0.0995, 0.0286, 0.1240), (0.7074, 0.9948, -0.9995, 0.9920))
#: The Mobius transform m(z) = (a z + b) / (c z + d) on z = z1 + i z2.
MOBIUS_COEFFICIENTS = (1 + 0j, 1 + 4j, 1 + 0j, 7 + 4j)
#: Data dimension and observation-noise variance of each data set (latents are 2-d, N(0, I)).
SYNTHETIC = {
    "linear_jte": {"data_dim": 2, "noise_var": JTE_SIGMA2 - JTE_B},
    "cubic_jte": {"data_dim": 2, "noise_var": JTE_SIGMA2 - JTE_B},
    "gaussian": {"data_dim": 4, "noise_var": 1e-6},
    "mobius": {"data_dim": 2, "noise_var": 1e-5},
}


def _check_synthetic(name: str) -> dict:
    if name not in SYNTHETIC:
        raise ValueError(f"name must be one of {tuple(SYNTHETIC)}, got {name!r}")
    return SYNTHETIC[name]


def jte_loading(A: torch.Tensor, b: float = JTE_B) -> torch.Tensor:
    """Cholesky(A A^T + b I): the loading of Eq. 3, differentiable in A."""
    eye = torch.eye(A.shape[0], dtype=A.dtype, device=A.device)
    return torch.linalg.cholesky(A @ A.T + b * eye)


def mobius(z: torch.Tensor) -> torch.Tensor:
    """The Mobius transform of the data set "Mobius", on (..., 2) real pairs (real, imaginary)."""
    a, b, c, d = MOBIUS_COEFFICIENTS
    w = torch.complex(z[..., 0].double(), z[..., 1].double())
    m = (a * w + b) / (c * w + d)
    return torch.stack([m.real, m.imag], -1).to(z.dtype)


def synthetic_mean(name: str, z: torch.Tensor) -> torch.Tensor:
    """The ground-truth mean of x given z, f(z), for z of shape (..., 2)."""
    _check_synthetic(name)
    if z.shape[-1] != 2:
        raise ValueError(f"z must have shape (..., 2), got {tuple(z.shape)}")
    if name in ("linear_jte", "cubic_jte"):
        out = z @ jte_loading(torch.tensor(JTE_A, dtype=z.dtype)).T
        return out**3 if name == "cubic_jte" else out
    if name == "gaussian":
        return z @ torch.tensor(GAUSSIAN_A, dtype=z.dtype)
    return mobius(z)


def synthetic(name: str, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` draws of Yacoby et al.'s data set ``name``: z ~ N(0, I_2), x = f(z) + noise.

    ``name`` is one of ``linear_jte`` (Eq. 3 with their A and B), ``cubic_jte`` (the same loading,
    cubed element-wise), ``gaussian`` (a linear map into 4 dimensions, noise variance 1e-6) and
    ``mobius`` (the Mobius transform itself; the paper uses a network fitted to it, noise variance
    1e-5). Returns (x, z) as float32 tensors of shapes (n, D) and (n, 2).
    """
    spec = _check_synthetic(name)
    check_count("n", n)
    gen = torch.Generator().manual_seed(int(seed))
    z = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    noise = torch.randn(n, spec["data_dim"], generator=gen, dtype=torch.float64)
    x = synthetic_mean(name, z) + math.sqrt(spec["noise_var"]) * noise
    return x.float(), z.float()


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
