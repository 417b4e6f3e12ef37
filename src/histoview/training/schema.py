"""The schema of a training config, and its errors as one line naming the file and the key.

:class:`TrainingConfig` (pydantic v2, strict types, unknown keys refused) describes every
section of a config (:mod:`histoview.training.config`): ``name``, ``description``,
``model``, ``model_kwargs``, ``data`` (one schema per dataset ``type``), ``split``, ``input``,
``stain`` (stain normalisation, fitted at training start), ``augment`` (stain jitter),
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
reported when the model is built
(:func:`histoview.training._schema_messages.model_kwargs_problem`); the messages' wording is
:mod:`histoview.training._schema_messages`.
"""

from __future__ import annotations

from dataclasses import asdict
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

from histoview.training._schema_features import SlideFeaturesData
from histoview.training._schema_idc import IdcData
from histoview.training._schema_messages import describe_errors, one_of, short
from histoview.training._schema_types import (
    Dropout,
    Flag,
    Fraction,
    Name,
    NonNegativeFloat,
    NonNegativeInt,
    PathText,
    PositiveFloat,
    PositiveInt,
    Text,
)

__all__ = [
    "ConfigError",
    "TrainOptions",
    "TrainingConfig",
    "config_problem",
    "validate_training_config",
]


class ConfigError(ValueError):
    """A training config that cannot be used; the message is one line naming file and key."""


# every field type (training._schema_types) is strict; the sections are lax only so that a mapping
# can stand for the TrainOptions dataclass, which strict mode takes as an instance only
_STRICT = ConfigDict(extra="forbid", protected_namespaces=())


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
            line = describe_errors(exc, {"train": d}, _SECTION_CLASSES, prefix=("train",))
            raise ConfigError(f"{source}: {line}") from None


_TRAIN_OPTIONS = TypeAdapter(TrainOptions)


class SplitSection(BaseModel):
    """``split``: ``by`` patient (no patient in two splits) or image (leaks patients),
    ``fractions`` of train / validation / test (each in [0, 1], adding up to 1, training
    above 0; a validation or test fraction of 0 means no such split), ``seed``; for IDC data
    ``test_patients`` / ``val_patients`` name the held-out patients instead."""

    model_config = _STRICT

    by: Literal["patient", "image"] = "patient"
    fractions: Annotated[list[Fraction], Field(min_length=3, max_length=3)] = Field(
        default_factory=lambda: [0.7, 0.15, 0.15]
    )
    seed: NonNegativeInt = 0
    # IDC only (training.idc_split): held-out patients by name instead of fractions
    test_patients: list[Name] | None = None
    val_patients: list[Name] | None = None

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
    "image": ("pixel_size_um", "cache_images", "tiled"),
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
    tiled: Flag = False  # a patch classifier: larger images go tile by tile (models.inputs)


#: ``stain.reference`` value that fits the normaliser to the training split's images
TRAINING_SET = "training-set"


class StainSection(BaseModel):
    """``stain``: stain normalisation (:mod:`histoview.preprocessing.stain`), fitted when
    training starts and stored in the checkpoint, so inference applies the same.

    ``method`` ``macenko`` or ``reinhard``; ``reference`` an image file (relative to the
    config file) or ``training-set`` (the training split's images, at most ``max_images``
    of them, evenly spaced in the split's order: never validation or test images);
    ``on_no_tissue``: an image whose stain cannot be estimated (blank, background only)
    stops the run (``raise``) or is used as it is (``keep``)."""

    model_config = _STRICT

    method: Literal["macenko", "reinhard"]
    reference: PathText = TRAINING_SET
    max_images: PositiveInt = 64
    on_no_tissue: Literal["raise", "keep"] = "raise"


class AugmentSection(BaseModel):
    """``augment``: training-only colour augmentation of bag and image models.
    ``hed_jitter``: the sigma of HED stain jitter (Tellez et al. 2019,
    :func:`histoview.preprocessing.stain.hed_jitter`), in [0, 1); 0 disables it."""

    model_config = _STRICT

    hed_jitter: Dropout = 0.0


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
            raise ValueError(one_of(preset, PHANTOM_PRESETS))
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
    "idc": IdcData,
    "slide_features": SlideFeaturesData,
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
    | Annotated[IdcData, Tag("idc")]
    | Annotated[SlideFeaturesData, Tag("slide_features")]
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
    stain: StainSection | None = None
    augment: AugmentSection = Field(default_factory=AugmentSection)
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
            raise ValueError(one_of(name, known, "a registered model")) from None
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


_SECTION_CLASSES = {
    "": TrainingConfig,
    "split": SplitSection,
    "input": InputSection,
    "stain": StainSection,
    "augment": AugmentSection,
    "train": TrainOptions,
    **{f"data.{t}": c for t, c in DATA_TYPES.items()},
}


def config_problem(config: Any) -> str | None:
    """``None`` if ``config`` (the parsed file) is a valid training config, else its first
    problem as one line (module docstring)."""
    try:
        TrainingConfig.model_validate(config)
    except ValidationError as exc:
        return describe_errors(exc, config, _SECTION_CLASSES)
    return None


# -- the whole config -----------------------------------------------------------------------
def validate_training_config(config: Any, *, source: str = "config") -> dict[str, Any]:
    """Check ``config`` against :class:`TrainingConfig` and the ``input`` keys of its
    model's kind; return it with the values as validated (``1e-4`` read as a string becomes
    a float, a tuple of fractions a list), keeping only the keys it has. ConfigError names
    ``source``, the key and the problem in one line."""
    if not isinstance(config, dict):
        raise ConfigError(f"{source}: a config is a mapping of sections, got {short(config)}")
    try:
        valid = TrainingConfig.model_validate(config)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe_errors(exc, config, _SECTION_CLASSES)}") from None
    from histoview.models.registry import get_model_config

    kind = get_model_config(valid.model).kind
    for key in config.get("input") or {}:
        if key not in INPUT_KEYS[kind]:
            users = [k for k, keys in INPUT_KEYS.items() if key in keys]
            raise ConfigError(
                f"{source}: field 'input.{key}' applies to {' and '.join(users)} models, not "
                f"to {kind} model {valid.model!r} (its input keys: {', '.join(INPUT_KEYS[kind])})"
            )
    if kind == "graph" and valid.augment.hed_jitter > 0:
        raise ConfigError(
            f"{source}: field 'augment.hed_jitter' applies to bag and image models, not to graph "
            f"model {valid.model!r} (its nuclei graphs are built once per image, unaugmented)"
        )
    dumped = {
        "data": valid.data.model_dump(),
        "split": valid.split.model_dump(),
        "input": valid.input.model_dump(),
        "stain": valid.stain.model_dump() if valid.stain is not None else None,
        "augment": valid.augment.model_dump(),
        "train": asdict(valid.train),
    }
    out = dict(config)
    for section, values in dumped.items():
        if isinstance(config.get(section), dict):
            out[section] = {k: values[k] for k in config[section]}
    return out
