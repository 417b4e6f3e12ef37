"""The confusion-matrix figure stays legible: tick labels never overlap, at its own size."""

from __future__ import annotations

import numpy as np
import pytest

from histoview.training.datasets import BACH_CLASSES, BREAKHIS_SUBTYPE_NAMES
from histoview.training.figures import confusion_matrix_figure

CASES = {
    "binary, long names": ["normal_benign", "in_situ_invasive"],
    "binary, short names": ["benign", "malignant"],
    "BACH": list(BACH_CLASSES),
    "BreakHis subtypes": list(BREAKHIS_SUBTYPE_NAMES.values()),
    "12 classes": [f"grade_{i}_tissue_type" for i in range(12)],
}


def _overlaps(boxes) -> list[tuple[int, int]]:
    return [
        (i, j)
        for i in range(len(boxes))
        for j in range(i + 1, len(boxes))
        if boxes[i].overlaps(boxes[j])
    ]


@pytest.mark.parametrize("stacked", [False, True])
@pytest.mark.parametrize("case", sorted(CASES))
def test_tick_labels_do_not_overlap(case, stacked):
    classes = CASES[case]
    k = len(classes)
    cm = np.random.default_rng(0).integers(0, 40, (k, k))
    fig = confusion_matrix_figure(cm, classes, title="Confusion matrix, test set", stacked=stacked)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    size = fig.get_size_inches()
    assert size[0] <= 2 * (1.5 + 0.55 * k + 1.5) and size[1] <= 2 * (2.5 + 0.55 * k)
    panels = [ax for ax in fig.axes if ax.get_title()]  # not the colour bars
    assert len(panels) == 2
    page = fig.bbox
    for ax in panels:
        for ticks in (ax.get_xticklabels(), ax.get_yticklabels()):
            assert [t.get_text().replace("\n", " ") for t in ticks] == [
                c.replace("_", " ") for c in classes
            ]
            boxes = [t.get_window_extent(renderer) for t in ticks]
            angle = ticks[0].get_rotation()
            if angle == 0:
                assert not _overlaps(boxes), (case, [t.get_text() for t in ticks])
            else:  # parallel slanted strips: apart by the cell's width times sin(angle)
                gap = np.diff([b.x1 for b in boxes]).min() * np.sin(np.radians(angle))
                for t in ticks:
                    t.set_rotation(0)
                heights = [t.get_window_extent(renderer).height for t in ticks]
                for t in ticks:
                    t.set_rotation(angle)
                assert max(heights) < gap, (case, max(heights), gap)
            assert all(
                page.x0 - 1 <= b.x0 and b.x1 <= page.x1 + 1 and page.y0 - 1 <= b.y0 for b in boxes
            ), "a label runs off the figure"
        # the cell values sit inside their cells, one per cell
        assert len(ax.texts) == k * k
    # the two panels do not overlap each other either
    a, b = (ax.get_tightbbox(renderer) for ax in panels)
    assert not a.overlaps(b)
