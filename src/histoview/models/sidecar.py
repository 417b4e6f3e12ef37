"""The schema of a checkpoint's JSON sidecar, and its errors as one line a user can act on.

:class:`Sidecar` (pydantic v2, strict types) describes the fields that
:mod:`histoview.training.run` and :mod:`histoview.training.engine` write and that the
readers (explanation, evaluation, the model library, :class:`~histoview.models.inputs.
InputSpec`) use. Unknown top-level keys, and unknown keys inside the sections, are kept
(a newer histoview may add fields); a known key of the wrong type or with an impossible
value is refused. :func:`sidecar_problem` returns the first problem as one line::

    field 'classes': expected a list of class names (at least two, distinct), got 3

(the caller prefixes the file name). Strict types: ``"28"`` is not a patch size, ``1``
is not ``true``; a whole number is accepted where a float is expected.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

#: suffixes of pickle files (torch.save and friends), which histoview never loads
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".pkl", ".pickle", ".ckpt", ".tar")

_KEEP_UNKNOWN = ConfigDict(strict=True, extra="allow", protected_namespaces=())

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Dropout = Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)]
Name = Annotated[str, Field(min_length=1)]
Rgb = Annotated[list[FiniteFloat], Field(min_length=3, max_length=3)]
RgbPositive = Annotated[list[PositiveFloat], Field(min_length=3, max_length=3)]


class InputSection(BaseModel):
    """``patch`` (bag models) and ``input`` (every model): what
    :meth:`~histoview.models.inputs.InputSpec.describe` and the training adapters write.
    Sizes in pixels, thresholds and pixel sizes in micrometres."""

    model_config = _KEEP_UNKNOWN

    patch_size: PositiveInt | None = None
    stride: PositiveInt | None = None
    max_background: Fraction | None = None
    input_size: Annotated[list[PositiveInt], Field(min_length=2, max_length=2)] | None = None
    graph_threshold_um: PositiveFloat | None = None
    pixel_size_um: PositiveFloat | None = None
    instance_dropout: Dropout | None = None
    node_dropout: Dropout | None = None
    tiled: bool | None = None


class ModelKwargs(BaseModel):
    """The model factory's keyword arguments (any names). A checkpoint holds all its
    weights, so none of them may name a weights file: ``pretrained`` is a bool or absent,
    and no value names a pickle file (histoview never unpickles)."""

    model_config = _KEEP_UNKNOWN

    pretrained: bool | None = None

    @model_validator(mode="after")
    def _no_pickle_files(self) -> ModelKwargs:
        for key, value in (self.model_extra or {}).items():
            if isinstance(value, str) and PurePath(value).suffix.lower() in PICKLE_SUFFIXES:
                raise ValueError(
                    f"{key!r} names a pickle file ({value!r}); histoview never unpickles "
                    "(weights come as .safetensors)"
                )
        return self


class Normalisation(BaseModel):
    """Per-channel mean and standard deviation of RGB values in [0, 1]."""

    model_config = _KEEP_UNKNOWN

    mean: Rgb
    std: RgbPositive


class StainSection(BaseModel):
    """``stain_normalisation``: the fitted :class:`~histoview.preprocessing.stain.
    StainNormaliser` (its ``to_dict``), which :class:`~histoview.models.inputs.InputSpec`
    applies to every image before the model sees it. Absent in checkpoints trained without
    one (and in those older than it): images are then used as they are."""

    model_config = _KEEP_UNKNOWN

    method: Literal["macenko", "reinhard"]
    od_threshold: PositiveFloat | None = None
    io: PositiveFloat | None = None
    alpha: Annotated[float, Field(ge=0, lt=50, allow_inf_nan=False)] | None = None
    on_no_tissue: Literal["raise", "keep"] | None = None
    stain_matrix: (
        Annotated[
            list[Annotated[list[FiniteFloat], Field(min_length=2, max_length=2)]],
            Field(min_length=3, max_length=3),
        ]
        | None
    ) = None
    max_concentrations: Annotated[list[PositiveFloat], Field(min_length=2, max_length=2)] | None = (
        None
    )
    lab_means: Rgb | None = None
    lab_stds: RgbPositive | None = None

    @model_validator(mode="after")
    def _fitted(self) -> StainSection:
        needed = {
            "macenko": ("stain_matrix", "max_concentrations"),
            "reinhard": ("lab_means", "lab_stds"),
        }[self.method]
        missing = [k for k in needed if getattr(self, k) is None]
        if missing:
            raise ValueError(
                f"a fitted {self.method} stain normaliser needs {' and '.join(map(repr, needed))}; "
                f"{' and '.join(map(repr, missing))} missing"
            )
        return self


class DataSection(BaseModel):
    """The training data's summary (:meth:`histoview.training.datasets.Dataset.summary`)
    and split, as :mod:`histoview.training.evaluate` compares it with new data."""

    model_config = _KEEP_UNKNOWN

    layout: str | None = None
    task: str | None = None
    root: str | None = None
    classes: list[str] | None = None
    images: NonNegativeInt | None = None
    images_per_class: dict[str, NonNegativeInt] | None = None
    patients: NonNegativeInt | None = None
    magnifications: dict[str, NonNegativeInt] | None = None
    split: dict[str, Any] | None = None


class Sidecar(BaseModel):
    """A checkpoint's sidecar ``NAME.json`` (see :mod:`histoview.models.checkpoint`)."""

    model_config = _KEEP_UNKNOWN

    format: Literal["histoview-checkpoint"]
    format_version: PositiveInt = 1
    code_version: str | None = None
    created: str | None = None
    model: Name
    model_kwargs: ModelKwargs = Field(default_factory=ModelKwargs)
    classes: Annotated[list[Name], Field(min_length=2)]
    patch: InputSection | None = None
    input: InputSection | None = None
    pixel_size_um: PositiveFloat | None = None
    normalisation: Normalisation | None = None
    stain_normalisation: StainSection | None = None
    metrics: dict[str, dict[str, Any]] = Field(default_factory=dict)
    data: DataSection | None = None
    train_options: dict[str, Any] | None = None
    threshold: Fraction | None = None
    epoch: NonNegativeInt | None = None
    name: str | None = None
    synthetic: bool = False
    notice: str | None = None
    bundled_as: str | None = None
    weights_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None

    @field_validator("model")
    @classmethod
    def _registered(cls, name: str) -> str:
        from histoview.models.registry import get_model_config

        try:
            get_model_config(name)
        except KeyError as exc:
            raise ValueError(exc.args[0]) from None
        return name

    @field_validator("classes")
    @classmethod
    def _distinct(cls, classes: list[str]) -> list[str]:
        if len(set(classes)) != len(classes):
            dup = sorted({c for c in classes if classes.count(c) > 1})
            names = ", ".join(repr(c) for c in dup)
            raise ValueError(f"expected distinct class names, got {names} more than once")
        return classes


# What each field must be, for messages ("expected ..., got ...").
_EXPECTED = {
    "format": "the string 'histoview-checkpoint'",
    "format_version": "a positive whole number",
    "code_version": "a version string",
    "created": "an ISO date string",
    "model": "a registered model name",
    "model_kwargs": "a mapping of the model factory's keyword arguments",
    "model_kwargs.pretrained": (
        "true, false or absent (a checkpoint holds all its weights in its .safetensors file; "
        "it never names a weights file)"
    ),
    "classes": "a list of class names (at least two, distinct)",
    "patch": "a mapping of patch settings (or null)",
    "input": "a mapping of input settings",
    "patch_size": "a positive whole number of pixels",
    "stride": "a positive whole number of pixels",
    "max_background": "a fraction between 0 and 1 (or null)",
    "input_size": "[height, width] in pixels, two positive whole numbers",
    "graph_threshold_um": "a positive distance in micrometres",
    "pixel_size_um": "a positive number of micrometres per pixel (or null)",
    "instance_dropout": "a fraction in [0, 1)",
    "node_dropout": "a fraction in [0, 1)",
    "normalisation": "a mapping with 'mean' and 'std'",
    "stain_normalisation": "a mapping: a fitted stain normaliser (method and its statistics)",
    "stain_normalisation.method": "'macenko' or 'reinhard'",
    "stain_matrix": "a 3 x 2 list of finite numbers (RGB optical density of H and E)",
    "max_concentrations": "two positive numbers (H and E)",
    "lab_means": "three finite numbers (L*, a*, b*)",
    "lab_stds": "three positive numbers (L*, a*, b*)",
    "od_threshold": "a positive optical density",
    "io": "a positive light intensity (0-255 scale)",
    "alpha": "a percentile in [0, 50)",
    "on_no_tissue": "'raise' or 'keep'",
    "mean": "three finite numbers (R, G, B)",
    "std": "three positive numbers (R, G, B)",
    "metrics": "a mapping of metric sets (e.g. 'validation', 'test'), each a mapping",
    "data": "a mapping describing the training data",
    "data.classes": "a list of class names",
    "layout": "a string",
    "task": "a string",
    "root": "a path string (or null)",
    "images": "a whole number >= 0",
    "images_per_class": "a mapping of class name to image count",
    "patients": "a whole number >= 0 (or null)",
    "magnifications": "a mapping of magnification to image count",
    "split": "a mapping describing the split",
    "train_options": "a mapping of training options",
    "threshold": "a probability between 0 and 1 (or null)",
    "epoch": "a whole number >= 0",
    "name": "a string (or null)",
    "synthetic": "true or false",
    "notice": "a string",
    "bundled_as": "a string",
    "weights_sha256": "64 lowercase hexadecimal digits (a SHA-256)",
}


def sidecar_problem(meta: Any) -> str | None:
    """``None`` if ``meta`` (the parsed JSON) is a valid sidecar, else its first problem
    as one line: ``field 'NAME': expected WHAT, got VALUE`` (and how many more there are)."""
    try:
        Sidecar.model_validate(meta)
    except ValidationError as exc:
        return describe_errors(exc, meta)
    return None


def describe_errors(exc: ValidationError, data: Any) -> str:
    """pydantic's errors as one line naming the first bad field (see the module docstring)."""
    errors = exc.errors(include_url=False)
    line = _describe(errors[0], data)
    if len(errors) > 1:
        line += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return line


def _describe(error: dict[str, Any], data: Any) -> str:
    # the named part: the deepest named key (a bad list item reports its list)
    keys = list(error["loc"])
    while keys and not isinstance(keys[-1], str):
        keys = keys[:-1]
    field = _dotted(keys) or "(top level)"
    expected = _EXPECTED.get(field, _EXPECTED.get(str(keys[-1]))) if keys else None
    kind = error["type"]
    if kind == "missing":
        return f"field {field!r} is missing" + (f" (expected {expected})" if expected else "")
    if kind == "value_error":
        reason = error.get("ctx", {}).get("error")
        return f"field {field!r}: {reason if reason is not None else error['msg']}"
    got = _lookup(data, keys)
    if expected is None:
        return f"field {field!r}: {error['msg'].lower()}, got {_short(got)}"
    return f"field {field!r}: expected {expected}, got {_short(got)}"


def _dotted(keys: list[Any]) -> str:
    return ".".join(str(k) for k in keys)


def _lookup(data: Any, keys: list[Any]) -> Any:
    for key in keys:
        if isinstance(data, dict) and key in data:
            data = data[key]
        elif isinstance(data, list) and isinstance(key, int) and 0 <= key < len(data):
            data = data[key]
        else:
            return None
    return data


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    text = " ".join(text.split())  # one line
    return text if len(text) <= limit else text[: limit - 3] + "..."
