"""The IDC patch layout: invasive-ductal-carcinoma patches laid back into each patient's slide.

The IDC data set (Janowczyk & Madabhushi, "Deep learning for digital pathology image
analysis: a comprehensive tutorial with selected use cases", J. Pathol. Inform. 2016;
Cruz-Roa et al., "Automatic detection of invasive ductal carcinoma in whole slide images
with convolutional neural networks", SPIE Medical Imaging 2014; listed as CC0) holds 50 x 50
RGB patches named ``<patient>_idx5_x<col>_y<row>_class<0|1>.png``: ``x`` and ``y`` are the
patch's pixel offset in its patient's slide downsampled to 2.5X, class 1 = the patch lies in
invasive ductal carcinoma (as annotated by a pathologist), 0 = not. Patches at the slide's
edge can be cropped smaller.

:func:`build_mosaic` puts one patient's patches back where they were: an RGB image, white
where no patch exists (glass, or patches the data set left out), with its ground truth per
patch (:attr:`IdcMosaic.patch_labels`, -1 where no patch) and a tissue mask of the pixels a
patch covers. :func:`write_mosaic` saves it as TIFFs that :func:`histoview.io.open_image`
(and so the viewer) reads, calibrated:

**Pixel size** (:data:`IDC_PIXEL_SIZE_UM` = 4.0 um/px) is an *estimate*: the data set's
description says only that the slides were scanned at 40X and the patches taken at 2.5X,
a 16-fold downsample, and gives no calibration; 40X whole-slide scanners digitise at about
0.25 um/px (MoNuSeg's 40X tiles: 0.2456), so 2.5X is about 16 x 0.25 = 4.0 um/px. Treat it
as good to some 10 %, not as a measurement.

This module is data only (no training code); the training dataset of these patches, with
its patient-level split, is the ``idc`` layout of :mod:`histoview.training.datasets`.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: an IDC patch file name (without its suffix)
IDC_NAME = re.compile(r"^(?P<patient>\d+)_idx5_x(?P<x>\d+)_y(?P<y>\d+)_class(?P<label>[01])$")
#: the edge of a whole IDC patch, pixels
IDC_PATCH_SIZE = 50
#: the assumed pixel size of IDC's 2.5X slides, um/px (an estimate: module docstring)
IDC_PIXEL_SIZE_UM = 4.0
#: why :data:`IDC_PIXEL_SIZE_UM` is what it is (written beside every mosaic)
IDC_PIXEL_SIZE_BASIS = (
    "estimate: 40X scans (about 0.25 um/px) downsampled 16-fold to 2.5X; the data set's "
    "description gives the magnifications, not a calibration"
)
#: class names of the patches' labels 0 and 1
IDC_CLASSES = ("non_idc", "idc")
IDC_CITATION = (
    "Janowczyk & Madabhushi, J. Pathol. Inform. 2016; Cruz-Roa et al., SPIE Medical Imaging "
    "2014. IDC patches listed as CC0."
)
#: ground-truth map values written by :func:`write_mosaic` (``<stem>.idc.tif``)
TRUTH_NO_PATCH, TRUTH_NON_IDC, TRUTH_IDC = 0, 1, 2


@dataclass(frozen=True)
class IdcPatch:
    """One IDC patch: its patient, offset (x, y) in the 2.5X slide (pixels), label (1: IDC)
    and file."""

    patient: str
    x: int
    y: int
    label: int
    path: Path | None = None


def parse_idc_name(name: str | os.PathLike) -> IdcPatch | None:
    """The patch a file name describes (``8863_idx5_x1001_y1051_class0.png``), or None when
    the name is not an IDC patch name."""
    path = Path(name)
    m = IDC_NAME.match(path.stem)
    if m is None or path.suffix.lower() != ".png":
        return None
    return IdcPatch(m["patient"], int(m["x"]), int(m["y"]), int(m["label"]), path)


def find_idc_patches(root: str | os.PathLike) -> list[IdcPatch]:
    """Every IDC patch file below ``root`` (any folder layout: ``<patient>/<0|1>/``, flat,
    or ``0/`` and ``1/``), sorted by patient, row, column. Other files are ignored.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: no IDC patch names below ``root``; or a patch's class folder (``0`` or
            ``1``) contradicts the class in its name.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: IDC folder not found")
    patches = []
    for path in root.rglob("*.png"):
        patch = parse_idc_name(path)
        if patch is None:
            continue
        if path.parent.name in ("0", "1") and int(path.parent.name) != patch.label:
            raise ValueError(
                f"{path}: in class folder {path.parent.name} but named class{patch.label}"
            )
        patches.append(patch)
    if not patches:
        raise ValueError(
            f"{root}: no IDC patches found (expected <patient>_idx5_x<col>_y<row>_class<0|1>.png)"
        )
    return sorted(patches, key=lambda p: (p.patient, p.y, p.x, p.label))


def by_patient(patches: Iterable[IdcPatch]) -> dict[str, list[IdcPatch]]:
    """Patches grouped by patient (patients sorted)."""
    groups: dict[str, list[IdcPatch]] = defaultdict(list)
    for p in patches:
        groups[p.patient].append(p)
    return dict(sorted(groups.items()))


@dataclass
class IdcMosaic:
    """One patient's patches laid back into their 2.5X slide.

    Attributes:
        patient: the patient id.
        image: (H, W, 3) uint8 RGB; white (255) where no patch exists.
        patch_labels: (rows, cols) int8 ground truth per patch cell: 1 IDC, 0 non-IDC,
            -1 no patch. Cell (r, c) covers pixels [r p, (r + 1) p) x [c p, (c + 1) p).
        tissue: (H, W) bool, the pixels a patch covers (edge crops: only their own pixels).
        origin: (x, y) slide offset of pixel (0, 0), in 2.5X pixels (the smallest patch
            offsets of the patient).
        patch_size: p, the cell edge in pixels (50).
        pixel_size_um: um/px (:data:`IDC_PIXEL_SIZE_UM`, an estimate).
    """

    patient: str
    image: np.ndarray
    patch_labels: np.ndarray
    tissue: np.ndarray
    origin: tuple[int, int]
    patch_size: int = IDC_PATCH_SIZE
    pixel_size_um: float = IDC_PIXEL_SIZE_UM

    @property
    def label_map(self) -> np.ndarray:
        """(H, W) int8: each patch's label over its pixels, -1 where no patch."""
        p = self.patch_size
        cells = np.repeat(np.repeat(self.patch_labels, p, axis=0), p, axis=1)
        out = cells[: self.image.shape[0], : self.image.shape[1]].copy()
        out[~self.tissue] = -1
        return out

    @property
    def idc_mask(self) -> np.ndarray:
        """(H, W) bool: pixels of IDC patches (the ground truth localisation is scored on)."""
        return self.label_map == 1

    def counts(self) -> dict[str, int]:
        """Patches per class: ``{"non_idc": n0, "idc": n1}``."""
        return {c: int((self.patch_labels == i).sum()) for i, c in enumerate(IDC_CLASSES)}


def _read_patch(path: Path) -> np.ndarray:
    from histoview.io import read_rgb

    return read_rgb(path)[0]


def build_mosaic(
    patches: Iterable[IdcPatch],
    *,
    patient: str | None = None,
    read: Callable[[Path], np.ndarray] | None = None,
) -> IdcMosaic:
    """Lay one patient's patches into an :class:`IdcMosaic` (module docstring).

    Args:
        patches: IDC patches (with files); those of other patients than ``patient`` are
            skipped. Without ``patient`` they must all be one patient's.
        patient: whose mosaic to build.
        read: ``read(path) -> (h, w, 3) uint8`` (default :func:`histoview.io.read_rgb`).

    Raises:
        ValueError: no patches (of that patient), patches of several patients without
            ``patient``, offsets off the patient's 50-pixel grid, two patches at one place,
            or a patch larger than the grid cell.
    """
    patches = list(patches)
    patients = sorted({p.patient for p in patches})
    if patient is None:
        if len(patients) != 1:
            listed = ", ".join(patients[:8]) + (" ..." if len(patients) > 8 else "")
            raise ValueError(
                f"patches of {len(patients)} patients ({listed}): say which patient's mosaic"
                if patients
                else "no IDC patches given"
            )
        patient = patients[0]
    mine = [p for p in patches if p.patient == str(patient)]
    if not mine:
        raise ValueError(f"no IDC patches of patient {patient} (patients: {', '.join(patients)})")
    read = read or _read_patch
    size = IDC_PATCH_SIZE
    x0, y0 = min(p.x for p in mine), min(p.y for p in mine)
    off = [p for p in mine if (p.x - x0) % size or (p.y - y0) % size]
    if off:
        p = off[0]
        raise ValueError(
            f"patient {patient}: patch at x={p.x}, y={p.y} is off the {size}-pixel grid that "
            f"starts at x={x0}, y={y0} ({len(off)} such patches)"
        )
    cols = (max(p.x for p in mine) - x0) // size + 1
    rows = (max(p.y for p in mine) - y0) // size + 1
    labels = np.full((rows, cols), -1, np.int8)
    image = np.full((rows * size, cols * size, 3), 255, np.uint8)
    tissue = np.zeros((rows * size, cols * size), bool)
    for p in mine:
        r, c = (p.y - y0) // size, (p.x - x0) // size
        if labels[r, c] >= 0:
            raise ValueError(f"patient {patient}: two patches at x={p.x}, y={p.y}")
        rgb = np.asarray(read(p.path))
        h, w = rgb.shape[:2]
        if h > size or w > size or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"{p.path}: {rgb.shape} is not an RGB patch of at most {size} px")
        image[r * size : r * size + h, c * size : c * size + w] = rgb
        tissue[r * size : r * size + h, c * size : c * size + w] = True
        labels[r, c] = p.label
    # trim the last row/column to what edge crops really cover
    ys, xs = np.nonzero(tissue.any(axis=1))[0], np.nonzero(tissue.any(axis=0))[0]
    image, tissue = image[: ys[-1] + 1, : xs[-1] + 1], tissue[: ys[-1] + 1, : xs[-1] + 1]
    return IdcMosaic(str(patient), image, labels, tissue, (x0, y0))


def mosaic_paths(stem: str | os.PathLike) -> dict[str, Path]:
    """The files of a written mosaic: ``image`` (``STEM.tif``), ``truth`` (``STEM.idc.tif``)
    and ``meta`` (``STEM.json``)."""
    stem = Path(stem)
    stem = stem.with_name(stem.name.removesuffix(".tif"))
    return {
        "image": stem.with_name(stem.name + ".tif"),
        "truth": stem.with_name(stem.name + ".idc.tif"),
        "meta": stem.with_name(stem.name + ".json"),
    }


def write_mosaic(
    mosaic: IdcMosaic,
    stem: str | os.PathLike,
    *,
    overwrite: bool = False,
    jpeg_quality: int | None = None,
) -> dict:
    """Write ``mosaic`` as three files (:func:`mosaic_paths`), each whole or absent:

    * ``STEM.tif``: the RGB image, a tiled pyramidal BigTIFF whose resolution tags give
      ``pixel_size_um`` (:func:`histoview.io.open_image` reads it as the file's calibration);
      lossless (zlib), or with ``jpeg_quality`` one JPEG-compressed level (about a third of
      the size at 95: the bundled sample; its pixels then differ a little from the patches');
    * ``STEM.idc.tif``: the ground truth per pixel, uint8, same size and pixel size:
      0 no patch, 1 non-IDC patch, 2 IDC patch (:data:`TRUTH_IDC`);
    * ``STEM.json``: patient, pixel size and its basis, patch size, origin, the per-patch
      labels (rows of -1/0/1), patch counts and the data set's citation and licence.

    Returns the paths written. Existing files are kept (FileExistsError) unless ``overwrite``.
    """
    import tifffile

    from histoview.io.files import atomic_write, write_text
    from histoview.io.pyramid import write_pyramidal_tiff

    paths = mosaic_paths(stem)
    if not overwrite:
        for path in paths.values():
            if path.exists():
                raise FileExistsError(f"{path} exists (pass overwrite=True to replace it)")
    truth = np.where(mosaic.tissue, np.where(mosaic.label_map == 1, TRUTH_IDC, TRUTH_NON_IDC), 0)
    res = 1e4 / mosaic.pixel_size_um  # pixels per centimetre
    writer = atomic_write(paths["image"], None, overwrite=True)
    with writer as tmp:
        if jpeg_quality is None:
            write_pyramidal_tiff(tmp, mosaic.image, pixel_size_um=mosaic.pixel_size_um)
        else:
            tifffile.imwrite(
                tmp,
                mosaic.image,
                photometric="rgb",
                tile=(256, 256),
                compression="jpeg",
                compressionargs={"level": int(jpeg_quality)},
                resolution=(res, res),
                resolutionunit="CENTIMETER",
            )
    writer = atomic_write(paths["truth"], None, overwrite=True)
    with writer as tmp:
        tifffile.imwrite(
            tmp,
            truth.astype(np.uint8),
            photometric="minisblack",
            compression="zlib",
            resolution=(res, res),
            resolutionunit="CENTIMETER",
        )
    meta = {
        "format": "histoview-idc-mosaic",
        "patient": mosaic.patient,
        "pixel_size_um": mosaic.pixel_size_um,
        "pixel_size_basis": IDC_PIXEL_SIZE_BASIS,
        "magnification": "2.5X",
        "patch_size": mosaic.patch_size,
        "origin_xy": list(mosaic.origin),
        "shape": list(mosaic.image.shape[:2]),
        "classes": list(IDC_CLASSES),
        "patch_counts": mosaic.counts(),
        "patch_labels": mosaic.patch_labels.tolist(),
        "truth_values": {"no_patch": TRUTH_NO_PATCH, "non_idc": TRUTH_NON_IDC, "idc": TRUTH_IDC},
        "citation": IDC_CITATION,
        **({"jpeg_quality": int(jpeg_quality)} if jpeg_quality is not None else {}),
    }
    write_text(paths["meta"], json.dumps(meta, indent=1) + "\n", overwrite=True)
    return paths


def read_mosaic(stem: str | os.PathLike) -> IdcMosaic:
    """A mosaic :func:`write_mosaic` wrote (``STEM``, or ``STEM.tif``), image and truth."""
    from histoview.io import open_image, read_rgb

    paths = mosaic_paths(stem)
    meta = json.loads(paths["meta"].read_text())
    image, src = read_rgb(paths["image"])
    with open_image(paths["truth"]) as truth_src:
        truth = np.asarray(truth_src.read_level(0))
    return IdcMosaic(
        patient=str(meta["patient"]),
        image=image,
        patch_labels=np.asarray(meta["patch_labels"], np.int8),
        tissue=truth != TRUTH_NO_PATCH,
        origin=tuple(meta["origin_xy"]),
        patch_size=int(meta["patch_size"]),
        pixel_size_um=float(src.pixel_size_um or meta["pixel_size_um"]),
    )


# -- regions of a patient's slide: the bags of A-MIL ---------------------------------------------
@dataclass(frozen=True)
class IdcRegion:
    """A square region of ``cells`` x ``cells`` patch cells of one patient's mosaic (a bag).

    Attributes:
        patient: the patient id.
        row, col: the region's top-left cell in the patient's patch grid (the grid of
            :func:`build_mosaic`: cell (0, 0) at the patient's smallest offsets).
        cells: the region's edge in cells (``cells * 50`` pixels).
        patches: patches inside the region (the rest is glass, white).
        idc_patches: IDC patches inside it.
    """

    patient: str
    row: int
    col: int
    cells: int
    patches: int
    idc_patches: int

    @property
    def label(self) -> int:
        """1 when the region holds any IDC patch (a positive bag), else 0."""
        return int(self.idc_patches > 0)


def patch_grid(patches: Iterable[IdcPatch]) -> np.ndarray:
    """(rows, cols) int8 labels of one patient's patches on its grid (-1: no patch), from the
    file names alone (no image is read); the grid of :func:`build_mosaic`."""
    mine = list(patches)
    x0, y0 = min(p.x for p in mine), min(p.y for p in mine)
    s = IDC_PATCH_SIZE
    grid = np.full(
        ((max(p.y for p in mine) - y0) // s + 1, (max(p.x for p in mine) - x0) // s + 1),
        -1,
        np.int8,
    )
    for p in mine:
        grid[(p.y - y0) // s, (p.x - x0) // s] = p.label
    return grid


def idc_regions(
    patches: Iterable[IdcPatch], *, cells: int = 4, stride: int = 2, min_patches: int | None = None
) -> list[IdcRegion]:
    """Every region of ``cells`` x ``cells`` cells, ``stride`` cells apart, of each patient's
    grid that holds at least ``min_patches`` patches (default: half the region's cells), in
    patient, row, column order; from the file names alone. A region's label is whether it
    holds IDC (:attr:`IdcRegion.label`), the bag label of multiple-instance learning.

    Raises:
        ValueError: ``cells`` or ``stride`` below 1.
    """
    if cells < 1 or stride < 1:
        raise ValueError(f"cells and stride must be at least 1, got {cells} and {stride}")
    need = int(np.ceil(cells * cells / 2)) if min_patches is None else int(min_patches)
    out = []
    for patient, mine in by_patient(patches).items():
        grid = patch_grid(mine)
        rows, cols = grid.shape
        for r in range(0, max(rows - cells, 0) + 1, stride):
            for c in range(0, max(cols - cells, 0) + 1, stride):
                window = grid[r : r + cells, c : c + cells]
                n = int((window >= 0).sum())
                if n >= max(need, 1):
                    out.append(IdcRegion(patient, r, c, cells, n, int((window == 1).sum())))
    return out


@functools.lru_cache(maxsize=4)
def _patient_mosaic(root: str, patient: str) -> IdcMosaic:
    return build_mosaic(_root_patches(root), patient=patient)


@functools.lru_cache(maxsize=2)
def _root_patches(root: str) -> tuple[IdcPatch, ...]:
    return tuple(find_idc_patches(root))


def region_image(root: str | os.PathLike, region: IdcRegion) -> np.ndarray:
    """(cells * 50, cells * 50, 3) uint8 RGB of ``region`` of its patient's mosaic built from
    the patches below ``root`` (white where no patch). The last few mosaics and the folder's
    patch list are kept in memory (per process), so the regions of one patient are cut from
    one mosaic built once."""
    mosaic = _patient_mosaic(str(Path(root)), region.patient)
    s = mosaic.patch_size
    out = np.full((region.cells * s, region.cells * s, 3), 255, np.uint8)
    crop = mosaic.image[region.row * s : (region.row + region.cells) * s, region.col * s :]
    crop = crop[:, : region.cells * s]
    out[: crop.shape[0], : crop.shape[1]] = crop
    return out
