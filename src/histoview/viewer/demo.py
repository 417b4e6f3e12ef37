"""The demo: the phantom in napari with every explanation histoview has weights for."""

from __future__ import annotations

from pathlib import Path


def populate_demo(viewer, *, label: str = "invasive", seed: int = 0, explanations: bool = True) -> None:
    """Add the phantom sample (and the demo explanations) to ``viewer``."""
    from histoview.viewer._sample_data import phantom_layers

    for data, kwargs, layer_type in phantom_layers(label, seed=seed):
        getattr(viewer, f"add_{layer_type}")(data, **kwargs)
    image_layer = viewer.layers[0]
    if explanations:
        from histoview.viewer._compat import avoid_triton_llvm_clash
        from histoview.viewer.overlays import add_demo_explanations

        avoid_triton_llvm_clash()

        add_demo_explanations(viewer, image_layer)
    viewer.layers.selection.active = image_layer
    viewer.reset_view()


def run_demo(*, screenshot: str | Path | None = None, label: str = "invasive", seed: int = 0,
             explanations: bool = True) -> Path | None:
    """Open napari with the demo; with ``screenshot`` (or without a display) write a PNG and return its path."""
    from histoview.viewer._display import has_display, virtual_display

    if screenshot is None and not has_display():
        screenshot = Path("histoview-demo.png")
        print(f"no display found: rendering the demo off-screen to {screenshot}")
    if screenshot is not None and not has_display():
        # Render in a child process on a private Xvfb, so the X server outlives Qt's connection.
        import subprocess
        import sys

        cmd = [sys.executable, "-m", "histoview.cli", "demo", "--screenshot", str(screenshot),
               "--label", label, "--seed", str(seed)] + ([] if explanations else ["--no-explanations"])
        with virtual_display():
            subprocess.run(cmd, check=True)
        return None
    if screenshot is not None:
        return _screenshot(Path(screenshot), label, seed, explanations)
    import napari

    viewer = napari.Viewer(title="histoview demo - research use only, not for diagnosis")
    populate_demo(viewer, label=label, seed=seed, explanations=explanations)
    napari.run()
    return None


def _screenshot(path: Path, label: str, seed: int, explanations: bool) -> Path:
    import napari

    try:  # keep napari's one-off PyQt5 deprecation toast out of exported pictures
        import napari._qt.qt_main_window as qmw

        qmw.SHOW_QT_WARNING = False
    except (ImportError, AttributeError):
        pass
    viewer = napari.Viewer(show=True, title="histoview demo - research use only, not for diagnosis")
    try:
        viewer.window.resize(1400, 900)
        populate_demo(viewer, label=label, seed=seed, explanations=explanations)
        from qtpy.QtWidgets import QApplication

        for _ in range(5):
            QApplication.processEvents()
        path.parent.mkdir(parents=True, exist_ok=True)
        viewer.screenshot(str(path), canvas_only=False, flash=False)
    finally:
        viewer.close()
    return path
