"""The browser check finds what a reader would see: broken links, dead images, raw math, errors."""

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / ".ci"))
import browser_check  # noqa: E402

GOOD = """<html><head><title>good</title></head><body>
<h1 id="top">Good page</h1><a href="other.html#part">other</a> <a href="#top">top</a>
<a href="https://example.org/">external links are not followed</a>
<img src="dot.svg"></body></html>"""
OTHER = '<html><head><title>other</title></head><body><h2 id="part">Part</h2></body></html>'
BAD_LINKS = """<html><head><title>bad links</title></head><body>
<a href="missing.html">gone</a> <a href="other.html#nowhere">no anchor</a></body></html>"""
BAD_IMAGE = '<html><head><title>bad image</title></head><body><img src="nothing.png"></body></html>'
RAW_MATH = """<html><head><title>raw math</title></head><body>
<div class="math notranslate nohighlight">\\[ x^2 \\]</div></body></html>"""
ERROR_OUTPUT = """<html><head><title>error</title></head><body><div class="cell_output">
<div class="output traceback highlight-ipythontb">ValueError: boom</div></div></body></html>"""
DOT = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4">'
    '<circle r="2" cx="2" cy="2"/></svg>'
)


def write_site(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    pages = {
        "index.html": GOOD,
        "other.html": OTHER,
        "bad_links.html": BAD_LINKS,
        "bad_image.html": BAD_IMAGE,
        "raw_math.html": RAW_MATH,
        "error.html": ERROR_OUTPUT,
        "dot.svg": DOT,
    }
    for name, text in pages.items():
        # an empty icon: the browser would otherwise ask for /favicon.ico and log the 404
        (root / name).write_text(text.replace("<head>", '<head><link rel="icon" href="data:,">'))


def test_link_problems_without_a_browser(tmp_path):
    write_site(tmp_path)
    base = "http://127.0.0.1:1/"
    links = [base + "other.html#part", base + "missing.html", base + "other.html#nowhere"]
    problems = browser_check.link_problems(tmp_path, base, base + "index.html", links, set())
    assert problems == [
        f"broken link: {base}missing.html",
        f"missing anchor: {base}other.html#nowhere",
    ]
    same_page = browser_check.link_problems(
        tmp_path, base, base + "index.html", [base + "index.html#top"], {"top"}
    )
    assert same_page == []


@pytest.mark.skipif(
    not (Path(browser_check.CHROMIUM).exists() and Path(browser_check.CHROMEDRIVER).exists()),
    reason="Chromium and ChromeDriver are not installed (make browser-check installs them)",
)
def test_every_kind_of_problem_fails_its_page(tmp_path, capsys):
    pytest.importorskip("selenium")
    site = tmp_path / "html"
    write_site(site)
    for name in set(browser_check.SCREENSHOTS.values()):
        target = site / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(site / "other.html", target)
    failing = browser_check.main(["--html", str(site), "--shots", str(tmp_path / "shots")])
    out = capsys.readouterr().out
    assert failing == 4, out  # bad_links, bad_image, raw_math, error
    for expected in (
        "bad_links.html: 2 problem(s)",
        "broken link:",
        "missing anchor:",
        "image not loaded:",
        "math not rendered:",
        "error output: ValueError: boom",
        "index.html: ok",
        "other.html: ok",
    ):
        assert expected in out, out
    assert (tmp_path / "shots" / "front_page.png").stat().st_size > 1000
