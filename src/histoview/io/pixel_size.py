"""Pixel sizes from image metadata, and which values to trust.

**Pixel size** (micrometres per pixel of level 0, kept as (y, x)) comes, in this order, from
the caller's override, OME-XML ``PhysicalSizeX`` / ``PhysicalSizeY`` with their units, an
Aperio ``MPP =`` entry in the image description, or the resolution tags (TIFF
``XResolution`` / ``YResolution`` / ``ResolutionUnit``, PNG ``pHYs``, JPEG JFIF density).
Only a value that can be a microscope calibration is trusted: resolution tags without a
unit, round screen/print values (72, 96, 150, 300, 600... pixels per inch, what most image
tools write by default: 72 dpi would be 352.8 um/px) and anything outside
:data:`PLAUSIBLE_PIXEL_SIZE_UM` (OME-XML values up to :data:`PLAUSIBLE_OME_MAX_UM`, for coarse
maps) are ignored, and
:attr:`~histoview.io.image.ImageSource.pixel_size_note` says so. Pixels whose y and x sizes
differ by more than :data:`ANISOTROPY_TOLERANCE` keep both (the viewer shows them to scale) but
:meth:`~histoview.io.image.ImageSource.check_square_pixels` refuses them
for analysis: histoview's models assume square pixels. An unknown pixel size is ``None``;
:func:`histoview.models.inputs.resolve_pixel_size` decides what to do then (estimate it from
the image). The objective power (Aperio ``AppMag``, OME ``NominalMagnification``) is kept
when the file says it.

:func:`tiff_calibration` reads a TIFF's, :func:`plain_calibration` a PNG/JPEG's (an opened
Pillow image); both return a :class:`PixelCalibration`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

#: pixel sizes (um/px) a histology image can have: ~0.04 (BreakHis 400X, oil objectives) to 20
#: (a slide thumbnail); a file's value outside this range is not a microscope calibration.
PLAUSIBLE_PIXEL_SIZE_UM = (0.04, 20.0)
#: the upper bound for OME-XML ``PhysicalSizeX/Y``, which carry their unit and are written on
#: purpose: maps and masks at coarse resolutions (an attention map at one value per 112 um patch,
#: a tissue mask at 8-32 um/px, :func:`histoview.io.ome_tiff.write_ome_tiff`) are calibrated too.
PLAUSIBLE_OME_MAX_UM = 10_000.0
#: pixels per inch that screen and print software write by default (not a calibration).
DPI_DEFAULTS = (
    72,
    96,
    100,
    120,
    144,
    150,
    180,
    200,
    240,
    250,
    300,
    350,
    360,
    400,
    480,
    600,
    720,
    800,
    1200,
    2400,
    4800,
)
#: y and x pixel sizes further apart than this fraction of their mean are anisotropic.
ANISOTROPY_TOLERANCE = 0.02
# micrometres per unit of OME-XML UnitsLength and of the TIFF/PNG resolution units
_UM_PER_UNIT = {
    "pm": 1e-6,
    "Å": 1e-4,
    "nm": 1e-3,
    "µm": 1.0,
    "um": 1.0,
    "μm": 1.0,
    "micron": 1.0,
    "mm": 1e3,
    "cm": 1e4,
    "dm": 1e5,
    "m": 1e6,
    "in": 25_400.0,
}
_TIFF_UNITS = {
    2: ("inch", 25_400.0),
    3: ("centimetre", 1e4),
    4: ("millimetre", 1e3),
    5: ("micrometre", 1.0),
}


@dataclass(frozen=True)
class PixelCalibration:
    """What a file says about its physical pixel size.

    Attributes:
        yx_um: trusted (y, x) micrometres per pixel of level 0, or None (unknown).
        origin: where the value came from (e.g. ``"OME-XML PhysicalSizeX/Y"``), or None.
        note: why a value in the file was ignored or adjusted, or None.
        objective_power: the objective's magnification when the file says it (e.g. 40.0).
        position_um: (y, x) micrometres of the image's top-left corner on the slide it was
            made from (OME-XML ``Plane`` PositionY/X, e.g. a map of a region), or None.
    """

    yx_um: tuple[float, float] | None = None
    origin: str | None = None
    note: str | None = None
    objective_power: float | None = None
    position_um: tuple[float, float] | None = None


def _fmt_um(v: float) -> str:
    return f"{v:.4g} um/px"


def _plausible(
    y_um: float, x_um: float, what: str, hi: float = PLAUSIBLE_PIXEL_SIZE_UM[1]
) -> tuple[tuple[float, float] | None, str | None]:
    """``((y, x), None)`` when both can be a microscope calibration, else ``(None, note)``."""
    lo = PLAUSIBLE_PIXEL_SIZE_UM[0]
    for v in (y_um, x_um):
        if not (np.isfinite(v) and lo <= v <= hi):
            size = _fmt_um(x_um) if x_um == y_um else f"{_fmt_um(y_um)} (y) x {_fmt_um(x_um)} (x)"
            return None, (
                f"{what}: {size} is outside the {lo:g}-{hi:g} um/px of histology images, not a "
                "microscope calibration; ignored"
            )
    return (float(y_um), float(x_um)), None


def _from_resolution(
    x_per_unit: float, y_per_unit: float, unit: str | None, um_per_unit: float | None, what: str
) -> tuple[tuple[float, float] | None, str | None]:
    """Trusted (y, x) um/px from pixels-per-unit resolution values, or ``(None, note)``."""
    if not (x_per_unit > 0 and y_per_unit > 0):
        return None, f"{what}: zero or missing; ignored"
    if um_per_unit is None:
        if x_per_unit == y_per_unit == 1:
            return None, None  # tifffile's and libtiff's placeholder: no resolution given
        return None, f"{what}: {x_per_unit:.6g} pixels per unspecified unit, no unit; ignored"
    y_um, x_um = um_per_unit / y_per_unit, um_per_unit / x_per_unit
    if unit == "inch":
        for value in {x_per_unit, y_per_unit}:
            dpi = min(DPI_DEFAULTS, key=lambda d: abs(d - value))
            if abs(dpi - value) <= 0.005 * dpi:
                return None, (
                    f"{what}: {value:.4g} pixels per inch ({_fmt_um(25_400.0 / value)}) is a "
                    "screen/print default that image tools write, not a microscope calibration; "
                    "ignored"
                )
    return _plausible(y_um, x_um, what)


def is_anisotropic(yx: tuple[float, float]) -> bool:
    y, x = yx
    return abs(y - x) > ANISOTROPY_TOLERANCE * 0.5 * (y + x)


def join_notes(notes: list) -> str | None:
    """The non-empty notes joined with ``"; "``, or None when there are none."""
    notes = [n for n in notes if n]
    return "; ".join(notes) if notes else None


def plain_calibration(im) -> PixelCalibration:
    """PNG ``pHYs`` / JPEG JFIF density as a calibration (Pillow gives per-inch ``dpi`` when
    the file has a unit, only ``aspect`` when it has none)."""
    what = "PNG pHYs" if im.format == "PNG" else f"{im.format} density"
    dpi = im.info.get("dpi")
    if dpi:
        try:
            x, y = (float(v) for v in dpi)
        except (TypeError, ValueError):
            return PixelCalibration(note=f"{what}: not a pair of numbers ({dpi!r}); ignored")
        yx, note = _from_resolution(x, y, "inch", 25_400.0, what)
        if yx is not None and im.format == "PNG":
            # pHYs stores pixels per metre; Pillow's dpi rounds through inches
            x_m, y_m = x / 0.0254, y / 0.0254
            yx = (1e6 / y_m, 1e6 / x_m)
        return PixelCalibration(yx, what if yx else None, note)
    if im.info.get("aspect"):
        return PixelCalibration(note=f"{what}: an aspect ratio without a unit; no pixel size")
    return PixelCalibration()


def tiff_calibration(tf, page) -> PixelCalibration:
    """The pixel size a TIFF states (module docstring): OME-XML, then Aperio, then resolution
    tags; the first trusted value wins, and notes of ignored ones are kept."""
    notes = []
    power = None
    if tf.is_ome and tf.ome_metadata:
        yx, note, power = _ome_pixel_size(tf.ome_metadata)
        if yx is not None:
            where = ome_position_um(tf.ome_metadata)
            return PixelCalibration(yx, "OME-XML PhysicalSizeX/PhysicalSizeY", note, power, where)
        notes.append(note)
    desc = page.description or ""
    m = re.search(r"(?:^|\|)\s*AppMag\s*=\s*([0-9.]+)", desc)
    if m:
        try:
            power = float(m.group(1)) or power
        except ValueError:
            pass
    m = re.search(r"(?:^|\|)\s*MPP\s*=\s*([0-9.eE+-]+)", desc)
    if m:
        try:
            mpp = float(m.group(1))
        except ValueError:
            mpp = float("nan")
        yx, note = _plausible(mpp, mpp, "Aperio MPP")
        if yx is not None:
            return PixelCalibration(yx, "Aperio MPP", join_notes(notes), power)
        notes.append(note)
    tags = page.tags
    if "XResolution" in tags:
        unit_code = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2  # TIFF 6.0
        unit, um_per_unit = _TIFF_UNITS.get(unit_code, (None, None))
        x = _rational(tags["XResolution"].value)
        y = _rational(tags["YResolution"].value) if "YResolution" in tags else x
        yx, note = _from_resolution(x, y, unit, um_per_unit, "TIFF resolution tags")
        if yx is not None:
            return PixelCalibration(
                yx, f"TIFF resolution tags (per {unit})", join_notes(notes), power
            )
        notes.append(note)
    return PixelCalibration(None, None, join_notes(notes), power)


def _rational(value) -> float:
    if isinstance(value, tuple):
        num, den = value[:2]
        return num / den if den else 0.0
    return float(value)


def by_local_tag(root) -> dict[str, list]:
    """The elements under an OME-XML ``root`` (parsed with ``xml.etree``) by tag name without
    the namespace (``"Pixels"``, ``"Plane"``, ``"MapAnnotation"``), in document order."""
    elements: dict[str, list] = {}
    for el in root.iter():
        elements.setdefault(el.tag.rsplit("}", 1)[-1], []).append(el)
    return elements


def _ome_pixel_size(xml: str) -> tuple[tuple[float, float] | None, str | None, float | None]:
    """``((y, x) um/px or None, note, objective power)`` of the first OME image."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        return None, f"OME-XML: cannot be parsed ({exc}); pixel size ignored", None
    elements = by_local_tag(root)
    power = None
    for el in elements.get("Objective", []):
        if el.get("NominalMagnification"):
            try:
                power = float(el.get("NominalMagnification"))
            except ValueError:
                pass
            break
    pixels = next(iter(elements.get("Pixels", [])), None)
    if pixels is None or pixels.get("PhysicalSizeX") is None:
        return None, None, power
    sizes = []
    for axis in ("X", "Y"):
        raw = pixels.get(f"PhysicalSize{axis}")
        if raw is None:
            sizes.append(None)
            continue
        unit = pixels.get(f"PhysicalSize{axis}Unit", "µm")
        factor = _UM_PER_UNIT.get(unit)
        if factor is None:
            return None, f"OME-XML PhysicalSize{axis}: unknown unit {unit!r}; ignored", power
        try:
            sizes.append(float(raw) * factor)
        except ValueError:
            return None, f"OME-XML PhysicalSize{axis}: {raw!r} is not a number; ignored", power
    x, y = sizes
    note = None
    if y is None:
        y, note = x, "OME-XML: PhysicalSizeX only, square pixels assumed"
    yx, bad = _plausible(y, x, "OME-XML PhysicalSizeX/PhysicalSizeY", PLAUSIBLE_OME_MAX_UM)
    return yx, bad or note, power


def ome_position_um(xml: str) -> tuple[float, float] | None:
    """(y, x) micrometres of the first OME ``Plane``'s PositionY/PositionX (where the image's
    top-left corner lies on the slide it came from), or None when absent or not in a length
    unit."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    plane = next(iter(by_local_tag(root).get("Plane", [])), None)
    if plane is None or plane.get("PositionX") is None or plane.get("PositionY") is None:
        return None
    out = []
    for axis in ("Y", "X"):
        factor = _UM_PER_UNIT.get(plane.get(f"Position{axis}Unit", "µm"))
        try:
            value = float(plane.get(f"Position{axis}")) * factor
        except (TypeError, ValueError):
            return None
        if not math.isfinite(value):
            return None
        out.append(value)
    return (out[0], out[1])
