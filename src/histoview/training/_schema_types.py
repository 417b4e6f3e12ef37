"""The strict value types of training-config fields (pydantic v2 ``Annotated`` types).

Strict: ``"10"`` is not a whole number and ``1`` is not ``true``. Accepted besides: NumPy
numbers (spin boxes and arrays give them), a whole number where a float is expected, a
number in exponent notation without a dot (``1e-4``, which PyYAML, YAML 1.1, reads as a
string) and a path object where a path is expected. NaN and infinity are refused. The
sections using them are :mod:`histoview.training.schema`.
"""

from __future__ import annotations

import os
import re
from numbers import Integral, Real
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, Strict

__all__ = [
    "Dropout",
    "Flag",
    "Fraction",
    "Name",
    "NonNegativeFloat",
    "NonNegativeInt",
    "Number",
    "PathText",
    "PositiveFloat",
    "PositiveInt",
    "Text",
    "Whole",
]

# a number in exponent notation without a dot: YAML 1.2 (and TOML) read it as a float,
# PyYAML (YAML 1.1) as a string
_EXPONENT_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _whole(value: Any) -> Any:
    # NumPy integers are whole numbers too (spin boxes and arrays give them); bools are not
    if isinstance(value, Integral) and not isinstance(value, bool):
        return int(value)
    return value


def _real(value: Any) -> Any:
    if isinstance(value, bool):
        return value  # refused by the strict float check
    if isinstance(value, Real):
        return float(value)
    if isinstance(value, str) and _EXPONENT_NUMBER.match(value.strip()):
        return float(value)
    return value


def _path_text(value: Any) -> Any:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


Whole = Annotated[int, BeforeValidator(_whole), Strict()]
PositiveInt = Annotated[Whole, Field(ge=1)]
NonNegativeInt = Annotated[Whole, Field(ge=0)]
Number = Annotated[float, BeforeValidator(_real), Strict(), Field(allow_inf_nan=False)]
PositiveFloat = Annotated[Number, Field(gt=0)]
NonNegativeFloat = Annotated[Number, Field(ge=0)]
Fraction = Annotated[Number, Field(ge=0, le=1)]
Dropout = Annotated[Number, Field(ge=0, lt=1)]
Name = Annotated[str, Strict(), Field(min_length=1)]
PathText = Annotated[str, BeforeValidator(_path_text), Strict(), Field(min_length=1)]
Flag = Annotated[bool, Strict()]
Text = Annotated[str, Strict()]
