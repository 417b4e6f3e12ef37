"""Layout of the phantom slide (:mod:`histoview.preprocessing.phantom_slide`).

Drawn once per slide from one ``numpy.random.default_rng(seed)``, before any pixel: tissue
islands on glass, lesions inside them, the benign glands and the in-situ ducts. Everything
that needs a continuous field lives on a coarse grid of ``GRID_UM`` micrometres (the
label map's grid): node ``(i, j)`` is the centre of label pixel ``(i, j)``, at render pixel
``((i + 0.5) g - 0.5, (j + 0.5) g - 0.5)`` with ``g = GRID_UM / px``. The renderer
interpolates these fields bilinearly, so the label map (the fields at the nodes) and the
pixels agree to within the fine edge noise the renderer adds (a few micrometres).

* Islands: 1-6 irregular smooth blobs (Fourier-perturbed ellipses plus smooth noise) covering
  40-55 % of the slide, away from its border; ``island`` is about the signed distance to the
  tissue edge (um, > 0 in tissue).
* Lesions, 300 um to 3 mm across, at least one of each kind on slides with room for two:
  ``invasive``: an irregular region (distance to 1-3 centres plus smooth noise, holes
  filled), its own field on its bounding box of nodes; ``in_situ``: a zone packed with
  ducts of 35-110 um radius (the phantoms' range), 10 um apart.
* Glands: benign glands of 30-75 um radius placed at random in tissue (whole inside it),
  12 um from each other and from ducts, 12 um plus their size from invasive lesions, until
  they cover 20-35 % of the benign tissue (``make_phantom``'s rules).

Objects (glands and ducts) are (centre, radius, outline harmonics) in render pixels; their
pixels and nuclei are drawn by the renderer from a generator of their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from histoview.preprocessing._phantom_nuclei import _harmonics, _radius, _radius_xy
from histoview.preprocessing._phantom_render import _smooth_noise

GRID_UM = 8.0
GLAND, DUCT = 0, 1
LESION_KINDS = ("in_situ", "invasive")


@dataclass
class _Lesion:
    """One lesion; ``field`` (um, > 0 inside: the invasive region, or the in-situ zone the
    ducts fill) covers nodes ``i0..i0+h-1`` x ``j0..j0+w-1``."""

    index: int
    kind: str
    centre_um: tuple[float, float]
    diameter_um: float
    i0: int
    j0: int
    field: np.ndarray
    spacing_um: float = 12.0
    ducts: list[int] = field(default_factory=list)


@dataclass
class _Layout:
    seed: int
    shape0: tuple[int, int]
    px0: float
    upsample: int
    grid_shape: tuple[int, int]
    island: np.ndarray
    lesions: list[_Lesion]
    angle: float
    obj_kind: np.ndarray
    obj_centre: np.ndarray
    obj_r0: np.ndarray
    obj_rmax: np.ndarray
    obj_lesion: np.ndarray
    obj_harm: list
    lesion_distance: np.ndarray

    @property
    def px(self) -> float:
        """Render pixel size (um/px): level ``log2(upsample)`` of the pyramid."""
        return self.px0 * self.upsample

    @property
    def shape(self) -> tuple[int, int]:
        """Render grid (H, W)."""
        return tuple(-(-v // self.upsample) for v in self.shape0)

    @property
    def g(self) -> float:
        """Render pixels per grid node."""
        return GRID_UM / self.px

    # -- fields at render pixels ----------------------------------------------------------
    def _node_coords(self, v):
        return (np.asarray(v, float) + 0.5) / self.g - 0.5

    def sample(self, arr, i0, j0, rows, cols, *, grid: bool):
        """Bilinear samples of node array ``arr`` (covering nodes from ``(i0, j0)``, edge
        values beyond) at render pixel ``rows`` x ``cols`` (``grid``) or points."""
        from histoview.preprocessing._phantom_slide_noise import _bilinear, _split

        h, w = arr.shape
        qi = np.clip(self._node_coords(rows) - i0, 0, h - 1.0001)
        qj = np.clip(self._node_coords(cols) - j0, 0, w - 1.0001)
        (i, fi), (j, fj) = _split(qi), _split(qj)
        if grid:
            return _bilinear(arr, i, fi, j, fj)
        top = arr[i, j] * (1 - fj) + arr[i, j + 1] * fj
        return top * (1 - fi) + (arr[i + 1, j] * (1 - fj) + arr[i + 1, j + 1] * fj) * fi

    def node_box(self, r0, c0, r1, c1, pad=2):
        """Node index box (i0, i1, j0, j1) covering render pixels [r0, r1) x [c0, c1)."""
        g, (gh, gw) = self.g, self.grid_shape
        i0 = max(int(np.floor((r0 + 0.5) / g - 0.5)) - pad, 0)
        j0 = max(int(np.floor((c0 + 0.5) / g - 0.5)) - pad, 0)
        i1 = min(int(np.ceil((r1 + 0.5) / g - 0.5)) + pad + 1, gh)
        j1 = min(int(np.ceil((c1 + 0.5) / g - 0.5)) + pad + 1, gw)
        return i0, i1, j0, j1

    def lesions_in(self, r0, c0, r1, c1, kind=None):
        """Lesions whose field box meets render pixels [r0, r1) x [c0, c1)."""
        i0, i1, j0, j1 = self.node_box(r0, c0, r1, c1)
        return [
            les
            for les in self.lesions
            if (kind is None or les.kind == kind)
            and les.i0 < i1
            and les.i0 + les.field.shape[0] > i0
            and les.j0 < j1
            and les.j0 + les.field.shape[1] > j0
        ]

    def objects_in(self, r0, c0, r1, c1) -> np.ndarray:
        """Indices of glands and ducts whose extent meets render pixels [r0, r1) x [c0, c1)."""
        c, rm = self.obj_centre, self.obj_rmax + 10 / self.px
        hit = (c[:, 0] + rm > r0) & (c[:, 0] - rm < r1) & (c[:, 1] + rm > c0) & (c[:, 1] - rm < c1)
        return np.flatnonzero(hit)

    def labels(self) -> np.ndarray:
        """The uint8 label map on the grid: 0 glass, 1 benign tissue, 2 in situ, 3 invasive."""
        lab = (self.island > 0).astype(np.uint8)
        for les in self.lesions:
            if les.kind == "invasive":
                h, w = les.field.shape
                sub = lab[les.i0 : les.i0 + h, les.j0 : les.j0 + w]
                sub[les.field > 0] = 3
        g = self.g
        for k in np.flatnonzero(self.obj_kind == DUCT):
            (cr, cc), rmax = self.obj_centre[k], self.obj_rmax[k]
            i0, i1, j0, j1 = self.node_box(cr - rmax, cc - rmax, cr + rmax, cc + rmax, pad=1)
            dr = ((np.arange(i0, i1) + 0.5) * g - 0.5 - cr)[:, None]
            dc = ((np.arange(j0, j1) + 0.5) * g - 0.5 - cc)[None, :]
            inside = np.hypot(dr, dc) < self.obj_r0[k] * _radius_xy(dc, dr, self.obj_harm[k])
            lab[i0:i1, j0:j1][inside] = 2
        return lab


def _blob(gy, gx, centre, axes, theta, harm):
    """About the signed distance (um, > 0 inside) to a Fourier-perturbed ellipse."""
    y, x = gy - centre[0], gx - centre[1]
    u = (x * np.cos(theta) + y * np.sin(theta)) / axes[1]
    v = (-x * np.sin(theta) + y * np.cos(theta)) / axes[0]
    return (_radius(np.arctan2(v, u), harm) - np.hypot(u, v)) * np.sqrt(axes[0] * axes[1])


def _islands(rng, extent_um, gshape):
    """Island field (um) on the node grid and the islands' (centre, axes) in um."""
    area = extent_um[0] * extent_um[1]
    n_max = int(np.clip(area / 20e6, 1, 6))
    n = int(rng.integers(max(1, n_max // 2), n_max + 1))
    frac = rng.uniform(0.45, 0.6)
    shares = rng.uniform(0.6, 1.4, n)
    shares *= frac * area / shares.sum()
    gy = ((np.arange(gshape[0]) + 0.5) * GRID_UM)[:, None]
    gx = ((np.arange(gshape[1]) + 0.5) * GRID_UM)[None, :]
    field, placed = np.full(gshape, -1e4, np.float32), []
    margin = 0.06 * min(extent_um) + 60
    for a in shares:
        elong = rng.uniform(1.0, 2.0)
        for _ in range(60):
            axes = np.sqrt(a / np.pi) * np.array([np.sqrt(elong), 1 / np.sqrt(elong)])
            axes = np.minimum(axes, min(extent_um) / 2 - margin)
            lo = np.maximum(axes.max() + margin, 0)
            c = rng.uniform(lo, np.maximum(np.array(extent_um) - lo, lo + 1))
            far = all(np.hypot(*(c - pc)) > 0.85 * (axes.max() + pa.max()) for pc, pa in placed)
            if far:
                break
            elong = 1 + (elong - 1) * 0.9
            a *= 0.93
        theta, harm = rng.uniform(0, np.pi), _harmonics(rng, 5, 0.25)
        f = _blob(gy, gx, c, axes, theta, harm)
        sig = max(0.2 * min(axes) / GRID_UM, 2.0)
        f = f + 0.15 * min(axes) * _smooth_noise(rng, gshape, sig)
        field = np.maximum(field, f.astype(np.float32))
        placed.append((c, axes))
    edge = np.minimum(np.minimum(gy, extent_um[0] - gy), np.minimum(gx, extent_um[1] - gx))
    return np.minimum(field, (edge - 80).astype(np.float32)), placed


def _lesion_field(rng, kind, centre_node, radius_um, island, gshape):
    """(i0, j0, field) of one lesion on its box of nodes: distance to 1-3 nearby centres plus
    smooth noise (um, > 0 inside), kept 30 um inside the tissue, holes filled."""
    pad = int(np.ceil(1.8 * radius_um / GRID_UM)) + 3
    i0, j0 = max(int(centre_node[0]) - pad, 0), max(int(centre_node[1]) - pad, 0)
    i1, j1 = (
        min(int(centre_node[0]) + pad + 1, gshape[0]),
        min(int(centre_node[1]) + pad + 1, gshape[1]),
    )
    y = ((np.arange(i0, i1) - centre_node[0]) * GRID_UM)[:, None]
    x = ((np.arange(j0, j1) - centre_node[1]) * GRID_UM)[None, :]
    d = np.full((i1 - i0, j1 - j0), np.inf)
    for _ in range(int(rng.integers(1, 4))):
        off = rng.normal(0, 0.3 * radius_um, 2)
        share = rng.uniform(0.6, 1.0)
        d = np.minimum(d, np.hypot(y - off[0], x - off[1]) / share)
    rough = 0.35 if kind == "invasive" else 0.2
    sig = max(radius_um / 5 / GRID_UM, 1.5)
    f = radius_um - d + rough * radius_um * _smooth_noise(rng, d.shape, sig)
    f = np.minimum(f, island[i0:i1, j0:j1] - 30).astype(np.float32)
    holes = ndi.binary_fill_holes(f > 0) & ~(f > 0)
    f[holes] = GRID_UM / 4  # a hole would be an island of benign tissue inside the outline
    f[[0, -1], :] = np.minimum(f[[0, -1], :], -GRID_UM)
    f[:, [0, -1]] = np.minimum(f[:, [0, -1]], -GRID_UM)
    return i0, j0, f


def _lesions(rng, island, gshape, tissue_um2):
    """Lesions inside the tissue, 300 um to 3 mm across (down to 100 um where the tissue is
    smaller), 150 um apart (less on small slides), in situ and invasive by turns."""
    inside = ndi.distance_transform_edt(island > 0) * GRID_UM
    room = float(inside.max())
    gap = min(150.0, 0.08 * min(gshape) * GRID_UM)
    n = int(np.clip(round(tissue_um2 / 8e6 * rng.uniform(0.7, 1.3)), 2, 12))
    lo, hi = min(300.0, 0.5 * room), min(3000.0, 0.8 * room)
    out, taken = [], []
    for k in range(n):
        diam, centre = float(np.exp(rng.uniform(np.log(lo), np.log(max(hi, lo))))), None
        for _ in range(16):
            ok = np.flatnonzero(inside.ravel() > 0.65 * diam + 20)
            for node in rng.choice(ok, min(100, ok.size)) if ok.size else ():
                ci = np.array(divmod(int(node), gshape[1]), float)
                if all(np.hypot(*(ci - c) * GRID_UM) > (diam + d) * 0.7 + gap for c, d in taken):
                    centre = ci
                    break
            if centre is not None:
                break
            diam *= 0.85
        if centre is None or diam < 100:
            continue
        kind = LESION_KINDS[k % 2]
        i0, j0, f = _lesion_field(rng, kind, centre, diam / 2, island, gshape)
        if not (f > 0).any():
            continue
        taken.append((centre, diam))
        centre_um = tuple(float(v) for v in (centre + 0.5) * GRID_UM)
        out.append(_Lesion(len(out), kind, centre_um, diam, i0, j0, f, rng.uniform(11, 13)))
    return out


class _Objects:
    """Glands and ducts placed without overlap (a spatial hash of 300 um cells)."""

    def __init__(self, px):
        self.px, self.cell = px, 300 / px
        self.kind, self.centre, self.r0, self.rmax, self.lesion, self.harm = [], [], [], [], [], []
        self.hash: dict[tuple[int, int], list[int]] = {}

    def fits(self, c, rmax, gap):
        ci, cj = int(c[0] // self.cell), int(c[1] // self.cell)
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                for k in self.hash.get((ci + di, cj + dj), ()):
                    if np.hypot(c[0] - self.centre[k][0], c[1] - self.centre[k][1]) <= (
                        rmax + self.rmax[k] + gap
                    ):
                        return False
        return True

    def add(self, kind, c, r0, rmax, harm, lesion=-1):
        self.hash.setdefault((int(c[0] // self.cell), int(c[1] // self.cell)), []).append(
            len(self.kind)
        )
        for lst, v in zip(
            (self.kind, self.centre, self.r0, self.rmax, self.lesion, self.harm),
            (kind, c, r0, rmax, lesion, harm),
        ):
            lst.append(v)


def _ducts(rng, objs, les, layout_g, px, target):
    """Pack the in-situ zone ``les`` with ducts (35-110 um radius, 10 um apart)."""
    s = 1 / px
    zone = les.field
    ok = np.flatnonzero(zone.ravel() > 0)
    if not ok.size:
        return
    area, covered = ok.size * GRID_UM**2, 0.0
    for _ in range(3000):
        if covered > target * area:
            break
        r0_um = float(np.exp(rng.uniform(np.log(35), np.log(110))))
        r0_um = min(r0_um, max(les.diameter_um / 2.5, 35))
        harm = _harmonics(rng, 3, 0.12)
        node = divmod(int(rng.choice(ok)), zone.shape[1])
        jitter = rng.uniform(-0.5, 0.5, 2)
        fz = zone[node]
        r0_um = min(r0_um, fz + 10)
        if r0_um < 25:
            continue
        c = ((np.array(node) + (les.i0, les.j0) + jitter + 0.5) * layout_g) - 0.5
        r0 = r0_um * s
        rmax = r0 * (1 + np.abs(harm[1]).sum()) + 3 * s
        if objs.fits(c, rmax, 10 * s):
            objs.add(DUCT, c, r0, rmax, harm, les.index)
            les.ducts.append(len(objs.kind) - 1)
            covered += np.pi * r0_um**2


def make_layout(seed: int, shape0: tuple[int, int], px0: float, upsample: int) -> _Layout:
    """The slide's layout (module docstring); deterministic in its arguments."""
    rng = np.random.default_rng(seed)
    px = px0 * upsample
    extent = (shape0[0] * px0, shape0[1] * px0)
    gshape = tuple(int(np.ceil(v / GRID_UM)) for v in extent)
    island, _ = _islands(rng, extent, gshape)
    tissue_um2 = float((island > 0).sum()) * GRID_UM**2
    lesions = _lesions(rng, island, gshape, tissue_um2)
    g = GRID_UM / px
    objs = _Objects(px)
    for les in lesions:
        if les.kind == "in_situ":
            _ducts(rng, objs, les, g, px, rng.uniform(0.45, 0.65))
    inv = np.zeros(gshape, bool)
    lesion_mask = np.zeros(gshape, bool)
    for les in lesions:
        h, w = les.field.shape
        sl = np.s_[les.i0 : les.i0 + h, les.j0 : les.j0 + w]
        if les.kind == "invasive":
            inv[sl] |= les.field > 0
        lesion_mask[sl] |= les.field > 0
    to_inv = ndi.distance_transform_edt(~inv) * GRID_UM if inv.any() else np.full(gshape, 1e9)
    in_tissue = ndi.distance_transform_edt(island > 0) * GRID_UM
    s = 1 / px
    benign_um2 = tissue_um2 - float(lesion_mask.sum()) * GRID_UM**2
    target, area = rng.uniform(0.2, 0.35) * benign_um2, 0.0
    hw = np.array(shape0, float) / upsample
    for _ in range(int(tissue_um2 / 900)):
        r0_um = rng.uniform(30, 75)
        harm = _harmonics(rng, 3, 0.3)
        c = rng.uniform(0, 1, 2) * hw
        rmax = r0_um * s * (1 + np.abs(harm[1]).sum()) + 3 * s
        node = tuple(np.clip(((c + 0.5) / g - 0.5).round().astype(int), 0, np.array(gshape) - 1))
        rmax_um = rmax * px
        if (
            in_tissue[node] > rmax_um + 10
            and to_inv[node] > rmax_um + 12 + GRID_UM
            and objs.fits(c, rmax, 12 * s)
        ):
            objs.add(GLAND, c, r0_um * s, rmax, harm)
            area += np.pi * r0_um**2
        if area > target:
            break
    dist = ndi.distance_transform_edt(~lesion_mask) * GRID_UM if lesion_mask.any() else None
    return _Layout(
        seed=int(seed),
        shape0=tuple(int(v) for v in shape0),
        px0=float(px0),
        upsample=int(upsample),
        grid_shape=gshape,
        island=island,
        lesions=lesions,
        angle=float(rng.uniform(0, np.pi)),
        obj_kind=np.array(objs.kind, np.int8),
        obj_centre=np.array(objs.centre, float).reshape(-1, 2),
        obj_r0=np.array(objs.r0, float),
        obj_rmax=np.array(objs.rmax, float),
        obj_lesion=np.array(objs.lesion, int),
        obj_harm=objs.harm,
        lesion_distance=(
            dist.astype(np.float32) if dist is not None else np.full(gshape, 1e9, np.float32)
        ),
    )
