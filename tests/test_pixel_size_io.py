"""Pixel sizes read from files: trusted only when they can be a microscope calibration.

Every file is generated here (tifffile / Pillow); nothing comes from a data set.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from histoview.cli import main
from histoview.io import ImageReadError, open_image, read_rgb
from histoview.viewer._reader import napari_get_reader


def _rgb(h=64, w=80):
    return np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)


def _tiff(path, **kwargs):
    tifffile.imwrite(path, _rgb(), photometric="rgb", **kwargs)
    return path


@pytest.mark.parametrize("dpi", [72, 96, 150, 300, 600])
def test_dpi_defaults_are_not_a_calibration(tmp_path, dpi):
    path = _tiff(tmp_path / f"d{dpi}.tif", resolution=(dpi, dpi), resolutionunit="INCH")
    with open_image(path) as src:
        assert src.pixel_size_um is None and src.pixel_size_yx is None
        assert src.pixel_size_source is None
        assert f"{dpi} pixels per inch" in src.pixel_size_note and "ignored" in src.pixel_size_note
        assert src.describe()["pixel_size_source"] == "unknown"


def test_72_dpi_is_not_352_um(tmp_path, capsys):
    path = _tiff(tmp_path / "screen.tif", resolution=(72, 72), resolutionunit="INCH")
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "pixel size:  unknown" in out and "352.8" in out  # named in the note, not used
    assert "note:" in out and "not a microscope calibration" in out


def test_resolution_without_unit_is_ignored(tmp_path):
    path = _tiff(tmp_path / "nounit.tif", resolution=(40_000, 40_000), resolutionunit="NONE")
    with open_image(path) as src:
        assert src.pixel_size_um is None
        assert "no unit" in src.pixel_size_note


def test_untagged_tiff_and_png_are_unknown_without_a_note(tmp_path):
    _tiff(tmp_path / "plain.tif")
    Image.fromarray(_rgb()).save(tmp_path / "plain.png")
    for name in ("plain.tif", "plain.png"):
        with open_image(tmp_path / name) as src:
            assert src.pixel_size_um is None and src.pixel_size_note is None


def test_real_calibration_is_trusted(tmp_path, capsys):
    # 40,000 pixels per centimetre = 0.25 um/px (40X)
    path = _tiff(tmp_path / "cal.tif", resolution=(40_000, 40_000), resolutionunit="CENTIMETER")
    with open_image(path) as src:
        assert src.pixel_size_um == pytest.approx(0.25)
        assert src.pixel_size_source == "file" and src.pixel_size_note is None
        assert src.pixel_size_origin == "TIFF resolution tags (per centimetre)"
    # the same calibration per inch (101,600 px/inch) is not a dpi default
    path = _tiff(tmp_path / "inch.tif", resolution=(101_600, 101_600), resolutionunit="INCH")
    with open_image(path) as src:
        assert src.pixel_size_um == pytest.approx(0.25)
    assert main(["info", str(tmp_path / "cal.tif")]) == 0
    assert "0.25 um/px (file: TIFF resolution tags (per centimetre))" in capsys.readouterr().out


def test_values_outside_the_histology_range_are_ignored(tmp_path):
    # 10 px/cm = 1000 um/px; 1e9 px/cm = 1e-5 um/px
    for res in (10.0, 1e9):
        path = _tiff(tmp_path / f"r{res:g}.tif", resolution=(res, res), resolutionunit="CENTIMETER")
        with open_image(path) as src:
            assert src.pixel_size_um is None and "outside" in src.pixel_size_note


def test_png_phys_per_metre_and_72_dpi(tmp_path):
    Image.fromarray(_rgb()).save(tmp_path / "cal.png", dpi=(101_600, 101_600))  # 4e6 px/m
    Image.fromarray(_rgb()).save(tmp_path / "screen.png", dpi=(72, 72))
    with open_image(tmp_path / "cal.png") as src:
        assert (
            src.pixel_size_um == pytest.approx(0.25, rel=1e-3) and src.pixel_size_source == "file"
        )
    with open_image(tmp_path / "screen.png") as src:
        assert src.pixel_size_um is None and "72.01 pixels per inch" in src.pixel_size_note


@pytest.mark.parametrize(
    ("x", "x_unit", "y", "y_unit", "expected"),
    [
        (0.42, "µm", 0.42, "µm", (0.42, 0.42)),
        (250, "nm", 0.25, "um", (0.25, 0.25)),
        (0.25, "µm", 0.5, "µm", (0.5, 0.25)),
    ],
)
def test_ome_physical_sizes_with_units(tmp_path, x, x_unit, y, y_unit, expected):
    path = tmp_path / "x.ome.tif"
    meta = {
        "axes": "YXS",
        "PhysicalSizeX": x,
        "PhysicalSizeXUnit": x_unit,
        "PhysicalSizeY": y,
        "PhysicalSizeYUnit": y_unit,
    }
    tifffile.imwrite(path, _rgb(), photometric="rgb", metadata=meta)
    with open_image(path) as src:
        assert src.format == "ome-tiff" and src.pixel_size_source == "file"
        np.testing.assert_allclose(src.pixel_size_yx, expected)
        assert src.pixel_size_origin.startswith("OME-XML")
        assert src.square_pixels == (expected[0] == expected[1])


def test_anisotropic_pixels_are_shown_to_scale_and_refused_for_analysis(tmp_path, capsys):
    path = tmp_path / "aniso.ome.tif"
    tifffile.imwrite(
        path,
        _rgb(),
        photometric="rgb",
        metadata={"axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.5},
    )
    with open_image(path) as src:
        assert not src.square_pixels and src.pixel_size_um is None
        assert src.level_pixel_size(0) is None
        np.testing.assert_allclose(src.level_pixel_size_yx(0), (0.5, 0.25))
        with pytest.raises(ImageReadError, match="not square.*0.5 um high x 0.25 um wide"):
            src.check_square_pixels()
    with pytest.raises(ImageReadError, match="square pixels"):
        read_rgb(path)
    [(data, kwargs, _)] = napari_get_reader(str(path))(str(path))
    assert kwargs["scale"] == (0.5, 0.25) and kwargs["units"] == ("um", "um")
    assert kwargs["metadata"]["histoview"]["square_pixels"] is False
    assert main(["info", str(path)]) == 0
    assert "0.5 um (y) x 0.25 um (x) per pixel" in capsys.readouterr().out
    # within the 2 % tolerance the pixels are square
    tifffile.imwrite(
        tmp_path / "near.ome.tif",
        _rgb(),
        photometric="rgb",
        metadata={"axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.252},
    )
    with open_image(tmp_path / "near.ome.tif") as src:
        assert src.square_pixels and src.pixel_size_um == pytest.approx(0.251)


def test_user_pixel_size_overrides_and_says_what_the_file_said(tmp_path):
    path = tmp_path / "aniso.ome.tif"
    tifffile.imwrite(
        path,
        _rgb(),
        photometric="rgb",
        metadata={"axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.5},
    )
    with open_image(path, pixel_size_um=0.3) as src:
        assert src.pixel_size_um == 0.3 and src.pixel_size_source == "user" and src.square_pixels
        assert "the file says 0.5 (y) x 0.25 (x)" in src.pixel_size_note
    with pytest.raises(ValueError, match="positive"):
        open_image(path, pixel_size_um=-1)


def test_aperio_mpp_and_objective_power(tmp_path, capsys):
    desc = (
        "Aperio Image Library v11.2.1 \r\n46000x32914 [0,100 46000x32914] (256x256) JPEG/RGB "
        "Q=30|AppMag = 40|StripeWidth = 2040|ScanScope ID = CPAPERIOCS|MPP = 0.2527|Left = 25.7"
    )
    path = _tiff(tmp_path / "slide.svs", description=desc)
    with open_image(path) as src:
        assert src.pixel_size_um == pytest.approx(0.2527)
        assert src.pixel_size_origin == "Aperio MPP" and src.objective_power == 40.0
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "0.2527 um/px (file: Aperio MPP)" in out and "objective:   40X" in out
    # an implausible MPP falls through to the resolution tags (here a 72 dpi default)
    bad = desc.replace("MPP = 0.2527", "MPP = 0")
    path = _tiff(tmp_path / "bad.svs", description=bad, resolution=(72, 72), resolutionunit="INCH")
    with open_image(path) as src:
        assert src.pixel_size_um is None and src.objective_power == 40.0
        assert "Aperio MPP" in src.pixel_size_note and "72 pixels per inch" in src.pixel_size_note


def test_reader_metadata_carries_the_note(tmp_path):
    path = _tiff(tmp_path / "screen.tif", resolution=(72, 72), resolutionunit="INCH")
    [(data, kwargs, _)] = napari_get_reader(str(path))(str(path))
    info = kwargs["metadata"]["histoview"]
    assert "scale" not in kwargs and info["pixel_size_um"] is None
    assert (
        info["pixel_size_source"] == "unknown" and "72 pixels per inch" in info["pixel_size_note"]
    )
