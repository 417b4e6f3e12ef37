"""Image I/O benchmark: a 50,000 x 50,000 pyramidal RGB TIFF.

Writes the slide once (JPEG tiles of a smooth synthetic texture, about 0.5 GB)
to a temporary folder, then prints:

* ``histoview info`` wall time as a fresh process (Python start-up included);
* ``open_image`` time in-process;
* panning: reading 300 random 512 x 512 regions of level 0 (and 100 of level 2),
  with the process's peak memory growth, to show memory stays flat.

Usage: python benchmarks/bench_io.py [--keep PATH]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from histoview.io import open_image, write_pyramidal_tiff


def make_slide(path: Path) -> float:
    yy, xx = np.mgrid[0:512, 0:512]
    tile = np.stack(
        [215 + 25 * np.sin(xx / 9.0), 140 + 40 * np.cos(yy / 7.0), 200 + 0 * xx], -1
    ).astype(np.uint8)
    t0 = time.perf_counter()
    write_pyramidal_tiff(
        path,
        shape=(50_000, 50_000),
        tile_fn=lambda lv, r, c, s: tile,
        tile=512,
        pixel_size_um=0.25,
        compression="jpeg",
    )
    return time.perf_counter() - t0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--keep", type=Path, default=None, help="write the slide here and keep it")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep or Path(tmp) / "slide-50k.tif"
        if not path.exists():
            print(
                f"writing {path} ... {make_slide(path):.1f} s, {path.stat().st_size / 1e6:.0f} MB"
            )
        exe = [sys.executable, "-m", "histoview.cli", "info", str(path)]
        times, cpu = [], []
        for _ in range(3):
            t0 = time.perf_counter()
            c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            subprocess.run(exe, check=True, capture_output=True)
            c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            times.append(time.perf_counter() - t0)
            cpu.append(c1.ru_utime - c0.ru_utime + c1.ru_stime - c0.ru_stime)
        print(
            f"histoview info (fresh process, best of 3): {min(times):.2f} s wall, {min(cpu):.2f} s CPU"
            "   (target < 2 s)"
        )
        t0 = time.perf_counter()
        src = open_image(path)
        print(
            f"open_image in-process:                     {1000 * (time.perf_counter() - t0):.1f} ms, "
            f"{src.n_levels} levels, level 0 {src.shape}"
        )
        rng = np.random.default_rng(0)
        base = peak_rss_mb()
        t0 = time.perf_counter()
        for i in range(300):
            r, c = rng.integers(0, 50_000 - 512, 2)
            src.read_region(0, (r, c), (512, 512))
            if i == 49:
                after50 = peak_rss_mb()
        for _ in range(100):
            r, c = rng.integers(0, 12_500 - 512, 2)
            src.read_region(2, (r, c), (512, 512))
        dt = time.perf_counter() - t0
        print(f"panning: 400 random 512x512 reads in {dt:.2f} s ({1000 * dt / 400:.1f} ms each)")
        print(
            f"peak memory: {base:.0f} MB before, {after50:.0f} MB after 50 reads, {peak_rss_mb():.0f} MB after 400 "
            f"(level 0 would be {50_000 * 50_000 * 3 / 1e9:.1f} GB)"
        )
        src.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
