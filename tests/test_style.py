"""One code style: ``ruff format --check`` and ``ruff check`` pass on everything we write."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PATHS = ["src", "tests", "benchmarks", "scripts", "training"]


def _ruff() -> list[str]:
    exe = Path(sys.executable).with_name("ruff")
    if exe.exists():
        return [str(exe)]
    if shutil.which("ruff"):
        return ["ruff"]
    pytest.skip("ruff is not installed (pip install -e '.[testing]')")


@pytest.mark.parametrize("command", [["format", "--check"], ["check"]], ids=["format", "lint"])
def test_ruff(command):
    out = subprocess.run([*_ruff(), *command, *PATHS], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


def test_no_module_is_far_past_the_size_where_it_holds_two_ideas():
    sizes = {
        p.relative_to(REPO): len(p.read_text().splitlines())
        for p in (REPO / "src" / "histoview").rglob("*.py")
    }
    big = {str(p): n for p, n in sizes.items() if n > 450}
    assert not big, f"modules over 450 lines: {big}"
