"""A-MIL benchmark: attention localisation on held-out phantoms, and training on real BreakHis.

Usage::

    python benchmarks/bench_amil.py [--checkpoint CKPT] [--n 30] [--breakhis-epochs 6]

1. Localisation: for held-out malignant phantoms (seeds never used in
   training), the patch-attention ROC AUC against each patch's true label,
   the pixel-level AUC of the attention map, and the pointing game (does the
   most-attended patch hold tumour cells?). Two truths: ``tumour`` (a patch is
   positive when half of it is tumour cells: MIL's instance label, Ilse et al.
   2018) and ``lesion`` (half of it inside the outlined lesion, which for
   invasive carcinoma includes the stroma between tumour cords).
2. BreakHis: ``histoview train`` with ``training/amil-breakhis.yaml`` on the
   images in ../shared/data/breakhis (patient-level split), test metrics.
   Skipped with a message when the data are absent.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
from _common import REPO, SHARED_DATA, map_auc, pointing_game

from histoview.explain.run import explain_array, load_for_method
from histoview.preprocessing.patches import patch_labels_from_mask
from histoview.preprocessing.phantom import make_phantom
from histoview.training.metrics import roc_auc

HELD_OUT_SEED = 9_000_000  # training configs use seeds below 3,000,000


def localisation(checkpoint, n: int) -> dict:
    net, meta, sha = load_for_method("amil", checkpoint=checkpoint)
    patch_aucs, pixel_aucs, hits, correct = {}, {}, [], 0
    for i in range(n):
        kind = ("in_situ", "invasive", "benign")[i % 3]
        ph = make_phantom(kind, preset="breakhis", seed=HELD_OUT_SEED + i)
        expl = explain_array(ph.image, "amil", net, meta, sha)
        truth = int(ph.is_malignant)
        correct += int(expl.predicted_class == truth)
        if not ph.is_malignant:
            continue
        dense = expl.to_dense()
        for truth, mask in (("tumour", ph.tumour_mask), ("lesion", ph.malignant_mask)):
            labels = patch_labels_from_mask(expl.geometry, mask)
            if labels.all() or not labels.any():
                continue
            patch_aucs.setdefault(truth, []).append(roc_auc(labels, expl.values))
            pixel_aucs.setdefault(truth, []).append(map_auc(dense, mask))
        hits.append(pointing_game(dense, ph.tumour_mask))
    out = {
        "images": n,
        "classification_accuracy": correct / n,
        "malignant_images": len(hits),
        "pointing_game": float(np.mean(hits)),
    }
    for truth in ("tumour", "lesion"):
        out[f"patch_auc_{truth}_mean"] = float(np.mean(patch_aucs[truth]))
        out[f"patch_auc_{truth}_min"] = float(np.min(patch_aucs[truth]))
        out[f"pixel_auc_{truth}_mean"] = float(np.mean(pixel_aucs[truth]))
    return out


def breakhis(epochs: int) -> dict | None:
    if not (SHARED_DATA / "breakhis").exists():
        print(f"BreakHis data not found at {SHARED_DATA / 'breakhis'}: skipping the training run")
        return None
    from histoview.training.config import load_config
    from histoview.training.run import train_from_config

    cfg = load_config(REPO / "training" / "amil-breakhis.yaml")
    cfg["data"]["root"] = str(SHARED_DATA / "breakhis")
    cfg["train"]["epochs"] = epochs
    cfg["output_dir"] = str(REPO / "runs" / "bench-amil-breakhis")
    t0 = time.time()
    result = train_from_config(cfg, resume=False)
    report = json.loads(result["report"].read_text())
    return {"seconds": time.time() - t0, "test": result["test"], "split": report["data"]["split"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--checkpoint", default=None, help="A-MIL checkpoint (default: bundled demo weights)"
    )
    ap.add_argument("--n", type=int, default=30, help="held-out phantoms")
    ap.add_argument("--breakhis-epochs", type=int, default=6)
    ap.add_argument("--skip-breakhis", action="store_true")
    args = ap.parse_args(argv)
    loc = localisation(args.checkpoint, args.n)
    print("A-MIL attention localisation on held-out phantoms (700 x 460, 28 x 28 patches)")
    for k, v in loc.items():
        print(f"  {k:26s} {v:.3f}" if isinstance(v, float) else f"  {k:26s} {v}")
    if not args.skip_breakhis:
        res = breakhis(args.breakhis_epochs)
        if res:
            t = res["test"]
            print(
                f"A-MIL on BreakHis (100X, benign vs malignant, patient split {res['split']}), "
                f"{args.breakhis_epochs} epochs, {res['seconds']:.0f} s"
            )
            for k in (
                "accuracy",
                "balanced_accuracy",
                "precision_macro",
                "sensitivity",
                "specificity",
                "f1_macro",
                "roc_auc",
                "pr_auc",
            ):
                print(f"  {k:26s} {t[k]:.3f}")
            print(f"  confusion matrix           {t['confusion_matrix']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
