"""How a TIFF stores its pixels, and reading them lazily as histoview shows them.

A TIFF can hold several images (series: an Aperio SVS holds the slide's pyramid, a thumbnail,
a label and a macro photograph), store samples interleaved (``YXS``) or plane by plane
(``SYX``, PlanarConfiguration = 2), in one of several colour models (PhotometricInterpretation)
and turned (the Orientation tag). :func:`main_series` picks the image to analyse,
:func:`tiff_layout` says how one pyramid level is stored and what histoview shows of it, and
:func:`open_level` gives an array-like whose numpy-style indexing (integers and slices, any
step) reads only the stored rows and columns under the key, then moves the sample axis last,
turns the block and converts its colour model:

* **grayscale** ``BlackIsZero`` as stored; ``WhiteIsZero`` inverted (``max - v``, max of the
  bit depth); 1-bit images as 0 / 255 ``uint8`` (like Pillow's mode ``"1"``); extra samples of
  gray images dropped;
* **RGB** as stored; a 4th sample is alpha only when ExtraSamples says so (associated alpha is
  un-premultiplied), other extra samples are dropped;
* **palette** through its ColorMap to 8-bit RGB;
* **CMYK** (``Separated`` with InkSet 1 and four inks) to RGB by the naive, ICC-free rule that
  Pillow and Adobe use without a profile: ``R = max (1 - C/max) (1 - K/max)``, the same for
  G with M and B with Y (colours are close but not colour-managed: an embedded ICC profile is
  not applied);
* **YCbCr**: JPEG-compressed files are decoded to RGB by the codec; uncompressed ones without
  chroma subsampling by TIFF 6.0 section 21 (YCbCrCoefficients, ReferenceBlackWhite); chroma
  subsampling without JPEG is refused;
* every other colour model (CIELab, ICCLab, ITULab, LogL, LogLuv, CFA, masks...) is refused by
  name.

**Memory**: pixels stored uncompressed in one contiguous run (tifffile's ``is_final``: no
predictor, no subsampling, byte-aligned samples; any strip layout, one strip included) are
memory-mapped, so a 16 x 16 region of a 20,000 x 20,000 single-strip RGB TIFF touches a few
pages of the file instead of decoding its 1.2 GB. Compressed pixels are read through tifffile's
zarr store one strip or tile at a time; a level whose strips or tiles decode to more than
:data:`MAX_CHUNK_BYTES` each is refused with how to convert it to a tiled pyramid.

The block conversions are :mod:`histoview.io.tiff_colour`, the lazy view
:mod:`histoview.io.tiff_view`. Problems raise :class:`UnsupportedTiff` with the problem only;
:mod:`histoview.io.image` adds the file name.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from histoview.io.tiff_colour import (
    bilevel,
    chain,
    cmyk_to_rgb,
    invert,
    palette_to_rgb,
    take_samples,
    unpremultiply,
    ycbcr_to_rgb,
)
from histoview.io.tiff_view import ORIENTATIONS, LevelView

#: largest decoded strip or tile (bytes) read through the zarr store; above it a region read
#: would have to decode more than this, so the level is refused with how to convert it.
MAX_CHUNK_BYTES = 256 * 2**20

#: how the image is shown for each Orientation value, relative to how it is stored.
ORIENTATION_NAMES = {
    2: "mirrored left-right",
    3: "turned 180 degrees",
    4: "mirrored top-bottom",
    5: "transposed",
    6: "turned 90 degrees clockwise",
    7: "transposed across the other diagonal",
    8: "turned 90 degrees counter-clockwise",
}
# TIFF compressions whose decoder turns YCbCr into RGB itself (JPEG, old JPEG, JPEG XL, ...).
_YCBCR_DECODED = {6, 7, 33007, 34892}
_CONVERT_HINT = "vips colourspace {name} {stem}-rgb.tif srgb"


class UnsupportedTiff(ValueError):
    """A TIFF layout or colour model histoview does not read; the message says which."""


@dataclass(frozen=True)
class TiffLayout:
    """One pyramid level: how it is stored and what histoview shows.

    Attributes:
        shape: shown shape, (H, W) or (H, W, S) with S 3 (RGB) or 4 (RGBA).
        dtype: shown dtype.
        stored_shape: the tifffile series level's shape (``SYX`` planes first for planar).
        samples_first: samples stored plane by plane (axes ``SYX``).
        orientation: TIFF Orientation value (1-8) applied on read.
        convert: function of a stored (h, w[, s]) block giving the shown block, or None.
        chunk_bytes: decoded bytes of one strip or tile.
        notes: what was converted, turned or dropped, for :meth:`ImageSource.describe`.
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    stored_shape: tuple[int, ...]
    samples_first: bool = False
    orientation: int = 1
    convert: object = None
    chunk_bytes: int = 0
    notes: tuple[str, ...] = field(default=())

    @property
    def transposed(self) -> bool:
        """True when rows and columns are swapped on read (Orientation 5-8)."""
        return ORIENTATIONS[self.orientation][0]

    @property
    def is_plain(self) -> bool:
        """True when the stored array is shown as it is (no view needed)."""
        return not self.samples_first and self.orientation == 1 and self.convert is None


def main_series(tf) -> tuple[int, str | None]:
    """The index of the series holding the main image, and a note when there was a choice.

    The main image is the series with the most pixels (height x width of its level 0): a
    thumbnail, label or macro image is smaller than the slide it belongs to, whatever its
    position in the file. Its pyramid levels are the series' levels. The note (None for a
    one-series file) names the chosen series and the others.
    """
    series = list(tf.series)
    sizes = [_yx(s)[0] * _yx(s)[1] for s in series]
    best = max(range(len(series)), key=lambda i: (sizes[i], -i))
    if len(series) == 1:
        return 0, None

    def label(i):
        s = series[i]
        h, w = _yx(s)
        name = f" {s.name!r}" if s.name else ""
        return f"series {i}{name} (page {s.keyframe.index}, {h} x {w})"

    others = ", ".join(label(i) for i in range(len(series)) if i != best)
    return best, (
        f"the file holds {len(series)} images; {label(best)} is analysed, the largest; "
        f"the others are not: {others}"
    )


def check_tiff_data(series, size: int) -> None:
    """Refuse TIFFs whose strips/tiles point past the end of the file (truncated or fake headers):
    :class:`UnsupportedTiff` unless every level of ``series`` holds its data within ``size``
    (the file's length in bytes)."""
    for lv in series.levels:
        for page in lv.pages:
            if page is None:
                continue
            offsets = np.asarray(page.dataoffsets, dtype=np.int64)
            counts = np.asarray(page.databytecounts, dtype=np.int64)
            if len(offsets) == 0 or counts.sum() == 0:
                raise UnsupportedTiff(
                    f"TIFF header describes a {page.shape} image but holds no pixel data"
                )
            expected = int(np.prod(page.chunked))
            if len(offsets) < expected:
                raise UnsupportedTiff(
                    f"TIFF header describes a {page.shape} image of {expected} strips/tiles "
                    f"but lists only {len(offsets)}",
                )
            if page.compression == 1 and counts.sum() < page.size * page.bitspersample // 8:
                raise UnsupportedTiff(
                    f"TIFF header describes a {page.shape} image but holds too few bytes"
                )
            end = int((offsets + counts).max())
            if end > size:
                missing = int(((offsets + counts) > size).sum())
                raise UnsupportedTiff(
                    f"TIFF is truncated: {missing} of {len(offsets)} strips/tiles of a "
                    f"{page.shape} image end beyond the file's {size} bytes",
                )


def _yx(series) -> tuple[int, int]:
    axes, shape = series.axes, series.shape
    if "Y" not in axes or "X" not in axes:
        return 0, 0
    return int(shape[axes.index("Y")]), int(shape[axes.index("X")])


def tiff_layout(level, name: str = "the file") -> TiffLayout:
    """How one tifffile series level (``series.levels[i]``) is stored and what is shown of it.

    Raises:
        UnsupportedTiff: a stack of images, channels that are not RGB/gray, or a colour model
            histoview does not read (module docstring).
    """
    import tifffile

    page = level.keyframe
    axes, stored = level.axes, tuple(int(v) for v in level.shape)
    if axes not in ("YX", "YXS", "SYX"):
        _refuse_axes(axes, stored)
    samples_first = axes == "SYX"
    if samples_first:
        s, h, w = stored
    else:
        h, w = stored[:2]
        s = stored[2] if axes == "YXS" else 1
    dtype = np.dtype(level.dtype)
    extras = tuple(int(e) for e in (page.extrasamples or ()))
    photometric = int(page.photometric)
    P = tifffile.PHOTOMETRIC
    try:
        model = P(photometric).name
    except ValueError:
        model = f"unknown ({photometric})"
    steps, notes = [], []
    out_s, out_dtype = s, dtype
    if photometric in (P.MINISBLACK, P.MINISWHITE):
        if s > 1:
            if s - len(extras) != 1:
                raise UnsupportedTiff(
                    f"{s} grayscale channels (axes {axes}, shape {stored}): a fluorescence or "
                    "multispectral image? histoview reads RGB and grayscale brightfield images"
                )
            steps.append(functools.partial(take_samples, index=0))
            notes.append(f"gray with {len(extras)} extra sample(s): the extra samples are dropped")
            out_s = 1
        white_is_zero = photometric == P.MINISWHITE
        if dtype.kind == "b":
            steps.append(functools.partial(bilevel, white_is_zero=white_is_zero))
            out_dtype = np.dtype(np.uint8)
        elif white_is_zero:
            if dtype.kind != "u":
                raise UnsupportedTiff(
                    f"colour model MINISWHITE (PhotometricInterpretation 0, white is zero) with "
                    f"{dtype} samples is not supported; convert it to black-is-zero grayscale"
                )
            steps.append(functools.partial(invert, maxval=2 ** int(page.bitspersample) - 1))
            notes.append("MINISWHITE (white is zero) grayscale: inverted to black is zero")
    elif photometric == P.RGB:
        if s < 3:
            raise UnsupportedTiff(f"RGB colour model with {s} sample(s) per pixel")
        if s > 3:
            alpha = extras[0] if extras else 0
            out_s = 4 if alpha in (1, 2) else 3  # associated (premultiplied), unassociated
            if s > out_s:
                steps.append(functools.partial(take_samples, index=slice(0, out_s)))
                notes.append(f"{s - out_s} extra sample(s) that are not alpha: dropped")
            if alpha == 1:
                steps.append(unpremultiply)
                notes.append("associated (premultiplied) alpha: un-premultiplied")
    elif photometric == P.PALETTE:
        if s != 1 or page.colormap is None:
            raise UnsupportedTiff(f"palette colour model with {s} samples or without a ColorMap")
        cmap = np.asarray(page.colormap)
        table = (cmap.T >> 8 if cmap.max() > 255 else cmap.T).astype(np.uint8)
        steps.append(functools.partial(palette_to_rgb, table=table))
        out_s, out_dtype = 3, np.dtype(np.uint8)
    elif photometric == P.SEPARATED:
        inkset = int(page.tags.valueof(332, 1))  # InkSet: 1 = CMYK (the default)
        inks = s - len(extras)
        if inkset != 1 or inks != 4:
            raise UnsupportedTiff(
                f"colour model SEPARATED (PhotometricInterpretation 5) with {inks} inks and "
                f"InkSet {inkset} is not CMYK; histoview converts only CMYK to RGB: convert it "
                f"to RGB first ({_CONVERT_HINT.format(name=name, stem=Path(name).stem)})"
            )
        if dtype.kind not in "uf":
            raise UnsupportedTiff(f"CMYK with {dtype} samples is not supported")
        alpha = bool(extras) and extras[0] in (1, 2)
        steps.append(
            functools.partial(
                cmyk_to_rgb,
                maxval=1.0 if dtype.kind == "f" else float(np.iinfo(dtype).max),
                alpha=alpha,
            )
        )
        out_s = 4 if alpha else 3
        notes.append(
            "CMYK (SEPARATED) converted to RGB without an ICC profile: "
            "R = (1 - C)(1 - K), G = (1 - M)(1 - K), B = (1 - Y)(1 - K)"
        )
    elif photometric == P.YCBCR:
        compression = int(page.compression)
        if compression in _YCBCR_DECODED:
            pass  # the JPEG decoder returns RGB
        elif page.is_subsampled:
            raise UnsupportedTiff(
                f"colour model YCBCR (PhotometricInterpretation 6) with chroma subsampling "
                f"{tuple(page.subsampling or ())} and compression "
                f"{tifffile.COMPRESSION(compression).name} is not supported (only JPEG-compressed "
                f"YCbCr is subsampled in practice): convert it to RGB first "
                f"({_CONVERT_HINT.format(name=name, stem=Path(name).stem)})"
            )
        elif dtype != np.uint8 or s != 3:
            raise UnsupportedTiff(f"YCbCr with {s} x {dtype} samples is not supported")
        else:
            coefficients = page.tags.valueof(529, (0.299, 0.587, 0.114))  # YCbCrCoefficients
            steps.append(
                functools.partial(
                    ycbcr_to_rgb,
                    coefficients=_rationals(coefficients, 3),
                    reference=_rationals(page.tags.valueof(532, (0, 255, 128, 255, 128, 255)), 6),
                )
            )
            notes.append("YCbCr converted to RGB (TIFF 6.0 section 21)")
    else:
        raise UnsupportedTiff(
            f"colour model {model} (PhotometricInterpretation {photometric}) is not supported; "
            "histoview reads RGB, grayscale, palette, CMYK and YCbCr TIFFs: convert it to RGB "
            f"first ({_CONVERT_HINT.format(name=name, stem=Path(name).stem)})"
        )
    orientation = int(page.tags.valueof(274, 1))  # Orientation
    if orientation not in ORIENTATIONS:
        notes.append(f"Orientation tag {orientation} is not a TIFF orientation (1-8); ignored")
        orientation = 1
    elif orientation != 1:
        notes.append(
            f"TIFF Orientation {orientation} applied: shown "
            f"{ORIENTATION_NAMES[orientation]} from how it is stored"
        )
    if samples_first and s > 1:
        notes.append("samples stored plane by plane (planar configuration 2)")
    shown_hw = (w, h) if ORIENTATIONS[orientation][0] else (h, w)
    shape = (*shown_hw, out_s) if out_s > 1 else shown_hw
    return TiffLayout(
        shape=shape,
        dtype=out_dtype,
        stored_shape=stored,
        samples_first=samples_first,
        orientation=orientation,
        convert=chain(steps) if steps else None,
        chunk_bytes=int(np.prod(page.chunks)) * max(dtype.itemsize, 1),
        notes=tuple(notes),
    )


def _refuse_axes(axes: str, shape: tuple[int, ...]) -> None:
    images = int(np.prod([n for a, n in zip(axes, shape) if a not in "YXS"]))
    if images > 1:
        raise UnsupportedTiff(
            f"holds a stack of {images} images of the same size (axes {axes}, shape {shape}: "
            "pages, planes, channels or time points); histoview reads one 2-D image: save the "
            "one you want as its own file"
        )
    raise UnsupportedTiff(f"unsupported TIFF layout: axes {axes} shape {shape}")


def _rationals(value, n: int) -> tuple[float, ...]:
    """A TIFF RATIONAL tag's values as floats (tifffile gives numerator/denominator pairs)."""
    v = [float(x) for x in np.ravel(value)]
    if len(v) == 2 * n:
        v = [a / b if b else 0.0 for a, b in zip(v[::2], v[1::2])]
    if len(v) != n:
        raise UnsupportedTiff(f"a colour tag has {len(v)} values where {n} are expected")
    return tuple(v)


# -- reading ----------------------------------------------------------------------------------
def open_level(tf, series: int, level: int, layout: TiffLayout, name: str = "the file"):
    """The array-like of one level (module docstring): a memory map or tifffile's zarr store,
    seen through :class:`LevelView` unless it is shown as stored.

    Raises:
        UnsupportedTiff: compressed strips or tiles larger than :data:`MAX_CHUNK_BYTES`.
    """
    lv = tf.series[series].levels[level]
    base = _memmap_level(tf, lv, layout)
    if base is None:
        if layout.chunk_bytes > MAX_CHUNK_BYTES:
            page = lv.keyframe
            kind = "tile" if page.is_tiled else "strip"
            n = len(page.dataoffsets)
            raise UnsupportedTiff(
                f"stored as {n} compressed {kind}(s) of {layout.chunk_bytes / 2**20:,.0f} MiB "
                f"each ({page.chunks}); any region read would decode a whole {kind}, more than "
                f"histoview's limit of {MAX_CHUNK_BYTES / 2**20:.0f} MiB: convert it to a tiled "
                f"pyramid first, e.g. `vips tiffsave {name} {Path(name).stem}-tiled.tif --tile "
                "--pyramid --compression jpeg --Q 90` (or with bfconvert or QuPath)"
            )
        import zarr

        base = zarr.open(tf.aszarr(series=series, level=level), mode="r")
        if layout.is_plain:
            return base
    return LevelView(base, layout, token=(str(tf.filehandle.path), series, level))


def _memmap_level(tf, lv, layout: TiffLayout):
    """The level's stored array as a read-only memory map, or None when its pixels are not
    stored uncompressed in one contiguous run (tifffile's ``is_final``)."""
    if len(lv.pages) != 1 or not tf.filehandle.is_file:
        return None
    page = lv.pages[0]
    if not page.is_final or page.dtype is None or np.dtype(page.dtype).kind == "b":
        return None
    sep, depth, h, w, contig = page.shaped
    if depth != 1:
        return None
    mm = np.memmap(
        tf.filehandle.path,
        dtype=np.dtype(page.dtype).newbyteorder(tf.byteorder),
        mode="r",
        offset=int(page.dataoffsets[0]),
        shape=tuple(page.shaped),
    )
    arr = mm[:, 0, :, :, 0] if sep > 1 else (mm[0, 0] if contig > 1 else mm[0, 0, :, :, 0])
    return arr if tuple(arr.shape) == layout.stored_shape else None
