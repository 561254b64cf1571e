"""Argument checks shared by the package's modules (private)."""

from __future__ import annotations

import math
import numbers


def check_count(name: str, value, minimum: int = 1) -> int:
    """``value`` as an int, or a ValueError naming it: a whole number (an int or an integral
    float, not a bool or a string) of at least ``minimum`` (1: "a positive integer", 0: "a
    non-negative integer")."""
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not real or int(value) != value or value < minimum:
        kind = {1: "positive integer", 0: "non-negative integer"}.get(
            minimum, f"integer >= {minimum}"
        )
        raise ValueError(f"{name} must be a {kind}, got {value!r}")
    return int(value)


def check_positive(name: str, value) -> float:
    """``value`` as a float, or a ValueError naming it: a finite real number > 0 (not a bool or a
    string)."""
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not (real and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be > 0 and finite, got {value!r}")
    return float(value)
