"""The demo: the phantom in napari with every explanation histoview has weights for."""

from __future__ import annotations

from pathlib import Path

DEMO_TITLE = "histoview demo - research use only, not for diagnosis"


def populate_demo(
    viewer,
    *,
    label: str = "invasive",
    seed: int = 0,
    explanations: bool = True,
    view: str = "compare",
):
    """Add the phantom sample and the demo explanations to ``viewer``.

    ``view="compare"`` docks the compare widget, runs every method with bundled
    weights in a worker and shows them side by side with agreement and
    faithfulness; ``view="stacked"`` stacks the overlays on the tissue.
    Returns the compare widget (or None).
    """
    from histoview.viewer._sample_data import phantom_layers

    for data, kwargs, layer_type in phantom_layers(label, seed=seed):
        getattr(viewer, f"add_{layer_type}")(data, **kwargs)
    image_layer = viewer.layers[0]
    widget = None
    if explanations:
        from histoview.viewer._compat import avoid_triton_llvm_clash

        avoid_triton_llvm_clash()
        if view == "compare":
            from histoview.viewer._compare import CompareWidget

            widget = CompareWidget(viewer)
            viewer.window.add_dock_widget(widget, name="histoview: compare methods", area="right")
            widget.run_all(then_side_by_side=True)
        else:
            from histoview.viewer.overlays import add_demo_explanations

            add_demo_explanations(viewer, image_layer)
    viewer.layers.selection.active = image_layer
    viewer.reset_view()
    return widget


def run_demo(
    *,
    screenshot: str | Path | None = None,
    label: str = "invasive",
    seed: int = 0,
    explanations: bool = True,
    view: str = "compare",
) -> Path | None:
    """Open napari with the demo; with ``screenshot`` (or without a display) write a PNG.

    Returns the PNG's path when it was rendered in this process (None otherwise).
    """
    from histoview.viewer._display import has_display, virtual_display

    if screenshot is None and not has_display():
        screenshot = Path("histoview-demo.png")
        print(f"no display found: rendering the demo off-screen to {screenshot}")
    if screenshot is not None and not has_display():
        # Render in a child process on a private Xvfb, so the X server outlives Qt's connection.
        import subprocess
        import sys

        cmd = [
            sys.executable,
            "-m",
            "histoview.cli",
            "demo",
            "--screenshot",
            str(screenshot),
            "--label",
            label,
            "--seed",
            str(seed),
            "--view",
            view,
        ]
        cmd += [] if explanations else ["--no-explanations"]
        with virtual_display():
            subprocess.run(cmd, check=True)
        return None
    if screenshot is not None:
        return _screenshot(Path(screenshot), label, seed, explanations, view)
    import napari

    viewer = napari.Viewer(title=DEMO_TITLE)
    populate_demo(viewer, label=label, seed=seed, explanations=explanations, view=view)
    napari.run()
    return None


def _screenshot(path: Path, label: str, seed: int, explanations: bool, view: str) -> Path:
    import time

    import napari
    from napari.utils.notifications import notification_manager
    from qtpy.QtWidgets import QApplication

    # napari shows a one-off toast when its window first appears (on PyQt5 a deprecation
    # notice); keep it out of the exported picture
    with notification_manager.notification_ready.blocker():
        viewer = napari.Viewer(show=True, title=DEMO_TITLE)
    try:
        viewer.window.resize(1600, 1000)
        widget = populate_demo(viewer, label=label, seed=seed, explanations=explanations, view=view)
        deadline = time.monotonic() + 900
        while widget is not None and (widget.running or not widget.side_by_side_on):
            QApplication.processEvents()
            time.sleep(0.05)
            if time.monotonic() > deadline:
                raise TimeoutError("the demo's explanations did not finish in 15 minutes")
        for _ in range(10):
            QApplication.processEvents()
        path.parent.mkdir(parents=True, exist_ok=True)
        viewer.screenshot(str(path), canvas_only=False, flash=False)
    finally:
        viewer.close()
    return path
