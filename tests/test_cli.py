"""The histoview command line: info, demo screenshots, errors.

The two demo processes start with the module's first test, side by side: most of the
module's time is theirs."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from _background import Background
from histoview.cli import main
from histoview.io import write_pyramidal_tiff


def test_info_prints_levels_shapes_dtype_pixel_size(tmp_path, capsys):
    path = tmp_path / "slide.tif"
    write_pyramidal_tiff(
        path, np.zeros((2048, 1536, 3), np.uint8), tile=256, pixel_size_um=0.25, min_size=500
    )
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "2048 x 1536 x 3" in out and "1024 x 768 x 3" in out and "512 x 384 x 3" in out
    assert "uint8" in out and "0.25 um/px" in out
    assert main(["info", str(path), "--pixel-size", "0.5", "--json"]) == 0
    assert '"pixel_size_um": 0.5' in capsys.readouterr().out


def test_info_on_bad_file_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / "bad.tif"
    path.write_text("hello")
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert "bad.tif" in err and "not a PNG, JPEG or TIFF" in err


@pytest.fixture(scope="module", autouse=True)
def background(request, tmp_path_factory):
    with Background(request, lanes=2) as bg:
        if bg.wanted("test_demo_screenshot"):
            out = tmp_path_factory.mktemp("demo") / "demo.png"
            bg.put("screenshot-png", out)
            argv = [sys.executable, "-m", "histoview.cli", "demo", "--screenshot", str(out)]
            bg.run("screenshot", argv, timeout=300)
        if bg.wanted("test_demo_without_display_renders_offscreen"):
            cwd = tmp_path_factory.mktemp("offscreen")
            bg.put("offscreen-cwd", cwd)
            env = {k: v for k, v in bg.env.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
            argv = [sys.executable, "-m", "histoview.cli", "demo", "--no-explanations"]
            bg.run("offscreen", argv, cwd=cwd, env=env, timeout=300)
        yield bg


def _png_is_a_picture(path):
    from PIL import Image

    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape[0] > 300 and img.shape[1] > 400
    assert img.std() > 10  # not a blank frame
    return img


@pytest.mark.gui
def test_demo_screenshot(background):
    out = background.result("screenshot-png")
    proc = background.result("screenshot")  # histoview demo --screenshot out
    assert proc.returncode == 0, proc.stderr
    img = _png_is_a_picture(out)
    # the phantom is there: many pink (eosin) pixels
    r, g, b = img[..., 0].astype(int), img[..., 1].astype(int), img[..., 2].astype(int)
    assert ((r > 180) & (b > 150) & (g < r - 40)).mean() > 0.05


@pytest.mark.gui
def test_demo_without_display_renders_offscreen(background):
    tmp_path = background.result("offscreen-cwd")
    # histoview demo --no-explanations, in tmp_path, without DISPLAY and WAYLAND_DISPLAY
    proc = background.result("offscreen")
    assert proc.returncode == 0, proc.stderr
    assert "no display" in proc.stdout
    _png_is_a_picture(tmp_path / "histoview-demo.png")


def _phantom_png(path):
    from PIL import Image

    from histoview.preprocessing.phantom import make_phantom

    Image.fromarray(make_phantom("in_situ", preset="breakhis", seed=15_007).image).save(path)
    return path


def test_inputs_differing_after_the_first_dot_get_their_own_outputs(tmp_path, capsys):
    import json

    out = tmp_path / "out"
    one, two = _phantom_png(tmp_path / "case.1.png"), _phantom_png(tmp_path / "case.2.png")
    for image in (one, two, one):
        assert main(["explain", str(image), "--method", "amil", "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "case.1-1.amil.json",
        "case.1-1.amil.tif",
        "case.1.amil.json",
        "case.1.amil.tif",
        "case.2.amil.json",
        "case.2.amil.tif",
    ]
    for name, image in [("case.1", one), ("case.2", two), ("case.1-1", one)]:
        record = json.loads((out / f"{name}.amil.json").read_text())
        assert record["source_path"] == str(image.resolve())
        assert record["map_file"] == f"{name}.amil.tif"


def test_errors_are_one_line_naming_the_file(tmp_path):
    """An OSError reads "<file>: <problem>" (no "[Errno 21]"); several lines become one."""
    from histoview.cli import _error_line

    err = IsADirectoryError(21, "Is a directory", str(tmp_path))
    assert _error_line(err) == f"{tmp_path}: Is a directory"
    assert _error_line(ValueError("first\n  second\n")) == "first; second"
    assert _error_line(KeyError("no model 'x'")) == "no model 'x'"
