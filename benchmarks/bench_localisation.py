"""Localisation table: Grad-CAM vs DT Grad-CAM vs A-MIL attention vs the phantom's ground truth.

Patil et al., 2019 claim A-MIL attention localises malignant tissue better than Grad-CAM;
this script tests it on held-out phantoms (seeds never used in training), with
the same metrics for every method, each explanation turned into a full-resolution
map (``Explanation.to_dense``):

* pixel ROC AUC of the map against the tumour-cell mask and against the outlined lesion;
* pointing game: the map's maximum lies on tumour cells.

Grad-CAM and DT Grad-CAM explain the malignant class of the bundled customNet demo
model, A-MIL uses its bundled demo weights (both synthetic, trained on phantoms).

Usage: python benchmarks/bench_localisation.py [--n 24]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from _common import map_auc, pointing_game

from histoview.explain.run import explain_array, load_for_method
from histoview.preprocessing.phantom import make_phantom

HELD_OUT_SEED = 9_000_000
METHODS = ("amil", "gradcam", "dt-gradcam", "gradcam++")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--n",
        type=int,
        default=24,
        help="held-out malignant phantoms (half in situ, half invasive)",
    )
    args = ap.parse_args(argv)
    loaded = {m: load_for_method(m) for m in METHODS}
    scores = {m: {"tumour": [], "lesion": [], "pointing": []} for m in METHODS}
    for i in range(args.n):
        ph = make_phantom(("in_situ", "invasive")[i % 2], preset="breakhis", seed=HELD_OUT_SEED + i)
        for method, (net, meta, sha) in loaded.items():
            malignant = meta["classes"].index("malignant")
            expl = explain_array(
                ph.image,
                method,
                net,
                meta,
                sha,
                target_class=None if method == "amil" else malignant,
            )
            dense = expl.to_dense()
            scores[method]["tumour"].append(map_auc(dense, ph.tumour_mask))
            scores[method]["lesion"].append(map_auc(dense, ph.malignant_mask))
            scores[method]["pointing"].append(pointing_game(dense, ph.tumour_mask))
    print(f"Localisation on {args.n} held-out malignant phantoms (700 x 460), mean over images")
    print(f"{'method':12s} {'model':10s} {'AUC tumour':>11s} {'AUC lesion':>11s} {'pointing':>9s}")
    for method in METHODS:
        s = scores[method]
        model = loaded[method][1]["model"]
        print(
            f"{method:12s} {model:10s} {np.mean(s['tumour']):11.3f} {np.mean(s['lesion']):11.3f} "
            f"{np.mean(s['pointing']):9.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
