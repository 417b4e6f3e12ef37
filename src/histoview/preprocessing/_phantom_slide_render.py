"""Rendering a window of the phantom slide (:mod:`histoview.preprocessing.phantom_slide`).

:meth:`_SlideRenderer.render` draws any window of render pixels the way ``make_phantom``
draws a field of view, from the slide's layout and global fields, so that two windows agree
where they overlap (and a slide drawn block by block has no seams):

* each gland and duct is drawn once, by ``phantom._gland`` / ``phantom._duct`` themselves, on a
  canvas of its own with a generator of its own (its masks, nuclei and their shading), and
  pasted into every window it meets;
* fibroblasts, lymphocytes and infiltrating tumour cells come from the slide-wide placement of
  :mod:`._phantom_slide_nuclei` and are drawn with ``_Canvas.place``;
* the invasive region, its tumour cords (``make_phantom``'s band field, denser: see
  ``_phantom_slide_nuclei.CUTS``), tumour cytoplasm around the cells, stroma texture, smooth variations, chromatin
  and sensor noise are fields of global coordinates (:mod:`._phantom_slide_noise`);
* staining is the phantom's (``_fill_tissue``, ``_shade_nuclei``, ``_nucleolus``,
  ``_add_stain``, ``_to_rgb8``), with the per-image constants made slowly varying fields
  (stain strengths 0.85-1.15 over millimetres; the background optical density 0.04-0.14 of
  the phantom's vignette over hundreds of micrometres) and tissue faded into white glass
  (optical density 0.035) over 2 um at the island edges; glass has no sensor noise.
"""

from __future__ import annotations

import numpy as np
from skimage.draw import disk

from histoview.preprocessing._phantom_nuclei import _Canvas, _radius_xy
from histoview.preprocessing._phantom_render import (
    _EV,
    _HV,
    _STAIN_BLUR_UM,
    _add_stain,
    _fill_tissue,
    _nucleolus,
    _shade_nuclei,
    _to_rgb8,
)
from histoview.preprocessing._phantom_slide_layout import DUCT
from histoview.preprocessing._phantom_slide_noise import _Field, _StromaTexture
from histoview.preprocessing._phantom_slide_nuclei import (
    CUTS,
    KINDS,
    _FreeNuclei,
    _quantised,
    geometry,
    rmax_px,
)

GLASS_OD = 0.035
_ZKEYS = ("epi", "lumen", "cyto", "bm")


class _RecordingCanvas(_Canvas):
    """A ``_Canvas`` that also keeps each drawn nucleus's geometry (for the slide's
    collision tests): (row, col, angle, a, b, harmonics, margin px)."""

    def __init__(self, shape, px, rng):
        super().__init__(shape, px, rng)
        self.geometry = []

    def place(self, kind, centre, angle, shape, malignant=False, boundary=False, margin=0.8):
        ab = super().place(kind, centre, angle, shape, malignant, boundary, margin)
        if ab is not None:
            a, b, harm = shape[:3]
            self.geometry.append((centre[0], centre[1], angle, a, b, harm, margin * self.s))
        return ab


class _ObjectRaster:
    """A gland or duct drawn on its own canvas: origin (global render px) and arrays."""

    def __init__(self, lay, k: int):
        from histoview.preprocessing.phantom import _duct, _gland

        px, s = lay.px, 1.0 / lay.px
        centre, r0, harm = lay.obj_centre[k], lay.obj_r0[k], lay.obj_harm[k]
        half = int(np.ceil(lay.obj_rmax[k] + 8 * s)) + 2
        self.origin = np.floor(centre).astype(int) - half
        shape = (2 * half + 2, 2 * half + 2)
        cv = _RecordingCanvas(shape, px, np.random.default_rng((lay.seed, 31, k)))
        z = {key: np.zeros(shape, bool) for key in _ZKEYS}
        local = centre - self.origin
        if lay.obj_kind[k] == DUCT:
            _duct(cv, z, np.zeros(shape, bool), local, r0, harm)
        else:
            _gland(cv, z, local, r0, harm)
        self.labels, self.rho, self.occ, self.z = cv.labels, cv.rho, cv.occ, z
        self.nuclei = cv.nuclei
        o = self.origin
        rows = [(r + o[0], c + o[1], *rest) for r, c, *rest in cv.geometry]
        self.geometry = geometry(rows)
        rng = np.random.default_rng((lay.seed, 32, k))
        self.nucleoli = []
        for i, nu in enumerate(cv.nuclei):
            if nu[1] == "tumour" and nu[8]:
                off = rng.normal(0, 0.8 / px, 2)
                centre_i = _quantised(np.array(cv.geometry[i][:2]) + off)
                self.nucleoli.append((i + 1, centre_i, rng.uniform(0.6, 1.1) / px))

    def paste(self, cv, z, R0, C0):
        """Add this object to a window canvas whose origin is (R0, C0)."""
        h, w = self.labels.shape
        r, c = self.origin[0] - R0, self.origin[1] - C0
        H, W = cv.shape
        r_lo, r_hi, c_lo, c_hi = max(r, 0), min(r + h, H), max(c, 0), min(c + w, W)
        if r_lo >= r_hi or c_lo >= c_hi:
            return []
        dst = np.s_[r_lo:r_hi, c_lo:c_hi]
        src = np.s_[r_lo - r : r_hi - r, c_lo - c : c_hi - c]
        lab = self.labels[src]
        offset = len(cv.nuclei)
        on = lab > 0
        cv.labels[dst][on] = lab[on] + offset
        cv.rho[dst][on] = self.rho[src][on]
        cv.occ[dst] |= self.occ[src]
        for key in _ZKEYS:
            z[key][dst] |= self.z[key][src]
        cv.nuclei.extend(self.nuclei)
        return [(lab_i + offset, ctr + (r, c), rad) for lab_i, ctr, rad in self.nucleoli]


class _SlideFields:
    """The slide's global fields at render pixels (windows) and points."""

    def __init__(self, lay):
        seed, px = lay.seed, lay.px
        self.lay = lay

        def f(key, um):
            return _Field(seed, key, um / px if um else 0)

        self.isl_fine, self.inv_fine = f(1, 6), f(2, 4)
        self.band_a, self.band_b, self.cell = f(3, 10), f(4, 10), f(5, 30)  # see CUTS
        self.var, self.secretion = f(6, 8), f(7, 6)
        self.chrom_fine, self.chrom_smooth = f(8, 0.45), f(9, 1.2)
        self.base, self.strength = f(10, 300), (f(11, 1000), f(12, 1000))
        self.noise = (f(13, 0), f(14, 0))
        self.stroma = _StromaTexture(seed, px, lay.angle)

    # points (render px), for the placement of free nuclei
    def tissue(self, rr, cc):
        lay = self.lay
        v = lay.sample(lay.island, 0, 0, rr, cc, grid=False)
        return v + 3 * self.isl_fine.points(rr, cc) > 0

    def invasive(self, rr, cc):
        out = np.full(len(rr), -1)
        if not len(rr):
            return out
        fine = None
        for les in self.lay.lesions:
            if les.kind != "invasive":
                continue
            h, w = les.field.shape
            g = self.lay.g
            box = (les.i0 * g - g, les.j0 * g - g, (les.i0 + h + 1) * g, (les.j0 + w + 1) * g)
            sel = np.flatnonzero((rr >= box[0]) & (rr < box[2]) & (cc >= box[1]) & (cc < box[3]))
            if not sel.size:
                continue
            if fine is None:
                fine = self.inv_fine.points(rr, cc)
            v = self.lay.sample(les.field, les.i0, les.j0, rr[sel], cc[sel], grid=False)
            out[sel[v + 2 * fine[sel] > 0]] = les.index
        return out

    def band(self, rr, cc):
        a, b = self.band_a.points(rr, cc), self.band_b.points(rr, cc)
        return np.abs(a) + np.maximum(b - 1.0, 0) * -3

    def cellular(self, rr, cc):
        return self.cell.points(rr, cc)

    def halo(self, rr, cc):
        lay = self.lay
        return lay.sample(lay.lesion_distance, 0, 0, rr, cc, grid=False) < 42.0

    def outside_objects(self, rr, cc):
        """Not on a gland or duct (its outline plus basement membrane)."""
        lay, ok = self.lay, np.ones(len(rr), bool)
        if not len(rr):
            return ok
        s = 1 / lay.px
        for k in lay.objects_in(rr.min(), cc.min(), rr.max() + 1, cc.max() + 1):
            (cr, cc0), rm = lay.obj_centre[k], lay.obj_rmax[k]
            sel = np.flatnonzero((np.abs(rr - cr) < rm) & (np.abs(cc - cc0) < rm))
            if not sel.size:
                continue
            dr, dc = rr[sel] - cr, cc[sel] - cc0
            rad = lay.obj_r0[k] * _radius_xy(dc, dr, lay.obj_harm[k]) + 2 * s
            ok[sel[np.hypot(dr, dc) < rad]] = False
        return ok


class _SlideRenderer:
    """Draws windows of the slide (render pixels) from its layout (module docstring)."""

    def __init__(self, lay):
        self.lay = lay
        self.s = 1.0 / lay.px
        self._objects: dict[int, _ObjectRaster] = {}
        self.fields = _SlideFields(lay)
        self.free = _FreeNuclei(lay, self.fields, self.object_nuclei)
        self.rmax = rmax_px(self.s)
        st = self.fields.stroma.st
        self.halo = int(np.ceil((2 * self.rmax + 3 * max(_STAIN_BLUR_UM) * self.s) / st)) * st
        self.glass = _to_rgb8(np.full((1, 1, 3), GLASS_OD, np.float32))[0, 0]

    def object(self, k: int) -> _ObjectRaster:
        if k not in self._objects:
            self._objects[k] = _ObjectRaster(self.lay, int(k))
        return self._objects[k]

    def object_nuclei(self, r0, c0, r1, c1) -> dict:
        from histoview.preprocessing._phantom_slide_nuclei import _concat

        parts = []
        for k in self.lay.objects_in(r0, c0, r1, c1):
            g = self.object(k).geometry
            sel = (g["r"] >= r0) & (g["r"] < r1) & (g["c"] >= c0) & (g["c"] < c1)
            parts.append({key: v[sel] for key, v in g.items()})
        return _concat(parts)

    def forget_above(self, row: float) -> None:
        """Drop what only rows above ``row`` (render px) needed."""
        lay = self.lay
        for k in [k for k in self._objects if lay.obj_centre[k, 0] + lay.obj_rmax[k] < row]:
            del self._objects[k]
        self.free.forget_before(int((row - 2 * self.halo) // self.free.S))

    def has_tissue(self, r0, c0, h, w) -> bool:
        lay = self.lay
        i0, i1, j0, j1 = lay.node_box(r0, c0, r0 + h, c0 + w, pad=1)
        return bool(i1 > i0 and j1 > j0 and (lay.island[i0:i1, j0:j1] > -25).any())

    def render(self, r0: int, c0: int, h: int, w: int) -> np.ndarray:
        """(h, w, 3) uint8 RGB of render pixels [r0, r0 + h) x [c0, c0 + w)."""
        lay, s, px, fl = self.lay, self.s, self.lay.px, self.fields
        st = fl.stroma.st
        R0, C0 = (r0 - self.halo) // st * st, (c0 - self.halo) // st * st
        sh, sw = r0 + h + self.halo - R0, c0 + w + self.halo - C0
        if not self.has_tissue(R0, C0, sh, sw):
            return np.broadcast_to(self.glass, (h, w, 3)).copy()
        rows, cols = np.arange(R0, R0 + sh), np.arange(C0, C0 + sw)
        isl = lay.sample(lay.island, 0, 0, rows, cols, grid=True)
        wt = np.clip(0.5 + (isl + 3 * fl.isl_fine.window(R0, C0, sh, sw)) / 2.0, 0, 1)
        cv = _Canvas((sh, sw), px, None)
        z = {key: np.zeros((sh, sw), bool) for key in _ZKEYS}
        nucleoli = []
        for k in lay.objects_in(R0, C0, R0 + sh, C0 + sw):
            nucleoli += self.object(k).paste(cv, z, R0, C0)
        inv = np.zeros((sh, sw), bool)
        invasive = lay.lesions_in(R0, C0, R0 + sh, C0 + sw, kind="invasive")
        if invasive:
            fine = 2 * fl.inv_fine.window(R0, C0, sh, sw)
            for les in invasive:
                inv |= lay.sample(les.field, les.i0, les.j0, rows, cols, grid=True) + fine > 0
        m = self.rmax
        free = self.free.in_box(R0 - m, C0 - m, R0 + sh + m, C0 + sw + m)
        near = np.zeros((sh, sw), bool) if inv.any() else None
        for n in range(len(free["r"])):
            kind = KINDS[free["kind"][n]]
            a, b = free["a"][n], free["b"][n]
            harm = (np.arange(2, 6), free["amp"][n], free["ph"][n])
            centre = (free["r"][n] - R0, free["c"][n] - C0)
            shape = (a, b, harm, free["inten"][n], bool(free["nucleolus"][n]))
            placed = cv.place(
                kind, centre, free["angle"][n], shape, kind == "tumour", False, free["m"][n] / s
            )
            if placed is None or kind != "tumour":
                continue
            if near is not None:
                near[disk(centre, 2.2 * a, shape=(sh, sw))] = True
            if free["nucleolus"][n]:
                nucleoli.append(
                    (len(cv.nuclei), np.add(centre, free["nuc_off"][n]), free["nuc_r"][n])
                )
        if near is not None:
            room = inv & ~z["epi"]
            band = (
                np.abs(fl.band_a.window(R0, C0, sh, sw))
                + np.maximum(fl.band_b.window(R0, C0, sh, sw) - 1.0, 0) * -3
            )
            z["cyto"] |= near & room & (band < CUTS[1])
        eosin = fl.stroma.window(R0, C0, sh, sw)
        hema = 0.02 * eosin
        var = fl.var.window(R0, C0, sh, sw)
        secretion = np.clip(fl.secretion.window(R0, C0, sh, sw) - 1.5, 0, 1)
        _fill_tissue(eosin, hema, z, var, secretion)
        idx = np.flatnonzero(cv.labels)
        if idx.size:
            chrom = fl.chrom_fine.window(R0, C0, sh, sw).ravel()[idx]
            chrom += 1.5 * fl.chrom_smooth.window(R0, C0, sh, sw).ravel()[idx]
            _shade_nuclei(hema, eosin, cv.labels, cv.rho, cv.nuclei, idx, chrom)
        for label, centre, radius in nucleoli:
            _nucleolus(hema, cv.labels, label, centre, radius)
        hema *= wt
        eosin *= wt
        vign = np.clip(2 / 3 + 0.5 * fl.base.window(R0, C0, sh, sw), 0, 2)
        od = wt * (0.04 + 0.05 * vign) + (1 - wt) * GLASS_OD
        od = np.repeat(od[..., None].astype(np.float32), 3, axis=2)
        for m_, blur, vec, strength, noise in (
            (hema, _STAIN_BLUR_UM[0], _HV, fl.strength[0], fl.noise[0]),
            (eosin, _STAIN_BLUR_UM[1], _EV, fl.strength[1], fl.noise[1]),
        ):
            k = np.clip(1 + 0.087 * strength.window(R0, C0, sh, sw), 0.85, 1.15)
            _add_stain(od, m_, blur / px, k, noise.window(R0, C0, sh, sw) * wt, vec)
        rgb = _to_rgb8(od)
        return rgb[r0 - R0 : r0 - R0 + h, c0 - C0 : c0 - C0 + w]
