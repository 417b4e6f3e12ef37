"""Reading at a resolution: ``ImageSource.read_rect`` throughput, tifffile vs OpenSlide.

Writes two JPEG-tiled (quality 90, 512 x 512 tiles) slides of a textured synthetic tissue at
0.25 um/px, as IFD chains so both backends see the same levels: a pyramid (0.25, 0.5, 1, 2...
um/px) and the same level 0 without a pyramid. Then reads a grid of 512 x 512 output tiles at
0.5 um/px, as the slide engine does (each tile 1024 x 1024 level-0 pixels), single process:

* ``pyramid``: the 0.5 um/px level exists: read_rect copies its pixels (no resampling);
* ``level 0 only``: read_rect reads 1024 x 1024 of level 0 and shrinks it 2x (Pillow BOX).

Printed per backend and case: tiles/s (wall) and CPU ms per tile (``time.process_time``), the
best of ``--repeats`` passes (the machine may be shared; CPU time is the steadier figure), and
for reference ``read_region`` of the same level-1 pixels (the decoding floor).

Usage: python benchmarks/bench_read_rect.py [--size 12288] [--tiles 144] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def _texture(rows: int, cols: int, r0: int, c0: int, scale: int) -> np.ndarray:
    """Pink-purple texture with nuclei-sized blobs, the same tissue at any level."""
    yy, xx = np.mgrid[r0 : r0 + rows, c0 : c0 + cols].astype(np.float32) * scale
    rng = np.random.default_rng((r0 * 7 + c0) % 2**32)
    base = np.stack(
        [
            200 + 30 * np.sin(xx / 37.0) * np.cos(yy / 53.0),
            120 + 50 * np.sin((xx + yy) / 23.0),
            190 + 25 * np.cos(yy / 17.0),
        ],
        -1,
    )
    base -= 60 * (np.sin(xx / 6.0) * np.sin(yy / 6.0) > 0.8)[..., None]  # blobs
    base += rng.normal(0, 6, base.shape)
    return np.clip(base, 0, 255).astype(np.uint8)


def write_chain(path: Path, size: int, levels: int) -> None:
    import tifffile

    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for level in range(levels):
            n = -(-size // 2**level)

            def tiles(n=n, level=level):
                for r in range(0, n, 512):
                    for c in range(0, n, 512):
                        yield _texture(512, 512, r, c, 2**level)

            tw.write(
                tiles(),
                shape=(n, n, 3),
                dtype=np.uint8,
                tile=(512, 512),
                photometric="rgb",
                compression="jpeg",
                compressionargs={"level": 90},
                resolution=(4e4 / 2**level, 4e4 / 2**level),
                resolutionunit="CENTIMETER",
                subfiletype=0 if level == 0 else 1,
            )


def bench(src, locations, fn) -> tuple[float, float]:
    """(tiles per second, CPU ms per tile) of one pass over ``locations``."""
    t0, c0 = time.perf_counter(), time.process_time()
    for loc in locations:
        fn(src, loc)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return len(locations) / wall, 1e3 * cpu / len(locations)


def main(argv=None) -> int:
    from histoview.io import open_image

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=12288, help="level-0 side, pixels")
    ap.add_argument("--tiles", type=int, default=144, help="output tiles per pass")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        pyramid, flat = Path(tmp) / "pyramid.tif", Path(tmp) / "flat.tif"
        t0 = time.perf_counter()
        write_chain(pyramid, args.size, levels=4)
        write_chain(flat, args.size, levels=1)
        print(f"wrote 2 slides of {args.size}^2 px in {time.perf_counter() - t0:.1f} s")
        side = args.size // 1024
        grid = [(r * 1024, c * 1024) for r in range(side) for c in range(side)]
        rng = np.random.default_rng(0)
        locations = [grid[i] for i in rng.permutation(len(grid))[: args.tiles]]
        cases = [
            ("pyramid", pyramid, lambda s, loc: s.read_rect(loc, (512, 512), 0.5)),
            ("level 0 only", flat, lambda s, loc: s.read_rect(loc, (512, 512), 0.5)),
            (
                "read_region L1",
                pyramid,
                lambda s, loc: s.read_region(1, (loc[0] // 2, loc[1] // 2), (512, 512)),
            ),
        ]
        print(f"{len(locations)} tiles of 512 x 512 at 0.5 um/px from 0.25 um/px, 1 process")
        print(f"{'case':<16}{'backend':<11}{'tiles/s':>9}{'CPU ms/tile':>13}  level read")
        for name, path, fn in cases:
            for backend in ("tifffile", "openslide"):
                with open_image(path, backend=backend) as src:
                    fn(src, locations[0])  # warm: open the level's store
                    runs = [bench(src, locations, fn) for _ in range(args.repeats)]
                    rate = max(r[0] for r in runs)
                    cpu = min(r[1] for r in runs)
                    level = src.last_level if src.last_level is not None else 1
                print(f"{name:<16}{backend:<11}{rate:>9.1f}{cpu:>13.2f}  {level}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
