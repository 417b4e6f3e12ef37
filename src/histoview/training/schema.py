"""The schema of a training config, and its errors as one line naming the file and the key.

:class:`TrainingConfig` (pydantic v2, strict types, unknown keys refused) describes every
section of a config (:mod:`histoview.training.config`): ``name``, ``description``,
``model``, ``model_kwargs``, ``data`` (one schema per dataset ``type``), ``split``, ``input``,
``train`` (:class:`TrainOptions`, the engine's options) and ``output_dir``.
:func:`config_problem` returns the first problem as one line::

    field 'train.epoch' is not a key of section 'train'; did you mean 'epochs'?
    field 'train.batch_size': expected a whole number >= 1, got 0
    field 'split.fractions': train, validation and test fractions must add up to 1, got
    [0.5, 0.25, 0.5] (sum 1.25)

(:func:`validate_training_config` prefixes the file name and raises :class:`ConfigError`).
Strict types: ``"10"`` is not a number of epochs and ``1`` is not ``true``; a whole number
is accepted where a float is expected, NumPy numbers are accepted, and so is a number
written in exponent notation without a dot (``lr: 1e-4``), which PyYAML (YAML 1.1) reads
as a string. Impossible values are refused: non-positive sizes and counts, negative rates,
fractions outside [0, 1], split fractions that do not add up to 1 or leave the training
split empty, NaN and infinity.

The keys of ``model_kwargs`` are the model factory's own arguments: an unknown one is
reported when the model is built (:func:`model_kwargs_problem`).
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import asdict
from numbers import Integral, Real
from pathlib import PurePath
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Strict,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
)
from pydantic.dataclasses import dataclass

__all__ = [
    "ConfigError",
    "TrainOptions",
    "TrainingConfig",
    "config_problem",
    "model_kwargs_problem",
    "unknown_key_message",
    "validate_training_config",
]


class ConfigError(ValueError):
    """A training config that cannot be used; the message is one line naming file and key."""


# every field type below is strict (Strict()); the sections are lax only so that a mapping
# can stand for the TrainOptions dataclass, which strict mode takes as an instance only
_STRICT = ConfigDict(extra="forbid", protected_namespaces=())

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

#: validation metrics a run can select its best epoch by (higher is better)
MONITOR_METRICS = (
    "balanced_accuracy",
    "accuracy",
    "f1_macro",
    "roc_auc",
    "pr_auc",
    "precision_macro",
    "recall_macro",
    "sensitivity",
    "specificity",
    "gmean",
    "iba",
)


@dataclass(config=_STRICT)
class TrainOptions:
    """The ``train`` section of a training config (every field optional), as the engine
    (:func:`histoview.training.engine.fit`) uses it. Building one checks every field
    (pydantic: wrong types, impossible values and unknown names raise ValueError).

    Rates and epochs: ``lr`` > 0; ``warmup_epochs`` (may be fractional),
    ``freeze_backbone_epochs`` >= 0; ``label_smoothing`` in [0, 1).

    ``num_workers``: data-loader worker processes that read and augment samples (0: on the
    training thread; a few, up to the number of CPU cores less one, help when decoding
    or augmenting takes longer than a training step). Results do not depend on it. Each
    worker keeps its own decoded-image cache (``input: {cache_images: n}`` per worker).

    ``monitor``: the validation metric (:data:`MONITOR_METRICS`) that picks the best epoch,
    ties broken by the lower validation loss.
    """

    epochs: PositiveInt = 20
    batch_size: PositiveInt = 1
    lr: PositiveFloat = 1e-3
    weight_decay: NonNegativeFloat = 0.0
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    loss: Literal["cross_entropy", "focal"] = "cross_entropy"
    focal_gamma: NonNegativeFloat = 2.0
    label_smoothing: Dropout = 0.0
    mixup_alpha: NonNegativeFloat = 0.0  # > 0 enables MixUp (image models)
    warmup_epochs: NonNegativeFloat = 0.0
    schedule: Literal["constant", "cosine"] = "constant"
    freeze_backbone_epochs: NonNegativeInt = 0  # CSPResNet50-FPN-SE phase 1: head only
    backbone_lr_scale: NonNegativeFloat = 1.0  # phase 2: layer-wise lr (backbone lr * scale)
    amp: Flag = True  # mixed precision, CUDA only
    device: Annotated[str, Strict(), Field(pattern=r"^(cpu|cuda(:\d+)?|mps)$")] | None = None
    seed: NonNegativeInt = 0
    monitor: Literal[MONITOR_METRICS] = "balanced_accuracy"  # type: ignore[valid-type]
    tta: Flag = False  # 8-fold dihedral TTA at validation/test
    num_workers: NonNegativeInt = 0  # data-loader worker processes (0: the training thread)

    @classmethod
    def from_dict(cls, d: Any, *, source: str = "config") -> TrainOptions:
        """The options of a ``train`` section; ConfigError names the key and the problem."""
        try:
            return _TRAIN_OPTIONS.validate_python(d)
        except ValidationError as exc:
            raise ConfigError(
                f"{source}: {describe_errors(exc, {'train': d}, prefix=('train',))}"
            ) from None


_TRAIN_OPTIONS = TypeAdapter(TrainOptions)


class SplitSection(BaseModel):
    """``split``: ``by`` patient (no patient in two splits) or image (leaks patients),
    ``fractions`` of train / validation / test (each in [0, 1], adding up to 1, training
    above 0; a validation or test fraction of 0 means no such split), ``seed``."""

    model_config = _STRICT

    by: Literal["patient", "image"] = "patient"
    fractions: Annotated[list[Fraction], Field(min_length=3, max_length=3)] = Field(
        default_factory=lambda: [0.7, 0.15, 0.15]
    )
    seed: NonNegativeInt = 0

    @field_validator("fractions")
    @classmethod
    def _add_up(cls, fractions: list[float]) -> list[float]:
        total = sum(fractions)
        if abs(total - 1) > 1e-6:
            raise ValueError(
                f"train, validation and test fractions must add up to 1, got {fractions} "
                f"(sum {total:.4g})"
            )
        if fractions[0] <= 0:
            raise ValueError(f"the training fraction must be above 0, got {fractions}")
        return fractions


#: ``input`` keys each model kind uses (others would be ignored, so they are refused)
INPUT_KEYS = {
    "bag": ("stride", "max_background", "instance_dropout", "pixel_size_um", "cache_images"),
    "image": ("pixel_size_um", "cache_images"),
    "graph": ("graph_threshold_um", "pixel_size_um", "node_dropout", "cache_dir", "cache_images"),
}


class InputSection(BaseModel):
    """``input``: adapter options (:mod:`histoview.training.adapters`). Sizes in pixels,
    distances and pixel sizes in micrometres; which keys a model kind takes:
    :data:`INPUT_KEYS`."""

    model_config = _STRICT

    stride: PositiveInt | None = None
    max_background: Fraction | None = None
    instance_dropout: Dropout = 0.0
    node_dropout: Dropout = 0.0
    pixel_size_um: PositiveFloat | None = None
    graph_threshold_um: PositiveFloat | None = None
    cache_images: NonNegativeInt = 512
    cache_dir: PathText | None = None


def _magnification(value: Any) -> Any:
    if value in (None, "all", ""):
        return value
    text = str(value).rstrip("xX") if isinstance(value, (str, int)) else ""
    if isinstance(value, bool) or not text.isdigit() or int(text) not in (40, 100, 200, 400):
        raise ValueError(f"expected 40, 100, 200, 400 or 'all' (BreakHis), got {value!r}")
    return value


Magnification = Annotated[Any, BeforeValidator(_magnification)]


class PhantomData(BaseModel):
    """``data: {type: phantom}``: synthetic phantoms generated on the fly."""

    model_config = _STRICT

    type: Literal["phantom"]
    task: Literal["binary", "in_situ_vs_invasive", "3class"] = "binary"
    n_per_class: PositiveInt = 20
    preset: Name = "breakhis"
    seed: NonNegativeInt = 0

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, preset: str) -> str:
        from histoview.preprocessing.phantom import PHANTOM_PRESETS

        if preset not in PHANTOM_PRESETS:
            raise ValueError(_one_of(preset, PHANTOM_PRESETS))
        return preset


class BreakhisData(BaseModel):
    """``data: {type: breakhis, root, task, magnification}``."""

    model_config = _STRICT

    type: Literal["breakhis"]
    root: PathText
    task: Literal["binary", "subtype"] = "binary"
    magnification: Magnification = None


class BachData(BaseModel):
    """``data: {type: bach, root, task}``."""

    model_config = _STRICT

    type: Literal["bach"]
    root: PathText
    task: Literal["4class", "binary", "in_situ_vs_invasive"] = "4class"


class FolderData(BaseModel):
    """``data: {type: folder, root}``: one sub-folder per class."""

    model_config = _STRICT

    type: Literal["folder"]
    root: PathText
    task: Literal["folder"] = "folder"


class AutoData(BaseModel):
    """``data: {root}`` (or ``type: auto``): the layout is recognised from the folder; the
    task and magnification are checked against the layout found."""

    model_config = _STRICT

    type: Literal["auto"] = "auto"
    root: PathText
    task: Name | None = None
    magnification: Magnification = None


DATA_TYPES = {
    "phantom": PhantomData,
    "breakhis": BreakhisData,
    "bach": BachData,
    "folder": FolderData,
    "auto": AutoData,
}


def _data_type(value: Any) -> str | None:
    if not isinstance(value, dict):
        return "phantom"  # any of them says "expected a mapping"
    return value.get("type", "auto")


DataSection = Annotated[
    Annotated[PhantomData, Tag("phantom")]
    | Annotated[BreakhisData, Tag("breakhis")]
    | Annotated[BachData, Tag("bach")]
    | Annotated[FolderData, Tag("folder")]
    | Annotated[AutoData, Tag("auto")],
    Discriminator(_data_type),
]


class TrainingConfig(BaseModel):
    """A whole training config (module docstring)."""

    model_config = _STRICT

    name: Name | None = None
    description: Text | None = None
    model: Name
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    data: DataSection
    split: SplitSection = Field(default_factory=SplitSection)
    input: InputSection = Field(default_factory=InputSection)
    train: TrainOptions = Field(default_factory=TrainOptions)
    output_dir: PathText | None = None

    @field_validator("model")
    @classmethod
    def _registered(cls, name: str) -> str:
        from histoview.models.registry import get_model_config, list_models

        try:
            get_model_config(name)
        except KeyError:
            known = list_models(include_test=True)
            raise ValueError(_one_of(name, known, "a registered model")) from None
        return name

    @field_validator("model_kwargs")
    @classmethod
    def _no_pickle_files(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        from histoview.models.sidecar import PICKLE_SUFFIXES

        for key, value in kwargs.items():
            if isinstance(value, str) and PurePath(value).suffix.lower() in PICKLE_SUFFIXES:
                raise ValueError(
                    f"{key!r} names a pickle file ({value!r}); histoview never unpickles "
                    "(weights come as .safetensors)"
                )
        return kwargs


# -- messages -------------------------------------------------------------------------------
_EXPECTED = {
    "name": "a non-empty run name",
    "description": "a string",
    "model": "a registered model name",
    "model_kwargs": "a mapping of the model factory's keyword arguments",
    "output_dir": "a folder path",
    "data": "a mapping with the dataset's 'type' (phantom, breakhis, bach, folder or auto) "
    "and 'root' folder",
    "root": "a dataset folder path",
    "n_per_class": "a whole number of images >= 1",
    "preset": "a phantom preset name",
    "split": "a mapping with 'by', 'fractions' and 'seed'",
    "split.fractions": "three fractions in [0, 1] (train, validation, test) adding up to 1",
    "seed": "a whole number >= 0",
    "input": "a mapping of input options",
    "stride": "a positive whole number of pixels",
    "max_background": "a fraction in [0, 1] (or null)",
    "instance_dropout": "a fraction in [0, 1)",
    "node_dropout": "a fraction in [0, 1)",
    "pixel_size_um": "a positive number of micrometres per pixel",
    "graph_threshold_um": "a positive distance in micrometres",
    "cache_images": "a whole number of images >= 0",
    "cache_dir": "a folder path",
    "train": "a mapping of training options",
    "epochs": "a whole number >= 1",
    "batch_size": "a whole number >= 1",
    "lr": "a positive finite number",
    "weight_decay": "a number >= 0",
    "focal_gamma": "a number >= 0",
    "label_smoothing": "a fraction in [0, 1)",
    "mixup_alpha": "a number >= 0 (0: no MixUp)",
    "warmup_epochs": "a number of epochs >= 0",
    "freeze_backbone_epochs": "a whole number of epochs >= 0",
    "backbone_lr_scale": "a number >= 0",
    "amp": "true or false",
    "tta": "true or false",
    "device": "'cpu', 'cuda', 'cuda:N' or 'mps' (or null: CUDA when present)",
    "num_workers": "a whole number >= 0",
}
_SECTION_CLASSES = {
    "": TrainingConfig,
    "split": SplitSection,
    "input": InputSection,
    "train": TrainOptions,
    **{f"data.{t}": c for t, c in DATA_TYPES.items()},
}


def _fields(cls) -> list[str]:
    fields = getattr(cls, "model_fields", None) or cls.__pydantic_fields__
    return list(fields)


def _one_of(value: Any, known, what: str | None = None) -> str:
    """``expected one of 'a', 'b', got 'x'; did you mean 'a'?`` (long lists are not spelled
    out when difflib finds a close match)."""
    known = [str(k) for k in known]
    close = difflib.get_close_matches(str(value), known, n=1)
    listed = "one of " + ", ".join(repr(k) for k in known)
    if what is not None:
        listed = what if close and len(known) > 8 else f"{what} ({listed})"
    line = f"expected {listed}, got {_short(value)}"
    return line + (f"; did you mean {close[0]!r}?" if close else "")


def unknown_key_message(field: str, key: str, known) -> str:
    """``field 'SECTION.KEY' is not a key of ...; did you mean ...?`` (difflib's closest
    match among ``known``, else the known keys)."""
    known = list(known)
    section = field.rsplit(".", 1)[0] if "." in field else ""
    where = f"section {section!r}" if section else "a training config"
    line = f"field {field!r} is not a key of {where}"
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return line + f"; did you mean {close[0]!r}?"
    return line + f" (known: {', '.join(known)})"


def config_problem(config: Any) -> str | None:
    """``None`` if ``config`` (the parsed file) is a valid training config, else its first
    problem as one line (module docstring)."""
    try:
        TrainingConfig.model_validate(config)
    except ValidationError as exc:
        return describe_errors(exc, config)
    return None


def describe_errors(exc: ValidationError, data: Any, *, prefix: tuple = ()) -> str:
    """pydantic's errors as one line naming the first bad field (and how many more);
    ``prefix`` is prepended to their locations (``("train",)`` for a ``train`` section)."""
    errors = [{**e, "loc": (*prefix, *e["loc"])} for e in exc.errors(include_url=False)]
    # unknown keys first: a typo'd key is the likeliest cause of the other errors
    errors.sort(key=lambda e: e["type"] not in ("extra_forbidden", "unexpected_keyword_argument"))
    line = _describe(errors[0], data)
    if len(errors) > 1:
        line += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return line


def _describe(error: dict[str, Any], data: Any) -> str:
    loc = list(error["loc"])
    # the data section's type tag is in pydantic's location, not in the file
    tag = None
    if len(loc) >= 2 and loc[0] == "data" and loc[1] in DATA_TYPES:
        tag = loc.pop(1)
    keys = list(loc)
    while keys and not isinstance(keys[-1], str):
        keys = keys[:-1]
    field = ".".join(str(k) for k in keys) or "(top level)"
    kind = error["type"]
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):  # (dataclass: the latter)
        parent = ".".join(str(k) for k in keys[:-1])
        cls = _SECTION_CLASSES.get(f"data.{tag}" if parent == "data" else parent)
        known = [k for k in _fields(cls) if k != "type"] if cls else []
        return unknown_key_message(field, str(keys[-1]), known)
    expected = _EXPECTED.get(field, _EXPECTED.get(str(keys[-1]))) if keys else None
    got = _lookup(data, keys)
    if kind == "missing":
        return f"field {field!r} is missing" + (f" (expected {expected})" if expected else "")
    if kind == "union_tag_invalid":
        return f"field 'data.type': {_one_of(got.get('type'), DATA_TYPES)}"
    if kind == "value_error":
        reason = error.get("ctx", {}).get("error")
        return f"field {field!r}: {reason if reason is not None else error['msg']}"
    if kind == "literal_error":
        allowed = re.findall(r"'([^']*)'", error.get("ctx", {}).get("expected", ""))
        return f"field {field!r}: {_one_of(got, allowed)}"
    if kind == "string_pattern_mismatch" or expected is None:
        reason = expected or error["msg"][0].lower() + error["msg"][1:]
        return f"field {field!r}: expected {reason}, got {_short(got)}"
    return f"field {field!r}: expected {expected}, got {_short(got)}"


def _lookup(data: Any, keys: list[Any]) -> Any:
    for key in keys:
        if isinstance(data, dict) and key in data:
            data = data[key]
        elif isinstance(data, (list, tuple)) and isinstance(key, int) and 0 <= key < len(data):
            data = data[key]
        else:
            return None
    return data


def _short(value: Any, limit: int = 60) -> str:
    text = " ".join(repr(value).split())  # one line
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- the whole config -----------------------------------------------------------------------
def validate_training_config(config: Any, *, source: str = "config") -> dict[str, Any]:
    """Check ``config`` against :class:`TrainingConfig` and the ``input`` keys of its
    model's kind; return it with the values as validated (``1e-4`` read as a string becomes
    a float, a tuple of fractions a list), keeping only the keys it has. ConfigError names
    ``source``, the key and the problem in one line."""
    if not isinstance(config, dict):
        raise ConfigError(f"{source}: a config is a mapping of sections, got {_short(config)}")
    try:
        valid = TrainingConfig.model_validate(config)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe_errors(exc, config)}") from None
    from histoview.models.registry import get_model_config

    kind = get_model_config(valid.model).kind
    for key in config.get("input") or {}:
        if key not in INPUT_KEYS[kind]:
            users = [k for k, keys in INPUT_KEYS.items() if key in keys]
            raise ConfigError(
                f"{source}: field 'input.{key}' applies to {' and '.join(users)} models, not "
                f"to {kind} model {valid.model!r} (its input keys: {', '.join(INPUT_KEYS[kind])})"
            )
    dumped = {
        "data": valid.data.model_dump(),
        "split": valid.split.model_dump(),
        "input": valid.input.model_dump(),
        "train": asdict(valid.train),
    }
    out = dict(config)
    for section, values in dumped.items():
        if isinstance(config.get(section), dict):
            out[section] = {k: values[k] for k in config[section]}
    return out


def model_kwargs_problem(exc: TypeError, model: str) -> str | None:
    """One line for a model factory's TypeError about an unexpected keyword argument
    (``field 'model_kwargs.X' is not an argument of model M; did you mean ...?``), or None
    when ``exc`` is another TypeError. Candidates: the arguments of the function that made
    the failing call (the factory) and of the class it called (``AMIL.__init__()``)."""
    import inspect

    match = re.search(r"unexpected keyword argument '([^']+)'", str(exc))
    if not match or exc.__traceback__ is None:
        return None
    key = match.group(1)
    tb = exc.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    frame = tb.tb_frame  # the factory: the call inside it failed
    code = frame.f_code
    known = list(code.co_varnames[: code.co_argcount + code.co_kwonlyargcount])
    callee = re.match(r"(\w+)\.__init__\(\)", str(exc))
    cls = frame.f_globals.get(callee.group(1)) if callee else None
    if inspect.isclass(cls):
        params = inspect.signature(cls).parameters.items()
        known += [n for n, p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    known = [
        n for i, n in enumerate(known) if n not in ("self", "num_classes") and n not in known[:i]
    ]
    line = f"field 'model_kwargs.{key}' is not an argument of model {model!r}"
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return line + f"; did you mean {close[0]!r}?"
    return line + (f" (its arguments: {', '.join(known)})" if known else "")
