"""GeoJSON (RFC 7946) in the form QuPath imports: nuclei, edges, patches, regions.

Coordinates are image pixels (x = column, y = row) of level 0, as QuPath
expects for image-space GeoJSON. Each feature carries QuPath's
``objectType`` ("detection" for nuclei and patches, "annotation" for edges
and thresholded regions) and its values as ``measurements``, so they show
in QuPath's measurement tables; the same values are plain properties too.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from histoview.explain.base import Explanation, NucleiPoints
from histoview.preprocessing.patches import PatchGrid


def _ring(poly_rc: np.ndarray) -> list[list[float]]:
    """Closed, counter-clockwise (x, y) ring from a (row, col) polygon."""
    xy = np.asarray(poly_rc, float)[:, ::-1]
    area2 = np.sum(xy[:, 0] * np.roll(xy[:, 1], -1) - np.roll(xy[:, 0], -1) * xy[:, 1])
    if area2 < 0:
        xy = xy[::-1]
    ring = [[round(float(x), 2), round(float(y), 2)] for x, y in xy]
    if ring[0] != ring[-1]:
        ring.append(ring[0])
    return ring


def _num(v) -> float | int | None:
    v = v.item() if isinstance(v, np.generic) else v
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


def point_feature(
    row: float,
    col: float,
    *,
    feature_id: str,
    measurements: dict[str, float],
    classification: dict | None = None,
    properties: dict | None = None,
) -> dict:
    """One nucleus as a QuPath detection: a Point at (x = ``col``, y = ``row``) level-0
    pixels, ``objectType`` "detection", ``measurements`` (name -> finite number, QuPath's
    measurement table; values that are not finite are left out, QuPath reads numbers only),
    an optional ``classification`` (``{"name": ..., "color": [r, g, b]}``, QuPath's class)
    and further ``properties``. ``feature_id`` is a UUID string for QuPath 0.4+ to keep."""
    meas = {k: v for k, v in ((k, _num(v)) for k, v in measurements.items()) if v is not None}
    props: dict[str, Any] = {"objectType": "detection", **(properties or {})}
    if classification is not None:
        props["classification"] = classification
    props["measurements"] = meas
    return {
        "type": "Feature",
        "id": feature_id,
        "geometry": {"type": "Point", "coordinates": [round(float(col), 2), round(float(row), 2)]},
        "properties": props,
    }


def explanation_to_geojson(
    expl: Explanation, *, include_edges: bool = True, include_outlines: bool = True
) -> dict:
    """A FeatureCollection for an explanation (nuclei graph or patch grid)."""
    common = {
        "method": expl.method,
        "model": expl.model,
        "predicted_class": expl.predicted_label,
        "checkpoint_sha256": expl.checkpoint_sha256,
    }
    features: list[dict[str, Any]] = []
    geom = expl.geometry
    if isinstance(geom, NucleiPoints):
        for i, (r, c) in enumerate(geom.centroids):
            meas = {"importance": _num(float(expl.values[i]))}
            meas.update({k: _num(v[i]) for k, v in geom.features.items()})
            props = {
                "objectType": "detection",
                "name": f"nucleus {i}",
                "id": i,
                "kind": "nucleus",
                "measurements": meas,
                **meas,
            }
            features.append(
                {
                    "type": "Feature",
                    "id": f"nucleus-{i}",
                    "geometry": {"type": "Point", "coordinates": [float(c), float(r)]},
                    "properties": props,
                }
            )
            if include_outlines and geom.outlines and len(geom.outlines[i]) >= 3:
                features.append(
                    {
                        "type": "Feature",
                        "id": f"outline-{i}",
                        "geometry": {"type": "Polygon", "coordinates": [_ring(geom.outlines[i])]},
                        "properties": {**props, "kind": "nucleus_outline", "nucleus": i},
                    }
                )
        if include_edges:
            ei, w = geom.edge_index, geom.edge_weight
            for e in range(ei.shape[1]):
                a, b = int(ei[0, e]), int(ei[1, e])
                if a >= b:  # undirected: one LineString per pair
                    continue
                (ra, ca), (rb, cb) = geom.centroids[a], geom.centroids[b]
                features.append(
                    {
                        "type": "Feature",
                        "id": f"edge-{a}-{b}",
                        "geometry": {
                            "type": "LineString",
                            "coordinates": [[float(ca), float(ra)], [float(cb), float(rb)]],
                        },
                        "properties": {
                            "objectType": "annotation",
                            "kind": "edge",
                            "source": a,
                            "target": b,
                            "weight": float(w[e]),
                            "measurements": {"weight": float(w[e])},
                        },
                    }
                )
    elif isinstance(geom, PatchGrid):
        ph, pw = geom.patch_size
        for i, (r, c) in enumerate(geom.origins):
            v = _num(float(expl.values[i]))
            ring = [
                [float(c), float(r)],
                [float(c), float(r + ph)],
                [float(c + pw), float(r + ph)],
                [float(c + pw), float(r)],
                [float(c), float(r)],
            ]
            features.append(
                {
                    "type": "Feature",
                    "id": f"patch-{i}",
                    "geometry": {"type": "Polygon", "coordinates": [ring[::-1]]},
                    "properties": {
                        "objectType": "detection",
                        "kind": "patch",
                        "id": i,
                        "name": f"patch {i}",
                        "weight": v,
                        "measurements": {"weight": v},
                    },
                }
            )
    else:
        raise ValueError(
            f"{expl.method}: dense maps are exported as thresholded regions (see region_features)"
        )
    return {"type": "FeatureCollection", "properties": common, "features": features}
