"""The Stain normalisation dock: an image shown as a checkpoint's (or a reference's) stain
normaliser maps it, placed over the original, computed off the main thread; clear messages
for a checkpoint without a normaliser, glass only and missing references; multiscale slides
normalised at the level shown, where in view."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def tissue():
    from histoview.preprocessing.phantom import make_phantom

    return make_phantom("invasive", seed=3).image  # 460 x 700


def _wait(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)


def _checkpoint(name):
    from histoview.models.library import list_checkpoints

    return next(e for e in list_checkpoints() if e.name == name)


def test_plan_region_and_placement(tissue):
    from napari.layers import Image

    from histoview.viewer._stain_view import plan_region, read_region, region_placement

    small = Image(tissue, rgb=True, scale=(2, 2), translate=(10, 5), name="t")
    assert plan_region(small) == (0, (0, 0, 460, 700))  # the whole image
    # larger than the limit: the part in view (napari's corners are inclusive)
    small.corner_pixels = np.array([[100, 200], [199, 449]])
    assert plan_region(small, max_pixels=50_000) == (0, (100, 200, 200, 450))
    with pytest.raises(ValueError, match=r"view holds 25,000 pixels .* at most 20,000 .*zoom in"):
        plan_region(small, max_pixels=20_000)

    pyramid = Image([tissue, tissue[::2, ::2]], rgb=True, multiscale=True, scale=(3, 3))
    pyramid.data_level = 1
    pyramid.corner_pixels = np.array([[10, 20], [109, 219]])
    level, box = plan_region(pyramid)
    assert (level, box) == (1, (10, 20, 110, 220))  # the level shown, never level 0
    assert np.array_equal(read_region(pyramid, level, box), tissue[::2, ::2][10:110, 20:220])
    where = region_placement(pyramid, level, box)
    assert where == {"scale": (6.0, 6.0), "translate": (60.0, 120.0)}

    with pytest.raises(ValueError, match="not a 2D RGB image"):
        plan_region(Image(tissue[..., 0], name="grey"))
    floats = Image(tissue / 255.0, rgb=True, name="floats")
    with pytest.raises(ValueError, match="float64 pixels; stain normalisation needs 8-bit RGB"):
        read_region(floats, *plan_region(floats))


def test_from_the_plugin_menu(make_napari_viewer, qtbot, tissue, tmp_path):
    from skimage.io import imsave

    from histoview.preprocessing.phantom import make_phantom
    from histoview.preprocessing.stain import StainNormaliser
    from histoview.viewer._stain_view import STAIN_KEY

    viewer = make_napari_viewer()
    image = viewer.add_image(tissue, rgb=True, name="tissue", scale=(2, 2), translate=(10, 5))
    viewer.add_image(np.zeros((4, 4), np.float32), name="on top")
    _, widget = viewer.window.add_plugin_dock_widget("histoview", "Stain normalisation")
    assert widget.notice.value == "Research use only, not for diagnosis."
    assert widget.image_choice.value == image
    entry = widget.checkpoint_choice.value
    assert entry.meta.get("stain_normalisation")  # one with a normaliser is offered first
    assert widget.method_choice.native.isHidden() and widget.reference.native.isHidden()
    assert not widget.checkpoint_choice.native.isHidden()

    widget.run_button.native.click()
    assert widget.busy  # off the main thread
    _wait(qtbot, widget)
    name = "tissue (Reinhard-normalised)"
    layer = viewer.layers[name]
    stored = StainNormaliser.from_dict(entry.meta["stain_normalisation"])
    assert np.array_equal(layer.data, stored.transform(tissue))  # what the model sees
    assert tuple(layer.scale) == (2, 2) and tuple(layer.translate) == (10, 5)
    assert [lay.name for lay in viewer.layers] == ["tissue", name, "on top"]  # over its source
    assert layer.metadata[STAIN_KEY]["source"] == "tissue"
    text = widget.status.value
    assert "the whole image (322,000 px)" in text and f"checkpoint '{entry.name}'" in text
    # a synthetic phantom is far from the IDC training stain: said, with the OOD limit
    assert "reference standard deviations from the training data's" in text
    assert "warning above 2): the model never saw colours like these" in text
    assert widget.show_normalised.value and layer not in widget.image_choice.choices

    # the toggle: the original, then the normalised image again (not computed again)
    widget.show_normalised.value = False
    assert not layer.visible
    widget.show_normalised.value = True
    assert layer.visible and not widget.busy

    # a checkpoint trained without a normaliser: said so, nothing computed or added
    n_layers = len(viewer.layers)
    widget.checkpoint_choice.value = _checkpoint("amil-phantom")
    widget.run_button.native.click()
    assert not widget.busy and len(viewer.layers) == n_layers
    assert "'amil-phantom' was trained without stain normalisation" in widget.status.value

    # glass only: the stain module's reason, shown in the dock (the worker's error)
    widget.checkpoint_choice.value = entry
    glass = viewer.add_image(np.full((60, 80, 3), 236, np.uint8), rgb=True, name="glass")
    widget.image_choice.value = glass
    widget.run_button.native.click()
    _wait(qtbot, widget)
    assert widget.status.value.startswith(
        "Error: cannot normalise 'glass': reinhard stain normalisation: the image has 0 "
        "tissue pixels of 4800"
    )
    assert "background only or too small" in widget.status.value
    assert len(viewer.layers) == n_layers + 1  # the glass image, nothing more

    # a method and a reference image: a missing file is named; Macenko fitted to a file
    widget.source.value = "a method and a reference image"
    assert widget.checkpoint_choice.native.isHidden() and not widget.reference.native.isHidden()
    widget.image_choice.value = image
    widget.method_choice.value = "macenko"
    widget.run_button.native.click()
    assert "choose a reference image file" in widget.status.value and not widget.busy
    widget.reference.value = tmp_path / "missing.png"
    widget.run_button.native.click()
    assert f"reference image {tmp_path / 'missing.png'} not found" in widget.status.value
    ref_image = make_phantom("benign", seed=8).image
    imsave(tmp_path / "ref.png", ref_image, check_contrast=False)
    widget.reference.value = tmp_path / "ref.png"
    widget.show_normalised.value = False
    widget.show_normalised.value = True  # ticking with nothing for these choices normalises
    _wait(qtbot, widget)
    macenko = viewer.layers["tissue (Macenko-normalised)"]
    by_hand = StainNormaliser("macenko").fit(ref_image).transform(tissue)
    assert np.array_equal(macenko.data, by_hand)
    assert "reference image ref.png" in widget.status.value
    assert "training data" not in widget.status.value  # no OOD claim without a checkpoint


def test_a_multiscale_slide_is_normalised_at_the_level_shown(make_napari_viewer, qtbot, tissue):
    from histoview.preprocessing.stain import StainNormaliser

    viewer = make_napari_viewer(show=True)
    big = np.tile(tissue, (4, 4, 1))  # 1840 x 2800, 3 levels
    levels = [big, big[::2, ::2], big[::4, ::4]]
    slide = viewer.add_image(levels, rgb=True, multiscale=True, name="slide", scale=(0.5, 0.5))
    _, widget = viewer.window.add_plugin_dock_widget("histoview", "Stain normalisation")
    viewer.camera.zoom *= 6  # zoomed in: napari shows a finer level, part of it
    qtbot.waitUntil(lambda: slide.data_level < 2, timeout=10_000)
    level = slide.data_level
    widget.run_button.native.click()
    _wait(qtbot, widget)
    [layer] = [lay for lay in viewer.layers if "Reinhard-normalised" in lay.name]
    meta = layer.metadata["histoview_stain"]
    r0, c0, r1, c1 = meta["region"]
    assert meta["level"] == level and (r1 - r0) * (c1 - c0) < levels[level].shape[0] * 2800
    assert layer.name == f"slide (Reinhard-normalised, {f'level {level} ' if level else ''}view)"
    stored = StainNormaliser.from_dict(widget.checkpoint_choice.value.meta["stain_normalisation"])
    assert np.array_equal(layer.data, stored.transform(levels[level][r0:r1, c0:c1]))
    factor = 2**level
    assert tuple(layer.scale) == (0.5 * factor, 0.5 * factor)
    assert tuple(layer.translate) == (r0 * 0.5 * factor, c0 * 0.5 * factor)
    assert "the part in view" in widget.status.value
