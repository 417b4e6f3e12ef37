"""A synthetic whole slide with exact ground truth: the phantom, at gigapixel size.

``write_phantom_slide(out, size=50000, seed=0)`` writes a tiled pyramidal BigTIFF of
``size`` x ``size`` pixels at ``pixel_size_um`` (0.25 um/px: a 40X scan), tile by tile, never
the whole slide in memory, plus its ground truth beside it. It is for testing and
benchmarking whole-slide explanation: the bundled demo weights were trained on
:func:`~histoview.preprocessing.phantom.make_phantom` images, and the slide's tissue, read at
their 0.5 um/px, is drawn by the same code, so they find its lesions. Nothing comes from any
dataset.

What is on it (layout: :mod:`._phantom_slide_layout`)
    Tissue islands (irregular smooth blobs, 1-6, about a third of the slide) on white glass;
    in them benign breast tissue (stroma, lymphocytes, benign glands) and lesions 300 um to
    3 mm across at seeded random places: ``in situ`` (a zone of expanded ducts full of tumour
    cells inside a closed myoepithelial ring) and ``invasive`` (an irregular region where
    tumour cells infiltrate the stroma in cords). Glands, ducts, nuclei, stroma and staining
    are ``make_phantom``'s (:mod:`._phantom_slide_render`).

How it is drawn
    Everything is a function of global coordinates, so any window gives the same pixels and
    tiles agree across their borders: the layout is drawn once from ``default_rng(seed)``;
    glands and ducts are drawn on their own canvases with generators of their own; the
    nuclei outside them are placed slide-wide by cells in a fixed order
    (:mod:`._phantom_slide_nuclei`); noise fields are cut from seeded chunks
    (:mod:`._phantom_slide_noise`). The same arguments give byte-identical files.

    **Honest about resolution**: with ``pixel_size_um`` < 0.35 the tissue is rendered at
    twice the pixel size (0.5 um/px by default, the demo models' resolution) and level 0 is
    that render upsampled 2x (linear interpolation); level 1 *is* the render. Level 0 thus
    holds no detail finer than 0.5 um/px. Larger pixel sizes are rendered directly. Further
    levels are 2 x 2 means of the level above (:mod:`._phantom_slide_pyramid`).

Ground truth (beside ``out``, named after its stem)
    * ``<stem>.labels.tif``: uint8 label map at ``LABEL_PIXEL_SIZE_UM`` (8 um/px, in the TIFF
      resolution tags): 0 glass, 1 benign tissue, 2 in situ, 3 invasive
      (:data:`SLIDE_CLASSES`); pixel (i, j) covers level-0 pixels
      [i * k, (i + 1) * k) with k = 8 um / pixel size.
    * ``<stem>.lesions.geojson``: one QuPath annotation per lesion (``classification``
      ``{"name": "in situ" | "invasive"}``), polygons in level-0 pixels (x = column,
      y = row): the union of the ducts for in situ, the region's outline for invasive.
    * ``<stem>.phantom.json``: seed, size, pixel sizes, pyramid, layout (lesions with their
      kind, centre, size, area), the files, the time it took.

    :func:`load_ground_truth` reads them back (:class:`GroundTruth`). The label map and the
    pixels agree to within the few micrometres of fine noise the renderer adds at edges.

Speed and memory (measured on one busy core, zlib tiles, CPU time)
    10,000 px: 13 s, peak resident memory 0.26 GiB; 25,000 px: 70 s, 0.39 GiB; 50,000 px:
    150-200 s, 0.5-0.6 GiB (tissue on 22-31 % of the slide; glass costs next to nothing).
    About a third of the time is zlib; ``compression="jpeg"`` is ~30 % faster and ~6x
    smaller. Memory holds one band of blocks (1024 render rows, the whole width), one strip
    per level and one block's work; the lower levels are spooled through temporary files in
    the output's folder (~0.3 x level 0's raw size on disk while it runs).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from histoview.preprocessing._phantom_slide_layout import GRID_UM as LABEL_PIXEL_SIZE_UM

SLIDE_CLASSES = ("glass", "benign", "in_situ", "invasive")
#: bumped whenever the same arguments would give different pixels (caches key on it)
PHANTOM_SLIDE_VERSION = 1
#: QuPath class names of the lesions in the GeoJSON
LESION_NAMES = {"in_situ": "in situ", "invasive": "invasive"}
_COLOURS = {"in_situ": [60, 120, 255], "invasive": [200, 30, 30]}


@dataclass(frozen=True)
class PhantomSlide:
    """A written phantom slide: where its files are and what is on it."""

    path: Path
    labels_path: Path
    lesions_path: Path
    info_path: Path
    shape: tuple[int, int]
    pixel_size_um: float
    seed: int
    levels: tuple[tuple[int, int], ...]
    lesions: tuple[dict, ...]
    seconds: float


@dataclass(frozen=True)
class GroundTruth:
    """A phantom slide's ground truth (module docstring). ``labels``: (h, w) uint8 at
    ``pixel_size_um``; ``slide_shape`` and ``slide_pixel_size_um``: the slide's level 0;
    ``lesions``: the GeoJSON features."""

    labels: np.ndarray
    pixel_size_um: float
    slide_shape: tuple[int, int]
    slide_pixel_size_um: float
    lesions: list = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def label_map(self, pixel_size_um: float) -> np.ndarray:
        """The labels resampled (nearest) to ``pixel_size_um``: shape = the slide's extent
        divided by it, rounded up."""
        if not pixel_size_um > 0:
            raise ValueError(f"pixel size must be > 0 um, got {pixel_size_um}")
        extent = np.array(self.slide_shape) * self.slide_pixel_size_um
        n = np.ceil(extent / pixel_size_um - 1e-9).astype(int)
        idx = [
            np.minimum(((np.arange(k) + 0.5) * pixel_size_um / self.pixel_size_um).astype(int),
                       self.labels.shape[a] - 1)
            for a, k in enumerate(n)
        ]  # fmt: skip
        return self.labels[np.ix_(*idx)]

    def lesion_mask(self, pixel_size_um: float) -> np.ndarray:
        """Bool mask of in situ and invasive lesions at ``pixel_size_um`` (nearest)."""
        return self.label_map(pixel_size_um) >= 2

    def fractions(self, location, size) -> np.ndarray:
        """Fractions of glass, benign, in situ and invasive in a rectangle of level-0 pixels
        (``location`` (row, col), ``size`` (height, width)), from the label map."""
        k = self.pixel_size_um / self.slide_pixel_size_um
        r0, c0 = (int(np.floor(v / k)) for v in location)
        r1 = int(np.ceil((location[0] + size[0]) / k))
        c1 = int(np.ceil((location[1] + size[1]) / k))
        sub = self.labels[max(r0, 0) : max(r1, 0), max(c0, 0) : max(c1, 0)]
        counts = np.bincount(sub.ravel(), minlength=len(SLIDE_CLASSES)).astype(float)
        outside = (r1 - r0) * (c1 - c0) - sub.size
        counts[0] += outside
        return counts / max(counts.sum(), 1)


def ground_truth_paths(slide_path) -> dict[str, Path]:
    """Where a slide's ground-truth files are: ``labels``, ``lesions``, ``info``."""
    from histoview.io.files import output_stem

    slide_path = Path(slide_path)
    stem = output_stem(slide_path)
    d = slide_path.parent
    return {
        "labels": d / f"{stem}.labels.tif",
        "lesions": d / f"{stem}.lesions.geojson",
        "info": d / f"{stem}.phantom.json",
    }


def load_ground_truth(slide_path) -> GroundTruth:
    """Read the ground truth written beside a phantom slide (raises FileNotFoundError naming
    the missing file)."""
    import tifffile

    paths = ground_truth_paths(slide_path)
    for p in paths.values():
        if not p.exists():
            raise FileNotFoundError(f"{p}: no phantom ground truth beside {slide_path}")
    info = json.loads(paths["info"].read_text(encoding="utf-8"))
    labels = tifffile.imread(paths["labels"])
    features = json.loads(paths["lesions"].read_text(encoding="utf-8"))["features"]
    return GroundTruth(
        labels=np.asarray(labels, np.uint8),
        pixel_size_um=float(info["label_pixel_size_um"]),
        slide_shape=tuple(info["shape"]),
        slide_pixel_size_um=float(info["pixel_size_um"]),
        lesions=features,
        info=info,
    )


def _ring_xy(rc: np.ndarray) -> list:
    """Closed counter-clockwise (x, y) ring (RFC 7946's exterior) from (row, col) points."""
    xy = np.asarray(rc, float)[:, ::-1]
    area2 = np.sum(xy[:, 0] * np.roll(xy[:, 1], -1) - np.roll(xy[:, 0], -1) * xy[:, 1])
    if area2 > 0:  # y grows downwards: counter-clockwise on screen is negative here
        xy = xy[::-1]
    ring = [[round(float(x), 2), round(float(y), 2)] for x, y in xy]
    return ring + [ring[0]]


def _polygon_area(rc: np.ndarray) -> float:
    r, c = np.asarray(rc, float).T
    return 0.5 * abs(np.dot(r, np.roll(c, -1)) - np.dot(c, np.roll(r, -1)))


def _lesion_polygons(lay, les) -> list[np.ndarray]:
    """Outer rings (level-0 (row, col)) of a lesion."""
    from skimage.measure import find_contours

    from histoview.preprocessing._phantom_nuclei import _radius

    u, k = lay.upsample, LABEL_PIXEL_SIZE_UM / lay.px0
    rings = []
    if les.kind == "invasive":
        f = np.pad(les.field, 1, constant_values=-1e3)
        for ring in find_contours(f, 0.0):
            nodes = ring - 1 + (les.i0, les.j0)
            rings.append((nodes + 0.5) * k - 0.5)
    else:
        t = np.linspace(0, 2 * np.pi, 256, endpoint=False)
        for d in les.ducts:
            rad = lay.obj_r0[d] * _radius(t, lay.obj_harm[d])
            rc = lay.obj_centre[d] + np.stack([rad * np.sin(t), rad * np.cos(t)], 1)
            rings.append((rc + 0.5) * u - 0.5)
    return [r for r in rings if len(r) >= 3 and _polygon_area(r) > 0]


def _lesions_geojson(lay, seed) -> tuple[dict, list[dict]]:
    features, summary = [], []
    for les in lay.lesions:
        rings = _lesion_polygons(lay, les)
        if not rings:
            continue
        area = sum(_polygon_area(r) for r in rings) * lay.px0**2
        allp = np.concatenate(rings)
        (r0, c0), (r1, c1) = allp.min(0), allp.max(0)
        name = LESION_NAMES[les.kind]
        features.append(
            {
                "type": "Feature",
                "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"histoview-phantom/{seed}/{les.index}")),
                "geometry": {
                    "type": "MultiPolygon",
                    "coordinates": [[_ring_xy(r)] for r in rings],
                },
                "properties": {
                    "objectType": "annotation",
                    "name": f"lesion {les.index + 1} ({name})",
                    "classification": {"name": name, "color": _COLOURS[les.kind]},
                    "measurements": {"area_um2": round(area, 1)},
                },
            }
        )
        summary.append(
            {
                "index": les.index,
                "kind": les.kind,
                "centre_px": [round(float(v) / lay.px0, 1) for v in les.centre_um[::-1]],
                "bbox_px": [round(float(v), 1) for v in (c0, r0, c1, r1)],
                "diameter_um": round(float(les.diameter_um), 1),
                "area_um2": round(area, 1),
                "ducts": len(les.ducts),
            }
        )
    return {"type": "FeatureCollection", "features": features}, summary


def write_phantom_slide(
    out: str | os.PathLike,
    *,
    size: int | tuple[int, int] = 50000,
    seed: int = 0,
    pixel_size_um: float = 0.25,
    tile: int = 512,
    compression: str = "zlib",
    overwrite: bool = False,
    progress=None,
) -> PhantomSlide:
    """Write a phantom slide and its ground truth (module docstring).

    Args:
        out: the slide's path (``.tif``); the ground truth goes beside it.
        size: level-0 side in pixels, or (height, width); at least 1024.
        seed: the layout and every texture follow from it.
        pixel_size_um: level-0 pixel size, 0.1 to 2 um/px.
        tile: TIFF tile edge (a divisor of 1024, or 2048 when rendering at half resolution).
        compression: tifffile compression of the tiles ("zlib": lossless; "jpeg" is ~5x
            smaller and faster, lossy).
        overwrite: replace existing files; else an existing one raises FileExistsError
            before any work.
        progress: called with (bands done, bands) while level 0 is rendered.

    Returns:
        A :class:`PhantomSlide`.
    """
    from histoview import __version__
    from histoview.io.files import atomic_write, write_text
    from histoview.io.pyramid import write_pyramidal_tiff
    from histoview.preprocessing._phantom_slide_layout import make_layout
    from histoview.preprocessing._phantom_slide_pyramid import _PyramidTiles, level_shapes
    from histoview.preprocessing._phantom_slide_render import _SlideRenderer

    shape = (int(size), int(size)) if np.isscalar(size) else tuple(int(v) for v in size)
    px0 = float(pixel_size_um)
    if len(shape) != 2 or min(shape) < 1024:
        raise ValueError(f"slide size must be at least 1024 x 1024 pixels, got {shape}")
    if not 0.1 <= px0 <= 2.0:
        raise ValueError(f"pixel size must be 0.1 to 2 um/px, got {px0}")
    out = Path(out)
    paths = {"slide": out, **ground_truth_paths(out)}
    if not overwrite:
        for p in paths.values():
            if os.path.lexists(p):
                raise FileExistsError(
                    f"{p} exists; choose another name, or overwrite (--overwrite)"
                )
    t0 = time.perf_counter()
    upsample = 2 if px0 < 0.35 else 1
    lay = make_layout(int(seed), shape, px0, upsample)
    renderer = _SlideRenderer(lay)
    out.parent.mkdir(parents=True, exist_ok=True)
    with (
        atomic_write(out, None, overwrite=overwrite, numbered=False) as tmp,
        _PyramidTiles(renderer, shape, upsample, tile, out.parent, progress) as tiles,
    ):
        write_pyramidal_tiff(
            tmp, shape=shape, tile_fn=tiles, tile=tile, pixel_size_um=px0, compression=compression
        )
    labels = lay.labels()
    collection, summary = _lesions_geojson(lay, int(seed))
    _write_labels(paths["labels"], labels, overwrite)
    write_text(paths["lesions"], json.dumps(collection), overwrite=overwrite, numbered=False)
    seconds = time.perf_counter() - t0
    levels = tuple(level_shapes(shape))
    counts = np.bincount(labels.ravel(), minlength=4) / labels.size
    info = {
        "generator": "histoview phantom-slide",
        "version": __version__,
        "generator_version": PHANTOM_SLIDE_VERSION,
        "synthetic": True,
        "seed": int(seed),
        "shape": list(shape),
        "pixel_size_um": px0,
        "render_pixel_size_um": lay.px,
        "level0_upsampled": upsample,
        "levels": [list(v) for v in levels],
        "tile": tile,
        "compression": compression,
        "label_pixel_size_um": LABEL_PIXEL_SIZE_UM,
        "classes": list(SLIDE_CLASSES),
        "area_fractions": dict(zip(SLIDE_CLASSES, np.round(counts, 5).tolist())),
        "glands": int((lay.obj_kind == 0).sum()),
        "ducts": int((lay.obj_kind == 1).sum()),
        "lesions": summary,
        "files": {k: p.name for k, p in paths.items()},
        "seconds": round(seconds, 1),
    }
    write_text(paths["info"], json.dumps(info, indent=1), overwrite=overwrite, numbered=False)
    return PhantomSlide(
        path=out,
        labels_path=paths["labels"],
        lesions_path=paths["lesions"],
        info_path=paths["info"],
        shape=shape,
        pixel_size_um=px0,
        seed=int(seed),
        levels=levels,
        lesions=tuple(summary),
        seconds=seconds,
    )


def _write_labels(path: Path, labels: np.ndarray, overwrite: bool) -> None:
    import tifffile

    from histoview.io.files import atomic_write

    res = 1e4 / LABEL_PIXEL_SIZE_UM
    with atomic_write(path, None, overwrite=overwrite, numbered=False) as tmp:
        tifffile.imwrite(
            tmp,
            labels,
            resolution=(res, res),
            resolutionunit="CENTIMETER",
            compression="zlib",
            metadata={"classes": list(SLIDE_CLASSES), "pixel_size_um": LABEL_PIXEL_SIZE_UM},
        )
