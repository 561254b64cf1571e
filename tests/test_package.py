"""The package stands alone: it imports only what pyproject.toml declares as run-time needs."""

import ast
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lidvae_nb"
# Tools of the book and of the tests (the extras): none may be needed by `import lidvae_nb.*`.
EXTRAS_MODULES = [
    "IPython",
    "jupyter_book",
    "jupytext",
    "myst_nb",
    "nbval",
    "papermill",
    "pytest",
    "ruff",
    "selenium",
    "sphinx",
]


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {
        _normalise(re.split(r"[<>=!~ \[;]", dep, maxsplit=1)[0]) for dep in project["dependencies"]
    }


def _import_names(node) -> list[str]:
    """The absolute module names an import node imports (none for any other node)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return [node.module]
    return []


def _lazy_extras(tree) -> set[int]:
    """ids of the import nodes inside a function body that import one of the extras: a function
    only the book needs (``report.glue``) may import a book tool when it is called."""
    return {
        id(node)
        for fn in ast.walk(tree)
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
        for node in ast.walk(fn)
        if (names := _import_names(node))
        and all(name.split(".")[0] in EXTRAS_MODULES for name in names)
    }


def _imported_top_level() -> dict[str, str]:
    """Top-level modules imported anywhere in the package (at any depth), with a file using each;
    an extra imported inside a function is left out (see :func:`_lazy_extras`)."""
    found = {}
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text())
        lazy = _lazy_extras(tree)
        for node in ast.walk(tree):
            if id(node) not in lazy:
                for name in _import_names(node):
                    found.setdefault(name.split(".")[0], path.name)
    return found


def test_every_third_party_import_is_a_declared_dependency_and_back():
    declared = _declared()
    dists = packages_distributions()
    used = set()
    for module, where in _imported_top_level().items():
        if module in sys.stdlib_module_names or module in ("lidvae_nb", "__future__"):
            continue
        names = {_normalise(d) for d in dists.get(module, [])}
        assert names, f"{where} imports {module!r}, which no installed distribution provides"
        assert names & declared, (
            f"{where} imports {module!r} (from {sorted(names)}), which is not in "
            f"[project].dependencies {sorted(declared)}"
        )
        used |= names & declared
    assert used == declared, f"declared but never imported: {sorted(declared - used)}"


def test_every_module_imports_without_the_extras():
    """Import every module in a fresh interpreter in which the extras' packages cannot load."""
    modules = sorted(f"lidvae_nb.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    code = f"""
import importlib, importlib.abc, sys
BLOCKED = {EXTRAS_MODULES!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is a book or test tool, not a run-time dependency")
sys.meta_path.insert(0, Block())
for m in {modules!r}:
    importlib.import_module(m)
print("ok", len({modules!r}))
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("ok"), result.stdout
