"""environment.yml (Binder), pyproject.toml and constraints.txt must agree, so they cannot drift."""

import re
import tomllib
from importlib import metadata
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
ENV = yaml.safe_load((ROOT / "environment.yml").read_text())


def pins() -> dict[str, str]:
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.+\-]+)", line)
        assert m, f"constraints.txt line is not 'name==version': {line!r}"
        name = canonicalize_name(m.group(1))
        assert name not in out, f"{name} pinned twice"
        out[name] = m.group(2)
    return out


def declared() -> list[Requirement]:
    reqs = [Requirement(r) for r in PYPROJECT["dependencies"]]
    for extra in PYPROJECT["optional-dependencies"].values():
        reqs += [Requirement(r) for r in extra]
    return reqs


def test_torch_is_held_at_2_13_0():
    assert pins()["torch"] == "2.13.0"


def test_every_declared_dependency_is_pinned_to_a_version_it_accepts():
    pinned = pins()
    for req in declared():
        name = canonicalize_name(req.name)
        assert name in pinned, (
            f"{req} is declared in pyproject.toml but not pinned in constraints.txt"
        )
        assert Version(pinned[name]) in req.specifier, f"pin {name}=={pinned[name]} violates {req}"


def test_jupyter_book_stays_below_2():
    assert Version(pins()["jupyter-book"]).major == 1


def test_installed_environment_matches_the_pins():
    """What `make` installed into .venv is exactly what constraints.txt says (nothing unpinned)."""
    pinned = pins()
    mismatched = []
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        if name == "lidvae-nb":
            continue
        version = dist.version.split("+")[0]
        if name not in pinned:
            mismatched.append(f"{name}=={dist.version} installed but not pinned")
        elif pinned[name] != version:
            mismatched.append(f"{name}: installed {dist.version}, pinned {pinned[name]}")
    assert not mismatched, "\n".join(mismatched)


def test_binder_environment_uses_python_311_and_the_same_pins():
    deps = ENV["dependencies"]
    assert "python=3.11" in deps
    pip_section = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    assert "-c constraints.txt" in pip_section
    assert any(re.fullmatch(r"-e \.\[book(,test)?\]", line) for line in pip_section)
    cpu_index = [line for line in pip_section if "index-url" in line]
    assert cpu_index and all(line.rstrip("/").endswith("/whl/cpu") for line in cpu_index), (
        "Binder must take torch from the CPU wheel index"
    )
    assert "python_requires" not in PYPROJECT
    assert Version("3.11") in Requirement(f"python{PYPROJECT['requires-python']}").specifier
