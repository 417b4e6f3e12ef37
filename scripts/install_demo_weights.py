"""Copy a run's best checkpoint into resources/weights as bundled synthetic demo weights.

Usage: python scripts/install_demo_weights.py RUN_DIR NAME [--half]

Only runs trained on generated phantoms (``synthetic: true`` in the sidecar) may be
bundled: histoview never ships weights trained on patient data. ``--half`` stores
the tensors as float16 (half the size; they load into float32 models unchanged).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    from histoview.models.checkpoint import load_model, read_metadata, save_checkpoint

    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("name")
    ap.add_argument("--half", action="store_true")
    args = ap.parse_args(argv)
    src = args.run_dir / "best.safetensors"
    meta = read_metadata(src)
    if not meta.get("synthetic") or meta.get("data", {}).get("layout") != "phantom":
        print(f"{src}: not trained on synthetic phantoms; refusing to bundle it", file=sys.stderr)
        return 2
    model, meta = load_model(src, device="cpu")
    if args.half:
        model = model.half()
    for key in ("format", "format_version", "weights_sha256", "created", "code_version"):
        meta.pop(key, None)
    meta["bundled_as"] = args.name
    dest = REPO / "resources" / "weights" / f"{args.name}.safetensors"
    save_checkpoint(dest, model, meta)
    print(f"wrote {dest} ({dest.stat().st_size / 1e6:.1f} MB)")
    print(
        json.dumps(
            {k: meta.get(k) for k in ("model", "classes", "epoch", "threshold", "notice")}, indent=1
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
