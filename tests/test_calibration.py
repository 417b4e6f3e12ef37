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


def test_a_run_in_flight_lands_on_the_tissue_after_a_typed_pixel_size(
    make_napari_viewer, qtbot, tmp_path
):
    """The worker prepares its layers for the image's scale when the run starts; a pixel
    size typed meanwhile must not leave them drawn in pixels over an image in µm."""
    if not list_checkpoints(kind="graph"):
        pytest.skip("no bundled demo weights for the graph method")
    viewer = make_napari_viewer()
    image = _open_png(viewer, tmp_path)
    _, widget = viewer.window.add_plugin_dock_widget("histoview", "Nuclei graph")
    widget.image_choice.value = image
    widget.run()
    assert widget.busy
    widget.pixel_size.value = 0.5  # typed while the run is still working
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    drawn = _explanation_layers(viewer)
    assert drawn, widget.result.value
    assert tuple(map(str, image.units)) == ("micrometer", "micrometer")
    for layer in drawn:
        assert str(layer.units[-1]) == "micrometer", layer.name
    vectors = next(lay for lay in drawn if type(lay).__name__ == "Vectors")
    start = vectors.data[:3, 0]
    np.testing.assert_allclose(_world(vectors, start), _world(image, start), atol=1e-6)
    points = next(lay for lay in drawn if type(lay).__name__ == "Points")
    world = _world(points, points.data)
    lo, hi = image.extent.world[:, -2:]
    assert (world >= lo - 1).all() and (world <= hi + 1).all(), "points off the tissue"


def test_the_ground_truth_of_a_sample_follows_its_image(make_napari_viewer):
    """Companions named after their image ("<image>: lesions (ground truth)") move with it;
    typing the value the image already has changes nothing."""
    from histoview.viewer._calibration import layers_over, set_pixel_size

    viewer = make_napari_viewer()
    layers = viewer.open_sample("histoview", "phantom_invasive")
    image = next(lay for lay in layers if type(lay).__name__ == "Image")
    truth = [lay for lay in viewer.layers if lay is not image]
    assert truth and set(truth) <= set(layers_over(viewer, image))
    # not companions: an image of its own named like one, and what is drawn over another
    # image under a name that starts with the name of a layer over this one
    crop = viewer.add_image(
        np.zeros((8, 8), np.uint8),
        name=f"{image.name}: crop",
        metadata={"histoview": {"path": "crop.png"}},
    )
    mine = viewer.add_image(
        np.zeros((8, 8), np.float32),
        name="Grad-CAM: benign (1.00)",
        metadata={"histoview": {"explanation": {"image_layer": image.name}}},
    )
    theirs = viewer.add_image(
        np.zeros((8, 8), np.float32),
        name="Grad-CAM: benign (1.00): outlines [1]",
        metadata={"histoview": {"explanation": {"image_layer": crop.name}}},
    )
    over = layers_over(viewer, image)
    assert mine in over and crop not in over and theirs not in over
    scale0 = float(image.scale[-1])
    set_pixel_size(viewer, image, scale0)  # the same value: nothing moves
    assert float(image.scale[-1]) == scale0
    assert all(float(lay.scale[-1]) == scale0 for lay in truth)
    corner = [(10.0, 20.0)]
    before = [_world(lay, corner) - _world(image, corner) for lay in truth]
    set_pixel_size(viewer, image, scale0 * 2)
    assert float(image.scale[-1]) == pytest.approx(scale0 * 2)
    for lay, offset in zip(truth, before):
        assert float(lay.scale[-1]) == pytest.approx(scale0 * 2), lay.name
        np.testing.assert_allclose(_world(lay, corner) - _world(image, corner), offset * 2)
    set_pixel_size(viewer, image, None)  # the file's (sample's) scale back
    assert float(image.scale[-1]) == pytest.approx(scale0)
    assert all(float(lay.scale[-1]) == pytest.approx(scale0) for lay in truth)
