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


# --- the reproduction status table ------------------------------------------------------------

#: The verdicts a row of the status table may carry, best first.
VERDICTS = ("reproduced", "partly", "not reproduced", "not run")
_STATUS_FIELDS = ("id", "paper", "what", "chapter", "paper_value", "ours", "scale", "verdict")


def _status_path(path=None):
    from pathlib import Path

    if path is not None:
        return Path(path)
    from lidvae_nb.profiles import find_profiles_file

    return find_profiles_file().parent / "results" / "status.toml"


def load_status(path=None) -> list[dict]:
    """The rows of the reproduction status table (``book/results/status.toml`` by default), each
    checked: every field present, a known verdict, unique ids, and an ``ours`` template whose
    ``{names}`` are exactly the row's ``values``."""
    import string
    import tomllib

    path = _status_path(path)
    with open(path, "rb") as f:
        rows = tomllib.load(f).get("result", [])
    if not rows:
        raise ValueError(f"{path} holds no [[result]] rows")
    seen = set()
    for row in rows:
        missing = [k for k in _STATUS_FIELDS if k not in row]
        if missing:
            raise ValueError(f"{path.name}: row {row.get('id', row)!r} lacks {missing}")
        if row["verdict"] not in VERDICTS:
            raise ValueError(
                f"{path.name}: row {row['id']!r} has verdict {row['verdict']!r}, "
                f"expected one of {VERDICTS}"
            )
        if row["id"] in seen:
            raise ValueError(f"{path.name}: the id {row['id']!r} appears twice")
        seen.add(row["id"])
        names = {f for _, f, _, _ in string.Formatter().parse(row["ours"]) if f}
        names = {n.split(".")[0].split("[")[0] for n in names}
        values = row.get("values", {})
        if names != set(values):
            raise ValueError(
                f"{path.name}: row {row['id']!r}: its 'ours' template names {sorted(names)} "
                f"but its values are {sorted(values)}"
            )
        if values and row.get("checked_in") not in ("book", "full", "any"):
            raise ValueError(
                f"{path.name}: row {row['id']!r} has values, so it must say which profile's run "
                f"gives them: checked_in = 'book', 'full' or 'any' (stored results), got "
                f"{row.get('checked_in')!r}"
            )
        if row["verdict"] != "reproduced" and not row.get("reason", "").strip():
            raise ValueError(f"{path.name}: row {row['id']!r} ({row['verdict']}) needs a reason")
    return rows


def check_status(result_id: str, profile: str, path=None, **values) -> bool:
    """Check the status table's row ``result_id`` against the values this run computed.

    A chapter calls this with the numbers its run gives for a result of the table. The row's
    ``values`` were written from the ``checked_in`` profile's run (or from stored results, for
    ``"any"``): in that profile the values must agree, each within the row's ``tolerance``
    (absolute; 0 when absent), or :class:`ClaimFailed` names the row, what the table says and
    what the run gives. In another profile nothing is checked and False is returned.
    """
    from lidvae_nb.profiles import PROFILES

    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    rows = {r["id"]: r for r in load_status(path)}
    if result_id not in rows:
        raise ValueError(f"the status table has no row {result_id!r}; it has {sorted(rows)}")
    row = rows[result_id]
    stored = row.get("values", {})
    if set(values) != set(stored):
        raise ValueError(
            f"status row {result_id!r} holds the values {sorted(stored)}, "
            f"the chapter passed {sorted(values)}"
        )
    if row["checked_in"] not in ("any", profile):
        return False
    tol = float(row.get("tolerance", 0.0))
    bad = {}
    for name, have in values.items():
        if hasattr(have, "item"):
            have = have.item()
        want = stored[name]
        if isinstance(want, bool) or not isinstance(want, int | float):
            ok = have == want
        else:
            ok = abs(float(have) - want) <= tol + 1e-12
        if not ok:
            bad[name] = (want, have)
    if bad:
        shown = ", ".join(f"{k}: the table has {w!r}, this run {h!r}" for k, (w, h) in bad.items())
        raise ClaimFailed(
            f"the status table's row {result_id!r} ({row['what']}: ours "
            f"{row['ours'].format(**stored)!r}) no longer matches this run ({shown}); "
            "rerun the chapter and update book/results/status.toml"
        )
    return True


def status_table(path=None) -> str:
    """The reproduction status table as markdown: each result of the three papers, its chapter,
    the paper's number, ours, the scale we ran at and the verdict, with its reason."""
    rows = []
    for r in load_status(path):
        verdict = r["verdict"] + (f": {r['reason']}" if r.get("reason") else "")
        rows.append(
            [
                r["paper"],
                r["what"],
                r["chapter"].split("_")[0],
                r["paper_value"],
                r["ours"].format(**r.get("values", {})),
                r["scale"],
                verdict,
            ]
        )
    return markdown_table(
        rows, ["paper", "result", "ch.", "paper's", "ours", "our scale", "verdict"]
    )


def status_summary(path=None) -> str:
    """One sentence counting the rows of the status table by verdict."""
    return _summary(load_status(path))


def _summary(rows: list[dict]) -> str:
    counts = {v: sum(r["verdict"] == v for r in rows) for v in VERDICTS}
    parts = [f"{n} {v}" for v, n in counts.items() if n]
    return (
        f"Of the {len(rows)} results of the three papers in the status table: "
        + ", ".join(parts)
        + "."
    )


def status_digest(path=None) -> str:
    """The summary sentence, then one markdown bullet per verdict other than "reproduced",
    naming its results and their chapters (what the README quotes)."""
    rows = load_status(path)
    lines = [_summary(rows), ""]
    for verdict in VERDICTS[1:]:
        have = [r for r in rows if r["verdict"] == verdict]
        if have:
            named = "; ".join(
                f"{r['paper']}, {r['what']} (chapter {r['chapter'][:2]})" for r in have
            )
            lines.append(f"* **{verdict}**: {named}.")
    return "\n".join(lines)
