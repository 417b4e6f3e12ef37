"""The bad-input corpus: files real users have, each through histoview's entry points.

Issue 15 (item 8) and the foundation issue (item 5) ask for a corpus of unusual and broken
files with an expected outcome each: histoview works correctly, or it stops with a clear
error that names the file and the problem. Every file is built here, in a tmp folder, from
the project's own phantom or from plain arrays; nothing comes from a data set.

The entry points are ``histoview info``, the napari reader
(:func:`histoview.viewer._reader.napari_get_reader`) and ``histoview explain``. A CLI error
is exit code 2 with one line on stderr (no "Traceback"); a reader error is an
:class:`~histoview.io.ImageReadError` (napari shows it as a notification and keeps running).

Cases of the corpus tested elsewhere (so not duplicated here) are listed in
:data:`ELSEWHERE`; a test checks that those tests still exist. The output cases (a
read-only or invalid ``--out``, a full disk) are at the end of this file.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageOps

from histoview.cli import main
from histoview.io import ImageReadError
from histoview.viewer._reader import napari_get_reader

TESTS = Path(__file__).resolve().parent


# --------------------------------------------------------------------------- images


@cache
def _phantom() -> np.ndarray:
    """A 460 x 700 invasive-carcinoma phantom (BreakHis-sized), read-only."""
    from histoview.preprocessing.phantom import make_phantom

    image = make_phantom("invasive", preset="breakhis", seed=15_008).image
    image.setflags(write=False)
    return image


def _tissue(h: int = 96, w: int = 128) -> np.ndarray:
    """A crop of the phantom: structure a wrong orientation or colour model would break."""
    return np.ascontiguousarray(_phantom()[:h, :w])


def _png_bytes(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


# --------------------------------------------------------------------------- builders
# Each takes a folder and returns the file it made there.


def empty_png(d: Path) -> Path:
    (p := d / "empty.png").write_bytes(b"")
    return p


def empty_tif(d: Path) -> Path:
    (p := d / "empty.tif").write_bytes(b"")
    return p


def truncated_png(d: Path) -> Path:
    data = _png_bytes(_tissue())
    (p := d / "cut.png").write_bytes(data[: len(data) // 2])
    return p


def truncated_tif(d: Path) -> Path:
    p = d / "cut.tif"
    tifffile.imwrite(p, _tissue(), photometric="rgb")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return p


def truncated_tiled_tif(d: Path) -> Path:
    p = d / "cut-tiled.tif"
    tifffile.imwrite(p, _tissue(256, 256), photometric="rgb", tile=(64, 64), compression="zlib")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) * 2 // 3])
    return p


def text_as_png(d: Path) -> Path:
    (p := d / "notes.png").write_text("patient 12, slide 3: see attached\n")
    return p


def text_as_tif(d: Path) -> Path:
    (p := d / "notes.tif").write_text("<html><body>404 Not Found</body></html>\n")
    return p


def huge_header_tif(d: Path) -> Path:
    """A classic TIFF whose one IFD claims a 100,000 x 100,000 8-bit image and holds no data."""
    n = 100_000
    entries = [  # tag, type (3 SHORT, 4 LONG), count, value
        (256, 4, 1, n),  # ImageWidth
        (257, 4, 1, n),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 1),  # Photometric: min-is-black
        (273, 4, 1, 8 + 2 + 8 * 12 + 4),  # StripOffsets: just past the IFD, where the file ends
        (278, 4, 1, n),  # RowsPerStrip
        (279, 4, 1, 2**32 - 1),  # StripByteCounts: 4 GB claimed
    ]
    ifd = struct.pack("<H", len(entries))
    ifd += b"".join(struct.pack("<HHII", *e) for e in entries) + struct.pack("<I", 0)
    (p := d / "huge.tif").write_bytes(b"II*\x00" + struct.pack("<I", 8) + ifd)
    return p


def huge_header_png(d: Path) -> Path:
    """A PNG whose header claims 100,000 x 100,000 RGB pixels and holds no image data."""
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b"")
    (p := d / "huge.png").write_bytes(data)
    return p


def one_pixel_png(d: Path) -> Path:
    Image.fromarray(_tissue(1, 1)).save(p := d / "dot.png")
    return p


def tiny_png(d: Path) -> Path:
    Image.fromarray(_tissue(4, 4)).save(p := d / "tiny.png")
    return p


def tiny_tif(d: Path) -> Path:
    tifffile.imwrite(p := d / "tiny.tif", _tissue(4, 4), photometric="rgb")
    return p


def dpi72_tif(d: Path) -> Path:
    """What most image tools write (MoNuSeg tiles too): 72 pixels per inch, not a calibration."""
    p = d / "screen72.tif"
    tifffile.imwrite(p, _phantom(), photometric="rgb", resolution=(72, 72), resolutionunit="INCH")
    return p


def dpi300_tif(d: Path) -> Path:
    p = d / "print300.tif"
    tifffile.imwrite(p, _tissue(), photometric="rgb", resolution=(300, 300), resolutionunit="INCH")
    return p


def _cmyk() -> np.ndarray:
    rgb = _tissue().astype(np.float64) / 255
    k = 1 - rgb.max(axis=2)
    cmy = (1 - rgb - k[..., None]) / np.maximum(1 - k[..., None], 1e-9)
    return np.round(np.dstack([cmy, k]) * 255).astype(np.uint8)


def _cmyk_as_rgb(cmyk: np.ndarray) -> np.ndarray:
    """The usual naive conversion (Pillow's, Adobe's without a profile): 255 (1-C)(1-K)."""
    f = cmyk.astype(np.float64) / 255
    return np.round(255 * (1 - f[..., :3]) * (1 - f[..., 3:4])).astype(np.uint8)


def cmyk_tif(d: Path) -> Path:
    tifffile.imwrite(p := d / "print-cmyk.tif", _cmyk(), photometric="separated")
    return p


def planar_tif(d: Path) -> Path:
    """RGB stored plane by plane (PlanarConfiguration = 2): valid, and written by some scanners."""
    p = d / "planar.tif"
    tifffile.imwrite(
        p, np.moveaxis(_tissue(), 2, 0).copy(), photometric="rgb", planarconfig="separate"
    )
    return p


def thumbnail_first_tif(d: Path) -> Path:
    """Two pages: a 24 x 32 thumbnail, then the 96 x 128 image itself."""
    p = d / "thumb-first.tif"
    with tifffile.TiffWriter(p) as tw:
        tw.write(_tissue()[::4, ::4].copy(), photometric="rgb")
        tw.write(_tissue(), photometric="rgb")
    return p


def exif_rotated_jpg(d: Path) -> Path:
    """A 96 x 128 JPEG whose EXIF orientation (6) says: shown turned 90 degrees clockwise."""
    im = Image.fromarray(_tissue())
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(p := d / "phone.jpg", quality=95, exif=exif)
    return p


def anisotropic_ome_tif(d: Path) -> Path:
    p = d / "aniso.ome.tif"
    tifffile.imwrite(
        p,
        _tissue(),
        photometric="rgb",
        metadata={
            "axes": "YXS",
            "PhysicalSizeX": 0.25,
            "PhysicalSizeY": 0.5,
            "PhysicalSizeXUnit": "µm",
            "PhysicalSizeYUnit": "µm",
        },
    )
    return p


def gray16_tif(d: Path) -> Path:
    gray = _tissue().mean(axis=2).astype(np.uint16) * 257
    tifffile.imwrite(p := d / "gray16.tif", gray)
    return p


def gray16_png(d: Path) -> Path:
    gray = _tissue().mean(axis=2).astype(np.uint16) * 257
    Image.fromarray(gray).save(p := d / "gray16.png")
    return p


def rgb16_tif(d: Path) -> Path:
    """The phantom in 16 bits per channel: the same picture as its 8-bit PNG."""
    tifffile.imwrite(p := d / "rgb16.tif", _phantom().astype(np.uint16) * 257, photometric="rgb")
    return p


def rgba_png(d: Path) -> Path:
    """The phantom with an opaque alpha channel: the same picture as its RGB PNG."""
    rgba = np.dstack([_phantom(), np.full(_phantom().shape[:2], 255, np.uint8)])
    Image.fromarray(rgba).save(p := d / "rgba.png")
    return p


def rgb_png(d: Path) -> Path:
    """The reference: the phantom as a plain 8-bit RGB PNG."""
    Image.fromarray(_phantom()).save(p := d / "rgb.png")
    return p


def gray8_png(d: Path) -> Path:
    Image.fromarray(_tissue().mean(axis=2).astype(np.uint8)).save(p := d / "gray.png")
    return p


def palette_png(d: Path) -> Path:
    Image.fromarray(_tissue()).quantize(16).save(p := d / "palette.png")
    return p


def _palette_tif_parts() -> tuple[np.ndarray, np.ndarray]:
    index = (_tissue().mean(axis=2) // 16).astype(np.uint8)  # 16 grey-pink levels
    cmap = np.zeros((3, 256), np.uint16)
    levels = np.arange(16) * 16
    cmap[0, :16], cmap[1, :16], cmap[2, :16] = levels + 15, levels // 2, levels + 8
    return index, cmap * 257


def palette_tif(d: Path) -> Path:
    index, cmap = _palette_tif_parts()
    tifffile.imwrite(p := d / "palette.tif", index, photometric="palette", colormap=cmap)
    return p


def broken_mrxs(d: Path) -> Path:
    """A MIRAX slide without its data folder (a copy that left the folder behind)."""
    (p := d / "slide.mrxs").write_text("[GENERAL]\nSLIDE_VERSION = 01.02\n")
    return p


def bare_dicom(d: Path) -> Path:
    """A DICOM file (preamble + DICM) that is no whole-slide image (read through wsidicom)."""
    (p := d / "slide.dcm").write_bytes(bytes(128) + b"DICM" + bytes(256))
    return p


# --------------------------------------------------------------------------- checks
# Each gets what the entry point returned (info -> stdout text; reader -> the first layer
# data tuple; explain -> the output folder) and the file.


def _pixel_size_line(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("pixel size:"))


def _not_a_dpi_pixel_size(um: str) -> Callable[[str], None]:
    def check(out: str, path: Path) -> None:
        line = _pixel_size_line(out)
        assert um not in line, line
        assert "unknown" in line or "estimat" in line, line

    return check


def _info_says(*words: str) -> Callable[[str], None]:
    def check(out: str, path: Path) -> None:
        for word in words:
            assert word in out, out

    return check


def _layer_scale_not(um: float) -> Callable[[tuple], None]:
    def check(layer: tuple, path: Path) -> None:
        _, kwargs, _ = layer
        scale = kwargs.get("scale")
        assert scale is None or not np.allclose(scale, um, rtol=1e-3), scale
        meta = kwargs["metadata"]["histoview"]
        assert meta["pixel_size_um"] is None or abs(meta["pixel_size_um"] - um) > 1e-3 * um

    return check


def _layer_pixels(
    expected: Callable[[Path], np.ndarray], *, rgb: bool = True, atol: int = 0
) -> Callable[[tuple, Path], None]:
    """The layer shows ``expected(path)`` (and, for RGB, models get the same pixels)."""

    def check(layer: tuple, path: Path) -> None:
        from histoview.io import to_rgb8

        data, kwargs, kind = layer
        assert kind == "image"
        arr = np.asarray(data[0] if kwargs.get("multiscale") else data)
        want = expected(path)
        assert kwargs["rgb"] is rgb
        assert arr.shape == want.shape, (arr.shape, want.shape)
        diff = np.abs(arr.astype(np.int64) - want.astype(np.int64))
        assert diff.max() <= atol, f"max difference {diff.max()} (tolerance {atol})"
        if rgb and want.ndim == 3 and want.shape[2] == 3:
            seen = to_rgb8(arr).astype(np.int64)
            assert np.abs(seen - want).max() <= atol

    return check


def _layer_dtype(dtype: str, *, rgb: bool) -> Callable[[tuple], None]:
    def check(layer: tuple, path: Path) -> None:
        data, kwargs, _ = layer
        assert str(np.asarray(data).dtype) == dtype and kwargs["rgb"] is rgb
        lo, hi = kwargs["contrast_limits"]  # 16-bit: limits from the data, not 0-255
        assert 0 <= lo < hi <= 65535 and hi > 255

    return check


def _layer_scale(yx: tuple[float, float]) -> Callable[[tuple], None]:
    def check(layer: tuple, path: Path) -> None:
        _, kwargs, _ = layer
        assert kwargs.get("scale") is not None and np.allclose(kwargs["scale"], yx), kwargs

    return check


def _explained_like(reference: str) -> Callable[[Path], None]:
    """The same probabilities as the plain 8-bit RGB PNG of the same picture."""

    def check(out: Path, path: Path) -> None:
        (record,) = [json.loads(p.read_text()) for p in out.glob("*.amil.json")]
        want = _reference_probabilities(reference)
        got = record["probabilities"]
        assert got.keys() == want.keys()
        assert all(abs(got[k] - want[k]) < 1e-5 for k in want), (got, want)
        assert record["source_path"] == str(path.resolve())

    return check


def _explained_with_estimated_pixel_size(out: Path, path: Path) -> None:
    """The nuclei graph on a 72-dpi file: the pixel size estimated from the image (the
    phantom's is 0.5 um/px), used and recorded; never the file's 352.8."""
    (record,) = [json.loads(p.read_text()) for p in out.glob("*.graph.json")]
    assert record.get("pixel_size_source") == "estimated", record
    assert 0.5 / 1.5 <= record["pixel_size_um"] <= 0.5 * 1.5, record["pixel_size_um"]


def _explained_without_the_dpi_pixel_size(out: Path, path: Path) -> None:
    """A-MIL, which needs no pixel size: the record says unknown or an estimate, not 352.8."""
    (record,) = [json.loads(p.read_text()) for p in out.glob("*.amil.json")]
    mpp, source = record.get("pixel_size_um"), record.get("pixel_size_source")
    if mpp is None:
        assert source == "unknown", record
    else:
        assert source == "estimated" and 0.5 / 1.5 <= mpp <= 0.5 * 1.5, record


@cache
def _reference_probabilities(name: str) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="histoview-reference-"))
    try:
        path = {"rgb": rgb_png}[name](folder)
        assert main(["explain", str(path), "--method", "amil", "--out", str(folder / "out")]) == 0
        (record,) = [json.loads(p.read_text()) for p in (folder / "out").glob("*.amil.json")]
        return record["probabilities"]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _exif_transposed(path: Path) -> np.ndarray:
    """The JPEG as it is meant to be seen: decoded, then turned as its EXIF says."""
    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def _palette_rgb(path: Path) -> np.ndarray:
    index, cmap = _palette_tif_parts()
    return np.moveaxis((cmap >> 8).astype(np.uint8)[:, index], 0, -1)


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Case:
    """One file through one entry point and what must happen.

    ``expect`` is "ok" (``check`` passes on the result), "error" (a clear error naming the
    file, with ``keyword`` in the message, any case), or "ok-or-error" (either: a clear
    refusal with ``keyword`` is as good as the right result).
    """

    name: str
    build: Callable[[Path], Path]
    entry: str  # "info" | "reader" | "explain"
    expect: str
    keyword: str | None = None
    check: Callable | None = None
    pending: str | None = None  # xfail(strict=False) reason while the behaviour is missing
    method: str = "amil"  # explain: the method run


def _errors(name, build, keyword, entries=("info", "reader", "explain")):
    return [Case(f"{name}-{e}", build, e, "error", keyword) for e in entries]


CASES = [
    # foundation issue, item 5: files that cannot be read
    *_errors("empty-png", empty_png, "empty"),
    *_errors("empty-tif", empty_tif, "empty", ("info", "reader")),
    *_errors("truncated-png", truncated_png, "truncated"),
    *_errors("truncated-tif", truncated_tif, "truncated"),
    *_errors("truncated-tiled-tif", truncated_tiled_tif, "truncated", ("info", "reader")),
    *_errors("text-as-png", text_as_png, "text"),
    *_errors("text-as-tif", text_as_tif, "text", ("info", "reader")),
    *_errors("huge-header-tif", huge_header_tif, "100000", ("info", "reader")),
    *_errors("huge-header-png", huge_header_png, "too many", ("info", "reader")),
    *_errors("1x1-png", one_pixel_png, "1 x 1", ("info", "reader")),
    *_errors("4x4-png", tiny_png, "at least", ("info", "reader", "explain")),
    *_errors("4x4-tif", tiny_tif, "at least", ("reader",)),
    # issue 15, item 1: a pixel size you can trust
    Case("72dpi-info", dpi72_tif, "info", "ok", check=_not_a_dpi_pixel_size("352.8")),
    Case("72dpi-reader", dpi72_tif, "reader", "ok", check=_layer_scale_not(352.8)),
    Case(
        "72dpi-explain-graph",
        dpi72_tif,
        "explain",
        "ok",
        check=_explained_with_estimated_pixel_size,
        method="graph",
    ),
    Case(
        "72dpi-explain-amil",
        dpi72_tif,
        "explain",
        "ok",
        check=_explained_without_the_dpi_pixel_size,
    ),
    Case("300dpi-info", dpi300_tif, "info", "ok", check=_not_a_dpi_pixel_size("84.67")),
    Case(
        "anisotropic-ome-reader",
        anisotropic_ome_tif,
        "reader",
        "ok-or-error",
        "anisotropic",
        check=_layer_scale((0.5, 0.25)),
    ),
    Case("anisotropic-ome-explain", anisotropic_ome_tif, "explain", "error", "not square"),
    # issue 15, item 3: images as they are
    Case(
        "cmyk-tif-reader",
        cmyk_tif,
        "reader",
        "ok-or-error",
        "CMYK",
        check=_layer_pixels(lambda p: _cmyk_as_rgb(_cmyk()), atol=1),
    ),
    Case(
        "planar-rgb-tif-reader",
        planar_tif,
        "reader",
        "ok",
        check=_layer_pixels(lambda p: _tissue()),
    ),
    Case(
        "thumbnail-first-tif-info",
        thumbnail_first_tif,
        "info",
        "ok",
        check=_info_says("level 0: 96 x 128 x 3"),
    ),
    Case(
        "thumbnail-first-tif-reader",
        thumbnail_first_tif,
        "reader",
        "ok",
        check=_layer_pixels(lambda p: _tissue()),
    ),
    Case(
        "exif-rotated-jpg-reader",
        exif_rotated_jpg,
        "reader",
        "ok",
        check=_layer_pixels(_exif_transposed),
    ),
    Case(
        "gray8-png-reader",
        gray8_png,
        "reader",
        "ok",
        check=_layer_pixels(lambda p: _tissue().mean(axis=2).astype(np.uint8), rgb=False),
    ),
    Case("gray16-tif-info", gray16_tif, "info", "ok", check=_info_says("uint16")),
    Case("gray16-tif-reader", gray16_tif, "reader", "ok", check=_layer_dtype("uint16", rgb=False)),
    Case("gray16-png-reader", gray16_png, "reader", "ok", check=_layer_dtype("uint16", rgb=False)),
    Case("rgb16-tif-explain", rgb16_tif, "explain", "ok", check=_explained_like("rgb")),
    Case(
        "rgba-png-reader",
        rgba_png,
        "reader",
        "ok",
        check=_layer_pixels(lambda p: np.asarray(Image.open(p))),
    ),
    Case("rgba-png-explain", rgba_png, "explain", "ok", check=_explained_like("rgb")),
    Case(
        "palette-png-reader",
        palette_png,
        "reader",
        "ok",
        check=_layer_pixels(lambda p: np.asarray(Image.open(p).convert("RGB"))),
    ),
    Case("palette-tif-reader", palette_tif, "reader", "ok", check=_layer_pixels(_palette_rgb)),
    # issue 17, item 8: whole slides in vendor formats
    *_errors("broken-mrxs", broken_mrxs, "OpenSlide", ("info", "reader")),
    *_errors("bare-dicom", bare_dicom, "wsidicom", ("info", "reader")),
]


def _run(case: Case, path: Path, capsys) -> tuple[str, object]:
    """("ok", result) or ("error", message); asserts the error is a clear one."""
    folder = path.parent
    if case.entry == "reader":
        reader = napari_get_reader(str(path))
        assert reader is not None, f"the reader declines {path.name}"
        try:
            layers = reader(str(path))
        except ImageReadError as exc:
            message = str(exc)
            assert "\n" not in message.strip(), message
            return "error", message
        assert len(layers) == 1
        return "ok", layers[0]
    out = folder / "out"
    argv = (
        ["info", str(path)]
        if case.entry == "info"
        else ["explain", str(path), "--method", case.method, "--out", str(out)]
    )
    code = main(argv)
    captured = capsys.readouterr()
    if code == 0:
        return "ok", captured.out if case.entry == "info" else out
    assert code == 2, f"exit code {code}: {captured.err}"
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert lines[0].startswith(f"histoview {argv[0]}: error: "), lines[0]
    return "error", lines[0]


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(
            c,
            id=c.name,
            marks=[pytest.mark.xfail(strict=False, reason=c.pending)] if c.pending else [],
        )
        for c in CASES
    ],
)
def test_bad_input(case, tmp_path, capsys):
    path = case.build(tmp_path)
    outcome, result = _run(case, path, capsys)
    if outcome == "error":
        assert case.expect in ("error", "ok-or-error"), f"unexpected error: {result}"
        assert path.name in result, f"the message does not name {path.name}: {result}"
        assert case.keyword.lower() in result.lower(), f"no {case.keyword!r} in: {result}"
        return
    assert case.expect in ("ok", "ok-or-error"), f"{case.name}: no error, expected {case.keyword!r}"
    case.check(result, path)


def test_errors_are_quick_and_read_nothing_huge(tmp_path):
    """A header claiming 10^10 pixels is refused from the header: no allocation, no wait."""
    import resource
    import time

    for build in (huge_header_tif, huge_header_png):
        path = build(tmp_path)
        t0, rss0 = time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with pytest.raises(ImageReadError, match=path.name):
            napari_get_reader(str(path))(str(path))
        assert time.process_time() - t0 < 2.0
        grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0
        assert grown_kib < 200_000, f"{path.name}: peak memory grew {grown_kib} KiB"


def test_cli_error_has_no_traceback_in_a_real_process(tmp_path):
    """The in-process table sees main()'s return; a real process shows what a user sees."""
    for build in (truncated_tif, text_as_png):
        path = build(tmp_path)
        proc = subprocess.run(
            [sys.executable, "-m", "histoview.cli", "info", str(path)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert len(lines) == 1 and path.name in lines[0], proc.stderr


# --------------------------------------------------------------------------- tested elsewhere

#: corpus cases whose tests live in other files: (test file, test function) each.
ELSEWHERE = {
    "NaN / infinite checkpoint weights": [
        ("test_checkpoint_validation.py", "test_non_finite_weights_are_refused_at_load"),
        (
            "test_checkpoint_validation.py",
            "test_cli_explain_nan_weights_subprocess_has_no_traceback",
        ),
    ],
    "broken checkpoint sidecar": [
        ("test_checkpoint_validation.py", "test_each_broken_sidecar_names_file_and_field"),
        ("test_checkpoint_validation.py", "test_truncated_and_binary_sidecars"),
    ],
}
#: corpus cases tested elsewhere under names not settled yet: the words a test of the case
#: holds (any test file but this one).
ELSEWHERE_BY_CONTENT = {
    "bad config keys (unknown key with a 'did you mean')": ("did you mean", "config"),
}


def _test_functions() -> dict[tuple[str, str], str]:
    """(file, test name) -> source of every test function of tests/ except this file."""
    found = {}
    for path in sorted(TESTS.glob("test_*.py")):
        if path.name == Path(__file__).name:
            continue
        text = path.read_text()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                found[(path.name, node.name)] = ast.get_source_segment(text, node) or ""
    return found


@pytest.mark.parametrize("case", list(ELSEWHERE))
def test_cases_tested_elsewhere_still_are(case):
    tests = _test_functions()
    missing = [f"{f}::{t}" for f, t in ELSEWHERE[case] if (f, t) not in tests]
    assert not missing, f"{case}: the corpus points at tests that are gone: {missing}"


@pytest.mark.parametrize("case", list(ELSEWHERE_BY_CONTENT))
def test_cases_tested_elsewhere_by_content(case):
    words = ELSEWHERE_BY_CONTENT[case]
    hits = [
        key
        for key, src in _test_functions().items()
        if all(w.lower() in src.lower() for w in words)
    ]
    assert hits, f"{case}: no test checks it (words {words})"


# --------------------------------------------------------------------------- outputs
# Issue 15, item 7: a folder that cannot take the outputs is refused before the work; a
# full disk leaves no truncated file under a final name, and the CLI says so in one line.


def _not_started(*args, **kwargs):
    raise AssertionError("the work started although --out cannot be written")


@pytest.fixture
def bad_outs(tmp_path) -> dict[str, tuple[Path, str]]:
    """--out values that cannot work: a file, a folder under a file; with the problem's words."""
    (tmp_path / "a-file").write_text("not a folder")
    return {
        "a file": (tmp_path / "a-file", "is a file"),
        "under a file": (tmp_path / "a-file" / "out", "lies under"),
    }


def _one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"histoview {command}: error: output folder "), lines[0]
    return lines[0]


@pytest.mark.parametrize("command", ["explain", "export", "evaluate", "reproduce", "train"])
def test_unusable_out_fails_at_once_in_one_line(command, bad_outs, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("histoview.explain.run.explain_path", _not_started)
    monkeypatch.setattr("histoview.training.evaluate.evaluate_checkpoint", _not_started)
    monkeypatch.setattr("histoview.training.reproduce.run_experiment", _not_started)
    monkeypatch.setattr("histoview.training.run.train_from_config", _not_started)
    image = rgb_png(tmp_path)
    for out, words in bad_outs.values():
        argv = {
            "explain": ["explain", str(image), "--method", "amil"],
            "export": ["export", str(image), "--method", "amil"],
            "evaluate": ["evaluate", "amil-phantom", str(tmp_path)],
            "reproduce": ["reproduce", "patil2019-table4", "--data", str(tmp_path)],
            "train": ["train", "amil-phantom"],
        }[command] + ["--out", str(out)]
        assert main(argv) == 2
        line = _one_error_line(capsys, command)
        assert str(out) in line and words in line, line


def test_core_entry_points_check_out_before_their_work(bad_outs, tmp_path):
    """The API the napari docks call checks too, before loading anything."""
    from histoview.explain.run import explain_file
    from histoview.io.files import OutputDirError
    from histoview.training.evaluate import evaluate_checkpoint
    from histoview.training.reproduce import run_experiment

    out, words = bad_outs["under a file"]
    missing = tmp_path / "no-such-image.png"
    with pytest.raises(OutputDirError, match=words):
        explain_file(missing, method="amil", out_dir=out)
    with pytest.raises(OutputDirError, match=words):
        evaluate_checkpoint(tmp_path / "no-such.safetensors", tmp_path, out_dir=out)
    with pytest.raises(OutputDirError, match=words):
        run_experiment("patil2019-table4", tmp_path / "no-such-data", out_dir=out)


@pytest.fixture
def unwritable_dir(tmp_path):
    """A folder where nothing can be created: read-only modes, or, for root (who ignores
    them), the immutable attribute (chattr +i)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    if shutil.which("chattr") is None:
        pytest.skip("running as root without chattr: no folder root cannot write to")
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("running as root and this file system has no immutable attribute")
    try:
        yield folder
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_out_without_permission_fails_at_once(unwritable_dir, tmp_path, monkeypatch, capsys):
    from histoview.io.files import check_writable_dir

    monkeypatch.setattr("histoview.explain.run.explain_path", _not_started)
    image = rgb_png(tmp_path)
    for out in (unwritable_dir, unwritable_dir / "new" / "sub"):
        assert main(["explain", str(image), "--method", "amil", "--out", str(out)]) == 2
        line = _one_error_line(capsys, "explain")
        assert str(out) in line and "cannot write files" in line, line
    assert not any(unwritable_dir.iterdir())  # the probe is gone, nothing was made
    assert check_writable_dir(tmp_path / "fresh" / "folder") == tmp_path / "fresh" / "folder"
    assert not (tmp_path / "fresh").exists()  # checking makes nothing


def _limit_file_size(limit: int) -> Callable[[], None]:
    """For subprocess.run(preexec_fn=...): what ``ulimit -f`` does, with SIGXFSZ ignored so
    a write past the limit fails with EFBIG ("File too large") instead of killing."""

    def apply() -> None:
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(
            resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1])
        )

    return apply


#: writes every kind of output with histoview's own writers, once per file-size limit
#: (argv: folder, JSON list of limits; -1: none); prints {limit: {kind: "ok" | error line}}.
WRITERS_SCRIPT = r"""
import json, resource, signal, sys
from pathlib import Path
import numpy as np
import matplotlib
matplotlib.use("Agg")
from matplotlib.figure import Figure
from histoview.explain.base import DenseMap, Explanation, write_explanation
from histoview.explain.export import export_csv, export_geojson
from histoview.explain.report import save_pdf, save_png
from histoview.io.files import write_text
from histoview.training.figures import save_figure

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
root, limits = Path(sys.argv[1]), json.loads(sys.argv[2])
rng = np.random.default_rng(0)
values = rng.random((46, 70)).astype(np.float32)
expl = Explanation(method="gradcam", model="resnet18", classes=("benign", "malignant"),
                   probabilities=np.array([0.25, 0.75]), target_class=1, values=values,
                   geometry=DenseMap((460, 700)), source_path="/data/case.1.png")
fig = Figure(figsize=(6, 4))
ax = fig.add_subplot()
ax.imshow(rng.random((64, 64)))
ax.set_title("a figure with text")
writers = {
    "tif+json": lambda d: write_explanation(expl, d, "case.1"),
    "json": lambda d: write_text(d / "metrics.json", json.dumps({"x": values.tolist()})),
    "geojson": lambda d: export_geojson(expl, d / "case.1.gradcam.geojson"),
    "csv": lambda d: export_csv(expl, d / "case.1.gradcam.csv"),
    "png": lambda d: save_png(fig, d / "case.1.compare.png"),
    "pdf": lambda d: save_pdf(fig, d / "case.1.report.pdf"),
    "figure": lambda d: save_figure(fig, d / "roc.png"),
}
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
results = {}
for limit in limits:
    folder = root / f"limit{limit}"
    folder.mkdir()
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard if limit < 0 else limit, hard))
    row = {}
    for kind, write in writers.items():
        try:
            write(folder)
            row[kind] = "ok"
        except OSError as exc:
            row[kind] = f"{exc.filename}: {exc.strerror}" if exc.errno else str(exc)
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    results[str(limit)] = row
print(json.dumps(results))
"""


def _whole(path: Path, reference: Path) -> None:
    """``path`` is a complete file of its kind (and, where writing is deterministic, the
    same bytes as the one written without a limit)."""
    suffix = path.suffix
    if suffix == ".tif":
        np.testing.assert_array_equal(tifffile.imread(path), tifffile.imread(reference))
    elif suffix in (".json", ".geojson", ".csv"):
        assert path.read_bytes() == reference.read_bytes(), path
    elif suffix == ".png":
        with Image.open(path) as im:
            im.load()
            assert im.size == Image.open(reference).size
    elif suffix == ".pdf":
        from pypdf import PdfReader

        assert path.read_bytes().rstrip().endswith(b"%%EOF") and len(PdfReader(path).pages) == 1
    else:
        raise AssertionError(f"unexpected output {path.name}")


def test_full_disk_leaves_no_truncated_output(tmp_path):
    limits = [1_000, 20_000, 500_000, -1]
    proc = subprocess.run(
        [sys.executable, "-c", WRITERS_SCRIPT, str(tmp_path), json.dumps(limits)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    full = tmp_path / "limit-1"
    assert set(results["-1"].values()) == {"ok"}
    written = {p.name for p in full.iterdir()}
    assert written == {
        "case.1.gradcam.tif",
        "case.1.gradcam.json",
        "metrics.json",
        "roc.png",
        "case.1.gradcam.geojson",
        "case.1.gradcam.csv",
        "case.1.compare.png",
        "case.1.report.pdf",
    }
    failures = 0
    for limit in limits[:-1]:
        folder = tmp_path / f"limit{limit}"
        names = sorted(p.name for p in folder.iterdir())
        assert not [n for n in names if n.startswith(".")], f"temporaries left: {names}"
        for name in names:
            _whole(folder / name, full / name)
        for outcome in results[str(limit)].values():
            if outcome != "ok":
                failures += 1
                assert "File too large" in outcome and str(folder) in outcome, outcome
                assert ".tmp" not in outcome, outcome  # names the output, not the temporary
    # 1 kB stops every kind (the 463-byte record comes after its 1 MB map); 500 kB all but
    # the map, whose record is then not written either
    assert [k for k, v in results["1000"].items() if v == "ok"] == [] and failures >= 7 + 6
    assert [k for k, v in results["500000"].items() if v != "ok"] == ["tif+json"]
    assert not (tmp_path / "limit500000" / "case.1.gradcam.json").exists()


def test_full_disk_cli_says_it_in_one_line(tmp_path):
    image = rgb_png(tmp_path)
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "histoview.cli",
            "explain",
            str(image),
            "--method",
            "amil",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_limit_file_size(4096),
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0] == f"histoview explain: error: {out / 'rgb.amil.tif'}: File too large", lines
    assert list(out.iterdir()) == []  # no map, no record without its map, no temporary
