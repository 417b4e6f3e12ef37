"""What a slide's cell-graph explanation gives others: GeoJSON, a density map, views, summary.

* :func:`write_nuclei_geojson` - every nucleus as a QuPath detection (a Point in level-0 pixels,
  :func:`~histoview.explain.geojson.point_feature`) with its importance, importance
  percentile and morphology as ``measurements`` and a ``classification`` by importance rank
  (:data:`IMPORTANCE_CLASSES`), written feature by feature (never the whole collection in
  memory), whole or absent;
* :func:`density_map` - the zoomed-out view: per ``cell_um`` cell of the region, the mean
  importance of the nuclei around it and their number per mm^2 (both Gaussian-weighted over
  about one cell, :data:`DENSITY_SIGMA_CELLS`) and the probability of the explained class on
  the window that holds the cell; :func:`write_density_map` writes it as a pyramidal OME-TIFF
  placed on the slide;
* :class:`NucleiView` - the nuclei and the graph's edges inside a viewport (level-0 box), for
  the zoomed-in view: the edges are made for the view on demand (k-d tree), never all at once
  into one layer;
* :func:`slide_graph_summary` - the JSON summary (prediction, what the values mean, counts).
"""

from __future__ import annotations

import json
import math
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from histoview.explain.geojson import point_feature
from histoview.explain.slide_graph import SlideGraphResult
from histoview.io.files import atomic_write
from histoview.preprocessing.slide_nuclei import SlideNuclei

__all__ = [
    "DENSITY_SIGMA_CELLS",
    "IMPORTANCE_CLASSES",
    "NucleiView",
    "density_map",
    "importance_percentile",
    "slide_graph_summary",
    "write_density_map",
    "write_nuclei_geojson",
]

#: QuPath classes by slide-wide importance percentile: (lowest percentile, name, RGB colour)
IMPORTANCE_CLASSES: tuple[tuple[float, str, list[int]], ...] = (
    (90.0, "Importance top 10%", [252, 80, 30]),
    (70.0, "Importance top 10-30%", [250, 190, 40]),
    (0.0, "Importance lower 70%", [90, 110, 200]),
)
#: Gaussian weighting of the density map, in cells
DENSITY_SIGMA_CELLS = 1.0
_NAMESPACE = uuid.UUID("5f0c6f5e-7d3a-4c1e-9a57-1b9d2f1a0c42")  # histoview nuclei ids


def importance_percentile(values: np.ndarray) -> np.ndarray:
    """(N,) float64 percentile rank of each value in 0..100 (ties share their mean rank)."""
    from scipy.stats import rankdata

    values = np.asarray(values, np.float64)
    if len(values) < 2:
        return np.full(len(values), 100.0)
    return (rankdata(values) - 1) / (len(values) - 1) * 100.0


def _classification(percentile: float) -> dict:
    for lowest, name, colour in IMPORTANCE_CLASSES:
        if percentile >= lowest:
            return {"name": name, "color": colour}
    raise AssertionError("unreachable: the last class starts at 0")


def write_nuclei_geojson(
    path: str | os.PathLike,
    result: SlideGraphResult,
    *,
    include_features: bool = True,
    overwrite: bool = False,
    properties: dict | None = None,
) -> Path:
    """Every nucleus as a QuPath detection Point (module docstring); returns where it landed.

    The FeatureCollection's ``properties`` say what the values mean (``properties`` adds to
    them); feature ids are UUIDs derived from the slide, the nucleus's place and its index, so
    an export of the same run has the same ids (QuPath 0.4+ keeps them).
    """
    nuclei = result.nuclei
    pct = importance_percentile(result.importance)
    names = [f"{n}" for n in nuclei.feature_names] if include_features else []
    head = {**slide_graph_summary(result), **(properties or {})}
    salt = f"{nuclei.level0_shape}:{nuclei.region}:{len(nuclei)}"
    writer = atomic_write(path, "w", overwrite=overwrite)
    with writer as fh:
        fh.write('{"type": "FeatureCollection", "properties": ')
        fh.write(json.dumps(head, default=_plain))
        fh.write(', "features": [\n')
        for i, (r, c) in enumerate(nuclei.centroids):
            meas = {"importance": float(result.importance[i]), "importance_percentile": pct[i]}
            for j, name in enumerate(names):
                meas[name] = float(f"{float(nuclei.features[i, j]):.6g}")
            feature = point_feature(
                r,
                c,
                feature_id=str(uuid.uuid5(_NAMESPACE, f"{salt}:{i}:{r:.3f}:{c:.3f}")),
                measurements=meas,
                classification=_classification(pct[i]),
                properties={"name": f"nucleus {i}", "kind": "nucleus"},
            )
            fh.write(("" if i == 0 else ",\n") + json.dumps(feature, allow_nan=False))
        fh.write("\n]}\n")
    return writer.path


def density_map(
    result: SlideGraphResult, *, cell_um: float = 16.0
) -> tuple[np.ndarray, float, tuple[float, float], tuple[str, ...]]:
    """The zoomed-out view of the region (module docstring).

    Returns:
        ``(map (h, w, 3) float32, pixel size um, origin (y, x) um on the slide, channel
        names)``: channel 0 the Gaussian-weighted mean importance (0 where no nucleus is
        near), 1 nuclei per mm^2, 2 the explained class's probability on the window holding
        the cell (0 outside windows).
    """
    from scipy import ndimage as ndi

    nuclei = result.nuclei
    p0 = nuclei.level0_pixel_size_um
    cell = cell_um / p0  # level-0 pixels per map pixel
    r0, c0, rh, rw = nuclei.region
    shape = (max(1, math.ceil(rh / cell)), max(1, math.ceil(rw / cell)))
    idx = np.floor((nuclei.centroids + 0.5 - np.array([r0, c0])) / cell).astype(np.int64)
    idx = np.clip(idx, 0, np.array(shape) - 1)
    flat = idx[:, 0] * shape[1] + idx[:, 1]
    size = shape[0] * shape[1]
    count = np.bincount(flat, minlength=size).reshape(shape).astype(np.float64)
    total = np.bincount(flat, result.importance, minlength=size).reshape(shape)
    count_s = ndi.gaussian_filter(count, DENSITY_SIGMA_CELLS, mode="constant")
    total_s = ndi.gaussian_filter(total, DENSITY_SIGMA_CELLS, mode="constant")
    near = count_s > 1e-3
    out = np.zeros((*shape, 3), np.float32)
    out[..., 0] = np.where(near, total_s / np.where(near, count_s, 1.0), 0.0)
    out[..., 1] = count_s / (cell_um * 1e-3) ** 2
    target = result.target_class
    for (br, bc, bh, bw), p in zip(result.windows, result.window_probabilities):
        top, left = int((br - r0) // cell), int((bc - c0) // cell)
        bottom, right = math.ceil((br + bh - r0) / cell), math.ceil((bc + bw - c0) / cell)
        out[max(top, 0) : max(bottom, 0), max(left, 0) : max(right, 0), 2] = p[target]
    names = ("importance", "nuclei_per_mm2", f"p({result.classes[target]})")
    return out, float(cell_um), (r0 * p0, c0 * p0), names


def write_density_map(
    path: str | os.PathLike,
    result: SlideGraphResult,
    *,
    cell_um: float = 16.0,
    overwrite: bool = False,
    metadata: dict | None = None,
) -> Path:
    """:func:`density_map` as a pyramidal OME-TIFF placed on the slide (returns its path)."""
    from histoview.io.ome_tiff import write_ome_tiff

    array, pixel_size, origin, names = density_map(result, cell_um=cell_um)
    return write_ome_tiff(
        path,
        array,
        pixel_size_um=pixel_size,
        channel_names=list(names),
        origin_um=origin,
        overwrite=overwrite,
        metadata={"method": "graph", "map": "nuclei importance density", **(metadata or {})},
    )


class NucleiView:
    """The nuclei and graph edges inside a viewport, for the zoomed-in view (a k-d tree of the
    centroids, built once; edges made for each view on demand, never all at once).

    Args:
        nuclei: the slide's nuclei (centroids in level-0 pixels), e.g. from
            ``load_slide_nuclei(<stem>.graph.nuclei.npz)``.
        threshold_um: the graph's edge threshold (default the graph models' 42 um).
    """

    def __init__(self, nuclei: SlideNuclei, threshold_um: float | None = None):
        from scipy.spatial import cKDTree

        from histoview.models.inputs import GRAPH_THRESHOLD_UM

        self.nuclei = nuclei
        self.threshold_um = float(threshold_um or GRAPH_THRESHOLD_UM)
        self.tree = cKDTree(nuclei.centroids)

    def points(self, box: tuple[float, float, float, float]) -> np.ndarray:
        """Indices (n,) of the nuclei whose centroid lies in ``box`` = (row, col, height,
        width) level-0 pixels."""
        return self.nuclei.in_box(box)

    def edges(
        self, box: tuple[float, float, float, float], *, max_edges: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The graph's edges with at least one end in ``box`` (level-0 (row, col, h, w)).

        Returns:
            ``(segments (M, 2, 2) float64 (row, col) level-0 pixels of both ends, weight (M,)
            float32 = 1 - d / threshold, pairs (M, 2) int64 nucleus indices)``, one per
            undirected edge; with ``max_edges`` only the strongest (shortest) ``max_edges``.
        """
        from scipy.spatial import cKDTree

        p0 = self.nuclei.level0_pixel_size_um
        radius = self.threshold_um / p0
        r, c, h, w = (float(v) for v in box)
        centre = (r + h / 2 - 0.5, c + w / 2 - 0.5)
        reach = max(h, w) / 2 + radius
        near = np.asarray(self.tree.query_ball_point(centre, reach, p=np.inf), np.int64)
        empty = (np.zeros((0, 2, 2)), np.zeros(0, np.float32), np.zeros((0, 2), np.int64))
        if len(near) < 2:
            return empty
        pts = self.nuclei.centroids[near]
        pairs = cKDTree(pts).query_pairs(radius * (1 + 1e-9), output_type="ndarray")
        pairs = pairs.reshape(-1, 2)
        d_um = np.linalg.norm(pts[pairs[:, 0]] - pts[pairs[:, 1]], axis=1) * p0
        corner = pts + 0.5
        inside = (corner[:, 0] >= r) & (corner[:, 0] < r + h)
        inside &= (corner[:, 1] >= c) & (corner[:, 1] < c + w)
        keep = (d_um < self.threshold_um) & (inside[pairs[:, 0]] | inside[pairs[:, 1]])
        pairs, d_um = pairs[keep], d_um[keep]
        if max_edges is not None and len(pairs) > max_edges:
            order = np.argsort(d_um, kind="stable")[:max_edges]
            pairs, d_um = pairs[order], d_um[order]
        if len(pairs) == 0:
            return empty
        weight = (1.0 - d_um / self.threshold_um).astype(np.float32)
        return pts[pairs], weight, near[pairs]


def slide_graph_summary(result: SlideGraphResult, meta: dict | None = None) -> dict[str, Any]:
    """The JSON summary of a slide's cell-graph explanation."""
    from histoview.explain.base import decide_class

    probs = result.probabilities
    decided, operating = decide_class(probs, meta or {})
    counts = result.window_counts
    target_p = result.window_probabilities[:, result.target_class]
    kind = result.importance_kind
    values = {
        "attention": "the model's attention of each nucleus on the whole slide graph, as it "
        "pools them: "
        + (
            "a sigmoid gate in (0, 1) per nucleus"
            if result.settings.get("attention_gate") == "sigmoid"
            else "softmax weights summing to 1 over the slide's nuclei"
        ),
        "occlusion": "Sureka et al.'s eq. 5 on the graph of the window owning the nucleus "
        f"({result.settings['window_um']:g} um core + {result.settings['context_um']:g} um "
        "around it): the drop in the explained class's probability when the nucleus and its "
        f"{result.settings.get('k')}-hop neighbours are removed from that graph",
    }[kind]
    return {
        "prediction": result.classes[decided],
        "predicted_label": result.classes[decided],
        "predicted_class": decided,
        "operating_threshold": operating,
        "probabilities": {c: float(p) for c, p in zip(result.classes, probs)},
        "prediction_rule": "the graph model on one cell graph of every nucleus of the slide "
        "(exact: Pooling 1 summed window by window)",
        "target_class": result.target_class,
        "target_class_name": result.classes[result.target_class],
        "importance": kind,
        "values": values,
        "num_nuclei": len(result),
        "graph_threshold_um": result.threshold_um,
        "detection_pixel_size_um": result.nuclei.pixel_size_um,
        "windows": {
            "count": len(counts),
            "mean_owned_nuclei": float(counts[:, 0].mean()) if len(counts) else 0.0,
            "mean_graph_nuclei": float(counts[:, 1].mean()) if len(counts) else 0.0,
            "target_probability_max": float(target_p.max()) if len(target_p) else None,
            "fraction_called_target": float(
                (result.window_probabilities.argmax(1) == result.target_class).mean()
            )
            if len(target_p)
            else None,
        },
        "detection": {k: v for k, v in result.nuclei.stats.items() if k != "failed_tiles"},
        "settings": result.settings,
        "timings_cpu_s": {k: round(v, 3) for k, v in result.timings.items()},
    }


def _plain(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")
