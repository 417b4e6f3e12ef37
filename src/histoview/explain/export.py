"""Export explanations as annotations other tools read: GeoJSON (QuPath) and CSV.

* :func:`export_geojson` - nuclei and patches as in :mod:`histoview.explain.geojson`;
  dense maps (Grad-CAM family, RMCG) as their thresholded regions, one Polygon
  feature each (QuPath ``objectType`` "annotation", measurement ``mean_importance``).
* :func:`export_csv` - one row per nucleus, patch or region.

Coordinates are level-0 image pixels, x = column, y = row, the pixel (i, j)
covering [j, j+1) x [i, i+1) as in QuPath. Files are written whole or not at
all, and existing files are never overwritten silently: FileExistsError unless
``overwrite``, or with ``numbered`` the next free name (``a-1.geojson``...), as
:func:`histoview.io.files.atomic_write` does.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histoview.explain.base import DenseMap, Explanation, NucleiPoints
from histoview.explain.geojson import explanation_to_geojson
from histoview.io.files import write_text
from histoview.preprocessing.patches import PatchGrid

#: dense maps are traced on a raster whose longer side is at most this many pixels
MAX_TRACE_SIDE = 2048


@dataclass(frozen=True)
class Region:
    """A connected region of a thresholded dense map, in level-0 pixels.

    Attributes:
        rings: exterior then holes, each (K, 2) float (row, col), closed (first == last).
        area_px: area in level-0 pixels; centroid: (row, col).
        mean_importance, max_importance: of the map inside the region.
    """

    id: int
    rings: tuple[np.ndarray, ...]
    area_px: float
    centroid: tuple[float, float]
    mean_importance: float
    max_importance: float


def region_threshold(expl: Explanation, threshold: float | None = None) -> float:
    """The threshold to use: given, else the explanation's own, else Otsu's on its values."""
    if threshold is not None:
        return float(threshold)
    if expl.threshold is not None:
        return float(expl.threshold)
    from skimage.filters import threshold_otsu

    values = np.asarray(expl.values, np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0 or values.max() <= values.min():
        return float(values.max()) if values.size else 0.0
    return float(threshold_otsu(values, nbins=256))


def dense_regions(
    expl: Explanation, threshold: float | None = None, *, max_side: int = MAX_TRACE_SIDE
) -> list[Region]:
    """Connected regions where a dense map exceeds ``threshold`` (:func:`region_threshold`).

    The map is upsampled (bilinear, as the viewer shows it) to the image shape, or to a
    grid whose longer side is ``max_side`` for large images; region outlines are traced
    with ``skimage.measure.find_contours`` at the pixel edges and scaled to level 0.
    """
    from skimage.measure import approximate_polygon, find_contours, label, regionprops

    if not isinstance(expl.geometry, DenseMap):
        raise TypeError(
            f"{expl.method}: regions come from dense maps, not {type(expl.geometry).__name__}"
        )
    H, W = expl.image_shape
    scale = min(1.0, max_side / max(H, W))
    shape = (max(1, round(H * scale)), max(1, round(W * scale)))
    m = np.asarray(expl.to_dense(shape), np.float64)
    thr = region_threshold(expl, threshold)
    labels = label(np.isfinite(m) & (m > thr), connectivity=1)
    sy, sx = H / shape[0], W / shape[1]
    out = []
    for props in regionprops(labels, intensity_image=m):
        r0, c0, r1, c1 = props.bbox
        mask = np.pad(props.image, 1).astype(np.float64)
        rings = []
        for contour in find_contours(mask, 0.5):
            contour = approximate_polygon(contour, tolerance=0.25)
            if len(contour) < 4:
                continue
            # index space -> continuous pixel edges (+0.5) -> level 0
            rc = np.column_stack(
                [(contour[:, 0] - 1 + r0 + 0.5) * sy, (contour[:, 1] - 1 + c0 + 0.5) * sx]
            )
            rings.append(rc)
        if not rings:
            continue
        rings.sort(key=lambda r: -abs(_signed_area(r)))  # exterior = the largest ring
        cy, cx = props.centroid
        vals = m[labels == props.label]
        out.append(
            Region(
                id=len(out),
                rings=tuple(rings),
                area_px=float(props.area * sy * sx),
                centroid=((cy + 0.5) * sy, (cx + 0.5) * sx),
                mean_importance=float(vals.mean()),
                max_importance=float(vals.max()),
            )
        )
    return out


def _signed_area(rc: np.ndarray) -> float:
    x, y = rc[:, 1], rc[:, 0]
    return float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y) / 2)


def _xy_ring(rc: np.ndarray, *, ccw: bool) -> list[list[float]]:
    """Closed (x, y) ring; RFC 7946 Sec. 3.1.6: exteriors counter-clockwise, holes clockwise."""
    xy = np.asarray(rc, np.float64)[:, ::-1]
    if (_signed_area(rc) > 0) != ccw:
        xy = xy[::-1]
    ring = [[round(float(x), 2), round(float(y), 2)] for x, y in xy]
    if ring[0] != ring[-1]:
        ring.append(ring[0])
    return ring


def regions_to_geojson(expl: Explanation, threshold: float | None = None) -> dict:
    """A FeatureCollection of the thresholded regions of a dense map."""
    thr = region_threshold(expl, threshold)
    features = []
    for reg in dense_regions(expl, thr):
        meas = {
            "mean_importance": round(reg.mean_importance, 6),
            "max_importance": round(reg.max_importance, 6),
            "area_px": round(reg.area_px, 2),
        }
        coords = [_xy_ring(reg.rings[0], ccw=True)] + [
            _xy_ring(r, ccw=False) for r in reg.rings[1:]
        ]
        features.append(
            {
                "type": "Feature",
                "id": f"region-{reg.id}",
                "geometry": {"type": "Polygon", "coordinates": coords},
                "properties": {
                    "objectType": "annotation",
                    "kind": "region",
                    "id": reg.id,
                    "name": f"{expl.method} region {reg.id}",
                    "measurements": meas,
                    **meas,
                },
            }
        )
    common = {
        "method": expl.method,
        "model": expl.model,
        "predicted_class": expl.predicted_label,
        "checkpoint_sha256": expl.checkpoint_sha256,
        "threshold": thr,
    }
    return {"type": "FeatureCollection", "properties": common, "features": features}


def export_geojson(
    expl: Explanation,
    path: str | os.PathLike,
    *,
    threshold: float | None = None,
    overwrite: bool = False,
    numbered: bool = False,
    include_edges: bool = True,
) -> Path:
    """Write ``expl`` as GeoJSON: nuclei (points, outlines, edges), patches, or dense-map regions.

    ``threshold`` applies to dense maps only (default :func:`region_threshold`); nuclei
    and patches are all written, their values as measurements. ``overwrite`` and
    ``numbered`` as in the module docstring; returns the path written.
    """
    from histoview import RESEARCH_NOTICE

    if isinstance(expl.geometry, DenseMap):
        collection = regions_to_geojson(expl, threshold)
    else:
        collection = explanation_to_geojson(expl, include_edges=include_edges)
    collection["properties"]["notice"] = RESEARCH_NOTICE
    collection["properties"]["source_path"] = expl.source_path
    text = json.dumps(collection, allow_nan=False)
    return write_text(path, text, overwrite=overwrite, numbered=numbered)


def _csv_rows(expl: Explanation, threshold: float | None) -> tuple[list[str], list[list[Any]]]:
    geom = expl.geometry
    values = np.asarray(expl.values, np.float64).reshape(-1)
    if isinstance(geom, NucleiPoints):
        names = list(geom.features)
        rows = [
            [i, float(c), float(r), float(values[i]), *(float(geom.features[k][i]) for k in names)]
            for i, (r, c) in enumerate(geom.centroids)
        ]
        return ["id", "x", "y", "importance", *names], rows
    if isinstance(geom, PatchGrid):
        ph, pw = geom.patch_size
        rows = [
            [i, int(c), int(r), int(pw), int(ph), float(values[i])]
            for i, (r, c) in enumerate(geom.origins)
        ]
        return ["id", "x", "y", "width", "height", "weight"], rows
    rows = [
        [
            g.id,
            round(g.area_px, 2),
            g.mean_importance,
            g.max_importance,
            round(g.centroid[1], 2),
            round(g.centroid[0], 2),
        ]
        for g in dense_regions(expl, threshold)
    ]
    return ["id", "area_px", "mean_importance", "max_importance", "centroid_x", "centroid_y"], rows


def export_csv(
    expl: Explanation,
    path: str | os.PathLike,
    *,
    threshold: float | None = None,
    overwrite: bool = False,
    numbered: bool = False,
) -> Path:
    """Write one CSV row per element, level-0 pixel coordinates; returns the path written.

    Columns: nuclei ``id, x, y, importance`` and the morphology features; patches
    ``id, x, y, width, height, weight`` (x, y = top-left corner); dense-map regions
    ``id, area_px, mean_importance, max_importance, centroid_x, centroid_y``.
    ``overwrite`` and ``numbered`` as in the module docstring.
    """
    header, rows = _csv_rows(expl, threshold)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return write_text(path, buf.getvalue(), overwrite=overwrite, numbered=numbered, newline="")
