"""``histoview train CONFIG --nproc 2`` on the CPU (Gloo): the same run as one process with the
whole batch, checkpoints written once (rank 0), a killed rank stops the run with one line and
an intact checkpoint, and the same command resumes it.

The runs are processes the module starts with its first test, all at once: most of a run is
starting (importing torch, the rendezvous), and the runs of the two tests overlap."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from _background import Background

pytest.importorskip("torch")

#: 2 processes x batch 2 and 1 process x batch 4 differ by float rounding in the reduction
#: of the gradients (measured: 1e-7 on the losses); the bound leaves room for other BLAS
TOLERANCE = 1e-4


def _config(tmp_path, out: str, *, batch_size: int, epochs: int) -> dict:
    return {
        "model": "test_cnn",
        "data": {"type": "phantom", "task": "binary", "n_per_class": 4, "seed": 3},
        "split": {"fractions": [0.5, 0.25, 0.25]},
        "train": {"epochs": epochs, "batch_size": batch_size, "lr": 0.01, "device": "cpu"},
        "output_dir": str(tmp_path / out),
    }


def _train(tmp_path, cfg: dict, *extra: str, name: str = "cfg.yaml", env=None):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.run(
        [sys.executable, "-m", "histoview.cli", "train", str(path), *extra],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


@pytest.fixture(scope="module", autouse=True)
def background(request, tmp_path_factory):
    with Background(request, lanes=3) as bg:
        if bg.wanted("test_a_killed_rank_stops_the_run_and_the_command_resumes_it"):
            bg.start("killed", _kill_a_rank_and_resume, tmp_path_factory.mktemp("killed"), bg.env)
        if bg.wanted("test_two_processes_train_as_one_with_the_whole_batch"):
            tmp = tmp_path_factory.mktemp("one-two")
            one = _config(tmp, "one", batch_size=4, epochs=3)
            two = _config(tmp, "two", batch_size=2, epochs=3)
            bg.start("one", _train, tmp, one, name="one.yaml", env=bg.env)
            bg.start("two", _train, tmp, two, "--nproc", "2", name="two.yaml", env=bg.env)
            bg.put("one-two", tmp)
        yield bg


def _history(folder) -> list[dict]:
    with open(folder / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_two_processes_train_as_one_with_the_whole_batch(background):
    tmp_path = background.result("one-two")
    one = background.result("one")  # batch 4 on one process
    assert one.returncode == 0, one.stderr
    two = background.result("two")  # batch 2 on each of two
    assert two.returncode == 0, two.stderr
    assert "training on 2 processes (gloo" in two.stdout + two.stderr
    # rank 0 alone wrote: one history row and one line of output per epoch
    assert (two.stdout + two.stderr).count("epoch 2/3") == 1
    h1, h2 = _history(tmp_path / "one"), _history(tmp_path / "two")
    assert len(h1) == len(h2) == 3
    for a, b in zip(h1, h2, strict=True):
        assert float(b["train_loss"]) == pytest.approx(float(a["train_loss"]), abs=TOLERANCE)
    r1 = json.loads((tmp_path / "one" / "report.json").read_text())
    r2 = json.loads((tmp_path / "two" / "report.json").read_text())
    assert r2["test"]["n"] == r1["test"]["n"] == 2  # the test split evaluated whole, not shared
    assert r2["test"]["loss"] == pytest.approx(r1["test"]["loss"], abs=TOLERANCE)
    assert r2["test"]["accuracy"] == r1["test"]["accuracy"]
    assert not [p.name for p in (tmp_path / "two").iterdir() if ".tmp" in p.name]


@pytest.mark.slow
def test_a_killed_rank_stops_the_run_and_the_command_resumes_it(background):
    pytest.importorskip("psutil")
    background.result("killed")


def _kill_a_rank_and_resume(tmp_path, env):
    """The killed-rank test, run by the module's background (its assertions raise there)."""
    import psutil

    cfg = _config(tmp_path, "killed", batch_size=2, epochs=60)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen(
        [sys.executable, "-m", "histoview.cli", "train", str(path), "--nproc", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    state = tmp_path / "killed" / "train_state.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (
        state.exists() and json.loads(state.read_text())["epoch"] >= 2
    ):
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    ranks = [p for p in psutil.Process(proc.pid).children(recursive=True) if "python" in p.name()]
    assert len(ranks) >= 2, ranks
    os.kill(ranks[-1].pid, signal.SIGKILL)  # one rank dies mid-run
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    last_line = out.strip().splitlines()[-1]
    assert "rank" in last_line and "resume" in last_line, out[-2000:]
    epoch_at_kill = json.loads(state.read_text())["epoch"]
    assert 2 <= epoch_at_kill < 60
    from histoview.models.checkpoint import read_metadata

    assert read_metadata(tmp_path / "killed" / "last.safetensors")["epoch"] == epoch_at_kill
    cfg["train"]["epochs"] = epoch_at_kill + 1
    again = _train(tmp_path, cfg, "--nproc", "2", env=env)
    assert again.returncode == 0, again.stderr
    assert "resum" in (again.stdout + again.stderr).lower()
    assert read_metadata(tmp_path / "killed" / "last.safetensors")["epoch"] == epoch_at_kill + 1
    assert len(_history(tmp_path / "killed")) == epoch_at_kill + 1
