"""Make the pictures in the README (run from the repository root, with a display or Xvfb).

    python scripts/make_readme_figures.py

Writes docs/images/phantom.png (the three phantom classes with their ground truth)
and docs/images/compare.png (``histoview demo --screenshot``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from histoview import RESEARCH_NOTICE
from histoview.preprocessing.phantom import make_phantom

OUT = Path("docs/images")


def phantom_figure(path: Path) -> None:
    fig = Figure(figsize=(15, 6.6), dpi=110)
    FigureCanvasAgg(fig)
    colours = {
        "tumour": "#00e5ff",
        "myoepithelial": "#ffd400",
        "epithelial": "#7CFC00",
        "fibroblast": "#ffffff",
        "lymphocyte": "#ff7f0e",
    }
    for j, label in enumerate(("benign", "in_situ", "invasive")):
        ph = make_phantom(label, preset="breakhis", seed=3)
        ax = fig.add_subplot(2, 3, j + 1)
        ax.imshow(ph.image)
        ax.set_title(f"{label.replace('_', ' ')} (synthetic, seed 3)", fontsize=11)
        ax.axis("off")
        ax = fig.add_subplot(2, 3, j + 4)
        ax.imshow(ph.image, alpha=0.45)
        if ph.malignant_mask.any():
            ax.contour(ph.malignant_mask, levels=[0.5], colors="red", linewidths=1.2)
            ax.contourf(ph.tumour_mask, levels=[0.5, 1.5], colors=["red"], alpha=0.18)
        kinds = np.asarray(ph.nucleus_kind)
        for kind, colour in colours.items():
            sel = kinds == kind
            if sel.any():
                ax.scatter(
                    ph.centroids[sel, 1],
                    ph.centroids[sel, 0],
                    s=5,
                    c=colour,
                    label=kind,
                    edgecolors="black",
                    linewidths=0.2,
                )
        ax.set_title("ground truth: lesion outline, tumour cells, nuclei by kind", fontsize=9)
        ax.axis("off")
        if j == 2:
            ax.legend(loc="lower right", fontsize=7, markerscale=2, framealpha=0.8)
    fig.suptitle(
        "histoview's synthetic H&E phantom (700 x 460 px at 0.5 um/px). " + RESEARCH_NOTICE,
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path)


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    phantom_figure(OUT / "phantom.png")
    subprocess.run(
        [sys.executable, "-m", "histoview.cli", "demo", "--screenshot", str(OUT / "compare.png")],
        check=True,
    )
    print(f"wrote {OUT / 'phantom.png'} and {OUT / 'compare.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
