"""A map histoview writes of a slide region opens in napari on top of that region: the OME
plane position becomes the layer's translation."""

from __future__ import annotations

import numpy as np

from histoview.io import open_image
from histoview.io.ome_tiff import write_ome_tiff
from histoview.io.pixel_size import ome_position_um
from histoview.viewer._reader import read_images


def test_region_map_is_placed_where_the_region_is(tmp_path):
    values = np.linspace(0, 1, 40 * 30, dtype=np.float32).reshape(40, 30)
    path = write_ome_tiff(
        tmp_path / "slide.amil.ome.tif", values, pixel_size_um=14.0, origin_um=(700.0, 350.0)
    )
    with open_image(path) as src:
        assert src.position_um == (700.0, 350.0)
        assert src.pixel_size_um == 14.0
    ((data, kwargs, kind),) = read_images(str(path))
    assert kind == "image" and kwargs["scale"] == (14.0, 14.0)
    # pixel (0, 0)'s centre lies half a map pixel inside the region's corner
    assert kwargs["translate"] == (707.0, 357.0)


def test_no_position_no_translation(tmp_path):
    path = write_ome_tiff(tmp_path / "m.ome.tif", np.ones((8, 8), np.float32), pixel_size_um=2.0)
    ((_, kwargs, _),) = read_images(str(path))
    assert "translate" not in kwargs


def test_position_in_other_units_and_garbage():
    ns = 'xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"'
    xml = (
        f'<OME {ns}><Image><Pixels><Plane PositionY="1.5" PositionYUnit="mm" '
        'PositionX="20" PositionXUnit="µm"/></Pixels></Image></OME>'
    )
    assert ome_position_um(xml) == (1500.0, 20.0)
    assert ome_position_um(xml.replace('"1.5"', '"abc"')) is None
    assert ome_position_um("<not xml") is None
    assert ome_position_um(f"<OME {ns}><Image/></OME>") is None
