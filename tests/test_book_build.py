"""The book build is strict: a raising cell, a broken reference or a Sphinx warning fails it.

Each case builds a one-chapter book with the project's own _config.yml through the same command
that `make book` runs (.ci/book.py build).
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

HEADER = """---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---
"""

CHAPTERS = {
    "good": HEADER
    + "(ch:good)=\n# Good\n\n```{code-cell} ipython3\nprint(6 * 7)\n```\n\n"
    + "```{code-cell} ipython3\nimport matplotlib.pyplot as plt\n\n"
    + "plt.plot([0, 1])\nplt.show()\n```\n",
    "raises": HEADER
    + "# Raises\n\n```{code-cell} ipython3\nraise RuntimeError('deliberately broken cell')\n```\n",
    "broken_ref": HEADER
    + "# Broken reference\n\nSee {ref}`no-such-label`.\n\n```{code-cell} ipython3\nprint(1)\n```\n",
    "warning": HEADER
    + "# Warning\n\n```{unknown-directive}\nx\n```\n\n```{code-cell} ipython3\nprint(1)\n```\n",
}


def build(tmp_path: Path, chapter: str) -> subprocess.CompletedProcess:
    shutil.copy2(ROOT / "_config.yml", tmp_path / "_config.yml")
    # what _config.yml points to: the bibliography, the local extension, the favicon
    (tmp_path / "book").mkdir()
    shutil.copy2(ROOT / "book" / "references.bib", tmp_path / "book" / "references.bib")
    for folder in ("_ext", "_static"):
        shutil.copytree(ROOT / "book" / folder, tmp_path / "book" / folder)
    (tmp_path / "_toc.yml").write_text(
        "format: jb-book\nroot: intro\nchapters:\n  - file: chapter\n"
    )
    (tmp_path / "intro.md").write_text("# A test book\n")
    (tmp_path / "chapter.md").write_text(CHAPTERS[chapter])
    return subprocess.run(
        [sys.executable, str(ROOT / ".ci" / "book.py"), "--root", str(tmp_path), "build"],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_a_good_chapter_builds(tmp_path):
    result = build(tmp_path, "good")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    html = (tmp_path / "_build" / "html" / "chapter.html").read_text()
    assert "42" in html
    # Figures must reach the page: a non-interactive MPLBACKEND in the environment would make
    # plt.show() a no-op inside the kernel and silently drop every figure of the book.
    assert re.search(r'<img[^>]+src="[^"]+\.png"', html), "the chapter's figure is missing"
    # book_fixes: each script once, and the executed notebook offered for download
    assert html.count("const THEBE_JS_URL") == 1
    assert '_sources/chapter.ipynb"' in html
    executed = tmp_path / "_build" / "html" / "_sources" / "chapter.ipynb"
    assert '"42' in executed.read_text(), "the downloadable notebook lacks its outputs"
    # MathJax is served with the book, not from a CDN
    assert "cdn.jsdelivr.net/npm/mathjax" not in html


@pytest.mark.parametrize(
    "chapter, message",
    [
        ("raises", "deliberately broken cell"),
        ("broken_ref", "no-such-label"),
        ("warning", "unknown-directive"),
    ],
)
def test_a_broken_chapter_fails_the_build(tmp_path, chapter, message):
    result = build(tmp_path, chapter)
    output = result.stdout + result.stderr
    assert result.returncode != 0, f"build of '{chapter}' passed:\n{output[-3000:]}"
    assert message in output
