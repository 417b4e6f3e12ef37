"""The Stain normalisation dock: see an image as a stain-normalised model sees it.

Pick an image layer and a normaliser, either a checkpoint's (the one fitted when it was
trained and stored in its sidecar: what every explanation applies to the image first,
:meth:`histoview.models.inputs.InputSpec.normalise_stain`) or a method (Macenko, Reinhard)
fitted to a reference image file. **Normalise** computes the normalised image in a napari
worker thread and adds it over the original as ``"<layer> (Reinhard-normalised)"`` at the
same scale and translation; the **show** tick box switches between it and the original. With
a checkpoint's normaliser the status also says how far the image's stain lies from the
training data's (the out-of-distribution measure of :mod:`histoview.explain.ood`).

Size. At most :data:`MAX_PIXELS` are normalised at once (Reinhard 12 s, Macenko 7 s, under
0.9 GiB resident, measured on a loaded 2-core machine). A larger image, or a multiscale
slide, is normalised at the level napari shows (the level it picked for the zoom) and only
where it is in view, placed exactly over it; a view holding more than :data:`MAX_PIXELS` at
that level is refused, asking to zoom in. The stain estimate is then the view's, not the
whole image's.

Errors are shown in the dock, never raised: a checkpoint without a normaliser, an image
that is not RGB, and an image the stain module refuses (background only, blank, too small,
one colour: :class:`~histoview.preprocessing.stain.StainNormalisationError`'s message).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FileEdit, Label, PushButton

from histoview import RESEARCH_NOTICE
from histoview.viewer._layer_choice import follow_layers, is_tissue_image, layer_choice, same_layer
from histoview.viewer._widgets import DockContainer, compact, wrapping

if TYPE_CHECKING:
    import napari

#: at most this many pixels are normalised at once (the module docstring)
MAX_PIXELS = 5_000_000
SOURCES = ("a checkpoint's normaliser", "a method and a reference image")
METHOD_TITLES = {"reinhard": "Reinhard", "macenko": "Macenko"}
#: metadata key of the layers this dock adds (it does not offer them as images)
STAIN_KEY = "histoview_stain"
_UNITS = {"reinhard": "reference standard deviations", "macenko": "degrees"}
_IMAGE_FILTER = "*.png *.jpg *.jpeg *.tif *.tiff *.PNG *.JPG *.JPEG *.TIF *.TIFF"


def is_source_image(layer) -> bool:
    """An image the user opened (not an overlay, not a normalised image from this dock)."""
    return is_tissue_image(layer) and STAIN_KEY not in layer.metadata


def checkpoint_choices(_widget=None) -> list:
    """(label, entry) of every usable checkpoint, those with a stain normaliser first."""
    from histoview.models.library import list_checkpoints

    entries = sorted(list_checkpoints(), key=lambda e: not e.meta.get("stain_normalisation"))
    out = []
    for e in entries:
        section = e.meta.get("stain_normalisation")
        tag = f"stain: {section.get('method')}" if section else "no stain normaliser"
        out.append((f"{e.name} ({e.model}; {tag})", e))
    return out


def plan_region(layer, max_pixels: int = MAX_PIXELS) -> tuple[int, tuple[int, int, int, int]]:
    """``(level, (row0, col0, row1, col1))``: what of ``layer`` to normalise (module docstring).

    The whole image when it has at most ``max_pixels``; else the part in view at the level
    napari shows (``data_level``, ``corner_pixels``). ValueError: not a 2D RGB image, or the
    view holds more than ``max_pixels``.
    """
    if not getattr(layer, "rgb", False) or layer.ndim != 2:
        raise ValueError(
            f"'{layer.name}' is not a 2D RGB image (stain normalisation needs an H&E colour image)"
        )
    shapes = [tuple(int(n) for n in s[:2]) for s in layer.level_shapes]
    if layer.multiscale:
        level = int(layer.data_level)
    else:
        level = 0
    h, w = shapes[level]
    if len(shapes) == 1 and h * w <= max_pixels:
        return 0, (0, 0, h, w)
    corners = np.asarray(layer.corner_pixels, dtype=int)[:, -2:]
    r0, c0 = np.clip(corners[0], 0, (h, w))
    r1, c1 = np.clip(corners[1] + 1, 0, (h, w))  # napari's corners are inclusive
    if r1 <= r0 or c1 <= c0:
        r0, c0, r1, c1 = 0, 0, h, w
    if (r1 - r0) * (c1 - c0) <= max_pixels:
        return level, (int(r0), int(c0), int(r1), int(c1))
    raise ValueError(
        f"'{layer.name}': the view holds {(r1 - r0) * (c1 - c0):,} pixels at the level shown "
        f"({r1 - r0} x {c1 - c0}); at most {max_pixels:,} are normalised at once: zoom in"
    )


def read_region(layer, level: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """The (H, W, 3) uint8 RGB pixels of ``box`` at ``level`` (an alpha channel dropped).
    ValueError: not 8-bit."""
    r0, c0, r1, c1 = box
    data = layer.data[level] if layer.multiscale else layer.data
    pixels = np.asarray(data[r0:r1, c0:c1])[..., :3]
    if pixels.dtype != np.uint8:
        raise ValueError(
            f"'{layer.name}' holds {pixels.dtype} pixels; stain normalisation needs 8-bit RGB"
        )
    return np.ascontiguousarray(pixels)


def region_placement(layer, level: int, box) -> dict:
    """``scale`` and ``translate`` that put level-``level`` pixels ``box`` where napari draws
    them over ``layer`` (napari places a level's pixel ``i`` at level-0 ``i * downsample``)."""
    factor = np.asarray(layer.downsample_factors[level][-2:], float) if layer.multiscale else 1
    scale = np.asarray(layer.scale, float)[-2:] * factor
    translate = np.asarray(layer.translate, float)[-2:] + np.array(box[:2]) * scale
    return {"scale": tuple(scale), "translate": tuple(translate)}


def normalise_work(image: np.ndarray, get_normaliser, with_distance: bool):
    """Worker body: ``(normalised, normaliser, distance or None, seconds)``."""
    start = time.perf_counter()
    norm = get_normaliser()
    out = norm.transform(image)
    distance = norm.stain_distance(image) if with_distance else None
    return out, norm, distance, time.perf_counter() - start


class StainView(DockContainer):
    """Dock: image, normaliser (checkpoint, or method + reference), Normalise, show (module
    docstring)."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        from napari.layers import Image

        self.viewer = viewer
        self._worker = None
        self._closed = False
        self._fitted: dict = {}  # reference normalisers by (method, file, mtime, size)
        self.result_layer, self._result_key = None, None
        self.image_choice = layer_choice(Image, is_source_image, label="image")
        self.source = ComboBox(label="normaliser", choices=list(SOURCES), value=SOURCES[0])
        self.checkpoint_choice = ComboBox(label="checkpoint", choices=checkpoint_choices)
        self.method_choice = ComboBox(
            label="method", choices=[(t, m) for m, t in METHOD_TITLES.items()], value="reinhard"
        )
        self.reference = FileEdit(label="reference image", mode="r", filter=_IMAGE_FILTER)
        self.run_button = PushButton(text="Normalise")
        self.show_normalised = CheckBox(text="show normalised (untick: the original)", value=False)
        self.status = Label(label="status", value="")
        wrapping(self.status)  # long messages wrap to the dock's width, not widen it
        compact(self.image_choice, self.checkpoint_choice)  # long names: not wider
        self.notice = Label(value=RESEARCH_NOTICE)
        self.extend(
            [
                self.image_choice,
                self.source,
                self.checkpoint_choice,
                self.method_choice,
                self.reference,
                self.run_button,
                self.show_normalised,
                self.status,
                self.notice,
            ]
        )
        self.source.changed.connect(self._source_changed)
        self.run_button.changed.connect(self.normalise)
        self.show_normalised.changed.connect(self._toggle)
        self.native.destroyed.connect(self._on_destroyed)
        follow_layers(viewer, self.image_choice)
        self._source_changed()

    def _on_destroyed(self, *_):
        self._closed = True

    @property
    def from_checkpoint(self) -> bool:
        return self.source.value == SOURCES[0]

    @property
    def busy(self) -> bool:
        return self._worker is not None

    def _source_changed(self, _event=None):
        self.checkpoint_choice.visible = self.from_checkpoint
        self.method_choice.visible = not self.from_checkpoint
        self.reference.visible = not self.from_checkpoint

    # -- the normaliser -------------------------------------------------------------------------
    def _normaliser_request(self):
        """``(method, describe what, get_normaliser, checkpoint meta or None)`` on the main
        thread; ValueError says what is missing (the fit itself runs in the worker)."""
        from histoview.preprocessing.stain import StainNormaliser

        if self.from_checkpoint:
            entry = self.checkpoint_choice.value
            if entry is None:
                raise ValueError("no checkpoint available: train one or add one to the library")
            section = entry.meta.get("stain_normalisation")
            if not section:
                raise ValueError(
                    f"checkpoint '{entry.name}' was trained without stain normalisation: it "
                    "sees images as they are, so there is no normalised image to show; pick a "
                    "checkpoint with a stain normaliser, or a method and a reference image"
                )
            # refuse an image without tissue here even where the model keeps it as it is
            norm = StainNormaliser.from_dict({**section, "on_no_tissue": "raise"})
            return norm.method, f"checkpoint '{entry.name}'", lambda: norm, entry.meta
        method = self.method_choice.value
        path = Path(str(self.reference.value)).expanduser()
        if not str(self.reference.value).strip() or not path.is_file():
            raise ValueError(
                "choose a reference image file (an H&E image whose colours the others take)"
                if path in (Path("."), Path(""))
                else f"reference image {path} not found"
            )
        stat = path.stat()
        key = (method, str(path.resolve()), stat.st_mtime_ns, stat.st_size)

        def fitted():
            if key not in self._fitted:
                from histoview.io import ImageReadError, read_rgb
                from histoview.preprocessing.stain import StainNormalisationError

                try:
                    ref = read_rgb(path)[0]
                    self._fitted[key] = StainNormaliser(method).fit(ref)
                except (ImageReadError, OSError, StainNormalisationError) as exc:
                    raise ValueError(f"reference image {path}: {exc}") from None
            return self._fitted[key]

        return method, f"reference image {path.name}", fitted, None

    # -- running --------------------------------------------------------------------------------
    def normalise(self, _event=None) -> None:
        """Normalise the chosen image (or its view) in a worker; the result replaces this
        image's earlier result layer of the same method."""
        from napari.qt.threading import create_worker

        if self._worker is not None:
            return
        layer = self.image_choice.value
        try:
            if layer is None:
                raise ValueError("open an image first (File > Open, or File > Open Sample)")
            method, what, get_normaliser, meta = self._normaliser_request()
            level, box = plan_region(layer)
            image = read_region(layer, level, box)
        except ValueError as exc:
            return self._failed(str(exc))
        request = {"layer": layer, "method": method, "what": what, "level": level, "box": box}
        request["meta"], request["key"] = meta, self._request_key()
        worker = create_worker(
            normalise_work,
            image,
            get_normaliser,
            meta is not None,
            _start_thread=False,
            _ignore_errors=True,  # shown in the dock (errored), not raised into napari
        )
        worker.returned.connect(lambda result: self._on_done(request, result))
        worker.errored.connect(lambda exc: self._failed(f"cannot normalise '{layer.name}': {exc}"))
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.run_button.enabled = False
        self.status.value = (
            f"normalising '{layer.name}' ({box[2] - box[0]} x {box[3] - box[1]} px) with the "
            f"{METHOD_TITLES[method]} normaliser of the {what}..."
        )
        worker.start()

    def _on_finished(self):
        self._worker = None
        if not self._closed:
            self.run_button.enabled = True

    def _failed(self, message: str) -> None:
        from napari.utils.notifications import show_warning

        if self._closed:
            return
        with self.show_normalised.changed.blocked():
            self.show_normalised.value = bool(self.result_layer and self.result_layer.visible)
        self.status.value = f"Error: {message}"
        show_warning(f"histoview: {message}")

    def _on_done(self, request: dict, result) -> None:
        if self._closed:
            return
        out, norm, distance, seconds = result
        source, method = request["layer"], request["method"]
        level, box = request["level"], request["box"]
        whole = level == 0 and box == (0, 0, *tuple(source.level_shapes[0][:2]))
        part = "" if whole else (f", level {level} view" if level else ", view")
        name = f"{source.name} ({METHOD_TITLES[method]}-normalised{part})"
        where = region_placement(source, level, box)
        meta = {
            "source": source.name,
            "method": method,
            "normaliser": request["what"],
            "level": level,
            "region": list(box),
            "notice": RESEARCH_NOTICE,
        }
        layer = next(
            (lay for lay in self.viewer.layers if lay.name == name and STAIN_KEY in lay.metadata),
            None,
        )
        if layer is None:
            layer = self.viewer.add_image(
                out,
                rgb=True,
                name=name,
                metadata={STAIN_KEY: meta},
                units=tuple(getattr(source, "units", ("pixel", "pixel")))[-2:],
                **where,
            )
            self._place_above(layer, source)
        else:
            layer.data = out
            layer.scale, layer.translate = where["scale"], where["translate"]
            layer.metadata = {STAIN_KEY: meta}
        layer.visible = True
        self.result_layer, self._result_key = layer, request["key"]
        with self.show_normalised.changed.blocked():
            self.show_normalised.value = True
        self.status.value = self._done_text(request, norm, distance, seconds, name, whole)

    def _place_above(self, layer, source) -> None:
        """Move the new layer just above its source (below overlays drawn on the source)."""
        names = [lay.name for lay in self.viewer.layers]
        if source.name in names:
            here, target = names.index(layer.name), names.index(source.name) + 1
            if here != target:
                self.viewer.layers.move(here, target)

    @staticmethod
    def _done_text(request, norm, distance, seconds, name, whole) -> str:
        from histoview.explain.ood import STAIN_LIMITS

        source, (r0, c0, r1, c1) = request["layer"], request["box"]
        part = "the whole image"
        if not whole:
            levels = len(source.level_shapes)
            at = f"level {request['level']} of {levels} (the level shown)" if levels > 1 else ""
            part = f"the part in view{' at ' + at if at else ''}, rows {r0}-{r1} and cols {c0}-{c1}"
        lines = [
            f"'{name}': {part} ({(r1 - r0) * (c1 - c0):,} px), normalised in {seconds:.1f} s "
            f"by the normaliser of the {request['what']}: {norm.describe()}."
        ]
        if distance is not None:
            limit = STAIN_LIMITS[norm.method]
            far = distance > limit
            lines.append(
                f"Its stain lies {distance:.1f} {_UNITS[norm.method]} from the training "
                f"data's (out-of-distribution warning above {limit:g})"
                + (": the model never saw colours like these." if far else ".")
            )
            tiled = (request["meta"].get("input") or {}).get("tiled")
            if tiled:
                lines.append(
                    "This model normalises each tile of its field on its own: its tiles' "
                    "colours can differ slightly from these."
                )
        return " ".join(lines)

    def _request_key(self):
        """What the current choices would normalise (image, normaliser, level, region), or
        None where they are incomplete."""
        layer = self.image_choice.value
        try:
            where = plan_region(layer) if layer is not None else None
        except ValueError:
            where = None
        if self.from_checkpoint:
            entry = self.checkpoint_choice.value
            normaliser = ("checkpoint", str(entry.path) if entry is not None else None)
        else:
            normaliser = ("reference", self.method_choice.value, str(self.reference.value))
        return (layer.unique_id if layer is not None else None, normaliser, where)

    def _toggle(self, _event=None) -> None:
        """Show the normalised image (normalising first unless the last result is of the
        current choices) or the original."""
        layer = self.result_layer
        alive = layer is not None and any(same_layer(layer, lay) for lay in self.viewer.layers)
        if not self.show_normalised.value:
            if alive:
                layer.visible = False
            return
        if alive and self._result_key == self._request_key():
            layer.visible = True
        else:
            self.normalise()


#: the manifest's widget factory (a class: napari passes the viewer to the annotated parameter)
stain_view_widget = StainView
