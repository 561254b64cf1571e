"""Run profiles of the book's chapters, read from one shared file (``book/profiles.toml``).

Every chapter has a single ``parameters`` cell holding ``profile``; the knobs that change its cost
(sample sizes, epochs, seeds) are looked up here, so that CI's ``smoke`` settings live in one place
rather than in edits to each notebook.

- ``smoke``: seconds, for CI;
- ``book``: the default, minutes on a laptop CPU (what Binder readers run);
- ``full``: paper scale, may want a GPU.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from types import SimpleNamespace

PROFILES = ("smoke", "book", "full")


def find_profiles_file(start: Path | str | None = None) -> Path:
    """Locate ``profiles.toml``: in ``start`` (default: the working directory), its ``book/``
    folder, or any parent of ``start``."""
    start = Path(start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        for candidate in (folder / "profiles.toml", folder / "book" / "profiles.toml"):
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(f"no profiles.toml in {start}, its book/ folder or any parent folder")


def load_profiles(path: Path | str | None = None) -> dict:
    """All chapters' settings, as ``{chapter: {profile: {knob: value}}}``."""
    path = Path(path) if path is not None else find_profiles_file()
    with open(path, "rb") as f:
        return tomllib.load(f)


def chapter_settings(chapter: str, profile: str, path: Path | str | None = None) -> SimpleNamespace:
    """The knobs of ``chapter`` under ``profile``, as attributes (``cfg.n_samples``).

    Raises ValueError naming the value when the profile or the chapter is unknown.
    """
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    table = load_profiles(path)
    if chapter not in table:
        raise ValueError(f"chapter {chapter!r} has no settings; known chapters: {sorted(table)}")
    settings = table[chapter]
    if profile not in settings:
        raise ValueError(
            f"chapter {chapter!r} has no {profile!r} profile; it has {sorted(settings)}"
        )
    return SimpleNamespace(profile=profile, **settings[profile])
