"""Finding a display: start a private Xvfb when there is none (Linux servers, CI)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager


def has_display() -> bool:
    if sys.platform != "linux":
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


@contextmanager
def virtual_display(width: int = 1600, height: int = 1000):
    """Run the block under a private Xvfb server (OpenGL through Mesa's llvmpipe)."""
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        raise RuntimeError(
            "no display and no Xvfb: install Xvfb and Mesa (Debian: apt-get install xvfb "
            "libgl1-mesa-dri libglx-mesa0) or run under xvfb-run"
        )
    for num in range(99, 140):
        if not os.path.exists(f"/tmp/.X{num}-lock"):
            break
    proc = subprocess.Popen(
        [xvfb, f":{num}", "-screen", "0", f"{width}x{height}x24", "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    old = os.environ.get("DISPLAY")
    os.environ["DISPLAY"] = f":{num}"
    try:
        for _ in range(50):  # wait for the server socket
            if os.path.exists(f"/tmp/.X11-unix/X{num}") or proc.poll() is not None:
                break
            time.sleep(0.1)
        if proc.poll() is not None:
            raise RuntimeError(f"Xvfb failed to start on display :{num}")
        yield f":{num}"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
        if old is None:
            os.environ.pop("DISPLAY", None)
        else:
            os.environ["DISPLAY"] = old
