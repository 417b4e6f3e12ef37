"""The compare dock's exports: the report figure as PNG or PDF
(:func:`histoview.explain.report.render_figure`) and GeoJSON + CSV annotations per
explanation. An existing file is overwritten only when the user confirms; otherwise a free
name is used.

The functions need no widget; :class:`ExportActions` is a mixin of
:class:`~histoview.viewer._compare.CompareWidget` (its dialogs are replaced in tests).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from histoview.viewer import _compare_parts as parts


# -- exports ----------------------------------------------------------------------------------
def comparison_figure(base, expls, agreement, faithfulness):
    """:func:`histoview.explain.report.render_figure` of ``expls`` over the image ``base``."""
    from pathlib import Path

    from histoview.explain.agreement import method_labels
    from histoview.explain.methods import method_title
    from histoview.explain.report import render_figure
    from histoview.io import to_rgb8
    from histoview.viewer.overlays import layer_pixel_size

    data = base.data
    if base.multiscale:  # the coarsest level that still fills the figure
        data = next((d for d in reversed(base.data) if max(d.shape[:2]) >= 1024), base.data[0])
    image = to_rgb8(np.asarray(data))
    mpp = layer_pixel_size(base)
    if mpp and base.multiscale:
        mpp *= base.data[0].shape[0] / image.shape[0]
    labels = method_labels(expls)
    titles = [method_title(e.method) for e in expls]
    if len(set(titles)) < len(titles):
        titles = labels
    faith = {k: v for k, v in (faithfulness or {}).items() if k in labels}
    if not agreement or list(agreement["methods"]) != labels:
        agreement = None  # computed for other explanations: leave it out
    source = getattr(getattr(base, "source", None), "path", None)
    return render_figure(
        image,
        expls,
        titles=titles,
        pixel_size_um=mpp,
        image_name=Path(source).name if source else base.name,
        agreement=agreement,
        faithfulness=faith or None,
    )


def resolve_targets(paths: list, confirm: Callable[[str], bool]) -> tuple[list, bool]:
    """``(paths, overwrite)``: the paths when none exists or ``confirm`` allows overwriting,
    else free names (:func:`histoview.io.files.unique_path`) - never a silent overwrite."""
    from histoview.io.files import unique_path

    existing = [p for p in paths if p.exists()]
    if not existing:
        return list(paths), False
    names = ", ".join(p.name for p in existing)
    verb = "exists" if len(existing) == 1 else "exist"
    if confirm(f"{names} already {verb}. Overwrite?\n(No: save under a new name.)"):
        return list(paths), True
    return [unique_path(p) for p in paths], False


def annotation_paths(path, expls) -> list:
    """``<stem>.<method>.geojson`` and ``.csv`` per explanation, beside ``path``."""
    from pathlib import Path

    from histoview.explain.agreement import method_labels

    path = Path(path)
    stem = path.name.split(".")[0] or "annotations"
    names = [
        "".join(c if c.isalnum() or c in "-_" else "-" for c in lab) for lab in method_labels(expls)
    ]
    return [path.with_name(f"{stem}.{n}.{ext}") for n in names for ext in ("geojson", "csv")]


class ExportActions:
    """Saving the figure and exporting annotations for the compare widget (a mixin)."""

    # -- exports ----------------------------------------------------------------------------------
    def _ask_save_path(self, caption: str, suggested: str, filters: str) -> str | None:
        """A path from the user (None when cancelled); replaced in tests."""
        from qtpy.QtWidgets import QFileDialog

        opts = QFileDialog.Option.DontConfirmOverwrite  # _confirm asks, then picks a free name
        path, _ = QFileDialog.getSaveFileName(self, caption, suggested, filters, options=opts)
        return path or None

    def _confirm(self, question: str) -> bool:
        """Yes/no from the user; replaced in tests."""
        from qtpy.QtWidgets import QMessageBox

        answer = QMessageBox.question(self, "histoview", question)
        return answer == QMessageBox.StandardButton.Yes

    def _explanations(self):
        base = self.image_layer()
        if base is None:
            raise ValueError("select an image layer first")
        expls = [
            lay.metadata["histoview_explanation"]
            for g in parts.explanation_groups(self.viewer.layers, base)
            for lay in g
            if "histoview_explanation" in lay.metadata
        ]
        if not expls:
            raise ValueError(f"no explanations over {base.name!r}: run all methods first")
        return base, expls

    def _save_figure(self, kind: str) -> Path | None:
        from histoview.explain.report import save_pdf, save_png

        try:
            base, expls = self._explanations()  # nothing to save: say so before asking
            path = self._ask_save_path(
                f"Save comparison {kind.upper()}",
                f"histoview-compare.{kind}",
                f"{kind.upper()} (*.{kind})",
            )
            if not path:
                return None
            path = Path(path).with_suffix(f".{kind}")
            (target,), overwrite = resolve_targets([path], self._confirm)
            fig = comparison_figure(base, expls, self.agreement, self.faithfulness)
            out = (save_png if kind == "png" else save_pdf)(fig, target, overwrite=overwrite)
        except Exception as exc:
            self._error(f"saving {kind.upper()} failed: {exc}")
            return None
        self.status.setText(f"saved {out}")
        return out

    def save_png(self, _checked=False) -> Path | None:
        return self._save_figure("png")

    def save_pdf(self, _checked=False) -> Path | None:
        return self._save_figure("pdf")

    def export_annotations(self, _checked=False) -> list[Path]:
        """``<stem>.<method>.geojson`` and ``.csv`` per explanation, next to the chosen path."""
        from histoview.explain.export import export_csv, export_geojson

        try:
            base, expls = self._explanations()
            path = self._ask_save_path(
                "Export annotations (one file per method)",
                f"{base.name.split(' ')[0]}.geojson",
                "GeoJSON (*.geojson)",
            )
            if not path:
                return []
            path = Path(path)
            targets, overwrite = resolve_targets(annotation_paths(path, expls), self._confirm)
            written = []
            for k, expl in enumerate(expls):
                written.append(export_geojson(expl, targets[2 * k], overwrite=overwrite))
                written.append(export_csv(expl, targets[2 * k + 1], overwrite=overwrite))
        except Exception as exc:
            self._error(f"export failed: {exc}")
            return []
        self.status.setText(f"exported {len(written)} files to {path.parent}")
        return written
