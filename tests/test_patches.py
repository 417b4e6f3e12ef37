"""Bags of patches: the paper's presets, positions, background filtering, pyramid levels."""

from __future__ import annotations

import numpy as np
import pytest

from histoview.preprocessing.patches import (
    PATCH_PRESETS,
    extract_patches,
    patch_labels_from_mask,
    resolve_patch_settings,
)


def test_breakhis_preset_gives_400_instances():
    img = np.zeros((460, 700, 3), np.uint8)
    size, stride = resolve_patch_settings("breakhis")
    patches, grid = extract_patches(img, size, stride)
    assert (size, stride) == (28, 28)
    assert patches.shape == (400, 28, 28, 3)
    assert grid.grid_shape == (16, 25)


def test_bach_preset_gives_192_instances():
    img = np.zeros((1536, 2048, 3), np.uint8)
    patches, grid = extract_patches(img, *resolve_patch_settings("bach"))
    assert len(patches) == 192 and grid.grid_shape == (12, 16)
    assert PATCH_PRESETS["bach"]["patch_size"] == 124


def test_positions_map_back_to_pixels():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (100, 130, 3), dtype=np.uint8)
    patches, grid = extract_patches(img, 20, 15)
    for p, (r, c) in zip(patches, grid.origins):
        np.testing.assert_array_equal(p, img[r : r + 20, c : c + 20])
    dense = grid.rasterize(np.arange(len(grid), dtype=float))
    assert dense.shape == (100, 130)
    # the first patch's value covers its top-left pixels, uncovered border gets the fill value
    assert dense[0, 0] == 0
    assert grid.rasterize(np.ones(len(grid)), fill=-1)[99, 129] == -1


def test_background_filtering_drops_glass_and_keeps_positions():
    img = np.full((56, 84, 3), 245, np.uint8)  # glass
    img[:28, :28] = (180, 90, 160)  # tissue in the top-left patch
    patches, grid = extract_patches(img, 28, max_background=0.5)
    assert len(patches) == 1
    np.testing.assert_array_equal(grid.origins, [[0, 0]])
    assert grid.to_grid(np.array([0.7])).shape == (2, 3)


def test_lower_pyramid_level_positions_are_level0_pixels():
    img = np.zeros((100, 100, 3), np.uint8)
    _, grid = extract_patches(img, 25, level=2, downsample=4.0)
    assert grid.patch_size == (100, 100)
    assert grid.image_shape == (400, 400)
    assert grid.origins.max() == 300
    mask = np.zeros((400, 400), bool)
    mask[300:, 300:] = True
    labels = patch_labels_from_mask(grid, mask)
    assert labels.sum() == 1 and labels[-1]


def test_bad_settings():
    with pytest.raises(ValueError, match="unknown patch preset"):
        resolve_patch_settings("nope")
    with pytest.raises(ValueError, match="smaller than"):
        extract_patches(np.zeros((10, 10, 3), np.uint8), 28)
