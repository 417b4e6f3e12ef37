"""A training run killed (SIGKILL) at any instant resumes from its last complete epoch.

Runs are real: a tiny ``test_cnn`` trained by :func:`histoview.training.run.train_from_config`
in a child process, killed with SIGKILL. To kill many runs in seconds, a helper process
imports torch and histoview once and forks one child per run (``_ZYGOTE``); it runs no
torch operation itself, so the children start clean. Each child uses one torch thread,
so a resumed run must end with the very weights of an uninterrupted one.

* random kills: each kill lands at a random instant of a run that resumes what the previous
  kill left (reading data, training, saving, repairing, the final test); every resume must
  succeed and the finished run must equal the uninterrupted one;
* kills inside the save: a child dies just before, or just after, a rename of the run
  folder's files (those of epoch 2 and of the end by default, every one with ``slow``),
  then a resume must finish it.

Two helpers (and so two runs at a time, one a core) share the work: the kills as two chains,
the renames split between them; the runs killed at a rename are shared by the two tests
that kill there.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histoview.models.checkpoint import load_state_dict, read_metadata

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")

#: epoch 2 is the first with a previous resume unit, epoch 3 the first to replace one
EPOCHS = 3

_ZYGOTE = r"""
import json, os, sys
import torch
import torch._dynamo  # what building an optimizer imports (sympy...): once, here
import safetensors.torch
import histoview.io
import histoview.models  # registers the models
import histoview.models.sidecar
import histoview.training.engine
import histoview.training.run as run

def arm(job):
    # die (os._exit, as a kill) at the n-th rename into the run folder, before or after it
    import histoview.io.files as files
    out, state = os.path.realpath(job["config"]["output_dir"]), {"n": 0}
    real = os.replace

    def replace(src, dst, *a, **k):
        if os.path.dirname(os.path.realpath(dst)) != out:
            return real(src, dst, *a, **k)
        state["n"] += 1
        if job.get("count"):
            with open(job["count"], "a") as f:
                f.write(os.path.basename(dst) + "\n")
        if state["n"] == job.get("die_at") and job["when"] == "before":
            os._exit(137)
        real(src, dst, *a, **k)
        if state["n"] == job.get("die_at") and job["when"] == "after":
            os._exit(137)

    files.os.replace = replace

for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        err = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(err, 2)
        code = 0
        try:
            torch.set_num_threads(1)
            arm(job)
            run.train_from_config(job["config"])
        except BaseException as exc:
            import traceback
            traceback.print_exc()
            code = 3
        sys.stderr.flush()
        os._exit(code)
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"status": os.waitstatus_to_exitcode(status)}), flush=True)
"""


class Zygote:
    """The forking helper process: ``start(job)`` forks a training child, ``wait()`` its
    exit code (-9 when killed, 137 when it died on purpose, 3 on an exception)."""

    def __init__(self, tmp: Path, name: str):
        self.tmp, self.name = tmp, name
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _ZYGOTE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.jobs = 0

    def start(self, config: dict, **job) -> int:
        self.jobs += 1
        self.log = self.tmp / f"child-{self.name}-{self.jobs}.log"
        job = {"config": config, "log": str(self.log), "when": "never", **job}
        self.proc.stdin.write(json.dumps(job) + "\n")
        line = self.proc.stdout.readline()
        assert line, "the forking helper died"
        return json.loads(line)["pid"]

    def wait(self) -> int:
        return json.loads(self.proc.stdout.readline())["status"]

    def run(self, config: dict, **job) -> int:
        self.start(config, **job)
        return self.wait()

    def errors(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def close(self) -> None:
        if not self.proc.stdin.closed:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume-kill")
    rng = np.random.default_rng(0)
    for cls, colour in (("pale", (230, 200, 220)), ("dark", (90, 40, 120))):
        (tmp / "data" / cls).mkdir(parents=True)
        for i in range(6):
            img = np.clip(np.array(colour) + rng.normal(0, 30, (32, 32, 3)), 0, 255)
            Image.fromarray(img.astype(np.uint8)).save(tmp / "data" / cls / f"{i}.png")
    zygotes = [Zygote(tmp, "a"), Zygote(tmp, "b")]  # b imports while a runs
    zygote = zygotes[0]
    reference = _config(tmp, "reference")
    assert zygote.run(reference) == 0, zygote.errors()  # (waits for the helper's imports)
    t0 = time.monotonic()
    assert zygote.run(_config(tmp, "timing")) == 0, zygote.errors()
    duration = time.monotonic() - t0  # of a whole run, from the fork
    # the kills at renames already made and checked, by (rename number, before/after): the
    # error they raised, or None
    at_renames: dict = {}
    yield tmp, zygotes, _final_state(Path(reference["output_dir"])), duration, at_renames
    for zygote in zygotes:
        zygote.proc.stdin.close()  # both exit at once
    for zygote in zygotes:
        zygote.close()


def _on_both(zygotes, work, items) -> list:
    """``work(zygote, item)`` for each item, the items split between the two helpers, which
    run at once; the results in the order of the items split (a's, then b's)."""
    parts = [items[0::2], items[1::2]]
    with ThreadPoolExecutor(2) as pool:
        futures = [
            pool.submit(lambda z, part: [work(z, item) for item in part], zygote, part)
            for zygote, part in zip(zygotes, parts, strict=True)
        ]
        return [result for future in futures for result in future.result()]


def _config(tmp: Path, out: str) -> dict:
    return {
        "model": "test_cnn",
        "data": {"type": "folder", "root": str(tmp / "data")},
        "split": {"fractions": [0.5, 0.25, 0.25]},
        "train": {"epochs": EPOCHS, "batch_size": 2, "lr": 0.01, "device": "cpu"},
        "output_dir": str(tmp / out),
    }


def _final_state(out: Path) -> dict:
    """What a finished run leaves: its weights, history and checkpoints, all verified."""
    last, last_meta = load_state_dict(out / "last.safetensors")  # hash and finiteness checked
    best, best_meta = load_state_dict(out / "best.safetensors")
    report = json.loads((out / "report.json").read_text())
    left = sorted(p.name for p in out.iterdir() if p.name.startswith("."))
    assert not left, f"temporary files left behind: {left}"
    return {
        "last": last,
        "last_epoch": last_meta["epoch"],
        "best": best,
        "best_epoch": best_meta["epoch"],
        "test": "test" in best_meta["metrics"],
        "history": [(h["epoch"], round(h["train_loss"], 6)) for h in report["history"]],
    }


def _same_run(state: dict, reference: dict) -> None:
    assert state["history"] == reference["history"]  # every epoch once, in order, same losses
    assert [e for e, _ in state["history"]] == list(range(1, EPOCHS + 1))
    assert state["last_epoch"] == EPOCHS and state["test"]
    assert state["best_epoch"] == reference["best_epoch"]
    for key in ("last", "best"):
        assert state[key].keys() == reference[key].keys()
        for name, value in reference[key].items():
            assert np.array_equal(state[key][name].numpy(), value.numpy()), (key, name)


def _kill_at_random(setup, kills: int, seeds: tuple[int, int]) -> None:
    """``kills`` kills as two chains of runs, one per helper, at once."""
    tmp, zygotes, reference, duration, _ = setup
    chains = [(seed, kills // 2) for seed in seeds]
    epochs_seen = sum(
        _on_both(zygotes, lambda z, chain: _chain(z, tmp, reference, duration, *chain), chains),
        [],
    )
    assert len(epochs_seen) == kills
    assert max(epochs_seen) >= 1  # some kills came after an epoch had been saved


def _chain(zygote, tmp, reference, duration, seed: int, kills: int) -> list[int]:
    rng = random.Random(seed)
    chain, done_runs, epochs_seen = 0, 0, []
    config = _config(tmp, f"random-{seed}-{chain}")
    for _ in range(kills):
        pid = zygote.start(config)
        time.sleep(rng.uniform(0, duration * 1.1))
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:  # it had finished
            pass
        status = zygote.wait()
        assert status in (0, -signal.SIGKILL), f"a resume failed:\n{zygote.errors()}"
        state = Path(config["output_dir"]) / "train_state.json"
        epochs_seen.append(json.loads(state.read_text())["epoch"] if state.exists() else 0)
        if status == 0:  # finished before the kill: check it, then a new run
            _same_run(_final_state(Path(config["output_dir"])), reference)
            done_runs += 1
            chain += 1
            config = _config(tmp, f"random-{seed}-{chain}")
    # the last run, resumed to its end
    assert zygote.run(config) == 0, zygote.errors()
    _same_run(_final_state(Path(config["output_dir"])), reference)
    return epochs_seen


def test_runs_killed_at_random_instants_resume(setup):
    _kill_at_random(setup, kills=20, seeds=(1, 3))


@pytest.mark.slow
def test_runs_killed_at_100_random_instants_resume(setup):
    _kill_at_random(setup, kills=100, seeds=(2, 4))


def _renames(setup) -> list[str]:
    """The names renamed into the run folder by one whole run, in order (counted once)."""
    tmp, zygotes, _, _, at_renames = setup
    if "names" not in at_renames:
        counted = _config(tmp, "count")
        names_file = tmp / "renames.txt"
        assert zygotes[0].run(counted, count=str(names_file)) == 0, zygotes[0].errors()
        at_renames["names"] = names_file.read_text().split()
    return at_renames["names"]


def _die_at_rename(zygote, tmp, reference, names, n: int, when: str) -> str | None:
    """Die just before or after rename ``n``, resume; what went wrong, or None."""
    name = names[n]
    config = _config(tmp, f"die-{n}-{when}")
    try:
        assert zygote.run(config, die_at=n + 1, when=when) == 137, zygote.errors()
        out = Path(config["output_dir"])
        if when == "before":  # killed mid-write: the temporary is there, the name is not new
            assert any(p.name.startswith(f".{name}.") for p in out.iterdir()), name
        assert zygote.run(config) == 0, f"rename {n} ({name}, {when}):\n{zygote.errors()}"
        _same_run(_final_state(out), reference)
    except AssertionError as exc:
        return f"rename {n} ({name}, {when}): {exc}"
    return None


def _kill_inside_saves(setup, every: bool) -> None:
    tmp, zygotes, reference, _, at_renames = setup
    names = _renames(setup)
    # every epoch: last pair, the resume unit (its previous, its .json), best pair if better;
    # at the end the best pair again (with test metrics), report.json, history.csv
    starts = [i for i, name in enumerate(names) if name == "last.safetensors"]
    assert len(starts) == EPOCHS and names[-2:] == ["report.json", "history.csv"]
    assert "train_state.safetensors" in names[starts[1] : starts[2]]
    # by default epoch 2 (the first with a previous unit) and the end
    tail = range(len(names) - 4, len(names))
    positions = range(len(names)) if every else [*range(starts[1], starts[2]), *tail]
    kills = [(n, when) for n in positions for when in ("before", "after")]
    todo = [kill for kill in kills if kill not in at_renames]
    outcomes = _on_both(
        zygotes, lambda z, kill: _die_at_rename(z, tmp, reference, names, *kill), todo
    )
    at_renames.update(zip(todo[0::2] + todo[1::2], outcomes, strict=True))
    failed = [at_renames[kill] for kill in kills if at_renames[kill]]
    assert not failed, "\n".join(failed)


def test_runs_killed_inside_the_saves_resume(setup):
    _kill_inside_saves(setup, every=False)


@pytest.mark.slow
def test_runs_killed_inside_every_save_resume(setup):
    _kill_inside_saves(setup, every=True)


def test_a_damaged_newest_unit_falls_back_to_the_previous(setup):
    tmp, zygotes, reference, _, _ = setup
    zygote = zygotes[0]
    config = _config(tmp, "damaged")
    config["train"]["epochs"] = 2
    assert zygote.run(config) == 0, zygote.errors()
    out = Path(config["output_dir"])
    unit = out / "train_state.safetensors"
    data = bytearray(unit.read_bytes())
    data[-3] ^= 0xFF  # a flipped bit in the tensors
    # replace, not edit in place: the previous unit is a hard link to the old file
    unit.unlink()
    unit.write_bytes(bytes(data))
    config["train"]["epochs"] = EPOCHS
    assert zygote.run(config) == 0, zygote.errors()
    _same_run(_final_state(out), reference)
    assert read_metadata(out / "last.safetensors")["epoch"] == EPOCHS
