"""Model registry: name -> factory with a frozen configuration (timm style).

Factories register themselves with :func:`register_model`; the model modules
are imported explicitly by :mod:`histoview.models` (no star imports, no
import-time side effects beyond filling this table).

A :class:`ModelConfig` tells the rest of histoview what a model needs and
offers: what kind of input it takes (a bag of patches, a whole image, a
nuclei graph), input size and normalisation, the layer Grad-CAM should hook,
and the paper and section it implements.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

MODEL_KINDS = ("bag", "image", "graph")


@dataclass(frozen=True)
class ModelConfig:
    """What a registered model takes and offers.

    Attributes:
        name: registry name, e.g. ``"amil"``.
        kind: ``"bag"`` (multiple-instance: a bag of patches), ``"image"``
            (a CNN on a whole image) or ``"graph"`` (a nuclei graph).
        input_size: (height, width) the model is fed (images are resized to
            it); for bags, the (height, width) of one patch.
        mean, std: per-channel normalisation of RGB values in [0, 1].
        target_layer: dotted module path that Grad-CAM hooks (None if the
            model is not a CNN).
        classifier: dotted module path of the classification head.
        paper: citation of the paper and section the model implements.
        defaults: default keyword arguments of the factory.
        explanation: the model's built-in explanation, if any
            (``"attention"`` for A-MIL and RSF+Attention, ``"node_attention"``
            for RMCG), else None.
        test_only: a tiny variant for fast tests, hidden from user lists.
    """

    name: str
    kind: str
    input_size: tuple[int, int] | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    target_layer: str | None = None
    classifier: str | None = None
    paper: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)
    explanation: str | None = None
    test_only: bool = False

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise ValueError(
                f"model {self.name!r}: kind must be one of {MODEL_KINDS}, got {self.kind!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Entry:
    config: ModelConfig
    factory: Callable[..., Any]


_REGISTRY: dict[str, _Entry] = {}


def register_model(config: ModelConfig) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering ``factory(num_classes=..., **kwargs) -> nn.Module`` under ``config.name``."""

    def decorator(factory: Callable[..., Any]) -> Callable[..., Any]:
        if config.name in _REGISTRY:
            raise ValueError(f"model {config.name!r} is already registered")
        _REGISTRY[config.name] = _Entry(config, factory)
        factory.model_config = config  # type: ignore[attr-defined]
        return factory

    return decorator


def _ensure_builtin_models() -> None:
    # The built-in model modules register on import; importing the package does it.
    import histoview.models  # noqa: F401


def list_models(kind: str | None = None, *, include_test: bool = False) -> list[str]:
    """Names of registered models, optionally only those of one ``kind``."""
    _ensure_builtin_models()
    return sorted(
        name
        for name, entry in _REGISTRY.items()
        if (kind is None or entry.config.kind == kind)
        and (include_test or not entry.config.test_only)
    )


def get_model_config(name: str) -> ModelConfig:
    """The :class:`ModelConfig` of a registered model; KeyError names the known ones."""
    _ensure_builtin_models()
    try:
        return _REGISTRY[name].config
    except KeyError:
        known = ", ".join(list_models(include_test=True))
        raise KeyError(f"unknown model {name!r}; registered models: {known}") from None


def create_model(name: str, *, num_classes: int = 2, **kwargs: Any):
    """Build a registered model. Keyword arguments override the config's defaults.

    To build a model from a checkpoint, use :func:`histoview.models.checkpoint.load_model`.
    """
    config = get_model_config(name)
    params = {**config.defaults, **kwargs}
    model = _REGISTRY[name].factory(num_classes=num_classes, **params)
    model.model_config = replace(config, defaults=params)
    return model
