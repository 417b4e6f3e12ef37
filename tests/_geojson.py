"""GeoJSON checks for the tests: re-import nuclei, and validate against RFC 7946.

* :func:`read_geojson_nuclei` - the nuclei of a GeoJSON file (ours, or QuPath detections),
  to check that an export round-trips;
* :func:`validate_geojson` - problems against RFC 7946 (Sec. 3.1 geometry objects,
  3.2 features, 3.3 feature collections): types, positions of finite numbers,
  LineStrings of >= 2 positions, closed linear rings of >= 4 positions.

histoview writes GeoJSON but never reads or validates it, so these live with the tests.
The checks are plain (no geometry library): they test the structure RFC 7946 requires,
not geometric validity such as self-intersection.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np


def _measurements(props: dict) -> dict:
    meas = props.get("measurements") or {}
    if isinstance(meas, list):  # older QuPath: [{"name": ..., "value": ...}]
        meas = {m.get("name"): m.get("value") for m in meas if isinstance(m, dict)}
    return {**meas, **{k: v for k, v in props.items() if k not in meas}}


_NOT_NUCLEI = ("patch", "region", "edge", "nucleus_outline")


def read_geojson_nuclei(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Nuclei from a GeoJSON file: ``(centroids (N, 2) row/col, importance (N,), properties)``.

    Reads histoview's ``kind: "nucleus"`` points; failing those, QuPath-style detections
    (Points, or Polygons taken at their centroid). Importance is the ``importance``
    measurement (NaN where absent).
    """
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    feats = data.get("features", []) if data.get("type") == "FeatureCollection" else [data]
    feats = [f for f in feats if isinstance(f, dict) and f.get("geometry")]
    ours = [f for f in feats if (f.get("properties") or {}).get("kind") == "nucleus"]
    if not ours:
        ours = [
            f
            for f in feats
            if (f.get("properties") or {}).get("objectType", "detection") == "detection"
            and (f.get("properties") or {}).get("kind") not in _NOT_NUCLEI
            and f["geometry"].get("type") in ("Point", "Polygon")
        ]
    cents, imps, props = [], [], []
    for f in ours:
        g = f["geometry"]
        if g["type"] == "Point":
            x, y = g["coordinates"][:2]
        else:
            ring = np.asarray(g["coordinates"][0], np.float64)[:-1, :2]
            xs, ys = ring[:, 0], ring[:, 1]
            cross = xs * np.roll(ys, -1) - np.roll(xs, -1) * ys
            a = float(cross.sum() / 2)  # signed area (shoelace)
            if a == 0:
                x, y = ring.mean(0)
            else:  # polygon centroid
                x = float(np.sum((xs + np.roll(xs, -1)) * cross) / (6 * a))
                y = float(np.sum((ys + np.roll(ys, -1)) * cross) / (6 * a))
        p = _measurements(f.get("properties") or {})
        v = p.get("importance")
        cents.append((float(y), float(x)))
        imps.append(float(v) if isinstance(v, int | float) else math.nan)
        props.append(p)
    return np.asarray(cents, np.float64).reshape(-1, 2), np.asarray(imps, np.float64), props


_GEOMETRY_TYPES = (
    "Point",
    "MultiPoint",
    "LineString",
    "MultiLineString",
    "Polygon",
    "MultiPolygon",
    "GeometryCollection",
)


def _position_problems(pos, where: str) -> list[str]:
    if not isinstance(pos, list | tuple) or not 2 <= len(pos) <= 3:
        return [f"{where}: a position must be an array of 2 or 3 numbers, got {pos!r:.60}"]
    for v in pos:
        if isinstance(v, bool) or not isinstance(v, int | float):
            return [f"{where}: position has a non-number {v!r:.30}"]
        if not math.isfinite(v):
            return [f"{where}: position has a non-finite number {v!r}"]
    return []


def _positions(coords, where: str, min_len: int, ring: bool) -> list[str]:
    if not isinstance(coords, list | tuple):
        return [f"{where}: expected an array of positions"]
    problems = [p for i, pos in enumerate(coords) for p in _position_problems(pos, f"{where}[{i}]")]
    if len(coords) < min_len:
        problems.append(f"{where}: needs >= {min_len} positions, has {len(coords)}")
    elif ring and not problems and list(coords[0]) != list(coords[-1]):
        problems.append(f"{where}: linear ring is not closed (first position != last)")
    return problems


def _geometry_problems(g, where: str) -> list[str]:
    if g is None:
        return []  # RFC 7946 Sec. 3.2: an unlocated feature has geometry null
    if not isinstance(g, dict) or g.get("type") not in _GEOMETRY_TYPES:
        kind = g.get("type") if isinstance(g, dict) else g
        return [f"{where}: not a geometry object (type {kind!r:.40})"]
    t = g["type"]
    if t == "GeometryCollection":
        geoms = g.get("geometries")
        if not isinstance(geoms, list):
            return [f"{where}: GeometryCollection needs a 'geometries' array"]
        return [
            p
            for i, sub in enumerate(geoms)
            for p in _geometry_problems(sub, f"{where}.geometries[{i}]")
        ]
    c = g.get("coordinates")
    if not isinstance(c, list | tuple):
        return [f"{where}: {t} needs a 'coordinates' array"]
    if t == "Point":
        return _position_problems(c, where)
    if t == "MultiPoint":
        return _positions(c, where, 0, False)
    if t == "LineString":
        return _positions(c, where, 2, False)
    if t == "Polygon":
        return [p for i, r in enumerate(c) for p in _positions(r, f"{where}[{i}]", 4, True)]
    if t == "MultiLineString":
        return [p for i, ls in enumerate(c) for p in _positions(ls, f"{where}[{i}]", 2, False)]
    return [
        p
        for i, poly in enumerate(c)
        if isinstance(poly, list | tuple)  # MultiPolygon
        for j, r in enumerate(poly)
        for p in _positions(r, f"{where}[{i}][{j}]", 4, True)
    ] + [
        f"{where}[{i}]: expected an array of rings"
        for i, poly in enumerate(c)
        if not isinstance(poly, list | tuple)
    ]


def _non_finite(obj, where: str) -> list[str]:
    if isinstance(obj, float) and not math.isfinite(obj):
        return [f"{where}: non-finite number {obj!r} (not valid JSON)"]
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in _non_finite(v, f"{where}.{k}")]
    if isinstance(obj, list | tuple):
        return [p for i, v in enumerate(obj) for p in _non_finite(v, f"{where}[{i}]")]
    return []


def _feature_problems(f, where: str) -> list[str]:
    if not isinstance(f, dict) or f.get("type") != "Feature":
        return [f"{where}: not a Feature"]
    problems = []
    if "geometry" not in f:
        problems.append(f"{where}: Feature has no 'geometry' member")
    if "properties" not in f or not (f["properties"] is None or isinstance(f["properties"], dict)):
        problems.append(f"{where}: Feature needs 'properties', an object or null")
    if "id" in f and (isinstance(f["id"], bool) or not isinstance(f["id"], str | int | float)):
        problems.append(f"{where}: id must be a string or a number")
    problems += _geometry_problems(f.get("geometry"), f"{where}.geometry")
    problems += _non_finite(f.get("properties"), f"{where}.properties")
    return problems


def validate_geojson(obj: dict | str | os.PathLike, *, max_problems: int = 50) -> list[str]:
    """Problems of a GeoJSON object (or file) against RFC 7946; empty when valid.

    Checks object types (FeatureCollection, Feature, the seven geometry types),
    positions (2 or 3 finite numbers), LineStrings (>= 2 positions), Polygon rings
    (closed, >= 4 positions), and that no member holds NaN or infinity. At most
    ``max_problems`` are listed.
    """
    if isinstance(obj, str | os.PathLike):
        obj = json.loads(Path(obj).read_text(encoding="utf-8"))
    if not isinstance(obj, dict):
        return ["top level: not a JSON object"]
    t = obj.get("type")
    if t == "FeatureCollection":
        feats = obj.get("features")
        if not isinstance(feats, list):
            problems = ["FeatureCollection needs a 'features' array"]
        else:
            problems = [
                p for i, f in enumerate(feats) for p in _feature_problems(f, f"features[{i}]")
            ]
        problems += _non_finite(obj.get("properties"), "properties")
    elif t == "Feature":
        problems = _feature_problems(obj, "feature")
    elif t in _GEOMETRY_TYPES:
        problems = _geometry_problems(obj, "geometry")
    else:
        problems = [f"top level: unknown GeoJSON type {t!r}"]
    if len(problems) > max_problems:
        problems = problems[:max_problems] + [f"... and {len(problems) - max_problems} more"]
    return problems
