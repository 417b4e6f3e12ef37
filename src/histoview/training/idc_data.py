"""The IDC training data: patches, or bags of patches cut from regions of each patient's slide.

``data: {type: idc, root}`` lists the IDC patches below ``root``
(:mod:`histoview.preprocessing.idc`) as training samples, one per patch (the patch
classifier's data). With ``bag_cells: k`` each sample is instead a region of k x k patch
cells (``k * 50`` pixels) of a patient's mosaic, every ``bag_stride`` cells, kept when at
least half its cells hold patches: an A-MIL bag whose instances are the patches (a bag
model with ``patch_size: 50`` sees exactly the data set's patches), labelled IDC when any
patch inside is (:func:`~histoview.preprocessing.idc.idc_regions`). Regions overlap when
``bag_stride < bag_cells``; they never cross patients, so the patient-level split
(:mod:`histoview.training.idc_split`) applies to them unchanged.

This module returns plain rows (the keyword arguments of
:class:`~histoview.training.datasets.Sample`) so that the dataset module builds the samples
and the two modules import each other one way only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: the ``data`` keys of an IDC dataset beyond ``type``, ``root`` and ``task``
IDC_OPTIONS = ("balance", "one_class_patients", "bag_cells", "bag_stride")


def idc_rows(
    root: Path,
    *,
    balance: str = "within-patient",
    one_class_patients: str = "test",
    bag_cells: int | None = None,
    bag_stride: int | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``(rows, options)`` of the IDC data below ``root``: one row per patch (``label``,
    ``patient``, ``path``), or with ``bag_cells`` one per region (``label``, ``patient``,
    ``region``: ``(root, IdcRegion)``); ``options`` the dataset's settings (the split's
    ``balance`` and ``one_class_patients``, the bag settings, the pixel size).

    Raises:
        ValueError: an unknown ``balance`` / ``one_class_patients``, a bag setting below 1,
            ``bag_stride`` without ``bag_cells``, or no region holding enough patches.
    """
    from histoview.preprocessing.idc import IDC_PIXEL_SIZE_UM, find_idc_patches, idc_regions
    from histoview.training.idc_split import BALANCE_CHOICES, ONE_CLASS_CHOICES

    if balance not in BALANCE_CHOICES or one_class_patients not in ONE_CLASS_CHOICES:
        raise ValueError(
            f"IDC balance must be one of {BALANCE_CHOICES} and one_class_patients one of "
            f"{ONE_CLASS_CHOICES}, got {balance!r}, {one_class_patients!r}"
        )
    if bag_cells is None and bag_stride is not None:
        raise ValueError("IDC bag_stride needs bag_cells (the region's edge in patch cells)")
    patches = find_idc_patches(root)
    options: dict[str, Any] = {"balance": balance, "one_class_patients": one_class_patients}
    options["pixel_size_um"] = IDC_PIXEL_SIZE_UM  # an estimate (preprocessing.idc)
    if bag_cells is None:
        rows = [{"label": p.label, "patient": p.patient, "path": p.path} for p in patches]
        return rows, options
    stride = bag_cells if bag_stride is None else bag_stride
    regions = idc_regions(patches, cells=int(bag_cells), stride=int(stride))
    if not regions:
        raise ValueError(
            f"{root}: no {bag_cells} x {bag_cells}-cell region holds patches in half its cells"
        )
    options |= {"bag_cells": int(bag_cells), "bag_stride": int(stride)}
    rows = [{"label": r.label, "patient": r.patient, "region": (str(root), r)} for r in regions]
    return rows, options


def region_key(region: tuple) -> str:
    """A region sample's key (unique within its folder)."""
    root, r = region
    return f"idc-region:{root}:{r.patient}:{r.row}:{r.col}:{r.cells}"


def load_region(region: tuple):
    """``(rgb, pixel size)`` of a region sample: its crop of the patient's mosaic."""
    from histoview.preprocessing.idc import IDC_PIXEL_SIZE_UM, region_image

    root, r = region
    return region_image(root, r), IDC_PIXEL_SIZE_UM
