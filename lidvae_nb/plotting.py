"""One plotting style for every chapter, and small figure helpers."""

from __future__ import annotations

import matplotlib as mpl

#: Colours used consistently across chapters (prior, posterior, closed form, samples, truth, fit).
COLORS = {
    "prior": "#7f7f7f",
    "posterior": "#1f77b4",
    "closed_form": "#d62728",
    "samples": "#9ecae1",
    "truth": "#2ca02c",
    "fit": "#ff7f0e",
}


def use_style() -> None:
    """Set the book's matplotlib style: readable sizes, light grid, no top/right spines."""
    mpl.rcParams.update(
        {
            "figure.figsize": (7.0, 3.6),
            "figure.dpi": 110,
            "savefig.dpi": 150,
            "figure.constrained_layout.use": True,
            "font.size": 10,
            "axes.titlesize": 10,
            "axes.labelsize": 10,
            "axes.grid": True,
            "grid.alpha": 0.25,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "legend.frameon": False,
            "image.cmap": "viridis",
        }
    )
