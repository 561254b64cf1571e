"""Open every page of the built book in headless Chromium and fail on what a reader would see.

python .ci/browser_check.py [--html _build/html] [--shots _build/screenshots]

Each page is served from a local HTTP server and loaded in Debian's Chromium (installed with apt
where it is missing), driven through ChromeDriver by Selenium. A page fails when

* it shows an error output or a traceback (a cell that raised, a stderr stream with a Traceback),
* an image has not loaded (``naturalWidth == 0`` once the page is complete),
* math is left unrendered (a ``.math`` element without MathJax's output inside),
* an internal link points to a missing page or to an anchor that the page does not have.

Screenshots of the front page and of one chapter are written to ``--shots``. The exit status is
the number of failing pages (capped at 100), 0 when all pass.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlparse

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Without the networking flags Chromium keeps trying to reach Google's hosts; this machine's
# network is closed, and a reader's browser needs none of it either.
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1600",
]
SCREENSHOTS = {"front_page.png": "book/intro.html", "chapter_09.png": "book/09_lidvae.html"}

# Runs in the page: waits for MathJax (when the page loads it), then reports problems as JSON.
PAGE_CHECK_JS = """
const done = arguments[arguments.length - 1];
const report = () => {
  const problems = [];
  for (const img of document.images) {
    if (!img.complete || img.naturalWidth === 0) problems.push('image not loaded: ' + img.src);
  }
  for (const el of document.querySelectorAll('.math')) {
    if (!el.querySelector('mjx-container')) {
      problems.push('math not rendered: ' + el.textContent.trim().slice(0, 60));
    }
  }
  const outputs = document.querySelectorAll(
    '.cell_output .output.error, .cell_output .output.traceback, .cell_output .stderr');
  for (const el of outputs) {
    const text = el.textContent;
    if (el.matches('.error, .traceback') || /Traceback|Error:/.test(text)) {
      problems.push('error output: ' + text.trim().slice(0, 120));
    }
  }
  const ids = Array.from(document.querySelectorAll('[id]')).map(e => e.id);
  const links = Array.from(document.querySelectorAll('a[href]')).map(a => a.href);
  done(JSON.stringify({problems, ids, links, title: document.title}));
};
if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
  MathJax.startup.promise.then(report, report);
} else {
  report();
}
"""


class _Ids(HTMLParser):
    """Collect every id (and legacy ``<a name>``) of an HTML file, for anchors of other pages."""

    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if key == "id" or (tag == "a" and key == "name"):
                self.ids.add(value or "")


@functools.cache
def ids_of(path: Path) -> frozenset[str]:
    parser = _Ids()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    return frozenset(parser.ids)


def ensure_chromium() -> None:
    """Install Debian's chromium and chromium-driver when they are missing."""
    if Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists():
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    print("installing Debian's chromium and chromium-driver ...", flush=True)
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        [*sudo, "apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"],
        check=True,
        env=env,
    )


def serve(root: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the check's output to its findings
        pass


def pages(root: Path) -> list[Path]:
    skip = {"genindex.html", "search.html", "py-modindex.html"}
    return sorted(
        p
        for p in root.rglob("*.html")
        if not any(part.startswith(("_", ".")) for part in p.relative_to(root).parts)
        and p.name not in skip
    )


def link_problems(root: Path, base: str, page_url: str, links: list[str], own_ids) -> list[str]:
    """Internal links that lead to no file, or to an anchor the target page lacks."""
    problems = []
    for link in links:
        if not link.startswith(base):
            continue  # external: not checked (the build machine may be offline)
        parsed = urlparse(link)
        rel = unquote(parsed.path)[1:]
        target = root / rel
        if target.is_dir():
            target = target / "index.html"
        if not target.exists():
            problems.append(f"broken link: {link}")
            continue
        if parsed.fragment and target.suffix == ".html":
            same_page = urljoin(page_url, parsed.path) == urljoin(page_url, urlparse(page_url).path)
            ids = own_ids if same_page else ids_of(target)
            if unquote(parsed.fragment) not in ids:
                problems.append(f"missing anchor: {link}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--html", default="_build/html", type=Path)
    parser.add_argument("--shots", default="_build/screenshots", type=Path)
    args = parser.parse_args(argv)
    root = args.html.resolve()
    if not (root / "index.html").exists():
        print(f"no built book in {root}: run `make book` or `make book-smoke` first")
        return 1
    ensure_chromium()

    import json

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={args.shots.resolve() / '.profile'}")
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_script_timeout(60)
    server, base = serve(root)
    args.shots.mkdir(parents=True, exist_ok=True)
    failing = 0
    try:
        all_pages = pages(root)
        for page in all_pages:
            rel = page.relative_to(root).as_posix()
            url = base + rel
            driver.get(url)
            result = json.loads(driver.execute_async_script(PAGE_CHECK_JS))
            problems = result["problems"] + link_problems(
                root, base, url, result["links"], set(result["ids"])
            )
            # the browser's own console: a script that failed to load or threw
            for entry in driver.get_log("browser"):
                if entry.get("level") == "SEVERE":
                    problems.append(f"console: {entry['message'][:160]}")
            status = "ok" if not problems else f"{len(problems)} problem(s)"
            print(f"{rel}: {status}  [{result['title']}]")
            for problem in problems[:20]:
                print(f"    {problem}")
            failing += bool(problems)
            for name, target in SCREENSHOTS.items():
                if rel == target:
                    driver.save_screenshot(str(args.shots / name))
        missing = [t for t in SCREENSHOTS.values() if not (root / t).exists()]
        for target in missing:
            print(f"{target}: missing, no screenshot")
            failing += 1
    finally:
        driver.quit()
        server.shutdown()
        shutil.rmtree(args.shots / ".profile", ignore_errors=True)
    print(f"{len(all_pages)} pages checked, {failing} failing; screenshots in {args.shots}")
    return min(failing, 100)


if __name__ == "__main__":
    sys.exit(main())
