"""The training loop shared by every model: progress events, cancel, resume, metrics.

:func:`fit` is a generator: it yields progress events (dicts) as it goes and
returns the result, so the CLI prints them and the napari widget runs it in a
worker thread and can stop it between steps. State is saved at the end of
every epoch, atomically, as safetensors plus JSON (never pickle):

* ``last.safetensors`` / ``last.json``: the model after the last finished epoch;
* ``best.safetensors`` / ``best.json``: the model with the best validation score;
* ``train_state.safetensors`` / ``train_state.json``: optimizer moments, epoch,
  history, so a killed or cancelled run resumes from its last finished epoch.

Samples are read and augmented through a :class:`torch.utils.data.DataLoader`
(:mod:`histoview.training.loader`), in ``num_workers`` worker processes (0: on the
training thread), with per-sample random generators, so the weights do not depend on
the number of workers; validation and test evaluation use the same loader.

Training options (:class:`TrainOptions`) cover A-MIL (Patil et al., 2019: Adam, lr 1e-3,
flips/rotations), the CSPResNet50-FPN-SE paper (two-phase fine-tuning with the backbone
frozen first and layer-wise learning rates after, focal loss with label smoothing, MixUp,
warm-up then cosine decay, mixed precision on CUDA) and Liu et al.'s DALAResNet50 paper
(batch 32, lr 1e-4, 50 epochs).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass, fields
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np
import torch

from histoview.models.checkpoint import default_device, save_checkpoint
from histoview.training.adapters import InputAdapter
from histoview.training.datasets import Sample
from histoview.training.loader import MIXUP, close_loader, make_loader, rng_for
from histoview.training.metrics import classification_metrics, youden_threshold
from histoview.training.optim import (
    load_train_state,
    loss_function,
    make_optimizer,
    save_train_state,
    set_lr,
)


@dataclass
class TrainOptions:
    """The ``train`` section of a training config (every field optional).

    ``num_workers``: data-loader worker processes that read and augment samples (0: on the
    training thread; a few, up to the number of CPU cores less one, help when decoding
    or augmenting takes longer than a training step). Results do not depend on it. Each
    worker keeps its own decoded-image cache (``input: {cache_images: n}`` per worker).
    """

    epochs: int = 20
    batch_size: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adam"  # adam | adamw | sgd
    loss: str = "cross_entropy"  # cross_entropy | focal
    focal_gamma: float = 2.0
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0  # > 0 enables MixUp (image models)
    warmup_epochs: float = 0.0
    schedule: str = "constant"  # constant | cosine
    freeze_backbone_epochs: int = 0  # CSPResNet50-FPN-SE phase 1: head only
    backbone_lr_scale: float = 1.0  # phase 2: layer-wise lr (backbone lr = lr * scale)
    amp: bool = True  # mixed precision, CUDA only
    device: str | None = None  # default: CUDA when present, else CPU
    seed: int = 0
    monitor: str = "balanced_accuracy"
    tta: bool = False  # 8-fold dihedral TTA at validation/test
    num_workers: int = 0  # data-loader worker processes (0: load on the training thread)

    def __post_init__(self) -> None:
        for name, low in (("num_workers", 0), ("seed", 0), ("batch_size", 1), ("epochs", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
                raise ValueError(
                    f"training option {name} must be an integer >= {low}, got {value!r}"
                )
            setattr(self, name, int(value))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainOptions:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown training options {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


class TrainingCancelled(Exception):
    """Raised inside :func:`fit` when the caller asked it to stop."""


# -- prediction ------------------------------------------------------------------------------
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


def _train_step(
    model,
    adapter,
    optimizer,
    scaler,
    criterion,
    opts: TrainOptions,
    x,
    y: torch.Tensor,
    *,
    device: str,
    mix_rng: np.random.Generator,
) -> float:
    """One optimisation step on the batch ``(x, y)`` (MixUp, Zhang et al., 2018, drawn from
    ``mix_rng`` when ``mixup_alpha`` > 0 and ``x`` is one tensor); returns the loss."""
    y = y.to(device, non_blocking=True)
    mix = None
    if opts.mixup_alpha > 0 and torch.is_tensor(x) and len(y) > 1:
        lam = float(mix_rng.beta(opts.mixup_alpha, opts.mixup_alpha))
        perm = torch.from_numpy(mix_rng.permutation(len(y)))
        x = lam * x + (1 - lam) * x[perm]
        mix = (lam, perm.to(device))
    with torch.autocast("cuda", enabled=scaler is not None):
        logits = adapter.forward(model, x, device)
        loss = criterion(logits, y)
        if mix is not None:
            loss = mix[0] * loss + (1 - mix[0]) * criterion(logits, y[mix[1]])
        reg = getattr(model, "regularization_loss", None)
        if reg is not None:
            loss = loss + reg()
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return float(loss.detach())


def _finite(value, default: float = -np.inf) -> float:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return default
    return float(value)


# -- the loop --------------------------------------------------------------------------------
def fit(
    model,
    adapter: InputAdapter,
    train: list[Sample],
    val: list[Sample],
    classes: tuple[str, ...],
    opts: TrainOptions,
    out_dir: str | Path,
    meta: dict[str, Any],
    *,
    resume: bool = True,
    should_stop: Callable[[], bool] | None = None,
) -> Generator[dict[str, Any], None, dict[str, Any]]:
    """Train ``model``; yields progress events; returns
    ``{"best": path, "last": path, "history": [...]}``.

    Events: ``{"event": "start"|"resumed"|"step"|"epoch_end"|"cancelled"|"done", ...}``;
    ``step`` carries ``epoch``, ``step``, ``steps``, ``loss``, ``elapsed`` and ``eta`` (seconds).
    ``should_stop()`` is checked between steps; on True the run stops with
    its last finished epoch saved and raises nothing (a ``cancelled`` event is yielded).
    Batches come from :func:`~histoview.training.loader.make_loader` with
    ``opts.num_workers`` workers, stopped when the run ends (finished, cancelled or failed).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = opts.device or default_device()
    torch.manual_seed(opts.seed)
    model.to(device)
    optimizer = make_optimizer(model, opts)
    criterion = loss_function(opts, len(classes))
    use_amp = opts.amp and device.startswith("cuda")  # mixed precision: CUDA only
    scaler = torch.amp.GradScaler("cuda") if use_amp else None
    history: list[dict[str, Any]] = []
    start_epoch, best_score = 0, (-np.inf, -np.inf)
    state_path = out_dir / "train_state.safetensors"
    last_path, best_path = out_dir / "last.safetensors", out_dir / "best.safetensors"
    if resume and state_path.exists() and last_path.exists():
        from histoview.models.checkpoint import check_state_dict, load_state_dict

        state, _ = load_state_dict(last_path)
        check_state_dict(model, state, str(last_path))
        model.load_state_dict(state)
        info = load_train_state(state_path, optimizer)
        start_epoch, history = info["epoch"], info["history"]
        best_score = (
            tuple(info["best_score"])
            if isinstance(info["best_score"], list)
            else (info["best_score"], -np.inf)
        )
        yield {
            "event": "resumed",
            "epoch": start_epoch,
            "text": f"resumed from {last_path} after epoch {start_epoch}",
        }
    if start_epoch >= opts.epochs:
        yield {"event": "done", "epoch": start_epoch, "text": "already trained for all epochs"}
        return {
            "best": best_path if best_path.exists() else last_path,
            "last": last_path,
            "history": history,
        }
    # every random draw has its own generator (training.loader), so results do not depend
    # on num_workers, and a resumed run draws what an uninterrupted one would
    train_loader = make_loader(
        adapter,
        train,
        train=True,
        batch_size=opts.batch_size,
        seed=opts.seed,
        num_workers=opts.num_workers,
        device=device,
    )
    val_loader = None
    if val:
        val_loader = make_loader(
            adapter,
            val,
            train=False,
            batch_size=8,
            seed=opts.seed,
            num_workers=opts.num_workers,
            device=device,
            tta=opts.tta,
        )
    steps = max(1, len(train_loader))
    yield {
        "event": "start",
        "epochs": opts.epochs,
        "steps": steps,
        "device": device,
        "train": len(train),
        "val": len(val),
        "text": f"training on {device}: {len(train)} train, {len(val)} val",
    }
    try:
        t0 = time.monotonic()
        done_steps, total_steps = 0, steps * (opts.epochs - start_epoch)
        stop = should_stop or (lambda: False)
        for epoch in range(start_epoch, opts.epochs):
            try:  # cancel between steps and between validation batches
                model.train()
                train_loader.batch_sampler.set_epoch(epoch)
                batches = iter(train_loader)
                losses = []
                for step in range(steps):
                    if stop():
                        raise TrainingCancelled
                    set_lr(optimizer, opts, epoch + step / steps, epoch)
                    x, y = next(batches)
                    mix_rng = rng_for(opts.seed, MIXUP, epoch, step)
                    loss = _train_step(
                        model,
                        adapter,
                        optimizer,
                        scaler,
                        criterion,
                        opts,
                        x,
                        y,
                        device=device,
                        mix_rng=mix_rng,
                    )
                    losses.append(loss)
                    done_steps += 1
                    elapsed = time.monotonic() - t0
                    yield {
                        "event": "step",
                        "epoch": epoch + 1,
                        "epochs": opts.epochs,
                        "step": step + 1,
                        "steps": steps,
                        "loss": losses[-1],
                        "elapsed": elapsed,
                        "eta": elapsed / done_steps * (total_steps - done_steps),
                    }
                val_metrics = {}
                if val_loader is not None:
                    val_metrics = evaluate(
                        model,
                        adapter,
                        val,
                        classes,
                        device=device,
                        should_stop=stop,
                        loader=val_loader,
                    )
            except TrainingCancelled:
                yield {
                    "event": "cancelled",
                    "epoch": epoch,
                    "text": f"cancelled; last finished epoch {epoch} kept",
                }
                return {"best": best_path, "last": last_path, "history": history, "cancelled": True}
            threshold = None
            if val_metrics and len(classes) == 2 and len(set(val_metrics["_y"].tolist())) == 2:
                threshold = youden_threshold(val_metrics["_y"] == 1, val_metrics["_probs"][:, 1])
            public = {k: v for k, v in val_metrics.items() if not k.startswith("_")}
            record = {
                "epoch": epoch + 1,
                "train_loss": float(np.mean(losses)),
                "val": public,
                "lr": optimizer.param_groups[-1]["lr"],
                "threshold": threshold,
            }
            history.append(record)
            # best = highest monitored metric, ties broken by the lower validation loss
            score = _finite(public.get(opts.monitor, -float(np.mean(losses))))
            key = (score, -_finite(public.get("loss"), np.inf))
            ckpt_meta = {
                **meta,
                "epoch": epoch + 1,
                "metrics": {"validation": public},
                "threshold": threshold,
                "train_options": asdict(opts),
            }
            save_checkpoint(last_path, model, ckpt_meta)
            is_best = key > tuple(best_score) or not best_path.exists()
            if is_best:
                best_score = key
                save_checkpoint(best_path, model, ckpt_meta)
            save_train_state(
                state_path,
                optimizer,
                {
                    "epoch": epoch + 1,
                    "best_score": [float(v) for v in best_score],
                    "history": history,
                },
            )
            yield {
                "event": "epoch_end",
                "epoch": epoch + 1,
                "epochs": opts.epochs,
                "train_loss": record["train_loss"],
                "val_metrics": public,
                "best": bool(is_best),
                "elapsed": time.monotonic() - t0,
            }
        yield {"event": "done", "epoch": opts.epochs, "text": "training finished"}
        return {"best": best_path, "last": last_path, "history": history}
    finally:  # stop the workers now, also on cancel or error
        close_loader(train_loader)
        close_loader(val_loader)
