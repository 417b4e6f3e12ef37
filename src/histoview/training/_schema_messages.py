"""One-line messages for a training config's problems: pydantic's errors as a line naming
the key and what was expected ("did you mean ...?" for a typo'd key or value), and a model
factory's unexpected keyword argument as a line naming ``model_kwargs``.

The schema itself (the sections, their types and limits) is :mod:`histoview.training.schema`;
it hands :func:`describe_errors` its section classes, so this module imports no schema.
"""

from __future__ import annotations

import difflib
import re
from typing import Any

from pydantic import ValidationError

__all__ = ["describe_errors", "model_kwargs_problem", "one_of", "short", "unknown_key_message"]

_EXPECTED = {
    "name": "a non-empty run name",
    "description": "a string",
    "model": "a registered model name",
    "model_kwargs": "a mapping of the model factory's keyword arguments",
    "output_dir": "a folder path",
    "data": "a mapping with the dataset's 'type' (phantom, breakhis, bach, folder, idc or auto) "
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
    "stain": "a mapping with the stain normalisation 'method' (macenko or reinhard) and its "
    "'reference' (an image file or 'training-set')",
    "reference": "an image file path or 'training-set'",
    "max_images": "a whole number of images >= 1",
    "augment": "a mapping of augmentation options",
    "hed_jitter": "a stain-jitter sigma in [0, 1) (0: none)",
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


def _fields(cls) -> list[str]:
    fields = getattr(cls, "model_fields", None) or cls.__pydantic_fields__
    return list(fields)


def one_of(value: Any, known, what: str | None = None) -> str:
    """``expected one of 'a', 'b', got 'x'; did you mean 'a'?`` (long lists are not spelled
    out when difflib finds a close match)."""
    known = [str(k) for k in known]
    close = difflib.get_close_matches(str(value), known, n=1)
    listed = "one of " + ", ".join(repr(k) for k in known)
    if what is not None:
        listed = what if close and len(known) > 8 else f"{what} ({listed})"
    line = f"expected {listed}, got {short(value)}"
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


def describe_errors(
    exc: ValidationError, data: Any, sections: dict[str, Any], *, prefix: tuple = ()
) -> str:
    """pydantic's errors as one line naming the first bad field (and how many more);
    ``prefix`` is prepended to their locations (``("train",)`` for a ``train`` section).
    ``sections`` maps a section's path (``""`` for the top level, ``"train"``, ``"data.TYPE"``
    for each dataset ``type``, in the order the types are listed) to its schema class, whose
    fields are the keys suggested for an unknown one."""
    errors = [{**e, "loc": (*prefix, *e["loc"])} for e in exc.errors(include_url=False)]
    # unknown keys first: a typo'd key is the likeliest cause of the other errors
    errors.sort(key=lambda e: e["type"] not in ("extra_forbidden", "unexpected_keyword_argument"))
    line = _describe(errors[0], data, sections)
    if len(errors) > 1:
        line += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return line


def _describe(error: dict[str, Any], data: Any, sections: dict[str, Any]) -> str:
    data_types = [k.split(".", 1)[1] for k in sections if k.startswith("data.")]
    loc = list(error["loc"])
    # the data section's type tag is in pydantic's location, not in the file
    tag = None
    if len(loc) >= 2 and loc[0] == "data" and loc[1] in data_types:
        tag = loc.pop(1)
    keys = list(loc)
    while keys and not isinstance(keys[-1], str):
        keys = keys[:-1]
    field = ".".join(str(k) for k in keys) or "(top level)"
    kind = error["type"]
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):  # (dataclass: the latter)
        parent = ".".join(str(k) for k in keys[:-1])
        cls = sections.get(f"data.{tag}" if parent == "data" else parent)
        known = [k for k in _fields(cls) if k != "type"] if cls else []
        return unknown_key_message(field, str(keys[-1]), known)
    expected = _EXPECTED.get(field, _EXPECTED.get(str(keys[-1]))) if keys else None
    got = _lookup(data, keys)
    if kind == "missing":
        return f"field {field!r} is missing" + (f" (expected {expected})" if expected else "")
    if kind == "union_tag_invalid":
        return f"field 'data.type': {one_of(got.get('type'), data_types)}"
    if kind == "value_error":
        reason = error.get("ctx", {}).get("error")
        return f"field {field!r}: {reason if reason is not None else error['msg']}"
    if kind == "literal_error":
        allowed = re.findall(r"'([^']*)'", error.get("ctx", {}).get("expected", ""))
        return f"field {field!r}: {one_of(got, allowed)}"
    if kind == "string_pattern_mismatch" or expected is None:
        reason = expected or error["msg"][0].lower() + error["msg"][1:]
        return f"field {field!r}: expected {reason}, got {short(got)}"
    return f"field {field!r}: expected {expected}, got {short(got)}"


def _lookup(data: Any, keys: list[Any]) -> Any:
    for key in keys:
        if isinstance(data, dict) and key in data:
            data = data[key]
        elif isinstance(data, (list, tuple)) and isinstance(key, int) and 0 <= key < len(data):
            data = data[key]
        else:
            return None
    return data


def short(value: Any, limit: int = 60) -> str:
    text = " ".join(repr(value).split())  # one line
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
