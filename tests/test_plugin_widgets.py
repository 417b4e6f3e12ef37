"""The docks as napari opens them from the plugin menu: with napari's PublicOnlyProxy viewer.

Each dock's image choice is magicgui's list for a ``napari.layers.Image`` annotation: it must
list an image opened after the dock, never an explanation overlay, and the widgets must not
reach napari's private attributes through the proxy (napari warns on each such access).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.gui

MANIFEST = Path(__file__).resolve().parents[1] / "src" / "histoview" / "napari.yaml"
EXPLANATION_DOCKS = ["Explain (all methods)", "Attention-MIL", "Nuclei graph", "Grad-CAM"]


def _widget_names() -> list[str]:
    manifest = yaml.safe_load(MANIFEST.read_text())
    return [w["display_name"] for w in manifest["contributions"]["widgets"]]


def _gradcam_explanation(shape=(46, 70), target_class=1):
    """A Grad-CAM explanation of an image of ``shape`` (no model needed to draw it)."""
    from histoview.explain.base import DenseMap, Explanation

    values = np.linspace(0, 1, shape[0] * shape[1], dtype=np.float32).reshape(shape)
    return Explanation(
        method="gradcam",
        model="test_cnn",
        classes=("benign", "malignant"),
        probabilities=np.array([0.3, 0.7]),
        target_class=target_class,
        values=values,
        geometry=DenseMap(shape),
    )


@pytest.fixture
def no_private_access():
    """Fail on napari's warning about private attribute access through the proxy."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="Private attribute access")
        yield


def test_every_layer_dock_is_covered():
    assert set(_widget_names()) == {
        *EXPLANATION_DOCKS,
        "Compare methods",
        "Train a model",
        "Whole slide",  # tests/test_slide_widget.py and the test below
        "Stain normalisation",  # tests/test_stain_view.py
    }


def test_slide_choice_follows_the_viewer(make_napari_viewer, no_private_access, tmp_path):
    """The Whole slide dock offers image layers opened from a file (the engine reads the file),
    never its own overlays, and follows layers added and removed."""
    from histoview.io import write_pyramidal_tiff
    from histoview.viewer._reader import read_images

    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("histoview", "Whole slide")
    assert not widget.slide_choice.choices
    viewer.add_image(np.zeros((46, 70, 3), np.uint8), rgb=True, name="array, no file")
    assert not widget.slide_choice.choices
    path = tmp_path / "s.tif"
    write_pyramidal_tiff(path, np.full((300, 300, 3), 200, np.uint8), pixel_size_um=0.5)
    ((data, kwargs, _),) = read_images(str(path))
    slide = viewer.add_image(data, **kwargs)
    assert widget.slide_choice.value == slide
    overlay = viewer.add_image(np.zeros((4, 4), np.float32), metadata={"histoview_slide": {}})
    assert overlay not in widget.slide_choice.choices
    viewer.layers.remove(slide)
    assert slide not in widget.slide_choice.choices


@pytest.mark.parametrize("name", [*EXPLANATION_DOCKS, "Compare methods", "Stain normalisation"])
def test_image_choice_follows_the_viewer(make_napari_viewer, no_private_access, name):
    from histoview.viewer.overlays import add_explanation_layers

    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("histoview", name)
    assert not widget.image_choice.choices
    image = viewer.add_image(np.zeros((46, 70, 3), np.uint8), rgb=True, name="opened later")
    assert image in widget.image_choice.choices
    [overlay] = add_explanation_layers(viewer, image, _gradcam_explanation())
    assert "histoview_explanation" in overlay.metadata
    assert overlay not in widget.image_choice.choices and image in widget.image_choice.choices
    assert widget.image_choice.value == image
    viewer.layers.remove(image)
    assert image not in widget.image_choice.choices


def test_compare_dock_through_the_proxy(make_napari_viewer, no_private_access):
    """Side by side and back: the layers the proxy hands out are matched to napari's own."""
    from histoview.viewer._compare_parts import role
    from histoview.viewer.overlays import add_explanation_layers

    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("histoview", "Compare methods")
    assert type(widget.viewer).__name__ == "PublicOnlyProxy"  # what this test is about
    image = viewer.add_image(np.zeros((46, 70, 3), np.uint8), rgb=True, name="tissue")
    other = viewer.add_image(np.ones((46, 70), np.float32), name="other image")
    widget.image_choice.value = image
    layers = [
        *add_explanation_layers(viewer, image, _gradcam_explanation()),
        *add_explanation_layers(viewer, image, _gradcam_explanation(target_class=0)),
    ]
    assert list(widget.heatmap_choice.choices) == layers
    viewer.layers.selection.active = layers[0]
    assert widget.heatmap_layer() == layers[0]  # follows the selected layer
    order = [lay.name for lay in viewer.layers]

    widget.side_by_side()
    assert widget.side_by_side_on and viewer.canvas.grid.enabled, widget.status.text()
    assert "2 panels" in widget.status.text()
    assert not other.visible and not image.visible  # only the panels show
    tissues = [lay for lay in viewer.layers if role(lay) == "tissue"]
    assert len(tissues) == 2 and all(t.visible and t.data is image.data for t in tissues)
    assert all(lay.visible for lay in layers)
    assert widget.image_choice.value == image  # panel copies are not offered as images
    assert all(role(c) is None for c in widget.image_choice.choices)

    widget.stacked()
    assert not viewer.canvas.grid.enabled and not widget.side_by_side_on
    assert [lay.name for lay in viewer.layers if role(lay) is None] == order
    assert other.visible and image.visible


def test_docks_stacked_on_one_side_scroll_instead_of_growing_the_window(make_napari_viewer):
    """Every dock's content sits in a scroll area, so docks sharing one side of a laptop's
    1080-px screen shrink (and scroll) rather than push the window past the screen: napari
    docks a magicgui widget's ``native``, which without this left magicgui's scroll area out
    (four docks needed ~1,800 px)."""
    from qtpy.QtWidgets import QApplication, QScrollArea

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((46, 70, 3), np.uint8), rgb=True, name="tissue")
    docks, contents = {}, {}
    for name in [*EXPLANATION_DOCKS[1:], "Whole slide", "Compare methods", "Stain normalisation"]:
        dock, _widget = viewer.window.add_plugin_dock_widget("histoview", name)
        QApplication.processEvents()
        inner = dock.widget()
        area = inner if isinstance(inner, QScrollArea) else inner.findChild(QScrollArea)
        assert area is not None, f"{name}: its content does not scroll"
        docks[name] = dock.minimumSizeHint().height()
        contents[name] = area.widget().minimumSizeHint().height()
    assert sum(contents.values()) > 1080, contents  # stacked unscrolled they would not fit
    assert max(docks.values()) < 300 and sum(docks.values()) < 1080, docks


@pytest.mark.parametrize(
    "name",
    [
        *EXPLANATION_DOCKS,
        "Whole slide",
        "Compare methods",
        "Train a model",
        "Stain normalisation",
    ],
)
def test_each_dock_fits_its_room_without_a_sideways_scroll_bar(make_napari_viewer, name):
    """A dock whose content is wider than the room napari gives it hides its right edge (the
    compare dock's Cancel button, a table column, the export buttons) behind a sideways
    scroll bar: long layer names shorten, rows of buttons stay narrow, pictures scale down."""
    from qtpy.QtWidgets import QApplication, QScrollArea

    viewer = make_napari_viewer(show=True)
    long_name = "SOB_M_DC-14-10926-100-001 scanned 2026-11-30 at 40X, second section.png"
    viewer.add_image(np.zeros((46, 70, 3), np.uint8), rgb=True, name=long_name)
    dock, widget = viewer.window.add_plugin_dock_widget("histoview", name)
    if name == "Compare methods":  # its widest part: the faithfulness figure, once drawn
        widget._show_figure(np.full((300, 420, 4), 255, np.uint8))
    for _ in range(5):
        QApplication.processEvents()
    inner = dock.widget()
    area = inner if isinstance(inner, QScrollArea) else inner.findChild(QScrollArea)
    content = area.widget()
    assert content.minimumSizeHint().width() <= area.viewport().width(), (
        f"{name}: content needs {content.minimumSizeHint().width()} px, "
        f"its dock gives {area.viewport().width()}"
    )
    assert area.horizontalScrollBar().maximum() == 0, name


def test_a_dock_opened_beside_another_shares_the_side_evenly(make_napari_viewer, qtbot):
    """The training dock opened under an explain dock took 783 of 940 px and left the explain
    dock its first four rows, the Explain button scrolled out of sight (Qt gives each dock
    what its content asks for, which depends on the image and the texts shown)."""
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    viewer.add_image(np.zeros((46, 70, 3), np.uint8), rgb=True, name="tissue")
    explain, _ = viewer.window.add_plugin_dock_widget("histoview", "Explain (all methods)")
    train, _ = viewer.window.add_plugin_dock_widget("histoview", "Train a model")

    def shared():
        return abs(explain.height() - train.height()) <= 0.1 * (explain.height() + train.height())

    qtbot.wait(1500)  # napari and Qt settle the docks' sizes (equal at first, before layout)
    qtbot.waitUntil(shared, timeout=5_000)


def test_a_fitted_picture_shows_each_new_picture(qtbot):
    """The compare dock's faithfulness figure: a second run's figure (same size) replaces the
    first, scaled to the label's width."""
    from qtpy.QtGui import QColor, QPixmap

    from histoview.viewer._widgets import FittedPicture

    label = FittedPicture("curves appear here")
    qtbot.addWidget(label)
    label.resize(300, 200)
    label.show()
    for colour in ("red", "blue"):
        picture = QPixmap(420, 300)
        picture.fill(QColor(colour))
        label.set_picture(picture)
        shown = label.pixmap()
        assert shown.width() == 300 and shown.toImage().pixelColor(5, 5) == QColor(colour)
