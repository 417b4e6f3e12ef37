"""Shared test fixtures: where the real data lives, and markers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("HISTOVIEW_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_data_dir(sub: str = "") -> Path:
    """``../shared/data[/sub]``, or skip the test with the reason when it is absent."""
    path = SHARED_DATA / sub
    if not path.exists():
        pytest.skip(f"real data not available: {path} is absent (it is outside the repository)")
    return path


@pytest.fixture
def breakhis_dir() -> Path:
    return shared_data_dir("breakhis")


@pytest.fixture
def monuseg_dir() -> Path:
    return shared_data_dir("monuseg")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's tests on one torch thread, then restore the setting."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _user_data_dir(tmp_path_factory, monkeypatch):
    """Keep each test's per-user model library away from the real one."""
    monkeypatch.setenv("HISTOVIEW_DATA_DIR", str(tmp_path_factory.mktemp("histoview-user-data")))
    monkeypatch.setenv("HISTOVIEW_CACHE_DIR", str(tmp_path_factory.mktemp("histoview-cache")))


@pytest.fixture(autouse=True)
def _no_warm_up_on_open(monkeypatch):
    """Opening an image warms the docks' models once per process, in the background
    (``viewer._models.warm_up_on_open``); in the suite that would happen in whichever test
    first opens one and load models beside later tests that count them, so it is marked done
    here (``tests/test_viewer_reuse.py`` tests it on its own)."""
    from histoview.viewer import _models

    monkeypatch.setattr(_models, "_OPEN_WARM_UP", [None])


def pytest_configure(config):
    # Import Triton (through torch's compiler stack) before any napari canvas loads Mesa's
    # libLLVM: importing Triton after that crashes the process on Mesa OpenGL (Xvfb).
    # The training widget guards the app itself (viewer._train_widget.avoid_triton_llvm_clash).
    try:
        import torch._dynamo  # noqa: F401
    except Exception:  # torch without its compiler stack: nothing to order
        pass
