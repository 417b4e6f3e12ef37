"""ImageNet weights for backbones, offline: the torchvision/timm caches or a safetensors file.

:func:`load_pretrained_backbone` loads weights into a model's ``backbone`` (which keeps
torchvision's/timm's own parameter names, so an ImageNet file loads unchanged). Nothing
here downloads anything, and nothing loads a file the user names with ``torch.load``:
``pretrained`` is a ``.safetensors`` file, or ``True`` for the torchvision/timm ImageNet
weights already in the local cache, found by the library's own name for them and checked
against the hash that name carries. The architectures are in :mod:`histoview.models.cnn`,
:mod:`histoview.models.attention_cnns`, :mod:`histoview.models.rmcg` and
:mod:`histoview.models.pixel_graph_baselines`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

# torchvision weight enums whose IMAGENET1K_V1 file names the torch hub cache holds.
_TORCHVISION_WEIGHTS = {
    "resnet18": "ResNet18_Weights",
    "resnet50": "ResNet50_Weights",
    "vgg16": "VGG16_Weights",
    "alexnet": "AlexNet_Weights",
}

# torch.hub's convention: a cached file's name carries the start of its SHA-256
_HUB_HASH = re.compile(r"-([a-f0-9]{6,})\.")


def _torch_hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _imagenet_url(arch: str) -> str | None:
    """Where torchvision or timm publish ``arch``'s ImageNet weights (None: not there)."""
    if arch in _TORCHVISION_WEIGHTS:
        import torchvision

        return getattr(torchvision.models, _TORCHVISION_WEIGHTS[arch]).IMAGENET1K_V1.url
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(arch)
    return (cfg.url or None) if cfg is not None else None


def _cached_imagenet_state(arch: str) -> tuple[dict[str, torch.Tensor], Path]:
    """``(state_dict, file)``: ``arch``'s ImageNet weights from the local caches only.

    timm weights come from the Hugging Face cache's ``model.safetensors``; torchvision's
    (and timm's older releases) from torch.hub's cache, under the file name of the
    library's own URL, whose hash prefix is checked before torch.hub loads it
    (``weights_only=True``). Never downloads: RuntimeError says how to provide the file.
    """
    looked: list[str] = []
    if arch not in _TORCHVISION_WEIGHTS:
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(arch)
        if cfg is None or not (cfg.url or cfg.hf_hub_id):
            raise RuntimeError(
                f"timm publishes no ImageNet weights for {arch!r}; pass pretrained='/path/to/"
                "weights.safetensors' instead"
            )
        if cfg.hf_hub_id:
            from huggingface_hub import try_to_load_from_cache

            hf_cache = os.environ.get("HF_HUB_CACHE")  # read now, so tests can redirect it
            hit = try_to_load_from_cache(cfg.hf_hub_id, "model.safetensors", cache_dir=hf_cache)
            if isinstance(hit, str):
                return _read_state_file(hit), Path(hit)
            where = Path(hf_cache or "~/.cache/huggingface/hub") / cfg.hf_hub_id
            looked.append(f"{where} (model.safetensors)")
    url = _imagenet_url(arch)
    if url:
        cached = _torch_hub_checkpoints() / url.rsplit("/", 1)[-1]
        if cached.is_file():
            _check_hub_hash(cached)
            state = torch.hub.load_state_dict_from_url(
                url,
                model_dir=str(cached.parent),
                map_location="cpu",
                progress=False,
                check_hash=True,
                weights_only=True,
            )
            return dict(state), cached
        looked.append(str(cached))
    where = "; ".join(looked)
    source = f" (download {url} once on a machine with network)" if url else ""
    raise RuntimeError(
        f"ImageNet weights for {arch!r} are not available offline (histoview never downloads "
        f"weights). Looked for: {where}. Either put the file there{source}, or pass "
        f"pretrained='/path/to/{arch}.safetensors' holding the backbone's ImageNet weights."
    )


def _check_hub_hash(path: Path) -> None:
    """RuntimeError unless ``path``'s SHA-256 starts with the hash prefix in its name."""
    from histoview.models.checkpoint import sha256_file

    match = _HUB_HASH.search(path.name)
    if match is None:
        raise RuntimeError(f"{path}: no hash in the file name, so it cannot be verified")
    digest = sha256_file(path)
    if not digest.startswith(match.group(1)):
        raise RuntimeError(
            f"{path}: its SHA-256 ({digest[:12]}...) does not match the {match.group(1)} in its "
            "name: a damaged or replaced download; delete it and fetch it again"
        )


def _read_state_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` state_dict (never a pickle: ``.pth`` and the like are refused)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(
            f"{path}: pretrained weights must be a .safetensors file; histoview never loads "
            "pickle files (.pth, .pt, .bin) with torch.load. If you trust the file, convert "
            "its state_dict once with safetensors.torch.save_file(state_dict, 'NAME.safetensors')"
        )
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {path}")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise RuntimeError(f"{path}: cannot read safetensors weights ({exc})") from None


def load_pretrained_backbone(
    module: nn.Module,
    pretrained: str | os.PathLike | bool,
    *,
    arch: str,
    ignore: Sequence[str] = (),
) -> list[str]:
    """Load ImageNet weights into ``module`` (a backbone with torchvision/timm names).

    Args:
        module: the pretrained part of a model (``model.backbone``).
        pretrained: ``False`` does nothing (random weights); a path to a
            ``.safetensors`` state_dict loads it (a ``module.`` prefix is stripped;
            any other suffix is refused with ValueError: histoview never unpickles);
            ``True`` uses the torchvision/timm ImageNet weights only if they are
            already in the local cache (``torch.hub.get_dir()``, hash-checked, or the
            Hugging Face cache's safetensors), else raises RuntimeError saying how to
            provide them.
        arch: torchvision/timm architecture name of the weights, e.g. ``"resnet50"``.
        ignore: parameter-name prefixes of ``module`` not required in the file.

    Returns:
        The names of the tensors loaded (empty when ``pretrained`` is False).

    Raises:
        RuntimeError: weights not cached, a cached file whose hash does not match, or a
            file that misses tensors of the backbone, has them with other shapes or
            holds NaN or infinite values.
        ValueError: a weights file that is not ``.safetensors``.
    """
    from histoview.models.checkpoint import non_finite_tensors

    if pretrained is False or pretrained is None:
        return []
    if pretrained is True:
        state, path = _cached_imagenet_state(arch)
    else:
        path = Path(pretrained)
        state = _read_state_file(path)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if bad := non_finite_tensors(state):
        name, nan, inf, size = bad[0]
        raise RuntimeError(
            f"{path}: not usable ImageNet weights: tensor {name!r} has {nan} NaN and {inf} "
            f"infinite values of {size}"
        )
    own = module.state_dict()
    wanted = [
        k for k in own if not k.startswith(tuple(ignore)) and not k.endswith("num_batches_tracked")
    ]
    missing = [k for k in wanted if k not in state]
    if missing:
        raise RuntimeError(
            f"{path}: not {arch!r} ImageNet weights: {len(missing)} backbone tensors missing "
            f"(e.g. {missing[:3]})"
        )
    wrong = [k for k in wanted if tuple(state[k].shape) != tuple(own[k].shape)]
    if wrong:
        raise RuntimeError(f"{path}: shape mismatch for {len(wrong)} tensors (e.g. {wrong[:3]})")
    loaded = [k for k in own if k in state and tuple(state[k].shape) == tuple(own[k].shape)]
    module.load_state_dict({k: state[k] for k in loaded}, strict=False)
    return loaded
