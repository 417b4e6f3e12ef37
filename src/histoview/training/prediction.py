"""Prediction and evaluation with a trained model: class probabilities of samples through an
evaluation loader (optionally averaged over the 8 dihedral views), and the metrics and
negative log-likelihood of a split. The training loop (:func:`histoview.training.engine.fit`)
validates with :func:`evaluate`; :mod:`histoview.training.evaluate` predicts a held-out split
of a saved checkpoint with :func:`predict`.
"""

from __future__ import annotations

from collections.abc import Callable, Generator

import numpy as np
import torch

from histoview.training.adapters import InputAdapter
from histoview.training.datasets import Sample
from histoview.training.loader import close_loader, make_loader
from histoview.training.metrics import classification_metrics

__all__ = ["TrainingCancelled", "evaluate", "iter_predict", "predict"]


class TrainingCancelled(Exception):
    """Raised inside :func:`fit` when the caller asked it to stop."""


def iter_predict(
    model,
    loader,
    *,
    device: str,
    should_stop: Callable[[], bool] | None = None,
) -> Generator[np.ndarray, None, None]:
    """Class probabilities (b, C) of each batch of an evaluation ``loader``
    (:func:`~histoview.training.loader.make_loader` with ``train=False``), averaged over its
    views; ``should_stop()`` is checked before each batch (:class:`TrainingCancelled`)."""
    model.eval()
    adapter = loader.dataset.adapter
    batches = iter(loader)
    for _ in range(len(loader)):
        if should_stop is not None and should_stop():
            raise TrainingCancelled
        views, _labels = next(batches)
        with torch.no_grad():
            probs = sum(
                torch.softmax(adapter.forward(model, batch, device).float(), -1).cpu()
                for batch in views
            )
        yield (probs / len(views)).numpy()


def predict(
    model,
    adapter: InputAdapter,
    samples: list[Sample],
    *,
    device: str,
    tta: bool = False,
    batch_size: int = 8,
    should_stop: Callable[[], bool] | None = None,
    num_workers: int = 0,
    loader=None,
) -> np.ndarray:
    """Class probabilities (n, C) for ``samples`` (averaged over the 8 dihedral views with
    ``tta``), loaded by ``loader`` when given (an evaluation loader over these samples), else
    by a new one with ``num_workers`` workers."""
    own = loader is None
    if own:
        loader = make_loader(
            adapter,
            samples,
            train=False,
            batch_size=batch_size,
            num_workers=num_workers,
            device=device,
            tta=tta,
        )
    try:
        out = list(iter_predict(model, loader, device=device, should_stop=should_stop))
    finally:
        if own:
            close_loader(loader)
    return np.concatenate(out) if out else np.zeros((0, 0))


def evaluate(
    model,
    adapter,
    samples,
    classes,
    *,
    device,
    tta=False,
    threshold=None,
    should_stop=None,
    num_workers: int = 0,
    loader=None,
) -> dict:
    """:func:`~histoview.training.metrics.classification_metrics` of ``samples`` plus the
    mean negative log-likelihood (``loss``) and, for the caller, ``_probs`` and ``_y``;
    ``loader`` and ``num_workers`` as in :func:`predict`."""
    probs = predict(
        model,
        adapter,
        samples,
        device=device,
        tta=tta,
        should_stop=should_stop,
        num_workers=num_workers,
        loader=loader,
    )
    y = np.array([s.label for s in samples])
    nll = (
        float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None)).mean())
        if len(y)
        else float("nan")
    )
    return classification_metrics(y, probs, classes, threshold=threshold) | {
        "loss": nll,
        "_probs": probs,
        "_y": y,
    }
