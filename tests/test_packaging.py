"""The plugin is found by napari in this install and its wheel ships everything it needs.

No symbolic links (they break on Windows checkouts): napari.yaml is a file of the package, and
the top-level ``resources/`` (weights) and ``training/`` (recipes) folders are the packages
``histoview.resources`` and ``histoview.recipes`` (pyproject.toml's ``package-dir``), found through
``importlib.resources`` in editable installs and wheels alike.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib.resources import files
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "src" / "histoview"
NPE2 = [sys.executable, "-m", "npe2"]
MAPPED = {"histoview.resources": "resources", "histoview.recipes": "training"}
#: (model, layout) pairs whose starting values the wheel must give as the checkout does
RECIPE_CASES = [
    ("amil", "breakhis"),
    ("amil", "folder"),
    ("rsf", "bach"),
    ("rsf-attention", "phantom"),
    ("customnet", None),
    ("cspresnet50_fpn_se", "breakhis"),
    ("resnet18", None),
    ("no-such-model", None),
]


def test_manifest_is_found_and_valid_in_this_install():
    out = subprocess.run([*NPE2, "validate", "histoview"], capture_output=True, text=True)
    assert out.returncode == 0 and "valid" in out.stdout, out.stdout + out.stderr


def test_manifest_commands_point_at_real_symbols():
    import importlib

    manifest = yaml.safe_load((files("histoview") / "napari.yaml").read_text())
    for cmd in manifest["contributions"]["commands"]:
        module, _, attr = cmd["python_name"].partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), cmd["id"]


def test_no_symbolic_links_in_the_packaged_folders():
    links = [
        str(p.relative_to(REPO))
        for top in (PKG, REPO / "resources", REPO / "training")
        for p in [top, *top.rglob("*")]
        if p.is_symlink()
    ]
    assert not links, f"symbolic links break Windows checkouts: {links}"
    assert (PKG / "napari.yaml").is_file() and not (REPO / "napari.yaml").exists()


def test_pyproject_lists_every_package():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == {"": "src", **MAPPED}
    in_src = {".".join(p.parent.relative_to(PKG.parent).parts) for p in PKG.rglob("__init__.py")}
    mapped = set(MAPPED) | {"histoview.resources.weights", "histoview.resources.samples"}
    assert set(config["packages"]) == in_src | mapped
    for package, folder in MAPPED.items():
        assert (REPO / folder / "__init__.py").is_file(), package
    # in this editable install the mapped packages are the top-level folders themselves
    assert Path(str(files("histoview.resources"))).resolve() == (REPO / "resources").resolve()
    assert Path(str(files("histoview.recipes"))).resolve() == (REPO / "training").resolve()


def _copy_working_tree(dest: Path) -> None:
    """The files a fresh checkout of this working tree has (tracked or not ignored)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
            timeout=60,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"not a git checkout ({exc}): cannot tell the source files")
    for rel in filter(None, out.stdout.decode().split("\0")):
        src = REPO / rel
        if src.is_file() or src.is_symlink():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel, follow_symlinks=False)


@pytest.mark.slow
def test_wheel_ships_manifest_weights_and_recipes(tmp_path):
    from histoview.training.recipes import recipe_for

    # build from a copy, so no stale build/ folder of the checkout can leak into the wheel
    source = tmp_path / "source"
    _copy_working_tree(source)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(source),
        ],
        check=True,
        timeout=300,
    )
    [wheel] = (tmp_path / "dist").glob("histoview-*.whl")
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(wheel) as zf:
        infos = zf.infolist()
        names = {i.filename for i in infos}
        entry_points = next(zf.read(n).decode() for n in names if n.endswith("entry_points.txt"))
        zf.extractall(unpacked)
    assert not [i.filename for i in infos if (i.external_attr >> 16) & 0o170000 == 0o120000]
    assert not [n for n in names if n.endswith((".c", ".h", ".so", ".pyd", ".dylib"))]
    assert "histoview = histoview:napari.yaml" in entry_points
    assert "histoview/napari.yaml" in names
    for weights in (REPO / "resources" / "weights").iterdir():
        assert f"histoview/resources/weights/{weights.name}" in names
    for sample in (REPO / "resources" / "samples").iterdir():  # the real IDC sample (CC0)
        assert f"histoview/resources/samples/{sample.name}" in names
    for recipe in (REPO / "training").glob("*.yaml"):
        assert f"histoview/recipes/{recipe.name}" in names
    for module in PKG.rglob("*.py"):
        assert "histoview/" + module.relative_to(PKG).as_posix() in names

    shipped = unpacked / "histoview" / "napari.yaml"
    assert shipped.read_text() == (PKG / "napari.yaml").read_text()
    out = subprocess.run([*NPE2, "validate", str(shipped)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr

    # The unpacked wheel, first on the path, from a folder outside the checkout: npe2 loads the
    # manifest from its distribution, and weights and recipes come from the wheel.
    probe = f"""
import json, npe2, histoview
from histoview.models.library import bundled_weights_dir, list_checkpoints
from histoview.training.recipes import recipe_dir, recipe_for
manifest = npe2.PluginManifest.from_distribution("histoview")
print(json.dumps({{"package": histoview.__file__, "manifest": manifest.name,
    "commands": len(manifest.contributions.commands),
    "weights": str(bundled_weights_dir()), "recipes": str(recipe_dir()),
    "bundled": sorted(e.name for e in list_checkpoints() if e.source == "bundled"),
    "defaults": [recipe_for(m, layout) for m, layout in {RECIPE_CASES!r}]}}))
"""
    env = {**os.environ, "PYTHONPATH": str(unpacked), "HISTOVIEW_DATA_DIR": str(tmp_path / "data")}
    run = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    root = str(unpacked / "histoview")
    assert seen["package"].startswith(root), seen["package"]
    assert seen["weights"].startswith(root) and seen["recipes"].startswith(root)
    assert seen["manifest"] == "histoview"
    assert seen["commands"] == len(yaml.safe_load(shipped.read_text())["contributions"]["commands"])
    assert seen["bundled"] == sorted(
        p.stem for p in (REPO / "resources" / "weights").glob("*.safetensors")
    )
    # a wheel and this checkout give the same starting values for every model
    assert seen["defaults"] == [recipe_for(m, layout) for m, layout in RECIPE_CASES]
    assert seen["defaults"][0]["source"] == "recipe training/amil-breakhis.yaml"
