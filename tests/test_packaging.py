"""The installed package is the repository's top level: every package folder ships, the card templates included."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _listed_packages() -> set[str]:
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])


def test_every_package_folder_is_listed_in_pyproject() -> None:
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("axdata", "axeval", "axmethods")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert on_disk | {"axdata.hub_cards"} == _listed_packages()
    assert not (ROOT / "src").exists(), "the design card's layout has no src/"


@pytest.mark.slow
def test_the_wheel_carries_the_card_templates_and_no_test_machinery(tmp_path: Path) -> None:
    build = "import sys, setuptools.build_meta as b; print(b.build_wheel(sys.argv[1]))"
    leftover = not (ROOT / "build").exists()  # setuptools builds in ./build; leave the tree as it was
    try:
        name = subprocess.run(
            [sys.executable, "-c", build, str(tmp_path)], cwd=ROOT, check=True, capture_output=True, text=True
        ).stdout.strip().splitlines()[-1]
    finally:
        if leftover:
            shutil.rmtree(ROOT / "build", ignore_errors=True)
    files = set(zipfile.ZipFile(tmp_path / name).namelist())
    templates = {f"axdata/hub_cards/{card.name}" for card in (ROOT / "hub_cards").glob("*.md")}
    assert templates and templates <= files
    assert "axeval/configs/demo.yaml" in files
    assert not any("hub_standin" in f or f.startswith("tests/") for f in files)
