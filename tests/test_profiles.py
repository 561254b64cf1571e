"""Every chapter has one parameters cell, and every profile of it has the same knobs."""

import re
import sys
from pathlib import Path

import pytest

from lidvae_nb.profiles import PROFILES, chapter_settings, load_profiles

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / ".ci"))
import book as book_tools  # noqa: E402

CHAPTERS = book_tools.chapters(ROOT)
TABLE = load_profiles(ROOT / "book" / "profiles.toml")


def test_there_are_chapters():
    assert CHAPTERS, "no chapter notebooks found through _toc.yml"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_one_parameters_cell_with_book_default(path):
    text = path.read_text()
    cells = re.findall(r"```\{code-cell\}[^\n]*\n:tags: \[parameters\]\n(.*?)```", text, re.S)
    assert len(cells) == 1, f"{path.name}: expected exactly one parameters cell, found {len(cells)}"
    assert re.search(r'^profile = "book"', cells[0], re.M), (
        f"{path.name}: default profile must be 'book'"
    )
    assert f'chapter_settings("{path.stem}", profile)' in text


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_every_profile_has_the_same_knobs(path):
    settings = TABLE[path.stem]
    assert set(settings) == set(PROFILES)
    keys = {p: set(settings[p]) for p in PROFILES}
    assert keys["smoke"] == keys["book"] == keys["full"], keys


def test_unknown_profile_or_chapter_named_in_error():
    with pytest.raises(ValueError, match="'fast'"):
        chapter_settings("01_collapse_theorem", "fast", ROOT / "book" / "profiles.toml")
    with pytest.raises(ValueError, match="'99_nope'"):
        chapter_settings("99_nope", "book", ROOT / "book" / "profiles.toml")
