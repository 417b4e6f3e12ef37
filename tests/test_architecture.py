"""The layering holds: one-way imports, and only histoview.viewer touches napari or Qt."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "histoview"
GUI_MODULES = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "superqt", "vispy", "npe2")
# Each core layer may import only the layers listed before it.
LAYERS = ["io", "preprocessing", "models", "explain", "training"]


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG)
        yield rel, ast.parse(path.read_text(), filename=str(path))


def _imports(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def test_package_is_found():
    assert len(list(_modules())) > 10


def test_only_viewer_imports_gui_libraries():
    offenders = []
    for rel, tree in _modules():
        if rel.parts[0] == "viewer":
            continue
        for name in _imports(tree):
            if name.split(".")[0] in GUI_MODULES:
                offenders.append(f"{rel}: imports {name}")
    assert not offenders, "GUI imports outside histoview.viewer:\n" + "\n".join(offenders)


def test_core_layers_import_one_way():
    offenders = []
    for rel, tree in _modules():
        layer = rel.parts[0] if len(rel.parts) > 1 else None
        if layer not in LAYERS:
            continue
        allowed = set(LAYERS[: LAYERS.index(layer) + 1])
        for name in _imports(tree):
            parts = name.split(".")
            if parts[0] != "histoview" or len(parts) < 2:
                continue
            target = parts[1]
            if target in ("viewer", "cli"):
                offenders.append(f"{rel}: imports {name} (the core never imports the viewer or CLI)")
            elif target in LAYERS and target not in allowed:
                offenders.append(f"{rel}: layer {layer!r} imports {name} (later layer {target!r})")
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("module", ["histoview", "histoview.io", "histoview.viewer._reader", "histoview.cli"])
def test_light_imports_do_not_load_torch_or_napari(module):
    code = (
        f"import sys, {module}; "
        "heavy = [m for m in ('torch', 'napari', 'PyQt5') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"importing {module} loaded {out.stdout.strip()}"
