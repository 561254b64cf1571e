"""Data sets: synthetic generators (pinwheel); loaders for the real image and text data to come."""

from __future__ import annotations

import numpy as np
import torch


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
    if int(n_per_class) != n_per_class or n_per_class < 1:
        raise ValueError(f"n_per_class must be a positive integer, got {n_per_class!r}")
    if int(n_classes) != n_classes or n_classes < 1:
        raise ValueError(f"n_classes must be a positive integer, got {n_classes!r}")
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
