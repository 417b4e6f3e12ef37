"""Copy an IDC run's best checkpoint into resources/weights as bundled real weights.

Usage: python scripts/install_idc_weights.py RUN_DIR NAME

Only runs trained on the IDC patches (data layout ``idc``: Janowczyk & Madabhushi 2016;
Cruz-Roa et al. 2014; listed as CC0) may be bundled as real weights: the other real data
sets histoview develops on may not ship (../shared/data/README.md). The sidecar keeps the
run's metrics and split, gains ``bundled_as``, the data's licence and citation and the
model card's file name (``NAME.md``, written by hand beside the weights), and the data root
is recorded relative to the repository's parent (no machine's path ships).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    from histoview.models.checkpoint import load_model, read_metadata, save_checkpoint
    from histoview.preprocessing.idc import IDC_CITATION

    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("name")
    args = ap.parse_args(argv)
    src = args.run_dir / "best.safetensors"
    meta = read_metadata(src)
    if meta.get("synthetic") or (meta.get("data") or {}).get("layout") != "idc":
        print(
            f"{src}: not trained on the (CC0) IDC patches; refusing to bundle it", file=sys.stderr
        )
        return 2
    model, meta = load_model(src, device="cpu")
    for key in ("format", "format_version", "weights_sha256", "created", "code_version"):
        meta.pop(key, None)
    root = Path(meta["data"].get("root") or "")
    try:
        meta["data"]["root"] = str(root.resolve().relative_to(REPO.parent.resolve()))
    except ValueError:
        meta["data"]["root"] = root.name
    meta["bundled_as"] = args.name
    meta["data_licence"] = "CC0 1.0 (the IDC patches are listed as CC0)"
    meta["data_citation"] = IDC_CITATION
    meta["model_card"] = f"{args.name}.md"
    meta["notice"] = (
        "Research use only, not for diagnosis. Trained on real 2.5X breast tissue (IDC "
        f"patches, CC0) of a few development patients; see {args.name}.md."
    )
    dest = REPO / "resources" / "weights" / f"{args.name}.safetensors"
    save_checkpoint(dest, model, meta)
    print(f"wrote {dest} ({dest.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
