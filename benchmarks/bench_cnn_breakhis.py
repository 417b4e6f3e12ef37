"""A short training run of every CNN in the registry on real BreakHis, split by patient.

Each model trains for ``--epochs`` epochs (default 1) with DALAResNet50's settings
(Liu et al., arXiv:2308.13150: Adam, learning rate 1e-4; batch 8 here to fit a laptop
CPU) on the BreakHis images in ../shared/data/breakhis (benign vs malignant, all
magnifications, patient-level 60/20/20 split), from random initialisation unless ImageNet
weights are in the local cache. It prints each model's parameter count, training time and
test metrics. These are smoke-test figures on a small development sample, not
results: the papers train for 50 epochs from ImageNet weights.

Usage: python benchmarks/bench_cnn_breakhis.py [--epochs 1] [--models resnet18,customnet]
"""

from __future__ import annotations

import argparse
import sys
import time

from _common import REPO, SHARED_DATA

from histoview.models import create_model, list_models
from histoview.training.run import train_from_config


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--models", default=",".join(list_models(kind="image")))
    args = ap.parse_args(argv)
    root = SHARED_DATA / "breakhis"
    if not root.exists():
        print(f"BreakHis data not found at {root}: nothing to do")
        return 0
    print(
        f"{'model':20s} {'params':>8s} {'train s':>8s} {'test acc':>9s} {'bal acc':>8s} {'AUC':>6s} {'F1':>6s}"
    )
    for name in args.models.split(","):
        params = sum(p.numel() for p in create_model(name).parameters())
        cfg = {
            "name": f"bench-{name}",
            "model": name,
            "data": {"type": "breakhis", "root": str(root), "task": "binary"},
            "split": {"by": "patient", "fractions": [0.6, 0.2, 0.2], "seed": 0},
            "train": {"epochs": args.epochs, "batch_size": 8, "lr": 1e-4, "device": "cpu"},
            "output_dir": str(REPO / "runs" / "bench-cnn" / name),
        }
        t0 = time.time()
        result = train_from_config(cfg, resume=False)
        t = result["test"]
        print(
            f"{name:20s} {params / 1e6:7.1f}M {time.time() - t0:8.0f} {t['accuracy']:9.3f} "
            f"{t['balanced_accuracy']:8.3f} {t['roc_auc']:6.3f} {t['f1_macro']:6.3f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
