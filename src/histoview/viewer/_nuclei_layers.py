"""A slide's nuclei in napari: every nucleus when zoomed in, a thinned view when zoomed out.

A slide's cell graph has 100,000+ nuclei and several times as many edges. napari slows down
well before that many points or lines (napari issue 7945: above ~10k shapes), and at a
zoom where a nucleus is smaller than a screen pixel nobody can see single nuclei anyway; the
slide-wide picture is the importance density map written beside them
(``<stem>.graph.ome.tif``). So :class:`SlideNucleiLayers` keeps two layers that follow the
camera:

- **points**: the nuclei whose centroid lies in the view, coloured by importance (percentile
  rank over the slide, so softmax attention over 100k nuclei still spans the colour map). When
  more than ``max_points`` are in view, a fixed, evenly spread subset is shown (the same
  nuclei at every pan, so points do not flicker; the layer name says "1 in N");
- **edges**: the graph's edges touching the view (from
  :class:`~histoview.explain.slide_graph_outputs.NucleiView`, made for the view on demand),
  only when at most ``max_edge_nuclei`` nuclei are in view; hidden otherwise.

Updates are debounced (a single-shot timer restarted on every camera event), so a pan or a
zoom costs one update after the movement settles. :func:`view_selection` is the plain-data
part (no napari), tested without a display.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from histoview import RESEARCH_NOTICE

#: most points drawn at once (beyond it, an evenly spread subset)
MAX_POINTS = 20_000
#: edges are drawn only when at most this many nuclei are in view
MAX_EDGE_NUCLEI = 4_000
#: wait after the last camera event before updating (ms)
DEBOUNCE_MS = 150


@dataclass(frozen=True)
class ViewSelection:
    """What to draw for one view.

    Attributes:
        indices: (n,) nuclei to draw as points.
        in_view: nuclei whose centroid lies in the view (>= ``len(indices)``).
        step: 1 when every nucleus in view is drawn, else about ``in_view / len(indices)``.
        segments: (m, 2, 2) level-0 (row, col) of both ends of each edge, or None when edges
            are hidden at this zoom.
        weights: (m,) edge weights (1 - d / threshold) or None.
    """

    indices: np.ndarray
    in_view: int
    step: int
    segments: np.ndarray | None
    weights: np.ndarray | None


def spread_order(n: int, seed: int = 0) -> np.ndarray:
    """(n,) rank of each nucleus in a fixed random order: the first k of any set are an
    evenly spread sample of it (the same at every pan and zoom)."""
    rank = np.empty(n, np.int64)
    rank[np.random.default_rng(seed).permutation(n)] = np.arange(n)
    return rank


def view_selection(
    view,
    box: tuple[float, float, float, float],
    rank: np.ndarray,
    *,
    max_points: int = MAX_POINTS,
    max_edge_nuclei: int = MAX_EDGE_NUCLEI,
) -> ViewSelection:
    """The points and edges to draw for the level-0 ``box`` = (row, col, height, width).

    Args:
        view: a :class:`~histoview.explain.slide_graph_outputs.NucleiView`.
        rank: :func:`spread_order` of the nuclei.
    """
    inside = np.asarray(view.points(box), np.int64)
    n = len(inside)
    if n > max_points:
        keep = inside[np.argsort(rank[inside], kind="stable")[:max_points]]
        indices, step = np.sort(keep), max(2, round(n / max_points))
    else:
        indices, step = inside, 1
    segments = weights = None
    if n <= max_edge_nuclei:
        segments, weights, _ = view.edges(box)
    return ViewSelection(indices, n, step, segments, weights)


def view_box(viewer) -> tuple[tuple[float, float], tuple[float, float]]:
    """The world rectangle ``((y0, x0), (y1, x1))`` the canvas shows now."""
    scene = getattr(viewer, "scene", None)  # napari >= 0.9; before, viewer.camera
    camera = scene.camera if scene is not None else viewer.camera
    cy, cx = camera.center[-2:]
    h, w = viewer.canvas.size
    zoom = float(camera.zoom)
    return (cy - h / 2 / zoom, cx - w / 2 / zoom), (cy + h / 2 / zoom, cx + w / 2 / zoom)


@dataclass(frozen=True)
class PreparedNuclei:
    """What the layers need, computed once off the main thread (:func:`prepare_nuclei`).

    Attributes:
        nuclei: the slide's nuclei (with an ``importance`` column).
        view: their :class:`~histoview.explain.slide_graph_outputs.NucleiView` (k-d tree).
        rank: :func:`spread_order` of the nuclei.
        percentile: (N,) float32 importance percentile over the slide.
        rgba: (N, 4) float32 colour of each nucleus (so an update only indexes).
    """

    nuclei: object
    view: object
    rank: np.ndarray
    percentile: np.ndarray
    rgba: np.ndarray


def prepare_nuclei(nuclei, colormap: str = "inferno") -> PreparedNuclei:
    """Index and colour a slide's nuclei (a path to ``<stem>.graph.nuclei.npz`` or a
    :class:`~histoview.preprocessing.slide_nuclei.SlideNuclei`); seconds for 100k+ nuclei, so
    call it from a worker thread."""
    from histoview.explain.slide_graph_outputs import NucleiView, importance_percentile
    from histoview.preprocessing.slide_nuclei import load_slide_nuclei
    from histoview.viewer.overlays import fading_colormap

    if not hasattr(nuclei, "centroids"):
        nuclei = load_slide_nuclei(nuclei)
    if "importance" not in nuclei.feature_names:
        raise ValueError("these nuclei carry no importance (not a graph explanation's)")
    percentile = importance_percentile(nuclei.feature("importance")).astype(np.float32)
    cmap = fading_colormap(colormap, floor=0.35)
    rgba = np.asarray(cmap.map(percentile / 100.0), np.float32).reshape(-1, 4)
    return PreparedNuclei(nuclei, NucleiView(nuclei), spread_order(len(nuclei)), percentile, rgba)


class SlideNucleiLayers:
    """Points and edge layers of a slide's nuclei that follow the camera (module docstring).

    Args:
        viewer: the napari viewer.
        prepared: :func:`prepare_nuclei` of the nuclei (the graph method's
            ``<stem>.graph.nuclei.npz``).
        slide_layer: the slide's image layer (its scale and translate place the nuclei).
        name: the layers' name prefix.

    Camera moves are answered after :data:`DEBOUNCE_MS` of quiet: the selection is made in a
    worker thread and the main thread only swaps the arrays in (:meth:`update` does both at
    once, for callers that want the result now).
    """

    def __init__(
        self,
        viewer,
        prepared: PreparedNuclei,
        slide_layer,
        *,
        name: str = "nuclei",
        max_points: int = MAX_POINTS,
        max_edge_nuclei: int = MAX_EDGE_NUCLEI,
    ):
        from qtpy.QtCore import QTimer

        from histoview.viewer.overlays import fading_colormap

        self.viewer, self.prepared, self.name = viewer, prepared, name
        nuclei = prepared.nuclei
        self.max_points, self.max_edge_nuclei = max_points, max_edge_nuclei
        self.scale = tuple(float(v) for v in slide_layer.scale[-2:])
        self.translate = tuple(float(v) for v in slide_layer.translate[-2:])
        self.level0_shape = tuple(nuclei.level0_shape)
        self.selection: ViewSelection | None = None
        self._asked = 0  # camera moves asked for; a late answer to an older one is dropped
        radius_px = 3.5 / nuclei.level0_pixel_size_um  # a nucleus is ~7 um across
        units = tuple(getattr(slide_layer, "units", ("pixel", "pixel")))[-2:]
        meta = {"histoview": {"role": "slide nuclei", "notice": RESEARCH_NOTICE}}
        self.edges = viewer.add_vectors(
            np.zeros((0, 2, 2)),
            name=f"{name}: graph edges",
            edge_width=max(0.5, radius_px / 8),
            vector_style="line",
            edge_colormap=fading_colormap("gray"),
            opacity=0.35,
            scale=self.scale,
            translate=self.translate,
            units=units,
            metadata=meta,
        )
        self.points = viewer.add_points(
            np.zeros((0, 2)),
            name=name,
            size=max(4.0, 2.0 * radius_px),
            border_width=0,
            scale=self.scale,
            translate=self.translate,
            units=units,
            metadata=meta,
        )
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(DEBOUNCE_MS)
        self._timer.timeout.connect(self._select_in_thread)
        camera = getattr(viewer, "scene", viewer).camera
        camera.events.zoom.connect(self._later)
        camera.events.center.connect(self._later)
        self.update()

    def _later(self, _event=None):
        self._asked += 1
        self._timer.start()

    def close(self) -> None:
        """Stop following the camera (the layers stay where they are)."""
        camera = getattr(self.viewer, "scene", self.viewer).camera
        for emitter in (camera.events.zoom, camera.events.center):
            emitter.disconnect(self._later)
        self._timer.stop()

    def level0_box(self) -> tuple[float, float, float, float]:
        """The view as a level-0 (row, col, height, width) box cut to the slide (empty when
        the view misses it)."""
        from histoview.viewer._slide_live import world_box_to_region

        box = world_box_to_region(view_box(self.viewer), *self._placement(), self.level0_shape)
        return box if box is not None else (0.0, 0.0, 0.0, 0.0)

    def _placement(self) -> tuple[tuple, tuple]:
        """The points' scale and translate now (a pixel size typed later rescales them,
        histoview.viewer._calibration), else those of the slide when they were made."""
        try:
            return tuple(self.points.scale[-2:]), tuple(self.points.translate[-2:])
        except (AttributeError, RuntimeError):
            return self.scale, self.translate

    def _select(self, box) -> ViewSelection:
        p = self.prepared
        return view_selection(
            p.view,
            box,
            p.rank,
            max_points=self.max_points,
            max_edge_nuclei=self.max_edge_nuclei,
        )

    def _select_in_thread(self):
        from napari.qt.threading import create_worker

        asked, box = self._asked, self.level0_box()
        worker = create_worker(self._select, box)
        worker.returned.connect(lambda sel: self._apply(sel) if asked == self._asked else None)
        worker.start()

    def update(self) -> ViewSelection | None:
        """Select and redraw for the current view now, on this thread."""
        return self._apply(self._select(self.level0_box()))

    def _apply(self, sel: ViewSelection) -> ViewSelection | None:
        """Swap ``sel`` into the layers (main thread; arrays only, colours precomputed)."""
        if self.points not in self.viewer.layers:
            return None
        p = self.prepared
        self.selection = sel
        self.points.data = p.nuclei.centroids[sel.indices]
        self.points.face_color = p.rgba[sel.indices]
        self.points.features = {"importance percentile": p.percentile[sel.indices]}
        self.points.name = self.name if sel.step == 1 else f"{self.name} (1 in {sel.step})"
        if sel.segments is None or not len(sel.segments):
            self.edges.visible = sel.segments is not None
            self.edges.data = np.zeros((0, 2, 2))
        else:
            vecs = np.stack([sel.segments[:, 0], sel.segments[:, 1] - sel.segments[:, 0]], 1)
            self.edges.data = vecs
            self.edges.features = {"weight": sel.weights}
            self.edges.edge_color = "weight"
            self.edges.visible = True
        return sel
