"""Work-arounds for the environments napari runs in."""

from __future__ import annotations

import sys
from pathlib import Path


def avoid_triton_llvm_clash() -> None:
    """Keep torch from importing Triton when another LLVM is already loaded in the process.

    Software OpenGL (Mesa llvmpipe: Xvfb, virtual machines, remote desktops) loads
    ``libLLVM`` for napari's canvas; importing Triton afterwards (torch does so on the
    first optimizer, through ``torch._dynamo``) crashes the process with a segmentation
    fault. Training never compiles kernels, so Triton is marked absent for this session.
    """
    if "triton" in sys.modules:
        return
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:  # not Linux
        return
    if "libLLVM" in maps:
        sys.modules["triton"] = None  # ``import triton`` now raises ImportError
