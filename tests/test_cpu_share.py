"""Torch's thread count in the viewer's workers (histoview.viewer._cpu_share): one core left to
the event loop while an explanation computes on the CPU, every core for training, and nothing
left changed in a worker thread between its steps."""

from __future__ import annotations

import threading

import pytest

torch = pytest.importorskip("torch")

from histoview.viewer._cpu_share import (  # noqa: E402
    cores,
    original_threads,
    threads_for,
    torch_threads_per_step,
)


def _in_a_thread(func):
    """``func()`` run in a fresh thread, as napari runs a worker; its return value."""
    out = {}

    def run():
        try:
            out["value"] = func()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            out["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    t.join(60)
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_each_step_computes_on_one_core_fewer_and_the_count_is_back_between_steps():
    """What the explain and compare docks run: inside every step torch has one core fewer
    (at least one); whenever the worker has yielded, the thread's count is the process's
    again; values sent in and the return value pass through."""
    n = original_threads()
    assert threads_for(True) == max(1, min(n, cores() - 1))

    def work(x):
        seen = [torch.get_num_threads()]
        got = yield "first"
        seen.append(torch.get_num_threads())
        got2 = yield got * 2
        seen.append(torch.get_num_threads())
        return seen, got2

    def drive():
        gen = torch_threads_per_step(work, device="cpu")(1)
        between = []
        first = gen.send(None)
        between.append(torch.get_num_threads())
        second = gen.send(21)
        between.append(torch.get_num_threads())
        with pytest.raises(StopIteration) as stop:
            gen.send("last")
        between.append(torch.get_num_threads())
        return first, second, stop.value.value, between

    first, second, (seen, last), between = _in_a_thread(drive)
    assert (first, second, last) == ("first", 42, "last")
    assert seen == [threads_for(True)] * 3
    assert between == [n] * 3


def test_an_error_in_a_step_restores_the_count_and_reaches_the_caller():
    def work():
        yield 1
        raise ValueError("bad input: the file says so")

    def drive():
        gen = torch_threads_per_step(work, device="cpu")()
        next(gen)
        with pytest.raises(ValueError, match="bad input"):
            next(gen)
        return torch.get_num_threads()

    assert _in_a_thread(drive) == original_threads()


def test_training_gets_every_core_in_a_thread_that_first_computed_with_one_fewer():
    """A pool thread that first computed while another worker had lowered the count keeps
    that count (OpenMP's is per thread); the training dock's worker sets every core."""
    n = original_threads()

    def work():
        yield torch.get_num_threads()

    def drive():
        torch.set_num_threads(1)  # as if this thread had started during another's step
        try:
            return next(torch_threads_per_step(work, leave_one=False)())
        finally:
            torch.set_num_threads(n)

    assert _in_a_thread(drive) == n
