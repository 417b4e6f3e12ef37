"""Explanations as plain data, independent of napari.

An :class:`Explanation` is what every method returns: the model's prediction
(class probabilities), the class explained, and per-element importance
``values`` with the ``geometry`` that places them on the image:

* :class:`~histoview.preprocessing.patches.PatchGrid` - one value per patch
  (attention-MIL);
* :class:`NucleiPoints` - one value per nucleus, with the graph's edges
  (nuclei graphs);
* :class:`DenseMap` - a low-resolution map stretched over the image (Grad-CAM,
  DT Grad-CAM, RMCG node attention).

Every geometry can be rasterised to a float32 map at the image's full
resolution (:meth:`Explanation.to_dense`), which is what the ``.tif`` output,
agreement between methods and faithfulness tests use. Turning values into
colours is the viewer's job.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from histoview.io.files import atomic_write, write_text
from histoview.preprocessing.patches import PatchGrid


@dataclass(frozen=True)
class NucleiPoints:
    """Nuclei as points with the edges of their graph.

    Attributes:
        centroids: (N, 2) float64 (row, col) level-0 pixels.
        image_shape: (height, width) of level 0.
        edge_index: (2, E) int64 node pairs (both directions may be present).
        edge_weight: (E,) float32.
        outlines: N polygons (K_i, 2) (row, col), or empty.
        features: per-nucleus properties (name -> (N,) array), e.g. morphology.
        radius: splat radius in pixels used by :meth:`rasterize` when there are no outlines.
    """

    centroids: np.ndarray
    image_shape: tuple[int, int]
    edge_index: np.ndarray = field(default_factory=lambda: np.zeros((2, 0), np.int64))
    edge_weight: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    outlines: tuple = ()
    features: dict[str, np.ndarray] = field(default_factory=dict)
    radius: float = 6.0

    def __len__(self) -> int:
        return len(self.centroids)

    def diameters(self, pixel_size_um: float | None = None) -> np.ndarray | float:
        """Each nucleus's diameter in pixels: that of a disc of its outline's area, else of
        its ``area_um2`` feature at ``pixel_size_um``; else one value, ``2 * radius``."""
        areas = None
        if self.outlines and len(self.outlines) == len(self):
            areas = np.array([_polygon_area(p) for p in self.outlines], np.float64)
        elif "area_um2" in self.features and pixel_size_um:
            areas = np.asarray(self.features["area_um2"], np.float64) / float(pixel_size_um) ** 2
        if areas is None or not len(areas) or not (np.isfinite(areas) & (areas > 0)).all():
            return max(4.0, 2.0 * self.radius)
        return np.maximum(3.0, 2.0 * np.sqrt(areas / np.pi))

    def rasterize(
        self, values: np.ndarray, *, fill: float = 0.0, shape: tuple[int, int] | None = None
    ) -> np.ndarray:
        """Paint each nucleus's value over its outline (or a disc of ``radius``)."""
        from skimage.draw import disk, polygon

        values = np.asarray(values, np.float32).reshape(-1)
        if len(values) != len(self):
            raise ValueError(f"{len(values)} values for {len(self)} nuclei")
        H, W = self.image_shape
        out_h, out_w = shape or (H, W)
        sy, sx = out_h / H, out_w / W
        out = np.full((out_h, out_w), fill, np.float32)
        # Draw lowest first so that the most important nucleus wins where outlines touch.
        for i in np.argsort(values, kind="stable"):
            if self.outlines:
                poly = np.asarray(self.outlines[i], np.float64)
                rr, cc = polygon(poly[:, 0] * sy, poly[:, 1] * sx, (out_h, out_w))
            else:
                r, c = self.centroids[i]
                rr, cc = disk(
                    (r * sy, c * sx), max(self.radius * min(sy, sx), 1.0), shape=(out_h, out_w)
                )
            out[rr, cc] = values[i]
        return out


@dataclass(frozen=True)
class DenseMap:
    """A (h, w) map covering the whole image (e.g. a Grad-CAM map at feature resolution)."""

    image_shape: tuple[int, int]

    def rasterize(
        self, values: np.ndarray, *, fill: float = 0.0, shape: tuple[int, int] | None = None
    ) -> np.ndarray:
        """Bilinear resize of the map to the image (or ``shape``)."""
        from skimage.transform import resize

        values = np.asarray(values, np.float32)
        target = tuple(shape or self.image_shape)
        if values.shape == target:
            return values.astype(np.float32)
        return resize(
            values, target, order=1, mode="edge", anti_aliasing=False, preserve_range=True
        ).astype(np.float32)


Geometry = PatchGrid | NucleiPoints | DenseMap


@dataclass(frozen=True)
class Explanation:
    """One explanation of one model's decision on one image.

    Attributes:
        method: a method name of :data:`histoview.explain.methods.METHODS`.
        model: registry name of the model.
        classes: class names, in the model's output order.
        probabilities: (C,) class probabilities.
        target_class: index of the class the values explain.
        values: importance per element of ``geometry`` (patches, nuclei, map pixels).
        geometry: where the values lie on the image.
        checkpoint_sha256: hash of the weights file used (None for untrained weights).
        synthetic: True when the weights are synthetic demo weights.
        threshold: threshold applied to the values, where the method uses one.
        extra: further method-specific data (JSON-serialisable).
        decided_class: the class decided with the checkpoint's operating threshold
            (binary models; :func:`decide_class`), None for the arg-max.
        source_path: the image file explained (absolute), None for an in-memory image;
            recorded in every JSON output so two outputs are never confused.
    """

    method: str
    model: str
    classes: tuple[str, ...]
    probabilities: np.ndarray
    target_class: int
    values: np.ndarray
    geometry: Geometry
    checkpoint_sha256: str | None = None
    synthetic: bool = False
    threshold: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    decided_class: int | None = None
    source_path: str | None = None

    @property
    def predicted_class(self) -> int:
        """The model's call: the operating-threshold decision when there is one, else arg-max."""
        if self.decided_class is not None:
            return int(self.decided_class)
        return int(np.argmax(self.probabilities))

    @property
    def predicted_label(self) -> str:
        return self.classes[self.predicted_class]

    @property
    def image_shape(self) -> tuple[int, int]:
        return tuple(self.geometry.image_shape)

    def to_dense(self, shape: tuple[int, int] | None = None, *, fill: float = 0.0) -> np.ndarray:
        """float32 map at the image's full resolution (or ``shape``)."""
        return self.geometry.rasterize(self.values, fill=fill, shape=shape)

    def summary(self) -> dict[str, Any]:
        """The JSON record written beside the map (``<stem>.<method>.json``)."""
        from histoview import RESEARCH_NOTICE, SYNTHETIC_NOTICE, __version__

        probs = {c: float(p) for c, p in zip(self.classes, self.probabilities)}
        out: dict[str, Any] = {
            "method": self.method,
            "model": self.model,
            "source_path": self.source_path,
            "predicted_class": self.predicted_label,
            "predicted_probability": float(self.probabilities[self.predicted_class]),
            "probabilities": probs,
            "target_class": self.classes[self.target_class],
            "checkpoint_sha256": self.checkpoint_sha256,
            "image_shape": list(self.image_shape),
            "threshold": self.threshold,
            "histoview_version": __version__,
            "notice": RESEARCH_NOTICE,
        }
        if self.synthetic:
            out["weights_notice"] = SYNTHETIC_NOTICE
        out.update(self.extra)
        return out


def peak_normalised(values: np.ndarray) -> tuple[np.ndarray, float]:
    """``values`` divided by their maximum (float32, all zeros when nothing is positive) and
    that maximum, which explainers keep in ``extra`` so the raw scale is not lost."""
    values = np.asarray(values)
    peak = float(values.max())
    return (values / peak if peak > 0 else np.zeros_like(values)).astype(np.float32), peak


def decide_class(probabilities: np.ndarray, meta: dict) -> tuple[int, float | None]:
    """The predicted class, using a stored operating threshold for binary models.

    Training stores Youden's J optimal threshold on P(class 1) (CSPResNet50-FPN-SE, Sec. 5)
    as ``meta["threshold"]``; for a binary model the prediction is class 1 when
    ``P(class 1) >= threshold``, else class 0. Without it (or with more
    classes) it is the arg-max. Explainers store it as ``Explanation.decided_class``,
    which ``Explanation.predicted_class`` returns.

    Args:
        probabilities: (C,) class probabilities.
        meta: checkpoint metadata (may hold ``"threshold"``).

    Returns:
        ``(class index, operating threshold or None)``.
    """
    probs = np.asarray(probabilities, dtype=np.float64)
    thr = meta.get("threshold")
    if thr is not None and len(probs) == 2:
        return int(probs[1] >= float(thr)), float(thr)
    return int(np.argmax(probs)), None


def write_explanation(
    explanation: Explanation, out_dir: str | os.PathLike, stem: str, *, overwrite: bool = False
) -> dict[str, Path]:
    """Write ``<stem>.<method>.json`` and ``<stem>.<method>.tif`` (float32, full resolution).

    Existing files are kept; the new ones get a numbered name unless ``overwrite``
    (:func:`histoview.io.files.atomic_write`: each file is written whole or not at all).
    The JSON record names the map file it belongs to (``map_file``). Returns the paths
    written.
    """
    import tifffile

    out_dir = Path(out_dir)
    dense = explanation.to_dense().astype(np.float32)
    tif = atomic_write(out_dir / f"{stem}.{explanation.method}.tif", overwrite=overwrite)
    with tif as fh:
        tifffile.imwrite(fh, dense, compression="zlib", metadata={"axes": "YX"})
    record = explanation.summary() | {"map_file": tif.path.name}
    json_path = write_text(
        out_dir / f"{stem}.{explanation.method}.json",
        json.dumps(record, indent=2),
        overwrite=overwrite,
    )
    return {"json": json_path, "tif": tif.path}


def _polygon_area(poly) -> float:
    """Area of a closed (row, col) polygon (shoelace formula)."""
    poly = np.asarray(poly, np.float64).reshape(-1, 2)
    if len(poly) < 3:
        return 0.0
    y, x = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(np.dot(y, np.roll(x, -1)) - np.dot(x, np.roll(y, -1))))
