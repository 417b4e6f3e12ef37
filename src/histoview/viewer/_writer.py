"""napari writer contributions: save an explanation layer as GeoJSON (QuPath) or CSV.

Works on the layers histoview's widgets add: the nuclei points layer (one
feature per nucleus, its outline and graph edges), the A-MIL patch grid and the
Grad-CAM / RMCG maps (thresholded regions as polygons). The explanation itself
travels in ``layer.metadata["histoview_explanation"]``. An existing file is
never overwritten: the writer picks a numbered name and returns the path it wrote.
"""

from __future__ import annotations

from typing import Any


def _explanation(attributes: dict[str, Any]):
    expl = (attributes.get("metadata") or {}).get("histoview_explanation")
    if expl is None:
        raise ValueError(
            f"layer {attributes.get('name')!r} is not a histoview explanation layer; "
            "run an explanation widget first"
        )
    return expl


def _write(export, path: str, attributes: dict[str, Any]) -> list[str]:
    try:
        expl = _explanation(attributes)
    except ValueError as exc:  # napari turns an empty result into a warning; say why too
        from napari.utils.notifications import show_error

        show_error(f"histoview: {exc}")
        return []
    return [str(export(expl, path, numbered=True))]


def write_geojson(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    from histoview.explain.export import export_geojson

    return _write(export_geojson, path, attributes)


def write_csv(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    from histoview.explain.export import export_csv

    return _write(export_csv, path, attributes)
