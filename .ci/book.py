"""Execute the book's chapters and build its HTML; used by the Makefile and the tests.

python .ci/book.py execute --profile smoke --out _build/smoke
    Runs every chapter notebook listed in _toc.yml through papermill, with `profile`
    injected into its `parameters` cell, and writes the executed .ipynb files to --out,
    with the wall time of each chapter in timings.json.

python .ci/book.py build [--root .] [--executed DIR] [--out DIR]
    Builds the HTML with jupyter-book, strictly: a cell that raises, a broken reference
    or any Sphinx warning gives a non-zero exit. Without --executed, jupyter-book executes
    the chapters itself in their default profile (this is `make book`). With --executed,
    the chapters are replaced by the notebooks papermill wrote there and nothing is
    executed again (the smoke build of CI).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

PROFILES = ("smoke", "book", "full")


def toc_files(root: Path, strict: bool = True) -> list[Path]:
    """The source files named in root/_toc.yml, in reading order (suffix resolved).

    A name without a file raises FileNotFoundError, or is skipped when ``strict`` is False."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    names: list[str] = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                names.append(entry["file"])
            walk(entry.get("sections"))
            walk(entry.get("chapters"))

    walk(toc.get("parts"))
    walk(toc.get("chapters"))
    paths = []
    for name in names:
        candidates = [root / f"{name}{s}" for s in (".md", ".ipynb")]
        found = [c for c in candidates if c.exists()]
        if not found and not strict:
            continue
        if not found:
            raise FileNotFoundError(
                f"_toc.yml names {name!r}, but neither {name}.md nor .ipynb exists"
            )
        paths.append(found[0])
    return paths


def is_notebook(path: Path) -> bool:
    """A MyST-markdown page is a notebook when its front matter names a kernelspec."""
    if path.suffix == ".ipynb":
        return True
    text = path.read_text()
    if not text.startswith("---"):
        return False
    front = text.split("---", 2)[1]
    return "kernelspec" in (yaml.safe_load(front) or {})


def chapters(root: Path, strict: bool = True) -> list[Path]:
    return [p for p in toc_files(root, strict) if is_notebook(p)]


def execute(root: Path, profile: str, out: Path, only: list[str] | None = None) -> int:
    import jupytext
    import papermill

    if profile not in PROFILES:
        raise SystemExit(f"--profile must be one of {PROFILES}, got {profile!r}")
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    failed = []
    for src in chapters(root, strict=not only):
        if only and src.stem not in only:
            continue
        rel = src.relative_to(root).with_suffix(".ipynb")
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            nb = jupytext.read(src)
            nb.metadata["kernelspec"] = {
                "name": "python3",
                "display_name": "Python 3",
                "language": "python",
            }
            staged = Path(tmp) / rel.name
            jupytext.write(nb, staged)
            start = time.perf_counter()
            print(f"[{profile}] {rel} ...", flush=True)
            try:
                papermill.execute_notebook(
                    str(staged),
                    str(dest),
                    parameters={"profile": profile},
                    cwd=str(src.parent),
                    kernel_name="python3",
                    progress_bar=False,
                )
            except papermill.PapermillExecutionError as err:
                failed.append(str(rel))
                print(f"FAILED {rel}: {err.ename}: {err.evalue}", file=sys.stderr, flush=True)
            seconds = time.perf_counter() - start
        timings[str(rel)] = round(seconds, 2)
        print(f"[{profile}] {rel}: {seconds:.1f} s", flush=True)
    timings["total"] = round(sum(timings.values()), 2)
    (out / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    print(f"[{profile}] all chapters: {timings['total']:.1f} s", flush=True)
    if failed:
        print(f"{len(failed)} chapter(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def stage_executed(root: Path, executed: Path, stage: Path) -> Path:
    """Copy the book into `stage`, with every chapter replaced by its executed notebook."""
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(root / name, stage / name)
    book_dirs = {
        p.relative_to(root).parts[0] for p in toc_files(root) if len(p.relative_to(root).parts) > 1
    }
    for d in book_dirs:
        shutil.copytree(root / d, stage / d, ignore=shutil.ignore_patterns("*.ipynb_checkpoints"))
    for src in chapters(root):
        rel = src.relative_to(root)
        done = executed / rel.with_suffix(".ipynb")
        if not done.exists():
            raise FileNotFoundError(
                f"{done} is missing: run `.ci/book.py execute --out {executed}` first"
            )
        (stage / rel).unlink()
        shutil.copy2(done, stage / rel.with_suffix(".ipynb"))
    config = yaml.safe_load((stage / "_config.yml").read_text())
    config.setdefault("execute", {})["execute_notebooks"] = "off"
    (stage / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    return stage


def build(root: Path, out: Path | None, executed: Path | None) -> int:
    if executed is not None:
        out = out or root / "_build" / "smoke-book"
        src = stage_executed(root, executed, out / "src")
    else:
        src = root
    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jb), "build", str(src), "--builder", "html", "-W", "-n", "--keep-going", "--all"]
    if out is not None:
        cmd += ["--path-output", str(out)]
    start = time.perf_counter()
    code = subprocess.call(cmd)
    html = (out if out is not None else root) / "_build" / "html"
    print(f"jupyter-book build: exit {code}, {time.perf_counter() - start:.1f} s, HTML in {html}")
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root", type=Path, default=Path("."), help="folder holding _config.yml and _toc.yml"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("execute", help="run every chapter through papermill")
    ex.add_argument("--profile", default="smoke", choices=PROFILES)
    ex.add_argument("--out", type=Path, required=True)
    ex.add_argument("--only", nargs="*", help="chapter stems to run (default: all)")
    bd = sub.add_parser("build", help="build the HTML strictly")
    bd.add_argument(
        "--executed", type=Path, help="render these papermill outputs instead of executing"
    )
    bd.add_argument("--out", type=Path, help="jupyter-book --path-output (default: ROOT)")
    sub.add_parser("list", help="print the chapter notebooks in reading order")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    if args.command == "execute":
        return execute(root, args.profile, args.out.resolve(), args.only)
    if args.command == "build":
        return build(
            root,
            args.out.resolve() if args.out else None,
            args.executed.resolve() if args.executed else None,
        )
    for path in chapters(root):
        print(path.relative_to(root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
