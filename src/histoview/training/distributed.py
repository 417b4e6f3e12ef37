"""Training in several processes with :class:`~torch.nn.parallel.DistributedDataParallel`.

One process per GPU (or several on the CPU) runs the same training code
(:func:`histoview.training.run.iter_train_from_config`); :mod:`histoview.training.launch`
starts them (``histoview train CONFIG --nproc N``) or finds them started by ``torchrun``.
A :class:`DistContext` says which process this is and does the little communication the
run needs; ``SINGLE`` (one process) makes every one of its calls a no-op, so the
one-process run takes the very path it always took.

* **Backend and device**: NCCL when every process of the machine has a CUDA device of its
  own (process ``LOCAL_RANK`` on ``cuda:LOCAL_RANK``), else Gloo on the CPU
  (:func:`init_from_environment`; the config's ``train.device`` may force ``cpu``). The
  process group has a timeout (:data:`PROCESS_GROUP_TIMEOUT`), so a process whose peer died
  without its sockets closing stops waiting rather than hanging; the launcher stops the
  rest at once anyway.
* **Data**: every process computes the (deterministic, patient-level) split from the config
  and checks that all computed the same (:meth:`DistContext.check_same` on
  :func:`split_fingerprint`), then trains on its share of the same per-epoch order
  (:class:`~histoview.training.loader.EpochBatchSampler` with ``rank`` / ``world_size``).
* **Effective batch and learning rate**: DDP averages the gradients of the processes, so
  one step sees ``N x batch_size`` samples. The learning rate is **not** scaled: to keep a
  recipe's behaviour, divide its ``batch_size`` by ``N`` (batch 4 on 2 processes makes the
  steps of batch 8 on one); to use ``N`` times the batch, raise ``lr`` yourself (the linear
  scaling rule of Goyal et al., 2017 is a common start). Steps per epoch shrink by ``N``.
* **Metrics**: the training loss of each step is averaged over the processes; validation
  and test predictions are made on disjoint shares and gathered (:func:`evaluate_split`),
  so metrics are those of the whole split, exactly, not averages of per-process metrics.
* **Writing**: only rank 0 writes checkpoints, the resume state, the report and figures,
  and only its progress events are shown (the engine and the run check ``is_main``);
  the output folder must be one that every process sees.
* **Batch normalisation** statistics are those of each process's batch (DDP broadcasts
  rank 0's running statistics): not synchronised; a run with BatchNorm layers differs a
  little from one process with ``N`` times the batch.
* Cancelling between steps (``should_stop``, the napari dock) is for one process only.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch

#: how long a process waits for the others in one collective before giving up
PROCESS_GROUP_TIMEOUT = timedelta(minutes=15)


@dataclass(frozen=True)
class DistContext:
    """Which of ``world_size`` processes this is, and the collectives of a run.

    ``rank`` over all processes, ``local_rank`` on this machine; ``device`` the one this
    process trains on (None: the config's choice, one process); ``note`` a line for the
    user about the choice of device (or empty).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str | None = None
    device: str | None = None
    note: str = ""

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and reports progress."""
        return self.rank == 0

    def _comm_device(self) -> str:
        return self.device if self.backend == "nccl" else "cpu"

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def mean(self, value: float) -> float:
        """``value`` averaged over the processes."""
        if not self.enabled:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64, device=self._comm_device())
        torch.distributed.all_reduce(t)
        return float(t.item()) / self.world_size

    def gather_rows(self, rows: np.ndarray, n: int, columns: int) -> np.ndarray:
        """The ``(n, columns)`` array whose rows ``rank, rank + world_size, ...`` each
        process holds as ``rows`` (its evaluation share), in the original order."""
        rows = np.asarray(rows)
        if rows.size == 0:
            rows = np.zeros((0, columns), np.float32)
        if not self.enabled:
            return rows
        share = -(-n // self.world_size)
        local = torch.zeros((share, columns), dtype=torch.float64, device=self._comm_device())
        local[: len(rows)] = torch.from_numpy(rows.astype(np.float64))
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, local)
        out = np.zeros((n, columns), rows.dtype)
        for r, part in enumerate(parts):
            count = len(range(r, n, self.world_size))
            out[r :: self.world_size] = part[:count].cpu().numpy().astype(rows.dtype)
        return out

    def check_same(self, text: str, what: str) -> None:
        """Raise ValueError on every process unless all hold the same ``text`` (compared by
        SHA-256); ``what`` names it in the message."""
        if not self.enabled:
            return
        digest = np.frombuffer(hashlib.sha256(text.encode()).digest(), np.uint8).copy()
        local = torch.from_numpy(digest).to(self._comm_device())
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, local)
        differ = [r for r, p in enumerate(parts) if not torch.equal(p, parts[0])]
        if differ:
            raise ValueError(
                f"the {self.world_size} training processes disagree on {what}: ranks "
                f"{', '.join(map(str, differ))} differ from rank 0 (do all processes read "
                "the same data and config?)"
            )

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` in DistributedDataParallel (itself with one process)."""
        if not self.enabled:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [torch.device(self.device).index] if self.backend == "nccl" else None
        # every registered image and bag model uses all its parameters in each step, so
        # DDP needs no search for unused ones (a model that leaves some unused makes DDP
        # raise at its second step, naming find_unused_parameters)
        return DistributedDataParallel(module, device_ids=ids)


SINGLE = DistContext()


def environment() -> dict[str, int] | None:
    """This process's place among several (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``LOCAL_WORLD_SIZE``, as ``torchrun`` and :mod:`histoview.training.launch` set them);
    None for a single process."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return None
        rank = int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    except (KeyError, ValueError) as exc:
        raise ValueError(
            f"WORLD_SIZE is set but RANK / LOCAL_RANK are missing or not numbers ({exc}): "
            "start the processes with torchrun or histoview train --nproc"
        ) from None
    return {"rank": rank, "world_size": world, "local_rank": local_rank, "local_world": local_world}


def _rank_device(option: str | None, local_rank: int, local_world: int) -> tuple[str, str]:
    """(device, note) for process ``local_rank`` of ``local_world`` on this machine."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if option == "cpu":
        return "cpu", ""
    if option is None:
        if gpus >= local_world:
            return f"cuda:{local_rank}", ""
        note = (
            f"{local_world} processes, {gpus} CUDA devices: training on the CPU with Gloo "
            "(one process per GPU uses NCCL)"
            if gpus
            else ""
        )
        return "cpu", note
    if option == "cuda":
        if gpus < local_world:
            raise ValueError(
                f"train.device is cuda but this machine has {gpus} CUDA devices for "
                f"{local_world} processes: start one process per GPU, or use device cpu"
            )
        return f"cuda:{local_rank}", ""
    if option.startswith("cuda:"):
        raise ValueError(
            f"train.device {option} names one GPU, but each of {local_world} processes needs "
            "its own: use device cuda (process k trains on cuda:k)"
        )
    raise ValueError(
        f"train.device {option}: distributed training runs on CUDA (NCCL) or the CPU (Gloo)"
    )


def init_from_environment(
    device_option: str | None = None, *, timeout: timedelta = PROCESS_GROUP_TIMEOUT
) -> DistContext:
    """Join the process group that the environment describes (:func:`environment`) and
    return this process's context; ``SINGLE`` when there is one process.

    ``device_option`` is the config's ``train.device``. On the CPU each process uses
    ``cores / processes`` torch threads unless ``OMP_NUM_THREADS`` says otherwise.
    """
    env = environment()
    if env is None:
        return SINGLE
    device, note = _rank_device(device_option, env["local_rank"], env["local_world"])
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(device)
    elif "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // env["local_world"]))
    if not torch.distributed.is_initialized():
        extra = {"device_id": torch.device(device)} if backend == "nccl" else {}
        torch.distributed.init_process_group(backend, timeout=timeout, **extra)
    return DistContext(
        rank=env["rank"],
        world_size=env["world_size"],
        local_rank=env["local_rank"],
        local_world_size=env["local_world"],
        backend=backend,
        device=device,
        note=note,
    )


def shutdown(ctx: DistContext) -> None:
    """Leave the process group (after the run, on every process)."""
    if ctx.enabled and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def split_fingerprint(*splits: Sequence) -> str:
    """A text naming every sample of ``splits`` (key, label, patient), split by split: equal
    on two processes exactly when they computed the same splits."""
    return "\n--\n".join(
        "\n".join(f"{s.key}|{s.label}|{s.patient}" for s in split) for split in splits
    )


class TrainForward(torch.nn.Module):
    """A model and its input adapter as one module: ``forward(batch)`` returns the logits
    and the model's regularisation loss (None if it has none).

    One call per training step, so DistributedDataParallel sees one forward per backward
    even when the adapter calls the model once per bag.
    """

    def __init__(self, model: torch.nn.Module, adapter, device: str):
        super().__init__()
        self.model, self.adapter, self.device = model, adapter, device

    def forward(self, batch):
        logits = self.adapter.forward(self.model, batch, self.device)
        reg = getattr(self.model, "regularization_loss", None)
        return logits, (reg() if reg is not None else None)


def evaluate_split(
    model,
    adapter,
    samples: Sequence,
    classes: Sequence[str],
    *,
    device: str,
    dist: DistContext = SINGLE,
    tta: bool = False,
    threshold: float | None = None,
    num_workers: int = 0,
    loader=None,
    should_stop: Callable[[], bool] | None = None,
) -> dict:
    """:func:`histoview.training.prediction.evaluate` of ``samples``, shared by the processes
    of ``dist``: each predicts its share (``loader``: an evaluation loader over that share,
    else a new one), the probabilities are gathered, and the metrics are computed on all of
    them, on every process. One process: ``evaluate`` itself."""
    from histoview.training.loader import close_loader, make_loader
    from histoview.training.metrics import evaluation_metrics
    from histoview.training.prediction import evaluate, predict

    if not dist.enabled:
        return evaluate(
            model,
            adapter,
            samples,
            classes,
            device=device,
            tta=tta,
            threshold=threshold,
            should_stop=should_stop,
            num_workers=num_workers,
            loader=loader,
        )
    own = loader is None
    if own:
        loader = make_loader(
            adapter,
            samples,
            train=False,
            batch_size=8,
            num_workers=num_workers,
            device=device,
            tta=tta,
            rank=dist.rank,
            world_size=dist.world_size,
        )
    try:
        local = predict(model, adapter, samples, device=device, loader=loader)
    finally:
        if own:
            close_loader(loader)
    probs = dist.gather_rows(local, len(samples), len(classes))
    y = np.array([s.label for s in samples])
    return evaluation_metrics(y, probs, classes, threshold=threshold)
