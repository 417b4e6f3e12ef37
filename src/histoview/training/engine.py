"""The training loop shared by every model: progress events, cancel, resume, metrics.

:func:`fit` is a generator: it yields progress events (dicts) as it goes and
returns the result, so the CLI prints them and the napari widget runs it in a
worker thread and can stop it between steps. State is saved at the end of
every epoch as safetensors plus JSON (never pickle):

* ``last.safetensors`` / ``last.json``: the model after the last finished epoch;
* ``train_state.safetensors``: the resume unit, one file written atomically (model weights,
  optimizer moments, epoch, history: :mod:`histoview.training.resume`), so a run killed at
  any instant, or cancelled, resumes from its last finished epoch;
* ``best.safetensors`` / ``best.json``: the model with the best validation score
  (a kill between a checkpoint's two files is repaired from the unit on resume).

A loss that becomes NaN or infinite stops the run at once (:class:`TrainingDiverged`, naming
the epoch and step); that epoch saves nothing, so the checkpoints of the last good epoch
stay as they were. Weights that become non-finite are refused the same way.

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
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from histoview.models.checkpoint import default_device, non_finite_tensors, save_checkpoint
from histoview.training.adapters import InputAdapter
from histoview.training.datasets import Sample
from histoview.training.distributed import SINGLE, DistContext, TrainForward, evaluate_split
from histoview.training.loader import MIXUP, close_loader, make_loader, rng_for
from histoview.training.metrics import youden_threshold
from histoview.training.optim import loss_function, make_optimizer, set_lr
from histoview.training.prediction import TrainingCancelled
from histoview.training.resume import (
    discard_train_state,
    load_resume_state,
    remove_partial_files,
    repair_checkpoints,
    save_train_state,
)
from histoview.training.schema import TrainOptions

__all__ = ["TrainOptions", "TrainingDiverged", "fit"]


class TrainingDiverged(ValueError):
    """The loss (or the weights) became NaN or infinite; the message names epoch and step."""


def _train_step(
    forward,
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
    ``mix_rng`` when ``mixup_alpha`` > 0 and ``x`` is one tensor); returns the loss.

    ``forward`` is the model with its adapter (:class:`~histoview.training.distributed.
    TrainForward`, in DistributedDataParallel when several processes train)."""
    y = y.to(device, non_blocking=True)
    mix = None
    if opts.mixup_alpha > 0 and torch.is_tensor(x) and len(y) > 1:
        lam = float(mix_rng.beta(opts.mixup_alpha, opts.mixup_alpha))
        perm = torch.from_numpy(mix_rng.permutation(len(y)))
        x = lam * x + (1 - lam) * x[perm]
        mix = (lam, perm.to(device))
    with torch.autocast("cuda", enabled=scaler is not None):
        logits, reg = forward(x)
        loss = criterion(logits, y)
        if mix is not None:
            loss = mix[0] * loss + (1 - mix[0]) * criterion(logits, y[mix[1]])
        if reg is not None:
            loss = loss + reg
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return float(loss.detach())


def _kept(epoch: int) -> str:
    """What a run stopped during epoch ``epoch + 1`` keeps (epochs counted from 0)."""
    if epoch == 0:
        return "no checkpoint was written"
    return f"last.safetensors (epoch {epoch}) and best.safetensors are kept as they were"


def _diverged(loss: float, epoch: int, step: int, steps: int, opts: TrainOptions) -> str:
    return (
        f"training stopped: the loss became {loss} at epoch {epoch + 1}, step {step + 1} of "
        f"{steps}; nothing of epoch {epoch + 1} was saved, {_kept(epoch)}; try a lower "
        f"learning rate (lr {opts.lr:g})"
    )


def _distributed_meta(dist: DistContext, opts: TrainOptions) -> dict[str, Any]:
    return {
        "processes": dist.world_size,
        "backend": dist.backend,
        "effective_batch_size": dist.world_size * opts.batch_size,
    }


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
    dist: DistContext = SINGLE,
) -> Generator[dict[str, Any], None, dict[str, Any]]:
    """Train ``model``; yields progress events; returns
    ``{"best": path, "last": path, "history": [...]}``.

    Events: ``{"event": "start"|"resumed"|"step"|"epoch_end"|"cancelled"|"done", ...}``;
    ``step`` carries ``epoch``, ``step``, ``steps``, ``loss``, ``elapsed`` and ``eta`` (seconds).
    ``should_stop()`` is checked between steps; on True the run stops with
    its last finished epoch saved and raises nothing (a ``cancelled`` event is yielded).
    Batches come from :func:`~histoview.training.loader.make_loader` with
    ``opts.num_workers`` workers, stopped when the run ends (finished, cancelled or failed).
    A NaN or infinite loss (checked after every step), validation output or weight raises
    :class:`TrainingDiverged` before that epoch writes anything. With ``resume``, the run
    continues from the folder's resume unit (:mod:`histoview.training.resume`); without, it
    starts afresh and discards it.

    With ``dist`` (several processes, :mod:`histoview.training.distributed`) every process
    runs this on its share of each epoch, the model in DistributedDataParallel (gradients
    averaged: the effective batch is ``world_size x batch_size``, the learning rate as the
    options give it); the step losses are averaged over the processes and validation
    metrics computed on the gathered predictions of the whole split, so every process
    takes the same decisions; only rank 0 writes files (``is_main``). Its events are the
    run's; the other processes yield theirs for nobody to show. ``should_stop`` must be
    None then. The resume state records the number of processes; resuming with another
    number works (a message says that the effective batch changes).
    """
    if dist.enabled and should_stop is not None:
        raise ValueError("cancelling between steps (should_stop) needs a single process")
    out_dir = Path(out_dir)
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    device = dist.device if dist.enabled else (opts.device or default_device())
    torch.manual_seed(opts.seed + dist.rank)  # dropout: its own draws in each process
    model.to(device)
    forward = dist.wrap(TrainForward(model, adapter, device))  # (rank 0's weights to all)
    optimizer = make_optimizer(model, opts)
    criterion = loss_function(opts, len(classes))
    use_amp = opts.amp and device.startswith("cuda")  # mixed precision: CUDA only
    scaler = torch.amp.GradScaler("cuda") if use_amp else None
    history: list[dict[str, Any]] = []
    start_epoch, best_score, best_epoch = 0, (-np.inf, -np.inf), None
    state_path = out_dir / "train_state.safetensors"
    last_path, best_path = out_dir / "last.safetensors", out_dir / "best.safetensors"
    if dist.is_main:
        remove_partial_files(out_dir)  # what a kill during a write left behind
        if not resume:
            discard_train_state(out_dir)  # a fresh run: a kill before epoch 1 must not resume it
    dist.barrier()  # (every process reads the folder rank 0 has tidied)
    record, notes = load_resume_state(out_dir, model, optimizer) if resume else (None, [])
    dist.check_same(str(record and record["epoch"]), "the epoch to resume from")
    for text in notes:
        yield {"event": "message", "text": text}
    if record is not None:
        start_epoch, history = record["epoch"], record["history"]
        best_score = (
            tuple(record["best_score"])
            if isinstance(record["best_score"], list)
            else (record["best_score"], -np.inf)
        )
        best_epoch = record.get("best_epoch")
        if dist.is_main:
            for text in repair_checkpoints(model, record, last_path, best_path):
                yield {"event": "message", "text": text}
            if not best_path.exists():
                best_score, best_epoch = (-np.inf, -np.inf), None
        if (was := record.get("world_size", 1)) != dist.world_size:
            yield {
                "event": "message",
                "text": f"WARNING: epochs 1-{start_epoch} ran in {was} process(es), the rest "
                f"runs in {dist.world_size}: the effective batch changes from "
                f"{was * opts.batch_size} to {dist.world_size * opts.batch_size} "
                "(batch_size x processes), so the run will not equal an uninterrupted one",
            }
        yield {
            "event": "resumed",
            "epoch": start_epoch,
            "text": f"resumed from {state_path} after epoch {start_epoch}",
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
        rank=dist.rank,
        world_size=dist.world_size,
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
            rank=dist.rank,
            world_size=dist.world_size,
        )
    steps = max(1, len(train_loader))
    where = device
    if dist.enabled:
        where = (
            f"{dist.world_size} processes ({dist.backend}, rank 0 on {device}; batch "
            f"{opts.batch_size} each, {dist.world_size * opts.batch_size} a step)"
        )
    yield {
        "event": "start",
        "epochs": opts.epochs,
        "steps": steps,
        "device": device,
        "train": len(train),
        "val": len(val),
        "processes": dist.world_size,
        "text": f"training on {where}: {len(train)} train, {len(val)} val",
    }
    if dist.note:
        yield {"event": "message", "text": dist.note}
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
                        forward,
                        optimizer,
                        scaler,
                        criterion,
                        opts,
                        x,
                        y,
                        device=device,
                        mix_rng=mix_rng,
                    )
                    loss = dist.mean(loss)  # (the same on every process: all stop together)
                    if not math.isfinite(loss):
                        raise TrainingDiverged(_diverged(loss, epoch, step, steps, opts))
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
                    val_metrics = evaluate_split(
                        model,
                        adapter,
                        val,
                        classes,
                        device=device,
                        dist=dist,
                        should_stop=stop,
                        loader=val_loader,
                    )
                    if not np.isfinite(val_metrics["_probs"]).all():
                        raise TrainingDiverged(
                            f"training stopped: after epoch {epoch + 1} the model's outputs on "
                            f"the validation images are not finite (NaN or infinite); "
                            f"nothing of epoch {epoch + 1} was saved, {_kept(epoch)}; try a "
                            f"lower learning rate (lr {opts.lr:g})"
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
                **({"distributed": _distributed_meta(dist, opts)} if dist.enabled else {}),
            }
            is_best = key > tuple(best_score) or not best_path.exists()
            if is_best:
                best_score, best_epoch = key, epoch + 1
            weights = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
            if bad := non_finite_tensors(weights):
                raise TrainingDiverged(
                    f"training stopped: after epoch {epoch + 1} the weights are not finite "
                    f"(tensor {bad[0][0]!r}: {bad[0][1]} NaN, {bad[0][2]} infinite values); "
                    f"nothing of epoch {epoch + 1} was saved, {_kept(epoch)}; try a lower "
                    f"learning rate (lr {opts.lr:g})"
                )
            # last (save_checkpoint checks its metadata before the unit commits the epoch),
            # then the unit (weights, optimizer, record: all that resuming reads), then best;
            # a resume rewrites from the unit a last or best that a kill left torn or behind
            if dist.is_main:  # (the weights and optimizer are the same in every process)
                save_checkpoint(last_path, model, ckpt_meta)
                save_train_state(
                    state_path,
                    optimizer,
                    {
                        "epoch": epoch + 1,
                        "best_score": [float(v) for v in best_score],
                        "best_epoch": best_epoch,
                        "history": history,
                        "checkpoint": ckpt_meta,
                        "world_size": dist.world_size,
                        "weights": weights,
                    },
                )
                if is_best:
                    save_checkpoint(best_path, model, ckpt_meta)
            yield {
                "event": "epoch_end",
                "epoch": epoch + 1,
                "epochs": opts.epochs,
                "train_loss": record["train_loss"],
                "val_metrics": public,
                "best": bool(is_best),
                "elapsed": time.monotonic() - t0,
            }
        dist.barrier()  # every process may now read what rank 0 wrote
        yield {"event": "done", "epoch": opts.epochs, "text": "training finished"}
        return {"best": best_path, "last": last_path, "history": history}
    finally:  # stop the workers now, also on cancel or error
        close_loader(train_loader)
        close_loader(val_loader)
