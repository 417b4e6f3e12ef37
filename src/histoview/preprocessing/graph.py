"""The cell graph of Sureka et al., 2020: nuclei are nodes, nearby nuclei joined by weighted edges.

Sureka et al., 2020 (nuclei-graph convolution with robust spatial filtering, RSF;
``docs/citations.md``) join two nuclei when their centroid distance is below 100 px and
weight the edge ``A_ij = 1 - dist(i, j) / 100`` (their Eq. 1). The threshold is given here
in micrometres so that graphs of images at different resolutions agree: the paper's 100 px
at BACH's 0.42 um/px is the default 42 um. RSF takes several edge features (its ``L`` adjacency
channels); :meth:`NucleiGraph.to_pyg` provides the weight, the normalised distance and the
edge direction (cos, sin), see :data:`EDGE_FEATURE_NAMES`.

Pairs are found with a k-d tree (:meth:`scipy.spatial.cKDTree.query_pairs`), never by
comparing all pairs, so graphs of thousands of nuclei build in milliseconds.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.spatial import cKDTree

from histoview.io.files import write_bytes
from histoview.preprocessing.nuclei import Nuclei, NucleiDetectorConfig, detect_nuclei

if TYPE_CHECKING:  # pragma: no cover
    from torch_geometric.data import Data

__all__ = [
    "DEFAULT_THRESHOLD_UM",
    "EDGE_FEATURE_NAMES",
    "NucleiGraph",
    "build_nuclei_graph",
    "graph_from_image",
    "load_graph",
    "save_graph",
]

DEFAULT_THRESHOLD_UM = 42.0
"""Sureka et al.'s 100 px edge threshold (their Eq. 1) at BACH's 0.42 um/px."""

EDGE_FEATURE_NAMES: tuple[str, ...] = ("weight", "distance_norm", "cos_direction", "sin_direction")
"""Columns of ``edge_attr`` in :meth:`NucleiGraph.to_pyg`: ``1 - d/t``, ``d/t`` and the
cosine / sine of the direction from source to target nucleus (angle measured from the
image column axis towards increasing rows), the distance and angle edge features of RSF."""

_FORMAT_VERSION = 1


@dataclass(frozen=True, eq=False)
class NucleiGraph:
    """Cell graph of one image (Sureka et al., 2020, Sec. III-B).

    Attributes:
        centroids: (N, 2) float64 (row, col) pixels.
        node_features: (N, F) float32.
        feature_names: names of the F node-feature columns.
        edge_index: (2, E) int64 (source, target); both directions of each undirected edge
            are present (PyG convention), sorted by source then target.
        edge_weight: (E,) float32, ``1 - d / threshold`` in (0, 1].
        edge_distance_um: (E,) float32 centroid distance in micrometres.
        threshold_um: edges join nuclei strictly closer than this.
        pixel_size_um: micrometres per pixel of ``centroids``.
    """

    centroids: np.ndarray
    node_features: np.ndarray
    feature_names: tuple[str, ...]
    edge_index: np.ndarray
    edge_weight: np.ndarray
    edge_distance_um: np.ndarray
    threshold_um: float
    pixel_size_um: float

    def __len__(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def num_edges(self) -> int:
        """Number of directed edges (twice the number of undirected ones)."""
        return int(self.edge_index.shape[1])

    def edge_features(self) -> np.ndarray:
        """(E, 4) float32 edge features, columns :data:`EDGE_FEATURE_NAMES`."""
        src, dst = self.edge_index
        delta = self.centroids[dst] - self.centroids[src]  # (drow, dcol)
        angle = np.arctan2(delta[:, 0], delta[:, 1])
        dist_norm = self.edge_distance_um / np.float32(self.threshold_um)
        return np.stack([self.edge_weight, dist_norm, np.cos(angle), np.sin(angle)], axis=1).astype(
            np.float32
        )

    def to_pyg(self, y: int | None = None) -> Data:
        """Convert to :class:`torch_geometric.data.Data` (imports torch here, lazily).

        Args:
            y: optional graph label (stored as a long tensor of shape (1,)).

        Returns:
            ``Data`` with ``x`` (N, F) float32, ``edge_index`` (2, E) long, ``edge_attr``
            (E, 4) float32 (:data:`EDGE_FEATURE_NAMES`), ``edge_weight`` (E,) float32 (the
            adjacency weight of Sureka et al.'s Eq. 1, for convolutions that take one),
            ``pos`` (N, 2) float32 (row, col) pixels, and ``y`` when given.
        """
        import torch
        from torch_geometric.data import Data

        data = Data(
            x=torch.from_numpy(np.ascontiguousarray(self.node_features, np.float32)),
            edge_index=torch.from_numpy(np.ascontiguousarray(self.edge_index, np.int64)),
            edge_attr=torch.from_numpy(self.edge_features()),
            edge_weight=torch.from_numpy(np.ascontiguousarray(self.edge_weight, np.float32)),
            pos=torch.from_numpy(self.centroids.astype(np.float32)),
        )
        data.num_nodes = len(self)
        if y is not None:
            data.y = torch.tensor([int(y)], dtype=torch.long)
        return data


def build_nuclei_graph(
    nuclei: Nuclei | np.ndarray,
    *,
    threshold_um: float = DEFAULT_THRESHOLD_UM,
    pixel_size_um: float | None = None,
    features: np.ndarray | None = None,
    feature_names: tuple[str, ...] | None = None,
    include_position: bool = False,
    image_shape: tuple[int, int] | None = None,
) -> NucleiGraph:
    """Cell graph of Sureka et al.: an edge when ``d < threshold``, weight ``1 - d/threshold``.

    Args:
        nuclei: a :class:`Nuclei` (centroids, features and pixel size are taken from it) or
            an (N, 2) array of (row, col) centroids in pixels.
        threshold_um: distance threshold in micrometres (default 42 um = the paper's 100 px
            at 0.42 um/px).
        pixel_size_um: micrometres per pixel; required with a centroid array, optional with
            :class:`Nuclei` (must then agree with ``nuclei.pixel_size_um``).
        features: (N, F) node features for a centroid array (default: no columns).
        feature_names: names of those columns (default ``f0, f1, ...``).
        include_position: append the centroid divided by the image size (``row_norm``,
            ``col_norm`` in [0, 1]) as node features; off by default because absolute
            position is not a property of the tissue.
        image_shape: (H, W) for the normalisation; defaults to the labels' shape of
            :class:`Nuclei`, else the centroids' extent.

    Returns:
        :class:`NucleiGraph`.

    Raises:
        ValueError: for a missing or conflicting pixel size, bad shapes or threshold.
    """
    if isinstance(nuclei, Nuclei):
        if pixel_size_um is not None and not np.isclose(pixel_size_um, nuclei.pixel_size_um):
            raise ValueError(
                f"pixel_size_um={pixel_size_um} conflicts with nuclei.pixel_size_um="
                f"{nuclei.pixel_size_um}"
            )
        px = float(nuclei.pixel_size_um)
        centroids = np.asarray(nuclei.centroids, np.float64).reshape(-1, 2)
        feats = _as_2d(nuclei.features, len(centroids))
        names = tuple(nuclei.feature_names)
        if image_shape is None:
            image_shape = tuple(nuclei.labels.shape[:2])
    else:
        if pixel_size_um is None:
            raise ValueError("pixel_size_um is required when nuclei is a centroid array")
        px = float(pixel_size_um)
        centroids = np.asarray(nuclei, np.float64)
        if centroids.size == 0:
            centroids = centroids.reshape(0, 2)
        if centroids.ndim != 2 or centroids.shape[1] != 2:
            raise ValueError(f"centroids must be (N, 2), got {centroids.shape}")
        n = len(centroids)
        feats = np.zeros((n, 0), np.float32) if features is None else _as_2d(features, n)
        names = (
            tuple(feature_names)
            if feature_names is not None
            else tuple(f"f{i}" for i in range(feats.shape[1]))
        )
    if len(names) != feats.shape[1]:
        raise ValueError(f"{len(names)} feature names for {feats.shape[1]} feature columns")
    if not (np.isfinite(px) and px > 0):
        raise ValueError(f"pixel_size_um must be positive, got {px}")
    if not (np.isfinite(threshold_um) and threshold_um > 0):
        raise ValueError(f"threshold_um must be positive, got {threshold_um}")

    if include_position:
        if image_shape is None:
            extent = centroids.max(axis=0) + 1 if len(centroids) else np.ones(2)
        else:
            extent = np.asarray(image_shape[:2], np.float64)
        pos = (centroids / np.maximum(extent, 1)).astype(np.float32)
        feats = np.concatenate([feats, pos], axis=1)
        names = names + ("row_norm", "col_norm")

    edge_index, dist_um = _radius_edges(centroids, float(threshold_um), px)
    weight = (1.0 - dist_um / threshold_um).astype(np.float32)
    return NucleiGraph(
        centroids=centroids,
        node_features=np.ascontiguousarray(feats, np.float32),
        feature_names=names,
        edge_index=edge_index,
        edge_weight=weight,
        edge_distance_um=dist_um.astype(np.float32),
        threshold_um=float(threshold_um),
        pixel_size_um=px,
    )


def _as_2d(features: np.ndarray, n: int) -> np.ndarray:
    feats = np.asarray(features, np.float32)
    feats = feats[:, None] if feats.ndim == 1 else feats
    if feats.ndim != 2 or feats.shape[0] != n:
        raise ValueError(f"features must be (N={n}, F), got shape {feats.shape}")
    return feats


def _radius_edges(centroids: np.ndarray, threshold_um: float, px: float):
    """Directed pairs (both ways) closer than ``threshold_um``, sorted; distances in um."""
    if len(centroids) < 2:
        return np.zeros((2, 0), np.int64), np.zeros(0, np.float64)
    radius_px = threshold_um / px * (1 + 1e-9)  # a hair wider; the strict test is below
    pairs = cKDTree(centroids).query_pairs(r=radius_px, output_type="ndarray")
    pairs = pairs.astype(np.int64).reshape(-1, 2)
    d_um = np.linalg.norm(centroids[pairs[:, 0]] - centroids[pairs[:, 1]], axis=1) * px
    keep = d_um < threshold_um  # the paper's rule is strict: dist < threshold
    pairs, d_um = pairs[keep], d_um[keep]
    src = np.concatenate([pairs[:, 0], pairs[:, 1]])
    dst = np.concatenate([pairs[:, 1], pairs[:, 0]])
    dist = np.concatenate([d_um, d_um])
    order = np.lexsort((dst, src))
    return np.stack([src[order], dst[order]]), dist[order]


def graph_from_image(
    image: np.ndarray,
    pixel_size_um: float,
    *,
    detector_config: NucleiDetectorConfig | None = None,
    threshold_um: float = DEFAULT_THRESHOLD_UM,
    include_position: bool = False,
) -> NucleiGraph:
    """Detect nuclei (:func:`detect_nuclei`) then build their cell graph.

    Args:
        image: (H, W, 3) uint8 RGB H&E image.
        pixel_size_um: micrometres per pixel.
        detector_config: nuclei detector parameters (micrometres).
        threshold_um: edge distance threshold in micrometres.
        include_position: append normalised (row, col) to the node features.

    Returns:
        :class:`NucleiGraph` with the :data:`~histoview.preprocessing.nuclei.FEATURE_NAMES`
        morphology as node features.
    """
    nuclei = detect_nuclei(image, pixel_size_um, detector_config)
    return build_nuclei_graph(nuclei, threshold_um=threshold_um, include_position=include_position)


def save_graph(graph: NucleiGraph, path: str | Path) -> Path:
    """Write ``graph`` to a compressed ``.npz`` (plain arrays only, no pickle).

    Args:
        graph: the graph.
        path: destination; ``.npz`` is appended by NumPy when missing.

    Returns:
        The path written.
    """
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    arrays: dict[str, Any] = {
        "format_version": np.array(_FORMAT_VERSION, np.int64),
        "centroids": graph.centroids.astype(np.float64),
        "node_features": graph.node_features.astype(np.float32),
        "feature_names": np.array(graph.feature_names, dtype=np.str_).reshape(-1),
        "edge_index": graph.edge_index.astype(np.int64),
        "edge_weight": graph.edge_weight.astype(np.float32),
        "edge_distance_um": graph.edge_distance_um.astype(np.float32),
        "threshold_um": np.array(graph.threshold_um, np.float64),
        "pixel_size_um": np.array(graph.pixel_size_um, np.float64),
    }
    # Renamed into place: another training run sharing the graph cache never reads a
    # half-written file.
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return write_bytes(path, buffer.getvalue(), overwrite=True)


def load_graph(path: str | Path) -> NucleiGraph:
    """Read a graph written by :func:`save_graph` (``allow_pickle=False``).

    Raises:
        ValueError: if the file is not a histoview graph of a known format version.
    """
    with np.load(Path(path), allow_pickle=False) as z:
        if "format_version" not in z.files or int(z["format_version"]) > _FORMAT_VERSION:
            raise ValueError(f"{path} is not a histoview nuclei graph (or a newer format)")
        graph = NucleiGraph(
            centroids=z["centroids"].astype(np.float64),
            node_features=z["node_features"].astype(np.float32),
            feature_names=tuple(str(s) for s in z["feature_names"]),
            edge_index=z["edge_index"].astype(np.int64),
            edge_weight=z["edge_weight"].astype(np.float32),
            edge_distance_um=z["edge_distance_um"].astype(np.float32),
            threshold_um=float(z["threshold_um"]),
            pixel_size_um=float(z["pixel_size_um"]),
        )
    n, e = len(graph), graph.edge_index.shape[-1]
    if (
        graph.centroids.shape != (n, 2)
        or graph.node_features.shape[0] != n
        or graph.edge_index.shape != (2, e)
        or graph.edge_weight.shape != (e,)
        or graph.edge_distance_um.shape != (e,)
        or len(graph.feature_names) != graph.node_features.shape[1]
    ):
        raise ValueError(f"{path}: inconsistent array shapes in the graph file")
    return graph
