"""pyproject.toml's explicit package list names every sub-package of hlm_gym (a non-editable
install, ``pip install .``, ships only the packages listed: WDMoE's env package was once missing)
and every data folder (else setuptools prints a screenful of warnings on every install)."""

from __future__ import annotations

from pathlib import Path

import pytest

import hlm_gym

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    pkg = Path(hlm_gym.__file__).resolve().parent
    found = {".".join(["hlm_gym", *f.parent.relative_to(pkg).parts]) for f in pkg.rglob("__init__.py")}
    assert found - listed == set()


def test_every_data_folder_is_listed_in_pyproject():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    folders = {name: ROOT / path for name, path in setuptools["package-dir"].items()}
    found = {".".join([name, *d.relative_to(root).parts])
             for name, root in folders.items() for d in root.rglob("*")
             if d.is_dir() and "__pycache__" not in d.parts and d.name.isidentifier()}
    assert found - listed == set()


def test_ray_is_an_extra_and_the_test_suite_installs_it():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(r.startswith("ray") for r in extras["ray"])
    assert any(r.startswith("ray") for r in extras["dev"])
