"""The layering holds: one-way imports, and only histoview.viewer touches napari or Qt."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "histoview"
GUI_MODULES = (
    "napari",
    "qtpy",
    "PyQt5",
    "PyQt6",
    "PySide2",
    "PySide6",
    "magicgui",
    "superqt",
    "vispy",
    "npe2",
)
# Each core layer may import only the layers listed before it.
LAYERS = ["io", "preprocessing", "models", "explain", "training", "batch"]


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
            for alias in node.names:  # ``from histoview.explain import report`` imports a module
                yield f"{node.module}.{alias.name}"


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
                offenders.append(
                    f"{rel}: imports {name} (the core never imports the viewer or CLI)"
                )
            elif target in LAYERS and target not in allowed:
                offenders.append(f"{rel}: layer {layer!r} imports {name} (later layer {target!r})")
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize(
    "module", ["histoview", "histoview.io", "histoview.viewer._reader", "histoview.cli"]
)
def test_light_imports_do_not_load_torch_or_napari(module):
    code = (
        f"import sys, {module}; "
        "heavy = [m for m in ('torch', 'napari', 'PyQt5') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"importing {module} loaded {out.stdout.strip()}"


def _module_name(rel: Path) -> str:
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["histoview", *parts])


def test_no_import_cycles_inside_a_layer():
    """Modules of one layer import each other one way only (function-level imports included):
    a cycle means two modules own one idea between them."""
    modules = {_module_name(rel): tree for rel, tree in _modules()}
    graph = {
        name: {imp for imp in _imports(tree) if imp in modules and imp != name}
        for name, tree in modules.items()
    }

    def layer(name):
        parts = name.split(".")
        return parts[1] if len(parts) > 2 else None

    cycles = []
    for start in graph:
        stack = [(start, [start])]
        seen = set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if layer(nxt) != layer(start):
                    continue
                if nxt == start:
                    cycles.append(" -> ".join([*path, start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    assert not cycles, "import cycles:\n" + "\n".join(sorted(set(cycles)))


def test_every_method_is_defined_in_the_registry():
    """The explanation methods are listed in one place: a tuple, list, set or dict literal
    that names two or more methods anywhere else is a second list to keep in step."""
    from histoview.explain.methods import METHODS

    # gradcam.py maps its three variants to their weighting classes; the registry calls it
    allowed = {Path("explain/methods.py"), Path("explain/gradcam.py")}
    offenders = []
    for rel, tree in _modules():
        if rel in allowed:
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                items = node.elts
            elif isinstance(node, ast.Dict):
                items = [k for k in node.keys if k is not None]
            else:
                continue
            named = [i.value for i in items if isinstance(i, ast.Constant) and i.value in METHODS]
            if len(named) >= 2:
                offenders.append(f"{rel}:{node.lineno}: {named}")
    assert not offenders, "method lists outside explain/methods.py:\n" + "\n".join(offenders)
