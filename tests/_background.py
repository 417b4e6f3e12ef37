"""Slow, independent work (mostly subprocesses) that a test module starts when its first test
starts, so that the waiting for it overlaps the module's other tests on the other core.

A module declares its jobs in a module-scoped autouse fixture::

    @pytest.fixture(scope="module", autouse=True)
    def background(request):
        with Background(request) as bg:
            if bg.wanted("test_x"):  # test_x is among the tests run
                bg.start("x", _run_x, ...)
            yield bg

(processes with ``env=bg.env``), and the test takes its result with ``background.result("x")``, which re-raises what the
job raised. Jobs run one after the other on ``lanes`` threads (one by default: the pytest
process keeps the other core), in the order they were started. Leaving the ``with`` waits for
every job, so that no process outlives the module.
"""

from __future__ import annotations

import os
import subprocess
from concurrent.futures import Future, ThreadPoolExecutor


class Background:
    def __init__(self, request, lanes: int = 1):
        self._names = {item.originalname or item.name for item in request.session.items}
        self._pool = ThreadPoolExecutor(lanes, thread_name_prefix="tests-background")
        self._jobs: dict[str, Future] = {}
        # the environment of the jobs' processes, fixed now (the tests running meanwhile may
        # change os.environ), with their own per-user model library and cache, as conftest's
        # _user_data_dir gives each test
        tmp = request.getfixturevalue("tmp_path_factory")
        self.env = {
            **os.environ,
            "HISTOVIEW_DATA_DIR": str(tmp.mktemp("background-user-data")),
            "HISTOVIEW_CACHE_DIR": str(tmp.mktemp("background-cache")),
        }

    def wanted(self, test: str) -> bool:
        """Whether ``test`` (a test function's name) is among the tests of this session."""
        return test in self._names

    def start(self, name: str, fn, /, *args, **kwargs) -> None:
        """Queue ``fn(*args, **kwargs)`` under ``name``."""
        self._jobs[name] = self._pool.submit(fn, *args, **kwargs)

    def put(self, name: str, value) -> None:
        """Keep ``value`` under ``name`` (what the jobs' test needs to know of them)."""
        self._jobs[name] = Future()
        self._jobs[name].set_result(value)

    def run(self, name: str, argv: list[str], /, **kwargs) -> None:
        """Queue ``subprocess.run(argv, capture_output=True, text=True, env=self.env, ...)``."""
        kwargs = {"capture_output": True, "text": True, "env": self.env, **kwargs}
        self.start(name, subprocess.run, argv, **kwargs)

    def result(self, name: str, timeout: float = 900):
        return self._jobs[name].result(timeout)

    def __enter__(self) -> Background:
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown(wait=True)
