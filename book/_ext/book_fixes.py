"""Small Sphinx additions for the book's HTML (loaded through ``sphinx: local_extensions``).

* **Duplicate scripts.** sphinx-thebe and sphinx-togglebutton, as pulled in by Jupyter Book 1.x,
  register their inline scripts twice; the second ``const THEBE_JS_URL`` then stops with a
  SyntaxError in the browser console (the browser check of ``.ci/browser_check.py`` found it).
  Identical scripts are kept once.
* **Executed notebooks to download.** Chapters are MyST-markdown sources, so the theme's download
  menu offers only the ``.md`` file. The notebooks that MyST-NB executed during the build are
  copied next to the page sources, and the menu offers them as ``.ipynb``, outputs included.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective


def _executed(app, docname: str) -> Path:
    return Path(app.outdir).parent / "jupyter_execute" / f"{docname}.ipynb"


def _drop_duplicate_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        attributes = getattr(script, "attributes", {})
        filename = getattr(script, "filename", script) or ""  # inline scripts: None or ""
        key = (str(filename), tuple(sorted(attributes.items())))
        if key in seen:
            continue
        seen.add(key)
        unique.append(script)
    context["script_files"] = unique


def _offer_executed_notebook(app, pagename, templatename, context, doctree):
    """Before the theme builds its buttons: point its '.ipynb' download at the executed copy."""
    if context.get("page_source_suffix") != ".ipynb" and _executed(app, pagename).exists():
        context["ipynb_source"] = f"{pagename}.ipynb"


def _copy_executed_notebooks(app, exception):
    if exception is not None or app.builder.format != "html":
        return
    for docname in app.env.found_docs:
        source = _executed(app, docname)
        if source.exists() and Path(app.env.doc2path(docname)).suffix != ".ipynb":
            target = Path(app.outdir) / "_sources" / f"{docname}.ipynb"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)


class StatusTable(SphinxDirective):
    """``{status-table}``: the reproduction status table, generated from its data file."""

    has_content = False

    def run(self):
        from lidvae_nb import report

        path = Path(self.env.srcdir) / "book" / "results" / "status.toml"
        self.env.note_dependency(str(path))
        text = report.status_summary(path) + "\n\n" + report.status_table(path)
        node = nodes.container(classes=["status-table"])
        self.state.nested_parse(StringList(text.splitlines()), self.content_offset, node)
        return [node]


def setup(app):
    app.add_directive("status-table", StatusTable)
    app.connect("html-page-context", _offer_executed_notebook, priority=400)
    app.connect("html-page-context", _drop_duplicate_scripts, priority=900)
    app.connect("build-finished", _copy_executed_notebooks)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
