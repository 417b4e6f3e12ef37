"""Benchmark the pixel-size estimate (histoview.preprocessing.scale) and its use by explain.

Prints:

1. MoNuSeg tiles (Kumar et al., IEEE TMI 2017; 40X, 0.2456 um/px) written as they are
   distributed, with 72 dpi resolution tags (copies in a temporary folder): what
   ``histoview info`` makes of the tags, the estimate against the true pixel size, and the F1
   of the nuclei that ``histoview explain IMAGE --method graph --out DIR`` (no
   ``--pixel-size``) finds, against the masks' connected components (6 tiles) and the XML
   outlines (4 tiles), beside the F1 at the true pixel size and at the old defaults (0.5 um/px
   for a tile without a pixel size, 352.8 um/px read from 72 dpi);
2. the calibration: per tile, at the true pixel size, the blob-radius percentile and the
   spectrum peak in um, and the leave-one-out error (constants fitted on the other tiles);
3. the estimate on MoNuSeg rescaled by 0.7 and 1.4, and on the synthetic phantoms at several
   pixel sizes (estimate / truth);
4. BreakHis (Spanhol et al., IEEE TBME 2016) per magnification: the estimates' median and
   quartiles and the ratios between magnifications against the objectives' (4x, 10x, 20x, 40x).

Usage::

    python benchmarks/bench_pixel_size.py [--data ../shared/data] [--skip-breakhis]

Exits 0 with a message when the data folder is absent (it lives outside the repository).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

import numpy as np
from _common import SHARED_DATA
from _monuseg import match_detections, polygons_to_labels, read_aperio_xml

from histoview.preprocessing import scale
from histoview.preprocessing.nuclei import detect_nuclei

MONUSEG_UM = 0.2456
#: nominal objective of each BreakHis magnification (the 3.3x relay is common to all)
BREAKHIS_OBJECTIVE = {40: 4, 100: 10, 200: 20, 400: 40}


def _mask_labels(path: Path) -> np.ndarray:
    from scipy import ndimage as ndi
    from skimage import io

    mask = np.asarray(io.imread(path))
    return ndi.label((mask[..., 0] if mask.ndim == 3 else mask) > 0)[0]


def _explain_graph(path: Path, out: Path) -> tuple[np.ndarray, dict, str, float]:
    """Run ``histoview explain PATH --method graph --out OUT``: (centroids (row, col), the JSON
    record, the printed lines, seconds)."""
    from histoview.cli import main

    buf = StringIO()
    t0 = time.perf_counter()
    with redirect_stdout(buf):
        rc = main(["explain", str(path), "--method", "graph", "--out", str(out)])
    seconds = time.perf_counter() - t0
    if rc != 0:
        return np.zeros((0, 2)), {}, buf.getvalue(), seconds
    stem = path.name[: -len(".tif")]
    collection = json.loads((out / f"{stem}.graph.geojson").read_text())
    centroids = np.array(
        [
            f["geometry"]["coordinates"][::-1]
            for f in collection["features"]
            if f["properties"].get("kind") == "nucleus"
        ]
    ).reshape(-1, 2)
    record = json.loads((out / f"{stem}.graph.json").read_text())
    return centroids, record, buf.getvalue(), seconds


def bench_monuseg(root: Path) -> list[dict]:
    import tifffile

    from histoview.io import open_image

    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="histoview-bench-pixel-size-"))
    for path in sorted((root / "images").glob("*.tif")):
        image = np.asarray(tifffile.imread(path))[..., :3]
        copy = tmp / path.name
        tifffile.imwrite(copy, image, photometric="rgb", resolution=(72, 72), resolutionunit="INCH")
        with open_image(copy) as src:
            read_as = src.pixel_size_um
        c0 = time.process_time()
        est = scale.estimate_pixel_size(image)
        cpu = time.process_time() - c0
        centroids, record, printed, seconds = _explain_graph(copy, tmp / "out")
        row = {
            "tile": path.stem[:23],
            "read_as": read_as,
            "estimate": est.pixel_size_um,
            "reliable": est.reliable,
            "n_est": est.n_nuclei,
            "cpu": cpu,
            "explain_s": seconds,
            "used": record.get("pixel_size_um"),
            "source": record.get("pixel_size_source"),
            "n": len(centroids),
            "line": next((ln for ln in printed.splitlines() if "pixel size" in ln), ""),
        }
        truths = {"mask": _mask_labels(root / "masks" / f"{path.stem}.png")}
        xml = root / "annotations" / f"{path.stem}.xml"
        if xml.exists():
            truths["xml"] = polygons_to_labels(read_aperio_xml(xml), image.shape[:2])
        for name, truth in truths.items():
            row[f"f1_{name}"] = match_detections(centroids, truth)["f1"]
            for label, px in (("true", MONUSEG_UM), ("old", 0.5)):
                found = detect_nuclei(image, px).centroids
                row[f"f1_{name}_{label}"] = match_detections(found, truth)["f1"]
                row[f"n_{label}"] = len(found)
        rows.append(row)
    return rows


def print_monuseg(rows: list[dict]) -> None:
    print(
        "1. MoNuSeg tiles with 72 dpi tags, `histoview explain IMAGE --method graph` "
        "(no --pixel-size)"
    )
    print(
        f"   true pixel size {MONUSEG_UM} um/px; F1 of detected centroids, one-to-one, "
        "inside a mask component (all tiles) or an XML outline (4 tiles)"
    )
    head = (
        f"{'tile':<24}{'tags read':>10}{'estimate':>9}{'err':>7}{'n':>6}{'cpu s':>7}"
        f"{'F1 mask':>8}{' (true':>7}{' 0.5)':>6}{'F1 xml':>8}{' (true':>7}{' 0.5)':>6}"
    )
    print(head)
    print("-" * len(head))

    def f(v):
        return f"{v:.3f}" if v is not None else "-"

    for r in rows:
        err = f"{r['estimate'] / MONUSEG_UM - 1:+.0%}" if r["estimate"] else "-"
        print(
            f"{r['tile']:<24}{str(r['read_as']):>10}{f(r['estimate']):>9}{err:>7}{r['n']:>6}"
            f"{r['cpu']:>7.1f}{f(r['f1_mask']):>8}{f(r['f1_mask_true']):>7}"
            f"{f(r['f1_mask_old']):>6}{f(r.get('f1_xml')):>8}{f(r.get('f1_xml_true')):>7}"
            f"{f(r.get('f1_xml_old')):>6}"
        )
    xml = [r for r in rows if "f1_xml" in r]
    print(
        f"mean F1 with the estimate: masks {np.mean([r['f1_mask'] for r in rows]):.3f}"
        + (f", XML outlines {np.mean([r['f1_xml'] for r in xml]):.3f}" if xml else "")
        + f"; at the true pixel size {np.mean([r['f1_mask_true'] for r in rows]):.3f}"
        + (f" / {np.mean([r['f1_xml_true'] for r in xml]):.3f}" if xml else "")
        + f"; at 0.5 um/px {np.mean([r['f1_mask_old'] for r in rows]):.3f}"
        + (f" / {np.mean([r['f1_xml_old'] for r in xml]):.3f}" if xml else "")
        + " (at 352.8 um/px, the 72 dpi reading: 0 nuclei, F1 0.000)"
    )
    print(
        f"recorded in the JSON: {sorted({r['source'] for r in rows})}; printed: "
        f"{rows[0]['line']!r}; explain {np.mean([r['explain_s'] for r in rows]):.1f} s per tile "
        "(wall, model loading included)"
    )
    print()


def bench_calibration(root: Path) -> None:
    import tifffile

    images = [
        np.asarray(tifffile.imread(p))[..., :3] for p in sorted((root / "images").glob("*.tif"))
    ]
    radius, peak = [], []
    for image in images:
        space = scale._ScaleSpace(scale._hematoxylin(image))
        radii = space.radius_at(detect_nuclei(image, MONUSEG_UM).centroids)
        radius.append(float(np.percentile(radii, scale.RADIUS_PERCENTILE)) * MONUSEG_UM)
        peak.append(
            scale.SPECTRUM_RADIUS_UM / scale._start_from_spectrum(space.energy()) * MONUSEG_UM
        )
    print(
        f"2. Calibration at {MONUSEG_UM} um/px: blob radius p{scale.RADIUS_PERCENTILE:g} "
        f"(um) per tile {np.round(radius, 2).tolist()}, mean {np.mean(radius):.3f} "
        f"(NUCLEUS_RADIUS_UM = {scale.NUCLEUS_RADIUS_UM}); spectrum peak (um) "
        f"{np.round(peak, 2).tolist()}, median {np.median(peak):.3f} "
        f"(SPECTRUM_RADIUS_UM = {scale.SPECTRUM_RADIUS_UM})"
    )
    saved = scale.NUCLEUS_RADIUS_UM, scale.SPECTRUM_RADIUS_UM
    errors = []
    try:
        for i, image in enumerate(images):
            scale.NUCLEUS_RADIUS_UM = float(np.mean(radius[:i] + radius[i + 1 :]))
            scale.SPECTRUM_RADIUS_UM = float(np.median(peak[:i] + peak[i + 1 :]))
            est = scale.estimate_pixel_size(image)
            errors.append(est.pixel_size_um / MONUSEG_UM - 1 if est.pixel_size_um else np.nan)
    finally:
        scale.NUCLEUS_RADIUS_UM, scale.SPECTRUM_RADIUS_UM = saved
    print(
        f"   leave-one-out errors {[f'{e:+.1%}' for e in errors]}, "
        f"rms {np.sqrt(np.nanmean(np.square(errors))):.1%}"
    )
    print()


def bench_rescaled_and_phantoms(root: Path | None) -> None:
    from skimage.transform import rescale

    from histoview.preprocessing.phantom import make_phantom

    print("3. Estimate / truth on rescaled MoNuSeg tiles and on the synthetic phantoms")
    if root is not None:
        import tifffile

        for f in (0.7, 1.4):
            ratios = []
            for p in sorted((root / "images").glob("*.tif")):
                image = np.asarray(tifffile.imread(p))[..., :3]
                small = (rescale(image, f, channel_axis=-1, anti_aliasing=f < 1) * 255).astype(
                    np.uint8
                )
                est = scale.estimate_pixel_size(small)
                ratios.append(est.pixel_size_um / (MONUSEG_UM / f) if est.reliable else np.nan)
            print(f"   MoNuSeg x{f}: {np.round(ratios, 2).tolist()}")
    for label in ("benign", "in_situ", "invasive"):
        ratios = []
        for px in (0.35, 0.5, 0.7):
            for seed in (0, 1):
                image = make_phantom(label, preset="breakhis", pixel_size_um=px, seed=seed).image
                est = scale.estimate_pixel_size(image)
                ratios.append(round(est.pixel_size_um / px, 2) if est.reliable else "unreliable")
        bach = scale.estimate_pixel_size(make_phantom(label, preset="bach", seed=0).image)
        ratios.append(round(bach.pixel_size_um / 0.42, 2) if bach.reliable else "unreliable")
        print(
            f"   phantom {label:<9} breakhis size at 0.35/0.5/0.7 um/px (2 seeds each), "
            f"bach at 0.42: {ratios}"
        )
    print()


def bench_breakhis(root: Path) -> None:
    from PIL import Image

    by_mag: dict[int, list] = {}
    unreliable: dict[int, list] = {}
    for path in sorted(root.glob("*.png")):
        m = re.search(r"-(\d+)-\d+\.png$", path.name)
        if not m:
            continue
        mag = int(m.group(1))
        est = scale.estimate_pixel_size(np.asarray(Image.open(path).convert("RGB")))
        if est.reliable:
            by_mag.setdefault(mag, []).append(est.pixel_size_um)
        else:
            unreliable.setdefault(mag, []).append(est.reason)
    print("4. BreakHis: estimate per magnification (um/px; median [quartiles], reliable / all)")
    medians = {}
    for mag in sorted(set(by_mag) | set(unreliable)):
        v = np.array(by_mag.get(mag, []))
        n_all = len(v) + len(unreliable.get(mag, []))
        if len(v):
            medians[mag] = float(np.median(v))
            q1, q3 = np.percentile(v, [25, 75])
            print(f"   {mag:>3}X: {medians[mag]:.3f} [{q1:.3f}-{q3:.3f}]  {len(v)}/{n_all}")
        else:
            print(f"   {mag:>3}X: no reliable estimate, 0/{n_all}")
        for reason in unreliable.get(mag, [])[:2]:
            print(f"        unreliable: {reason}")
    mags = sorted(medians)
    for a, b in zip(mags, mags[1:]):
        nominal = BREAKHIS_OBJECTIVE[b] / BREAKHIS_OBJECTIVE[a]
        print(
            f"   {a}X / {b}X pixel size ratio {medians[a] / medians[b]:.2f} "
            f"(objectives: {nominal:.2f})"
        )
    print()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--skip-breakhis", action="store_true")
    args = parser.parse_args()
    monuseg = args.data / "monuseg"
    if not monuseg.exists():
        print(f"{monuseg} is absent: the MoNuSeg benchmark needs ../shared/data (outside the repo)")
        return 0
    print_monuseg(bench_monuseg(monuseg))
    bench_calibration(monuseg)
    bench_rescaled_and_phantoms(monuseg)
    if not args.skip_breakhis and (args.data / "breakhis").exists():
        bench_breakhis(args.data / "breakhis")
    return 0


if __name__ == "__main__":
    sys.exit(main())
