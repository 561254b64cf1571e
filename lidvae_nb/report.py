"""Tables that put a paper's claim or number beside ours, the checks and glued values that tie
the prose to the data (:func:`claim`, :func:`glue`), and the provenance of stored results."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def markdown_table(rows: Iterable[Sequence], header: Sequence[str]) -> str:
    """A GitHub/MyST markdown table; floats shown with 4 significant digits."""
    rows = [list(r) for r in rows]
    for i, row in enumerate(rows):
        if len(row) != len(header):
            raise ValueError(
                f"row {i} has {len(row)} cells, expected {len(header)} (header {list(header)})"
            )
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def paper_vs_ours(rows: Iterable[Sequence]) -> str:
    """Rows of (what, paper's claim or number, ours, agrees?) as a markdown table.

    Display it in a notebook with ``IPython.display.Markdown(paper_vs_ours(rows))``.
    """
    out = []
    for row in rows:
        row = list(row)
        if len(row) != 4:
            raise ValueError(f"each row is (what, paper, ours, agrees), got {row!r}")
        agrees = row[3]
        if isinstance(agrees, bool):
            row[3] = "yes" if agrees else "**no**"
        out.append(row)
    return markdown_table(out, ["", "paper", "ours", "agrees"])


class ClaimFailed(AssertionError):
    """A sentence of the book no longer holds for the data it renders."""


def claim(statement: str, holds, **evidence) -> bool:
    """Check a comparison that the prose states, against the data it is about.

    ``statement`` is the sentence (or its gist) as the chapter words it, ``holds`` whether the
    data support it. Raises :class:`ClaimFailed` quoting the statement and the ``evidence``
    (name = value) when they do not, so that a chapter whose data change fails its build instead
    of keeping a sentence the numbers contradict. Returns True.
    """
    if isinstance(holds, bool) is False:
        try:
            holds = bool(holds.all()) if hasattr(holds, "all") else bool(holds)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"claim {statement!r}: holds must be a truth value, got {holds!r}"
            ) from err
    if not holds:
        shown = ", ".join(f"{k} = {v!r}" for k, v in evidence.items())
        raise ClaimFailed(
            f"the data no longer support the claim {statement!r}" + (f" ({shown})" if shown else "")
        )
    return True


def glue(name: str, value, display: bool = False):
    """MyST-NB's ``glue``: store ``value`` under ``name`` for the prose to render (the
    ``glue:text`` role, with a format spec such as ``name:.2f``). A numpy or torch scalar is
    passed as a plain Python number, whose format spec works. Returns the value stored."""
    try:
        from myst_nb import glue as _glue
    except ImportError as err:  # a book tool, not a dependency of the package
        raise ImportError(
            "report.glue needs myst-nb, which the 'book' extra installs: "
            "pip install 'lidvae_nb[book]'"
        ) from err

    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    _glue(name, value, display=display)
    return value


def provenance(config: dict, wall_seconds: float) -> dict:
    """Where a stored result came from: its configuration, the git commit, the versions, the
    machine, the date (UTC, ISO 8601, when this is called: the end of the run) and the wall time.

    With CUDA available, ``versions["cuda"]`` holds the CUDA version torch was built with and
    ``device`` also names the GPU.
    """
    import os
    import platform
    import subprocess
    import sys
    from datetime import UTC, datetime

    import torch

    import lidvae_nb

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        )
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown", None
    versions = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "lidvae_nb": lidvae_nb.__version__,
    }
    device = f"{platform.machine()} CPU, {os.cpu_count()} cores ({platform.platform()})"
    if torch.cuda.is_available():
        versions["cuda"] = torch.version.cuda
        device += f"; GPU: {torch.cuda.get_device_name(torch.cuda.current_device())}"
    return {
        "config": config,
        "commit": commit,
        "uncommitted_changes": dirty,
        "versions": versions,
        "device": device,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "wall_seconds": round(wall_seconds, 1),
    }


def provenance_summary(results: Sequence[dict]) -> str:
    """A few lines on where a set of stored results came from (from their ``provenance``): how
    many runs, the commit(s) and whether any had uncommitted changes, the device(s), the torch and
    Python versions, the dates they finished between and their summed wall time."""
    if not results:
        raise ValueError("no stored results to describe")
    provs = [r["provenance"] for r in results]
    commits = sorted({p["commit"][:10] for p in provs})
    dirty = any(p.get("uncommitted_changes") for p in provs)
    devices = sorted({p["device"] for p in provs})
    torches = sorted({p["versions"]["torch"] for p in provs})
    pythons = sorted({p["versions"]["python"] for p in provs})
    dates = sorted(p["date"] for p in provs if p.get("date"))
    hours = sum(p["wall_seconds"] for p in provs) / 3600
    failed = [r["id"] for r in results if r.get("error")]
    lines = [
        f"{len(results)} runs, commit(s) {', '.join(commits)}"
        + (" (with uncommitted changes)" if dirty else ""),
        f"device: {'; '.join(devices)}",
        f"torch {', '.join(torches)}, python {', '.join(pythons)}",
        (f"finished {dates[0]} to {dates[-1]} (UTC); " if dates else "")
        + f"{hours:.1f} h of run time in all",
        f"runs stopped on a non-finite loss: {', '.join(failed) if failed else 'none'}",
    ]
    return "\n".join(lines)
