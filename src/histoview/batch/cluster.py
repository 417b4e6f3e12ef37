"""The Dask client a batch runs on: an embedded LocalCluster, or an existing scheduler.

:func:`batch_client` yields a ``distributed.Client``:

* by default, an embedded ``LocalCluster(n_workers=N, threads_per_worker=1, processes=True)``:
  one worker per CUDA GPU (each pinned to its GPU: :class:`WorkerSetup` sets
  ``CUDA_VISIBLE_DEVICES`` in the worker before CUDA starts, by the worker's name 0..N-1),
  else 2 CPU workers; ``workers`` overrides N. Torch gets ``cores // N`` CPU threads in each
  (passed with the settings, :attr:`~histoview.batch.keys.BatchSettings.torch_threads`).
  The scheduler allows ``retries`` worker deaths per slide
  (``distributed.scheduler.allowed-failures``), workers are not daemonic, so a slide's
  tile loaders can start processes, and they keep glibc's adaptive memory trimming (not the
  nanny's ``MALLOC_TRIM_THRESHOLD_``, which slows tensor-heavy tasks);
* with ``scheduler`` (``tcp://host:8786``), ``Client(scheduler)``: the same tasks on a cluster
  started elsewhere (``dask scheduler`` / ``dask worker``, dask-jobqueue, Kubernetes;
  ``docs/cluster.md``). Its workers are as they were started: one per GPU, one thread each.

:func:`dashboard_line` says where Dask's dashboard is, when it is served (it needs bokeh).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from distributed.diagnostics.plugin import WorkerPlugin

#: CPU workers of the embedded cluster when there is no GPU
CPU_WORKERS = 2


class WorkerSetup(WorkerPlugin):
    """Worker plugin: pins worker ``name`` to GPU ``gpus[name % len(gpus)]`` (embedded cluster).

    Registered with the client, so a worker the nanny restarts after a crash gets it too.
    """

    name = "histoview-worker-setup"
    idempotent = True

    def __init__(self, gpus: list[int]):
        self.gpus = list(gpus)

    def setup(self, worker) -> None:
        if not self.gpus:
            return
        try:
            index = int(worker.name)
        except (TypeError, ValueError):
            index = abs(hash(worker.name))
        os.environ["CUDA_VISIBLE_DEVICES"] = str(self.gpus[index % len(self.gpus)])

    def teardown(self, worker) -> None:
        pass


def cuda_gpus() -> list[int]:
    """The CUDA devices this machine shows (none without torch's CUDA)."""
    try:
        import torch

        return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    except Exception:  # no usable CUDA runtime: CPU workers
        return []


def default_workers(gpus: list[int]) -> int:
    return len(gpus) or CPU_WORKERS


def torch_threads(workers: int) -> int:
    """CPU threads for torch in each of ``workers`` workers on this machine."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


@contextmanager
def batch_client(
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    retries: int = 2,
    gpus: list[int] | None = None,
) -> Iterator:
    """A ``distributed.Client`` for a batch (module docstring); closed (and the embedded
    cluster shut down) on exit."""
    import dask
    from distributed import Client, LocalCluster

    config = {
        "distributed.scheduler.allowed-failures": int(retries),
        "distributed.worker.daemon": False,
        # Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536: glibc then hands
        # freed memory back to the system at once, and every batch's tensors are paged in
        # anew (measured: the A-MIL engine 25-45 % slower per tile); glibc's own adaptive
        # threshold is left in place
        "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    }
    with dask.config.set(config):
        if scheduler:
            try:
                client = Client(scheduler, timeout="30s")
            except OSError as exc:
                raise OSError(f"{scheduler}: cannot reach the Dask scheduler ({exc})") from None
            try:
                yield client
            finally:
                client.close()
            return
        gpus = cuda_gpus() if gpus is None else gpus
        n = workers or default_workers(gpus)
        if n < 1:
            raise ValueError(f"--workers {n}: give at least 1")
        cluster = LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0" if has_dashboard() else None,
            silence_logs=logging.ERROR,
        )
        try:
            client = Client(cluster)
            try:
                client.register_plugin(WorkerSetup(gpus))
                yield client
            finally:
                client.close()
        finally:
            cluster.close()


def has_dashboard() -> bool:
    """Whether Dask can serve its dashboard here (bokeh installed)."""
    return importlib.util.find_spec("bokeh") is not None


def dashboard_line(client) -> str:
    """``dashboard: <link>``, or why there is none."""
    try:
        services = client.scheduler_info(n_workers=0).get("services", {})
    except TypeError:  # older distributed: no n_workers
        services = client.scheduler_info().get("services", {})
    if "dashboard" in services:
        return f"dashboard: {client.dashboard_link}"
    return "dashboard: not served (Dask's dashboard needs bokeh>=3.1)"


def workers_line(client) -> str:
    """How many workers and threads the scheduler has."""
    info = client.scheduler_info(n_workers=-1)
    workers = info.get("workers", {})
    threads = sum(w.get("nthreads", 0) for w in workers.values())
    return f"{len(workers)} workers, {threads} threads ({info.get('address', '')})"
