"""A pixel size typed in the explain dock puts an uncalibrated image (a BreakHis PNG) in
micrometres: scale bar on, and every overlay over it stays where it was on the tissue."""

from __future__ import annotations

import numpy as np
import pytest

from histoview.models.library import list_checkpoints

pytestmark = pytest.mark.gui


def _open_png(viewer, tmp_path, name="tissue.png", seed=5):
    from PIL import Image

    from histoview.preprocessing.phantom import make_phantom

    path = tmp_path / name
    Image.fromarray(make_phantom("invasive", preset="breakhis", seed=seed).image).save(path)
    [layer] = viewer.open(path, plugin="histoview")
    return layer


def _explanation_layers(viewer):
    return [
        lay
        for lay in viewer.layers
        if (lay.metadata.get("histoview") or {}).get("explanation") is not None
    ]


def _world(layer, points):
    return np.array([layer.data_to_world(p) for p in points])


def test_a_typed_pixel_size_puts_the_image_and_its_overlays_in_micrometres(
    make_napari_viewer, qtbot, tmp_path
):
    if not list_checkpoints(kind="graph"):
        pytest.skip("no bundled demo weights for the graph method")
    from histoview.viewer._scale_bar import scale_bar

    viewer = make_napari_viewer()
    image = _open_png(viewer, tmp_path)
    other = _open_png(viewer, tmp_path, "other.png", seed=6)
    assert tuple(map(str, image.units)) == ("pixel", "pixel")
    _, widget = viewer.window.add_plugin_dock_widget("histoview", "Nuclei graph")
    widget.image_choice.value = image
    widget.run()
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    drawn = _explanation_layers(viewer)
    kinds = {type(lay).__name__ for lay in drawn}
    assert {"Points", "Vectors"} <= kinds, kinds
    points = next(lay for lay in drawn if type(lay).__name__ == "Points")
    centres = points.data[:5]
    on_tissue = _world(points, centres) - _world(image, centres)  # offset where drawn, px
    assert not scale_bar(viewer).visible

    widget.pixel_size.value = 0.5
    assert tuple(image.scale) == (0.5, 0.5)
    assert tuple(map(str, image.units)) == ("micrometer", "micrometer")
    assert scale_bar(viewer).visible
    for layer in drawn:  # everything over the image moved with it, and is in µm too
        assert str(layer.units[-1]) == "micrometer", layer.name
    np.testing.assert_allclose(
        _world(points, centres) - _world(image, centres), on_tissue * 0.5, atol=1e-6
    )
    vectors = next(lay for lay in drawn if type(lay).__name__ == "Vectors")
    start = vectors.data[:3, 0]
    np.testing.assert_allclose(_world(vectors, start), _world(image, start), atol=1e-6)
    assert tuple(other.scale) == (1.0, 1.0), "another image changed with it"
    # from the first pixel centre to the last: (pixels - 1) x 0.5 µm
    h, w = image.data.shape[:2]
    np.testing.assert_allclose(
        image.extent.world[1] - image.extent.world[0], [(h - 1) * 0.5, (w - 1) * 0.5]
    )

    widget.pixel_size.value = 0.25  # a second value replaces the first, not multiplies it
    assert tuple(image.scale) == (0.25, 0.25)
    np.testing.assert_allclose(_world(vectors, start), _world(image, start), atol=1e-6)

    widget.pixel_size.value = 0.0  # forgotten: back in pixels, bar off, overlays with it
    assert tuple(image.scale) == (1.0, 1.0)
    assert tuple(map(str, image.units)) == ("pixel", "pixel")
    assert not scale_bar(viewer).visible
    np.testing.assert_allclose(
        _world(points, centres) - _world(image, centres), on_tissue, atol=1e-6
    )
    assert all(str(lay.units[-1]) == "pixel" for lay in drawn)
