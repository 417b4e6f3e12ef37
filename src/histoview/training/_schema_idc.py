"""The ``data: {type: idc}`` section of a training config (:mod:`histoview.training.schema`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from histoview.training._schema_types import PathText, PositiveInt


class IdcData(BaseModel):
    """``data: {type: idc, root}``: IDC patches (``<patient>_idx5_x<col>_y<row>_class<0|1>
    .png``). ``balance: within-patient`` trains on patients with both classes, as many of
    each per patient, so patient identity cannot stand for the label
    (:mod:`histoview.training.idc_split`); ``none``: the plain patient split.
    ``one_class_patients``: ``test`` or ``exclude`` (never trained on). ``bag_cells``: the
    samples are regions of that many patch cells square, every ``bag_stride`` cells, labelled
    by whether they hold IDC (A-MIL bags, :mod:`histoview.training.idc_data`)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    type: Literal["idc"]
    root: PathText
    task: Literal["idc"] = "idc"
    balance: Literal["within-patient", "none"] = "within-patient"
    one_class_patients: Literal["test", "exclude"] = "test"
    bag_cells: PositiveInt | None = None
    bag_stride: PositiveInt | None = None
