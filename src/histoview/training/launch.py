"""Start a distributed training run: ``histoview train CONFIG --nproc N``, or one process of
a run that ``torchrun`` started.

:func:`train_processes` starts ``N`` processes on this machine with torch's elastic
launcher (:func:`torch.distributed.launcher.api.elastic_launch`, in this process: what
``torchrun --standalone`` does, a free port chosen by the rendezvous), each running
:func:`train_this_process` on the same config; ``torchrun --nproc-per-node N -m
histoview.cli train CONFIG`` runs the same function in processes it started (the
environment's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` say which). What the processes do
together is :mod:`histoview.training.distributed`'s: DDP, Gloo or NCCL, rank 0 writes.

**A process that dies** (killed, out of memory, an error) stops the run: the launcher sees
it within a tenth of a second and stops the others (SIGTERM, then SIGKILL), which
otherwise would wait for it in their next collective (their process group also times out,
:data:`~histoview.training.distributed.PROCESS_GROUP_TIMEOUT`). :class:`ProcessFailed`
then says which rank died and how, and what the output folder holds: checkpoints are
written atomically by rank 0 alone, so the last finished epoch is whole and the same
command resumes it (:mod:`histoview.training.resume`). An error raised in a process (a
config problem, a diverged loss) is reported as that error, from the rank that raised it
first rather than from those that then lost their peer.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from histoview.training.distributed import environment, init_from_environment, shutdown
from histoview.training.events import drain


class ProcessFailed(RuntimeError):
    """A process of a distributed run died or failed; the message is the user's one line."""


class _RankError(RuntimeError):
    """An error raised in a training process, carried to the launcher as one line."""


class _PeerLost(RuntimeError):
    """A process lost its peers (a collective failed): a consequence, not the cause."""


def train_this_process(
    config: dict[str, Any],
    *,
    resume: bool = True,
    source: str = "config",
    progress: Callable[[dict], None] | None = None,
) -> dict[str, Any]:
    """Train ``config`` as this process's part of the run the environment describes
    (one process: the whole run); only rank 0 hands events to ``progress``. Joins the
    process group first and leaves it at the end."""
    from histoview.training.run import iter_train_from_config

    device = (config.get("train") or {}).get("device")
    ctx = init_from_environment(device if isinstance(device, str) else None)
    try:
        gen = iter_train_from_config(config, resume=resume, source=source, dist=ctx)
        return drain(gen, progress if ctx.is_main else None)
    finally:
        shutdown(ctx)


def _process_main(config, resume, source, progress) -> dict[str, str | None]:
    """One process started by :func:`train_processes` (a module-level function: it is
    pickled by name for ``spawn``); its return value goes back to the launcher."""
    import torch.distributed as tdist

    try:
        result = train_this_process(config, resume=resume, source=source, progress=progress)
    except tdist.DistError as exc:
        raise _PeerLost(_one_line(exc)) from None
    except Exception as exc:  # noqa: BLE001 (any error: one line for the launcher)
        raise _RankError(_one_line(exc)) from None
    report = result.get("report")
    return {"checkpoint": str(result["checkpoint"]), "report": str(report) if report else None}


def train_processes(
    config: dict[str, Any],
    nproc: int,
    *,
    resume: bool = True,
    source: str = "config",
    progress: Callable[[dict], None] | None = None,
) -> dict[str, str | None]:
    """Train ``config`` in ``nproc`` processes on this machine; returns rank 0's
    ``{"checkpoint": path, "report": path}``.

    ``progress`` must pickle (a module-level function), as it runs in rank 0's process.
    Raises :class:`ProcessFailed` (one line) when a process dies or fails; ValueError when
    this process is itself one of a run (``WORLD_SIZE`` set, e.g. under ``torchrun``).
    """
    if nproc < 1:
        raise ValueError(f"--nproc must be at least 1, got {nproc}")
    if environment() is not None:
        raise ValueError(
            "--nproc starts its own processes, but this one is already part of a "
            "distributed run (WORLD_SIZE is set, e.g. by torchrun): leave --nproc out"
        )
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    launch = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"histoview-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # a free port (as torchrun --standalone)
        max_restarts=0,
        start_method="spawn",
    )
    out_dir = Path(config["output_dir"])
    elastic = logging.getLogger("torch.distributed.elastic")
    level = elastic.level
    elastic.setLevel(logging.CRITICAL)  # its log of stopping workers: our one line instead
    try:
        outputs = elastic_launch(launch, _process_main)(config, resume, source, progress)
    except ChildFailedError as exc:
        raise ProcessFailed(_failure_line(exc, out_dir)) from None
    except SignalException as exc:  # this process was interrupted (Ctrl-C, SIGTERM)
        from histoview.training.resume import describe_run_state

        raise ProcessFailed(
            f"stopped by {exc.sigval.name}; {describe_run_state(out_dir)}; run the same "
            "command again to resume"
        ) from None
    finally:
        elastic.setLevel(level)
    return outputs[0]


def _failure_line(exc, out_dir: Path) -> str:
    """The user's line for a ChildFailedError: the failure that caused the others."""
    from histoview.training.resume import describe_run_state

    failures = sorted(exc.failures.items(), key=lambda item: _cause_order(*item))
    rank, failure = failures[0]
    kind, text = _recorded_error(failure)
    if kind == _RankError.__name__:
        return text if rank == 0 else f"rank {rank}: {text}"
    if failure.exitcode < 0:
        how = f"signal {-failure.exitcode}, {failure.signal_name()}"
    elif kind == _PeerLost.__name__:
        how = f"lost its peers: {text}"
    else:
        how = f"exit code {failure.exitcode}"
    return (
        f"rank {rank} died ({how}); {describe_run_state(out_dir)}; run the same command "
        "again to resume"
    )


def _cause_order(rank: int, failure) -> tuple:
    """Sort key: errors and deaths before the peers they took down, then by time."""
    kind, _ = _recorded_error(failure)
    consequence = kind == _PeerLost.__name__ or failure.exitcode == -15  # SIGTERM: stopped
    return (consequence, failure.timestamp, rank)


def _recorded_error(failure) -> tuple[str, str]:
    """(exception class name, message) that a process recorded before it failed, or
    ("", "") when it recorded none (killed by a signal)."""
    message = failure.message
    if isinstance(message, dict):
        message = message.get("message", "")
    if not isinstance(message, str) or ": " not in message:
        return "", ""
    kind, _, text = message.partition(": ")
    if kind not in (_RankError.__name__, _PeerLost.__name__):
        return "", ""
    return kind, text


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and exc.args:
        text = str(exc.args[0])
    elif isinstance(exc, OSError) and exc.errno is not None and exc.filename is not None:
        text = f"{exc.filename}: {exc.strerror}"
    else:
        text = str(exc) or type(exc).__name__
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())
