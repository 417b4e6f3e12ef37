"""``histoview batch`` on real Dask clusters (issue 18, "what it must show"):

* the command over a folder of 4 phantom slides with ``--workers 2`` (an embedded
  LocalCluster) writes every slide's maps, identical to explaining each slide directly, and
  a complete summary, although one worker process is killed (``kill -9``) while it explains a
  slide; running it again submits nothing;
* the same through ``--scheduler`` at a separately started ``dask scheduler`` and two
  ``dask worker`` processes, with a CSV list that also names a corrupt slide: that slide is
  reported failed, the others are done, with the same outputs.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from histoview.batch.task import TEMP_DIR
from histoview.cli import main

pytestmark = pytest.mark.slow

N_SLIDES = 4
ARGS = ["--method", "amil", "--device", "cpu", "--tile-workers", "0", "--no-feature-cache"]


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    """4 small phantom slides in a folder, and each one explained directly (the reference)."""
    import torch

    from histoview.explain.slide_run import explain_slide
    from histoview.preprocessing.phantom_slide import write_phantom_slide

    root = tmp_path_factory.mktemp("batch-slides")
    folder = root / "slides"
    paths = [
        write_phantom_slide(folder / f"s{i}.tif", size=1024, seed=10 + i).path
        for i in range(N_SLIDES)
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a worker of 2 on these 2 cores
    try:
        reference = {}
        for path in paths:
            out = root / "serial" / path.stem
            result = explain_slide(
                path, "amil", out_dir=out, device="cpu", workers=0, feature_cache="off"
            )
            reference[path.stem] = (result.summary, tifffile.imread(result.outputs["map"]))
    finally:
        torch.set_num_threads(threads)
    return folder, reference


def _assert_like_serial(out: Path, reference: dict, names, *, exact: bool = True) -> None:
    for name in names:
        summary, amap = reference[name]
        folder = out / name
        assert sorted(p.name for p in folder.iterdir()) == [
            "batch.json",
            f"{name}.amil.json",
            f"{name}.amil.ome.tif",
            f"{name}.tissue.ome.tif",
        ]
        written_map = tifffile.imread(folder / f"{name}.amil.ome.tif")
        if exact:
            np.testing.assert_array_equal(written_map, amap)
        else:  # another process's BLAS set-up may round a float32 sum in its last bit
            np.testing.assert_allclose(written_map, amap, rtol=1e-5, atol=1e-6)
        written = json.loads((folder / f"{name}.amil.json").read_text())
        assert written["prediction"] == summary["prediction"]
        if exact:
            assert written["probabilities"] == summary["probabilities"]
        for cls, p in summary["probabilities"].items():
            assert written["probabilities"][cls] == pytest.approx(p, rel=1e-5, abs=1e-7)


def _summary(out: Path) -> dict:
    return {row["name"]: row for row in json.loads((out / "summary.json").read_text())["slides"]}


def test_batch_survives_a_killed_worker_and_a_rerun_does_nothing(slides, tmp_path, capsys):
    folder, reference = slides
    out = tmp_path / "out"
    argv = ["batch", str(folder), "--out", str(out), "--workers", "2", "--retries", "2", *ARGS]
    outcome = {}
    runner = threading.Thread(target=lambda: outcome.setdefault("rc", main(argv)))
    runner.start()
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and runner.is_alive() and time.monotonic() < deadline:
        for attempt in (out / TEMP_DIR).glob("*.*.*") if (out / TEMP_DIR).is_dir() else []:
            name, pid, _ = attempt.name.rsplit(".", 2)
            if pid.isdigit() and int(pid) != os.getpid() and attempt.exists():
                os.kill(int(pid), signal.SIGKILL)  # the worker dies mid-slide
                killed = (name, int(pid))
                break
        time.sleep(0.02)
    runner.join(timeout=240)
    assert not runner.is_alive()
    assert killed is not None, "no slide was seen running"
    assert outcome["rc"] == 0
    names = [f"s{i}" for i in range(N_SLIDES)]
    assert sorted(p.name for p in out.iterdir()) == sorted([*names, "summary.csv", "summary.json"])
    _assert_like_serial(out, reference, names)
    rows = _summary(out)
    assert sorted(rows) == names and {r["status"] for r in rows.values()} == {"done"}
    rerun = json.loads((out / killed[0] / "batch.json").read_text())
    assert not rerun["worker"].endswith(f":{killed[1]}")  # it ran again on a live worker
    assert len((out / "summary.csv").read_text().splitlines()) == N_SLIDES + 1

    # the same command again: every slide skipped, no cluster started, outputs untouched
    import histoview.batch.cluster as cluster

    def no_cluster(**kwargs):
        raise AssertionError("a cluster was started with nothing to do")

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.tif")}
    capsys.readouterr()
    cluster_before, cluster.batch_client = cluster.batch_client, no_cluster
    try:
        assert main(argv) == 0
    finally:
        cluster.batch_client = cluster_before
    assert "0 done, 4 skipped (done before), 0 failed" in capsys.readouterr().out
    assert {r["status"] for r in _summary(out).values()} == {"skipped"}
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.tif")} == stamps


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dask_cluster(tmp_path):
    """``dask scheduler`` and two ``dask worker`` processes (one thread each), torn down after."""
    from distributed import Client

    dask = str(Path(sys.executable).parent / "dask")
    address = f"tcp://127.0.0.1:{_free_port()}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    logs = open(tmp_path / "dask.log", "w")
    port = address.rsplit(":", 1)[1]
    procs = [
        subprocess.Popen(
            [dask, "scheduler", "--host", "127.0.0.1", "--port", port, "--no-dashboard"],
            stdout=logs,
            stderr=subprocess.STDOUT,
            env=env,
        )
    ]
    try:
        for _ in range(2):
            procs.append(
                subprocess.Popen(
                    [dask, "worker", address, "--nworkers", "1", "--nthreads", "1"]
                    + ["--no-nanny", "--no-dashboard"],
                    stdout=logs,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            )
        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        logs.close()


def test_batch_on_an_existing_scheduler_reports_a_corrupt_slide(
    slides, dask_cluster, tmp_path, capsys
):
    folder, reference = slides
    corrupt = tmp_path / "broken.tif"
    corrupt.write_bytes(b"II*\x00" + bytes(range(256)) * 8)
    listing = folder / "cohort.csv"
    listing.write_text(
        "path,label\n"
        + "".join(f"s{i}.tif,{'benign' if i % 2 else 'invasive'}\n" for i in range(N_SLIDES))
        + f"{corrupt},unknown\n"
    )
    out = tmp_path / "out"
    argv = ["batch", str(listing), "--out", str(out), "--scheduler", dask_cluster, *ARGS]
    assert main(argv) == 1  # one slide failed
    text = capsys.readouterr().out
    assert "4 done, 0 skipped (done before), 1 failed" in text
    assert f"failed: {corrupt}: " in text
    names = [f"s{i}" for i in range(N_SLIDES)]
    _assert_like_serial(out, reference, names, exact=False)
    rows = _summary(out)
    assert [rows[n]["status"] for n in names] == ["done"] * N_SLIDES
    assert rows["s1"]["label"] == "benign" and rows["s0"]["label"] == "invasive"
    assert rows["broken"]["status"] == "failed" and "broken.tif" in rows["broken"]["error"]
    assert not (out / "broken").exists() and not (out / TEMP_DIR).exists()
