"""The install's import names: the repository's folders go under one namespace, `dmole` (pyproject.toml's
package-dir), so that nothing generic (`stages`, `artifacts`) lands in site-packages beside other projects'."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import PackageNotFoundError, entry_points, version
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {
    "dmole_cli": "dmole.cli",
    "dmole_lmms": "dmole.lmms",
    "stages": "dmole.stages",
    "artifacts": "dmole.artifacts",
}
SOURCES = ("dmole_cli", "dmole_lmms", "stages", "artifacts", "tests", "bench")


def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11's
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def folder_packages() -> set[str]:
    """The import name of every package folder (one with an __init__.py) under the four installed folders."""
    found = set()
    for folder, name in FOLDERS.items():
        for init in (REPO / folder).rglob("__init__.py"):
            found.add(".".join([name, *init.parent.relative_to(REPO / folder).parts]))
    return found


def setuptools_major() -> int:
    try:
        return int(version("setuptools").split(".")[0])
    except PackageNotFoundError:
        return 0


def test_pyproject_maps_the_folders_and_lists_every_package_folder():
    setuptools = pyproject()["tool"]["setuptools"]
    assert setuptools["package-dir"] == {name: folder for folder, name in FOLDERS.items()}
    assert set(setuptools["packages"]) == folder_packages()


def test_no_code_imports_a_folder_by_its_bare_name():
    """`stages`, `artifacts`, `dmole_cli` or `dmole_lmms` are not importable once installed (run from the repository
    folder they would be, as a second copy of every module)."""
    stale = []
    for path in sorted(p for folder in SOURCES for p in (REPO / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module]
                if isinstance(node, ast.ImportFrom) and node.level == 0
                else []
            )
            stale += [
                f"{path.relative_to(REPO)}:{node.lineno} {name}"
                for name in names
                if name and name.split(".")[0] in FOLDERS
            ]
    assert stale == []


def test_the_installed_entry_points_name_the_namespace():
    [script] = [e for e in entry_points(group="console_scripts") if e.name == "dmole"]
    [plugin] = [e for e in entry_points(group="lmms_eval.models") if e.name == "dmole"]
    assert (script.value, plugin.value) == ("dmole.cli.app:main", "dmole.lmms:manifests")
    assert callable(script.load()) and callable(plugin.load())


def test_the_built_wheel_installs_only_dmole_names(tmp_path):
    """A wheel built from the repository (its installed folders and metadata, copied so the build writes nothing into
    the checkout) holds only `dmole` and its dist-info at the top level, and every module of the four folders."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for folder in FOLDERS:
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "wheel"
    # the installed setuptools where it meets pyproject's build requirement (no download), else pip's isolated build
    isolation = ["--no-build-isolation"] if setuptools_major() >= 68 else []
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "--quiet", str(source), "-w", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [wheel] = out.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"dmole", "dmole-0.1.0.dist-info"}
    expected = {
        f"dmole/{FOLDERS[folder].removeprefix('dmole.')}/{p.relative_to(REPO / folder).as_posix()}"
        for folder in FOLDERS
        for p in (REPO / folder).rglob("*.py")
    }
    assert expected <= set(names)
    assert not any(name.startswith("dmole/__init__") for name in names)  # a namespace: other packages may join it
