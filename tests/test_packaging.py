"""The plugin is found by napari in an editable install and ships everything in its wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
NPE2 = [sys.executable, "-m", "npe2"]


def test_manifest_is_found_and_valid_in_this_install():
    out = subprocess.run([*NPE2, "validate", "histoview"], capture_output=True, text=True)
    assert out.returncode == 0 and "valid" in out.stdout, out.stdout + out.stderr


def test_manifest_commands_point_at_real_symbols():
    import importlib

    manifest = yaml.safe_load((REPO / "src" / "histoview" / "napari.yaml").read_text())
    for cmd in manifest["contributions"]["commands"]:
        module, _, attr = cmd["python_name"].partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), cmd["id"]


@pytest.mark.slow
def test_wheel_ships_manifest_and_resources(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(REPO)], check=True, timeout=300)
    [wheel] = tmp_path.glob("histoview-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(zf.read(n).decode() for n in names if n.endswith("entry_points.txt"))
        zf.extractall(tmp_path / "unpacked")
    assert "histoview/napari.yaml" in names
    weights = sorted(n for n in names if n.startswith("histoview/resources/weights/"))
    assert any(n.endswith(".safetensors") for n in weights) and any(n.endswith(".json") for n in weights)
    assert "histoview = histoview:napari.yaml" in entry_points
    # the manifest inside the wheel is a real file (not a link) and validates on its own
    shipped = tmp_path / "unpacked" / "histoview" / "napari.yaml"
    assert shipped.is_file() and not shipped.is_symlink()
    assert shipped.read_text() == (REPO / "src" / "histoview" / "napari.yaml").read_text()
    out = subprocess.run([*NPE2, "validate", str(shipped)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    # every module the manifest names is in the wheel
    for cmd in yaml.safe_load(shipped.read_text())["contributions"]["commands"]:
        module = cmd["python_name"].partition(":")[0]
        assert module.replace(".", "/") + ".py" in names, module
