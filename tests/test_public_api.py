"""The packages' public names: every ``__all__`` name resolves, and loads its module only then."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

PACKAGES = [
    "histoview.io",
    "histoview.preprocessing",
    "histoview.models",
    "histoview.explain",
    "histoview.training",
]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_resolves(package):
    pkg = importlib.import_module(package)
    assert pkg.__all__ and len(set(pkg.__all__)) == len(pkg.__all__)
    listed = dir(pkg)
    for name in pkg.__all__:
        value = getattr(pkg, name)
        assert name in listed
        home = getattr(value, "__module__", None)
        if home is not None and home.startswith("histoview."):  # defined in its own layer
            assert home.startswith(package), f"{package}.{name} comes from {home}"
    with pytest.raises(AttributeError):
        pkg.no_such_name  # noqa: B018


def test_names_are_the_submodules_objects():
    import histoview.explain as explain
    import histoview.training as training
    from histoview.explain import graph  # a submodule, not an exported name

    assert graph.__name__ == "histoview.explain.graph"
    assert explain.explain_graph is graph.explain_graph
    from histoview.explain.run import explain_array

    assert explain.explain_array is explain_array
    from histoview.training import evaluate  # the module; its functions are exported by name

    assert evaluate.__name__ == "histoview.training.evaluate"
    assert training.evaluate_checkpoint is evaluate.evaluate_checkpoint


@pytest.mark.parametrize(
    "package", ["histoview.preprocessing", "histoview.explain", "histoview.training"]
)
def test_importing_a_package_loads_nothing_heavy(package):
    code = (
        f"import sys, {package} as p; assert p.__all__; "
        "print(','.join(m for m in ('torch', 'napari', 'skimage', 'matplotlib') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"importing {package} loaded {out.stdout.strip()}"


def test_an_exported_name_loads_its_module_on_first_use():
    code = (
        "import sys, histoview.explain as e; assert 'histoview.explain.run' not in sys.modules; "
        "e.explain_array; print('histoview.explain.run' in sys.modules, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"]


def test_no_export_shadows_a_submodule():
    from histoview._lazy import lazy_exports

    with pytest.raises(ValueError, match="also submodules"):
        lazy_exports("histoview.training", {".engine": ["evaluate"], ".evaluate": ["x"]})
