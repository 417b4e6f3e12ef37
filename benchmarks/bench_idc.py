"""Real tissue, real ground truth: the IDC weights on held-out patients of the development sample.

The bundled real weights (``patchcnn-idc``, ``amil-idc``: trained on patients 8863 and 8864
of ``../shared/data/idc``, CC0; ``training/patchcnn-idc.yaml``, ``training/amil-idc.yaml``)
are scored on the patients they never saw, named in their sidecars:

1. **Patch classification** (``patchcnn-idc``): balanced accuracy, F1 of the IDC class and
   ROC AUC over the held-out patients' patches, with 95 % bootstrap intervals by patient
   (:mod:`histoview.training.patient_bootstrap`: patients resampled, within two strata:
   patients with non-IDC patches and IDC-only patients), and per patient the IDC share and
   the share decided IDC; beside Cruz-Roa et al. 2014 (F1 0.718, balanced accuracy 0.841)
   and Janowczyk & Madabhushi 2016 (F1 0.765, balanced accuracy 0.842). Theirs are on the
   full data set's held-out patients (162 patients, 279 in all); ours are development
   figures on 10 patients, one of whom has both classes.
   **Region classification** (``amil-idc``): the same figures for its bags (4 x 4-patch
   regions, IDC when any patch is).
2. **Localisation** on each held-out patient with both classes (its mosaic, with the
   per-patch IDC map as ground truth): the patch classifier's probability map (one value
   per 50 px tile), its Grad-CAM and DT Grad-CAM (tile by tile, the IDC class) and A-MIL's
   attention over the whole mosaic as one bag, each through ``explain_array`` as a user's
   run; scored inside the tissue (the pixels patches cover) by pixel ROC AUC, the pointing
   game (the map's peak on IDC) and top-10 % precision (the share of IDC among the map's
   top 10 % tissue pixels; the IDC share itself is what a random map gets).
3. **With and without stain normalisation**: the same configs without their ``stain``
   section are trained here (seeded, cached under ``runs/bench-idc/``) and scored the same
   way. ``--folds 8863,8864,8865`` adds leave-one-patient-out folds over the patients with
   both classes (each trained here, cached) for the localisation table and the patch
   figures.

Nothing here is a clinical figure: a few development patients, 2.5X only, research use.

Usage: python benchmarks/bench_idc.py [--data ../shared/data/idc] [--folds 8865]
       [--variants stain,no-stain] [--boot 2000] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from _common import REPO, SHARED_DATA, map_auc, pointing_game, top_precision

PAPERS = {
    "Cruz-Roa et al. 2014": {"f1": 0.718, "balanced_accuracy": 0.841},
    "Janowczyk & Madabhushi 2016": {"f1": 0.765, "balanced_accuracy": 0.842},
}
BUNDLED = {"patchcnn": "patchcnn-idc", "amil": "amil-idc"}
BUNDLED_FOLD = "8865"
CACHE = REPO / "runs" / "bench-idc"


def _checkpoint(kind: str, variant: str, fold: str, data: Path, report) -> Path:
    """The bundled weights for the bundled fold with stain normalisation, else a model
    trained here from the committed config (held-out patient ``fold``; no ``stain``
    section for ``no-stain``), cached under :data:`CACHE`."""
    from histoview.models.library import bundled_checkpoint
    from histoview.training.config import load_config
    from histoview.training.run import train_from_config

    if variant == "stain" and fold == BUNDLED_FOLD:
        return bundled_checkpoint(BUNDLED[kind])
    config = load_config(REPO / "training" / f"{BUNDLED[kind]}.yaml")
    config["data"]["root"] = str(data)
    config["split"]["test_patients"] = [fold]
    if variant == "no-stain":
        config.pop("stain", None)
    out = CACHE / f"{BUNDLED[kind]}-{variant}-{fold}"
    config["output_dir"], config["name"] = str(out), out.name
    if not (out / "report.json").exists():
        report(f"training {out.name} (cached for later runs)")
        train_from_config(config)
    return out / "best.safetensors"


def _predict_patches(net, meta, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """p(IDC) of (N, 50, 50, 3) patches through the checkpoint's input path."""
    import torch

    from histoview.models.inputs import InputSpec

    spec = InputSpec.from_checkpoint(meta, net)
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = spec.images(images[i : i + batch]).contiguous(memory_format=torch.channels_last)
            out.append(torch.softmax(net(x).float(), 1)[:, 1].numpy())
    return np.concatenate(out)


def _predict_bags(net, meta, images: list[np.ndarray]) -> np.ndarray:
    import torch

    from histoview.models.inputs import InputSpec

    spec = InputSpec.from_checkpoint(meta, net)
    with torch.no_grad():
        return np.array([float(torch.softmax(net(spec.bag(im)[0]), 1)[0, 1]) for im in images])


def _scores(y, p, patients, strata, threshold, boot):
    from histoview.training.patient_bootstrap import (
        balanced_accuracy,
        f1_positive,
        patient_bootstrap,
        roc_auc_or_nan,
    )

    decided = (p >= threshold).astype(int)
    out = {}
    for name, fn, s in (
        ("balanced_accuracy", balanced_accuracy, decided),
        ("f1", f1_positive, decided),
        ("roc_auc", roc_auc_or_nan, p),
    ):
        out[name] = patient_bootstrap(fn, y, s, patients, strata=strata, n_boot=boot)
    return out


def _fmt(ci) -> str:
    return f"{ci['value']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]"


def classification(kind, ckpt, data, boot, report) -> dict:
    """Patch (patchcnn) or region (amil) classification of the checkpoint's test patients."""
    from histoview.models.checkpoint import load_model
    from histoview.training.evaluate import dataset_for_checkpoint, training_test_split

    net, meta = load_model(ckpt, device="cpu")
    net.eval()
    dataset = dataset_for_checkpoint(str(data), meta)
    test = training_test_split(dataset, meta)
    images = [s.load()[0] for s in test]
    if kind == "patchcnn":
        full = np.full((len(images), 50, 50, 3), 255, np.uint8)
        for i, im in enumerate(images):
            full[i, : im.shape[0], : im.shape[1]] = im
        p = _predict_patches(net, meta, full)
    else:
        p = _predict_bags(net, meta, images)
    y = np.array([s.label for s in test])
    pats = np.array([str(s.patient) for s in test])
    strata = {q: ("mixed" if (y[pats == q] == 0).any() else "idc-only") for q in set(pats)}
    threshold = meta.get("threshold") or 0.5
    return {
        "meta": meta,
        "patients": sorted(set(pats)),
        "per_patient": {
            q: (
                int((pats == q).sum()),
                float(y[pats == q].mean()),
                float((p[pats == q] >= threshold).mean()),
            )
            for q in sorted(set(pats))
        },
        "scores": _scores(y, p, pats, strata, threshold, boot),
        "n": len(y),
    }


def localisation(patient, ckpts, data) -> dict:
    """Each method's map on one patient's mosaic, scored inside its tissue."""
    from histoview.explain.run import explain_array
    from histoview.models.checkpoint import load_model, sha256_file
    from histoview.preprocessing.idc import build_mosaic, find_idc_patches

    mosaic = build_mosaic(find_idc_patches(data), patient=patient)
    tissue, truth = mosaic.tissue, mosaic.idc_mask
    maps = {}
    for method, kind in (("gradcam", "patchcnn"), ("dt-gradcam", "patchcnn"), ("amil", "amil")):
        net, meta = load_model(ckpts[kind], device="cpu")
        expl = explain_array(
            mosaic.image,
            method,
            net,
            meta,
            sha256_file(ckpts[kind]),
            pixel_size_um=mosaic.pixel_size_um,
        )
        maps[method] = expl.to_dense()
        if method == "gradcam":  # the patch classifier's probability per tile
            grid = np.array(
                [
                    [np.nan if v is None else v for v in row]
                    for row in expl.extra["tile_probabilities"]
                ],
                np.float32,
            )
            f = expl.extra["tile_px"]
            prob = np.nan_to_num(np.repeat(np.repeat(grid, f, 0), f, 1), nan=0.0)
            maps["probability"] = prob[: tissue.shape[0], : tissue.shape[1]]
    out = {"idc_share": float(truth[tissue].mean()), "idc_patches": int(mosaic.counts()["idc"])}
    for name, dense in maps.items():
        inside = np.where(tissue, dense, dense.min() - 1)  # the peak is looked for in tissue
        out[name] = {
            "auc": map_auc(dense[tissue], truth[tissue]),
            "pointing": pointing_game(inside, truth),
            "top10": top_precision(dense[tissue], truth[tissue], 0.1),
        }
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", type=Path, default=SHARED_DATA / "idc")
    ap.add_argument("--folds", default=BUNDLED_FOLD, help="held-out paired patients")
    ap.add_argument("--variants", default="stain,no-stain")
    ap.add_argument("--boot", type=int, default=2000, help="bootstrap replicates")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"{args.data}: no IDC data here (the development sample is ../shared/data/idc)")
        return 2
    import torch

    torch.set_num_threads(args.threads)
    folds = [f.strip() for f in args.folds.split(",") if f.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    log = lambda text: print(f"  ({text})", flush=True)  # noqa: E731
    print("IDC development sample (../shared/data/idc, CC0; 2.5X, ~4 um/px): development figures")
    loc_rows = []
    for variant in variants:
        for fold in folds:
            ckpts = {k: _checkpoint(k, variant, fold, args.data, log) for k in BUNDLED}
            for kind in BUNDLED:
                res = classification(kind, ckpts[kind], args.data, args.boot, log)
                what = "patches" if kind == "patchcnn" else "4 x 4-patch regions"
                trained = res["meta"]["data"]["split"]["patients"]["train"]
                print(
                    f"\n{BUNDLED[kind]} ({variant}, held out {fold}; trained on "
                    f"{', '.join(trained)}): {res['n']} {what} of {len(res['patients'])} "
                    "held-out patients, 95 % CI by patient"
                )
                for name in ("balanced_accuracy", "f1", "roc_auc"):
                    print(f"  {name:18s} {_fmt(res['scores'][name])}")
                print("  patient  n     IDC share  decided IDC")
                for q, (n, share, dec) in res["per_patient"].items():
                    print(f"  {q:7s} {n:5d}  {share:9.2f}  {dec:11.2f}")
            loc_rows.append((variant, fold, localisation(fold, ckpts, args.data)))
    print("\nPublished (full data set, held-out patients): ")
    for paper, vals in PAPERS.items():
        print(
            f"  {paper:28s} F1 {vals['f1']:.3f}  balanced accuracy {vals['balanced_accuracy']:.3f}"
        )
    print("\nLocalisation against the IDC map, inside the tissue of each held-out mosaic")
    head = ("variant", "patient", "IDC", "map", "AUC", "point", "top10")
    print("{:9s} {:8s} {:>5s} {:12s} {:>6s} {:>6s} {:>6s}".format(*head))
    for variant, fold, row in loc_rows:
        for name in ("probability", "gradcam", "dt-gradcam", "amil"):
            s = row[name]
            print(
                f"{variant:9s} {fold:8s} {row['idc_share']:5.2f} {name:12s} {s['auc']:6.3f} "
                f"{int(s['pointing']):6d} {s['top10']:6.3f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
