"""Write the bundled IDC sample: one held-out patient's mosaic with its ground truth.

Usage: python scripts/make_idc_sample.py [--data ../shared/data/idc] [--patient 8865]

Writes ``resources/samples/idc-<patient>.tif`` (JPEG quality 95, 4.0 um/px in its resolution
tags), ``idc-<patient>.idc.tif`` (0 no patch, 1 non-IDC, 2 IDC) and ``idc-<patient>.json``
(:func:`histoview.preprocessing.idc.write_mosaic`). The IDC patches are listed as CC0
(Janowczyk & Madabhushi 2016; Cruz-Roa et al. 2014), so one patient's mosaic may ship;
the patient must be one the bundled IDC weights were not trained on (8865 by default: held
out by ``training/patchcnn-idc.yaml`` and ``training/amil-idc.yaml``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    from histoview.models.checkpoint import read_metadata
    from histoview.models.library import bundled_weights_dir
    from histoview.preprocessing.idc import build_mosaic, find_idc_patches, write_mosaic

    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "idc")
    ap.add_argument("--patient", default="8865")
    args = ap.parse_args(argv)
    for path in sorted(bundled_weights_dir().glob("*-idc.safetensors")):
        trained = read_metadata(path)["data"]["split"]["patients"]["train"]
        if args.patient in trained:
            print(
                f"{path.name} was trained on patient {args.patient}: choose another",
                file=sys.stderr,
            )
            return 2
    mosaic = build_mosaic(find_idc_patches(args.data), patient=args.patient)
    out = REPO / "resources" / "samples" / f"idc-{args.patient}"
    paths = write_mosaic(mosaic, out, overwrite=True, jpeg_quality=95)
    for path in paths.values():
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
