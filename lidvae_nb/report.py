"""Tables that put a paper's claim or number beside ours."""

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
