"""Nuclei of the phantom slide that belong to no gland or duct (:mod:`.phantom_slide`).

Fibroblasts, lymphocytes (more in a halo around lesions) and the infiltrating tumour cells of
invasive lesions, with ``make_phantom``'s kinds, densities and margins, placed without overlap
over the whole slide, so that any block of it draws the same nuclei.

The phantom places nuclei one after another on one canvas and rejects a collision. Over a
slide that order must not depend on the block being drawn, so the slide is cut into cells of
``CELL_UM`` (48 um, more than twice the reach of a nucleus) and the cells placed in four
phases, like a 2 x 2 checkerboard: a cell's candidates (from its own generator, seeded by
its position) are accepted in order against the nuclei already accepted in the cell, in its
neighbours of earlier phases and in nearby glands and ducts. Cells of one phase are more than
a nucleus's reach apart, so they never interact, and each cell row depends only on the rows
beside it: rows are computed once, in order, and kept while blocks need them.

Collision is decided as ``_Canvas.add`` decides it (a nucleus may not meet the margin-widened
shape of one already there), analytically, with the margin widened by one more pixel so that
the raster never disagrees: the drawn shape's boundary (the outline polygon) is tested against
the other's widened shape, and each centre against the other's shape.
"""

from __future__ import annotations

import numpy as np

from histoview.preprocessing._phantom_nuclei import _KIND_PARAMS, _nucleus_shape, _radius

CELL_UM = 48.0
#: tumour cells where the band field (|N1| + 3 min(0, 1 - N2), N1 of 10 um and N2 of 10 um
#: correlation) is below its 65 % quantile, their cytoplasm up to its 80 % quantile. The
#: phantom uses 40 % / 60 % and 14 um: on a slide, whose invasive lesions are outlined whole,
#: that leaves so many 14 um patches of bare stroma between the cords inside the outline
#: that the demo A-MIL's attention reaches an AUC of only ~0.8-0.85 against it (0.93 so).
CUTS = (0.8444, 1.2030)
KINDS = ("tumour", "fibroblast", "lymphocyte")
_OFFSET = 1 << 40
_WIDEN_PX = 1.0  # extra margin of the analytic collision test over the raster one
_JITTER_UM = 3 * 0.18 * 13  # largest shift of a tumour lattice node (spacing <= 13 um)
#: candidate density per um^2 of allowed area (make_phantom's: see _FreeNuclei.candidates)
_DENSITY = {"extra": 1 / 60, "fibroblast": 1 / 657, "lymphocyte": 1 / 6000, "halo": 1 / 800}
_MARGIN_UM = {"lattice": 0.8, "extra": 0.8, "fibroblast": 2.0, "lymphocyte": 0.5, "halo": 0.3}
_FIELDS = ("r", "c", "angle", "a", "b", "amp", "ph", "inten", "nucleolus", "m", "kind")


def _empty(n=0):
    return {
        "r": np.zeros(n),
        "c": np.zeros(n),
        "angle": np.zeros(n),
        "a": np.zeros(n),
        "b": np.zeros(n),
        "amp": np.zeros((n, 4)),
        "ph": np.zeros((n, 4)),
        "inten": np.zeros(n),
        "nucleolus": np.zeros(n, bool),
        "m": np.zeros(n),
        "kind": np.zeros(n, np.int8),
        "nuc_off": np.zeros((n, 2)),
        "nuc_r": np.zeros(n),
    }


def _concat(parts):
    parts = [p for p in parts if len(p["r"])]
    if not parts:
        return _empty()
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def geometry(rows) -> dict:
    """Geometry arrays of nuclei given as (r, c, angle, a, b, harm, margin_px) tuples."""
    g = _empty(len(rows))
    for n, (r, c, ang, a, b, harm, m) in enumerate(rows):
        g["r"][n], g["c"][n], g["angle"][n], g["a"][n], g["b"][n], g["m"][n] = r, c, ang, a, b, m
        g["amp"][n], g["ph"][n] = harm[1], harm[2]
    return g


def _radius_many(x, y, amp, ph):
    """``_radius_xy`` for many nuclei at once: x, y (n, K); amp, ph (n, 4), orders 2..5."""
    u = (x + 1j * y).astype(np.complex128)
    u /= np.abs(u) + 1e-12
    coef = amp * np.exp(1j * ph)
    p, out = u * u, np.zeros(u.shape, np.complex128)
    for k in range(coef.shape[1]):
        out += coef[:, k : k + 1] * p
        p = p * u
    return 1.0 + out.real


def _inside(g, idx, pr, pc, widen):
    """Whether points (pr, pc) (n, K) fall in the shapes of nuclei ``idx`` widened by their
    margin plus ``widen`` px (``widen=None``: the bare shape, no margin)."""
    sn, cs = np.sin(g["angle"][idx])[:, None], np.cos(g["angle"][idx])[:, None]
    dr, dc = pr - g["r"][idx][:, None], pc - g["c"][idx][:, None]
    xu, yu = dr * sn + dc * cs, dr * cs - dc * sn
    a, b = g["a"][idx][:, None], g["b"][idx][:, None]
    rad = _radius_many(xu / a, yu / b, g["amp"][idx], g["ph"][idx])
    if widen is not None:
        a, b = a + g["m"][idx][:, None] + widen, b + g["m"][idx][:, None] + widen
    return np.hypot(xu / a, yu / b) <= rad


def _outline(r, c, angle, a, b, harm):
    """Boundary points of a nucleus's shape, at most ~1 px apart (as ``_Canvas.add`` draws)."""
    t = np.linspace(0, 2 * np.pi, max(24, int(np.ceil(2 * np.pi * a))), endpoint=False)
    rad = _radius(t, harm)
    x, y = a * np.cos(t) * rad, b * np.sin(t) * rad
    sn, cs = np.sin(angle), np.cos(angle)
    return r + x * sn + y * cs, c + x * cs - y * sn


def _collides(ex, n_ex, cand, outline):
    """Whether the candidate nucleus (dict of scalars) meets any of the first ``n_ex`` nuclei
    of ``ex`` (their margin-widened shape, plus 1 px)."""
    d = np.hypot(ex["r"][:n_ex] - cand["r"], ex["c"][:n_ex] - cand["c"])
    rough = np.abs(ex["amp"][:n_ex]).sum(1)
    near = np.flatnonzero(d < cand["R"] + (ex["a"][:n_ex] + ex["m"][:n_ex] + 1) * (1 + rough))
    if not near.size:
        return False
    inner = (ex["b"][near] + ex["m"][near]) * (1 - rough[near])
    if (d[near] < cand["r_in"] + inner).any():
        return True
    pr, pc = outline
    if _inside(ex, near, np.broadcast_to(pr, (near.size, pr.size)), pc, _WIDEN_PX).any():
        return True
    one = {k: np.array([cand[k]]) for k in ("r", "c", "angle", "a", "b", "m")}
    one["amp"], one["ph"] = cand["amp"][None], cand["ph"][None]
    return bool(_inside(one, [0], ex["r"][near][None], ex["c"][near][None], None).any())


class _FreeNuclei:
    """The free nuclei of a slide, placed cell row by cell row (module docstring).

    ``fields`` supplies, at points (render pixels): ``tissue``, ``outside_objects``,
    ``invasive`` (lesion index or -1), ``band``, ``cellular``, ``halo``;
    ``object_nuclei(r0, c0, r1, c1)`` the geometry of gland and duct nuclei in a box.
    """

    def __init__(self, layout, fields, object_nuclei):
        self.lay, self.fields, self.object_nuclei = layout, fields, object_nuclei
        self.s = 1.0 / layout.px
        self.S = int(np.ceil(CELL_UM * self.s))
        self.n_rows = -(-layout.shape[0] // self.S)
        self.n_cols = -(-layout.shape[1] // self.S)
        self.rows: dict[int, list[dict]] = {}
        # a candidate lies up to _JITTER_UM outside its cell and meets nuclei up to 2 rmax away
        self.reach = 2 * rmax_px(self.s) + _JITTER_UM * self.s
        if self.S - 2 * _JITTER_UM * self.s <= 2 * rmax_px(self.s):
            raise AssertionError("cells too small: cells of one phase would interact")

    # -- candidates ---------------------------------------------------------------------------
    def _cell_candidates(self, i, j, invasive):
        """Positions, kinds and angles of one cell's candidates, from its own generator."""
        lay, S, s = self.lay, self.S, self.s
        rng = np.random.default_rng((lay.seed, 21, i + _OFFSET, j + _OFFSET))
        r0, c0 = i * S, j * S
        area = (S * lay.px) ** 2
        pos, group = [], []
        for les in invasive:
            d = les.spacing_um * s
            k0, k1 = int(np.ceil(r0 / (0.866 * d))), int(np.ceil((r0 + S) / (0.866 * d)))
            k = np.arange(k0, k1)
            l0, l1 = int(np.floor(c0 / d)) - 1, int(np.ceil((c0 + S) / d)) + 1
            rr = np.repeat(k * 0.866 * d, l1 - l0)
            cc = (np.arange(l0, l1)[None, :] * d + (k % 2)[:, None] * d / 2).ravel()
            keep = (cc >= c0) & (cc < c0 + S)
            p = np.stack([rr[keep], cc[keep]], 1)
            sd = 0.18 * d
            p += np.clip(rng.normal(0, sd, p.shape), -3 * sd, 3 * sd)
            pos.append(rng.permutation(p))
            group += ["lattice"] * len(p)
        for name in ("extra", "fibroblast", "lymphocyte", "halo"):
            if name == "extra" and not invasive:
                continue
            n = rng.poisson(area * _DENSITY[name])
            pos.append(rng.random((n, 2)) * S + (r0, c0))
            group += [name] * n
        pos = np.concatenate(pos) if pos else np.zeros((0, 2))
        return rng, _quantised(pos), group

    def _row_candidates(self, i):
        """Candidates of every cell of row ``i``, filtered by the tissue they fall in."""
        lay, S = self.lay, self.S
        cells = []
        r0, r1 = i * S, (i + 1) * S
        isl = lay.node_box(r0, 0, r1, lay.shape[1], pad=1)
        tissue_cols = np.flatnonzero((lay.island[isl[0] : isl[1]] > -25).any(0))
        if not tissue_cols.size:
            return [None] * self.n_cols
        lo = max(int(((tissue_cols[0] - 1 + 0.5) * lay.g) // S), 0)
        hi = min(int(((tissue_cols[-1] + 1.5) * lay.g) // S) + 1, self.n_cols)
        for j in range(self.n_cols):
            if not lo <= j < hi:
                cells.append(None)
                continue
            inv = lay.lesions_in(r0 - S, j * S - S, r1 + S, (j + 1) * S + S, kind="invasive")
            cells.append(self._cell_candidates(i, j, inv))
        pts = [c[1] for c in cells if c is not None]
        if not pts or not sum(len(p) for p in pts):
            return cells
        allp = np.concatenate(pts)
        ok = self._allowed(allp, np.concatenate([c[2] for c in cells if c is not None]))
        out, at = [], 0
        for c in cells:
            if c is None:
                out.append(None)
                continue
            n = len(c[1])
            out.append(
                (c[0], c[1][ok[at : at + n]], [g for g, k in zip(c[2], ok[at : at + n]) if k])
            )
            at += n
        return out

    def _allowed(self, p, group):
        """Which candidate points may hold their kind of nucleus (make_phantom's masks)."""
        f, group = self.fields, np.asarray(group)
        rr, cc = p[:, 0], p[:, 1]
        tissue = f.tissue(rr, cc) & f.outside_objects(rr, cc)
        inv = f.invasive(rr, cc) >= 0
        band = np.full(len(p), np.inf, np.float32)
        band[inv] = f.band(rr[inv], cc[inv])
        tumour = np.isin(group, ("lattice", "extra"))
        free = tissue & ~(inv & (band < CUTS[1]))
        ok = np.where(tumour, tissue & inv & (band < CUTS[0]), free)
        fib = group == "fibroblast"
        ok[fib] &= f.cellular(rr[fib], cc[fib]) > -0.6
        halo = group == "halo"
        ok[halo] &= f.halo(rr[halo], cc[halo])
        return ok

    # -- acceptance ---------------------------------------------------------------------------
    def _accept(self, cand, existing):
        """Accept ``cand`` (rng, positions, groups) in order against ``existing``."""
        rng, pos, groups = cand
        s, px = self.s, self.lay.px
        ex = _concat([existing, _empty(len(pos))])
        n_ex = len(existing["r"])
        start = n_ex
        for (r, c), grp in zip(pos, groups):
            kind = "tumour" if grp in ("lattice", "extra") else grp.replace("halo", "lymphocyte")
            angle = (
                self.lay.angle + rng.normal(0, 0.3)
                if kind == "fibroblast"
                else rng.uniform(0, np.pi)
            )
            a, b, harm, inten, nucleolus = _nucleus_shape(rng, kind, s)
            off = _quantised(rng.normal(0, 0.8 / px, 2)) if kind == "tumour" else np.zeros(2)
            nuc_r = rng.uniform(0.6, 1.1) / px if kind == "tumour" else 0.0
            rough = np.abs(harm[1]).sum()
            cand_d = {
                "r": r, "c": c, "angle": angle, "a": a, "b": b, "amp": harm[1], "ph": harm[2],
                "m": _MARGIN_UM[grp] * s, "R": a * (1 + rough), "r_in": b * (1 - rough),
            }  # fmt: skip
            if _collides(ex, n_ex, cand_d, _outline(r, c, angle, a, b, harm)):
                continue
            for key, v in (
                ("r", r), ("c", c), ("angle", angle), ("a", a), ("b", b), ("amp", harm[1]),
                ("ph", harm[2]), ("inten", inten), ("nucleolus", nucleolus),
                ("m", _MARGIN_UM[grp] * s), ("kind", KINDS.index(kind)), ("nuc_off", off),
                ("nuc_r", nuc_r),
            ):  # fmt: skip
                ex[key][n_ex] = v
            n_ex += 1
        return {k: v[start:n_ex].copy() for k, v in ex.items()}

    def _neighbours(self, i, j, rows_cells, phases_before):
        parts = []
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                ii, jj = i + di, j + dj
                if (di, dj) == (0, 0) or not (0 <= jj < self.n_cols):
                    continue
                if _phase(ii, jj) < phases_before and ii in rows_cells:
                    cell = rows_cells[ii][jj]
                    if cell is not None:
                        parts.append(cell)
        S, reach = self.S, self.reach
        parts.append(
            self.object_nuclei(
                i * S - reach, j * S - reach, (i + 1) * S + reach, (j + 1) * S + reach
            )
        )
        return _concat(parts)

    def row(self, i: int) -> list:
        """Accepted nuclei of every cell of row ``i`` (None: no tissue), computed once."""
        if i in self.rows:
            return self.rows[i]
        if not 0 <= i < self.n_rows:
            return [None] * self.n_cols
        if i % 2:  # odd rows need both even rows beside them
            for k in (i - 1, i + 1):
                self.row(k)
        cands = self._row_candidates(i)
        done: dict[int, list] = {k: self.rows[k] for k in (i - 1, i + 1) if k in self.rows}
        cur = [None] * self.n_cols
        done[i] = cur
        for parity in (0, 1):
            for j in range(parity, self.n_cols, 2):
                if cands[j] is None:
                    continue
                ex = self._neighbours(i, j, done, _phase(i, j))
                cur[j] = self._accept(cands[j], ex)
        self.rows[i] = cur
        return cur

    def in_box(self, r0, c0, r1, c1) -> dict:
        """Accepted nuclei whose cells meet the box [r0, r1) x [c0, c1) (render px), in global
        order (cell row, cell column, acceptance)."""
        S = self.S
        i0, i1 = max(int(r0 // S), 0), min(int((r1 - 1) // S) + 1, self.n_rows)
        j0, j1 = max(int(c0 // S), 0), min(int((c1 - 1) // S) + 1, self.n_cols)
        parts = []
        for i in range(i0, i1):
            cells = self.row(i)
            parts += [cells[j] for j in range(j0, j1) if cells[j] is not None]
        return _concat(parts)

    def forget_before(self, i: int) -> None:
        """Drop cell rows above ``i - 1`` (no later block needs them)."""
        for k in [k for k in self.rows if k < i - 1]:
            del self.rows[k]


def _quantised(v):
    """Coordinates on a 1/64 px grid: exact in float32 after any integer shift (a window's
    origin), so every window rasterises a nucleus from the same local numbers."""
    return np.round(np.asarray(v, float) * 64) / 64


def _phase(i, j):
    return (i % 2) * 2 + (j % 2)


def rmax_px(s: float) -> float:
    """Largest extent of a nucleus with its margin (px), for halos."""
    return max((p[0][1] * (1 + 1.7 * p[2]) + 2.0) * s for p in _KIND_PARAMS.values()) + 1
