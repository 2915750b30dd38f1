"""The distribution: one import name, every package of the tree in it, and the demo apart from the kit."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
ROOTS = ("publisher", "subscriber", "app")


def _tree_packages() -> dict[str, str]:
    """Every package under the three source roots, by dotted name, with the folder it lives in."""
    found: dict[str, str] = {}
    for root in ROOTS:
        for init in (REPO / root / "freshviews").rglob("__init__.py"):
            if "__pycache__" in init.parts:
                continue
            folder = init.parent.relative_to(REPO)
            found[".".join(folder.parts[1:])] = folder.as_posix()
    return found


def test_the_package_list_is_the_tree() -> None:
    setuptools = PYPROJECT["tool"]["setuptools"]
    listed = set(setuptools["packages"]) - {"freshviews"}
    assert listed == set(_tree_packages()), "pyproject.toml's package list must name every package of the tree"
    mapping = setuptools["package-dir"]
    for name, folder in _tree_packages().items():
        assert mapping[name] == folder
    # The namespace itself: the command line's modules, and nothing else at the top.
    assert mapping["freshviews"] == "app/freshviews"
    assert sorted(p.name for p in (REPO / "app" / "freshviews").glob("*.py")) == ["__main__.py", "cli.py"]
    for root in ROOTS:
        assert not (REPO / root / "freshviews" / "__init__.py").exists(), "freshviews is a namespace package"


def test_the_kit_requires_only_what_it_imports() -> None:
    required = {
        dep.split("[")[0].split(">")[0].split("=")[0].strip().lower() for dep in PYPROJECT["project"]["dependencies"]
    }
    assert required == {
        "redis",
        "fastapi",
        "uvicorn",
        "sse-starlette",
        "pydantic",
        "pydantic-settings",
        "prometheus-client",
    }
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert any(dep.startswith("httpx") for dep in extras["demo"])  # the simulator's
    assert any(dep.startswith("sqlalchemy") for dep in extras["sqlalchemy"])


@pytest.mark.slow
def test_the_wheel_adds_one_top_level_name(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    tops = {name.split("/", 1)[0] for name in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"freshviews"}
    assert "freshviews/__init__.py" not in names
    for package in _tree_packages():
        assert f"{package.replace('.', '/')}/__init__.py" in names
        assert f"{package.replace('.', '/')}/py.typed" in names
    assert "freshviews/scoreboard/static/dashboard.js" in names
    assert "freshviews/__main__.py" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    with zipfile.ZipFile(wheel) as archive:
        assert "freshviews = freshviews.cli:main" in archive.read(entry_points).decode()


def test_python_m_freshviews_lists_every_command() -> None:
    done = subprocess.run([sys.executable, "-m", "freshviews", "--help"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    for command in ("demo", "serve", "subscriber", "sweep", "check"):
        assert command in done.stdout
