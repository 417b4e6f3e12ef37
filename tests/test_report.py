"""The comparison figure and its PNG / PDF files (histoview.explain.report)."""

from __future__ import annotations

import datetime
import re

import numpy as np
import pytest

from histoview import RESEARCH_NOTICE, SYNTHETIC_NOTICE
from histoview.explain.agreement import agreement_table
from histoview.explain.base import DenseMap, Explanation, NucleiPoints
from histoview.explain.faithfulness import deletion_insertion
from histoview.explain.report import render_figure, save_pdf, save_png, scale_bar_length_um
from histoview.preprocessing.patches import extract_patches

CLASSES = ("benign", "malignant")
SHA_A = "a1b2c3d4e5f6" + "0" * 52
SHA_B = "9f8e7d6c5b4a" + "1" * 52


def tissue() -> np.ndarray:
    img = np.full((96, 128, 3), (236, 178, 205), np.uint8)
    img[24:56, 40:88] = (200, 30, 40)
    return img


def explanations(synthetic: bool = False) -> list[Explanation]:
    img = tissue()
    patches, grid = extract_patches(img, 16)
    weights = (patches[..., 1] < 100).mean(axis=(1, 2)).astype(np.float32)
    probs = np.array([0.13, 0.87])
    amil = Explanation(
        "amil",
        "amil",
        CLASSES,
        probs,
        1,
        weights,
        grid,
        checkpoint_sha256=SHA_A,
        synthetic=synthetic,
    )
    yy, xx = np.mgrid[0:12, 0:16]
    cam = np.exp(-(((yy - 5) / 3) ** 2 + ((xx - 8) / 3) ** 2)).astype(np.float32)
    gradcam = Explanation(
        "gradcam",
        "resnet18",
        CLASSES,
        np.array([0.31, 0.69]),
        1,
        cam,
        DenseMap((96, 128)),
        checkpoint_sha256=SHA_B,
    )
    cents = np.array([(r, c) for r in range(8, 96, 20) for c in range(8, 128, 20)], float)
    edges = np.array([[i, i + 1] for i in range(len(cents) - 1)]).T
    graph = Explanation(
        "graph",
        "rsf-attention",
        CLASSES,
        np.array([0.6, 0.4]),
        1,
        np.linspace(0, 1, len(cents), dtype=np.float32),
        NucleiPoints(
            cents,
            (96, 128),
            np.concatenate([edges, edges[::-1]], 1),
            np.ones(2 * edges.shape[1], np.float32),
        ),
    )
    return [amil, gradcam, graph]


def test_scale_bar_lengths_are_round():
    assert scale_bar_length_um(700, 0.5) == 50  # 350 um wide
    assert scale_bar_length_um(2048, 0.42) == 200
    assert scale_bar_length_um(128, 0.5) == 10
    assert scale_bar_length_um(10, 0.01) == 1  # nothing fits: the smallest


def test_png_is_a_nonblank_picture(tmp_path):
    from PIL import Image

    fig = render_figure(tissue(), explanations()[0], pixel_size_um=0.5, image_name="tissue.png")
    assert len(fig.axes) == 2  # one panel and its colour bar
    path = save_png(fig, tmp_path / "report.png")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > 300 and im.height > 300
        arr = np.asarray(im.convert("RGB"))
    assert arr.std() > 10 and len(np.unique(arr.reshape(-1, 3), axis=0)) > 50


def pdf_text(path) -> tuple[int, str]:
    from pypdf import PdfReader

    reader = PdfReader(path)
    return len(reader.pages), "\n".join(p.extract_text() for p in reader.pages)


def test_pdf_is_one_page_of_searchable_text(tmp_path):
    expls = explanations(synthetic=True)
    img = tissue()

    def model(images):
        p = np.clip((images[..., 1] < 100).mean(axis=(1, 2)) / 0.1, 0, 1)
        return np.stack([1 - p, p], 1)

    faith = {e.method: deletion_insertion(e, model, img, steps=5, baseline="mean") for e in expls}
    fig = render_figure(
        img,
        expls,
        pixel_size_um=0.5,
        image_name="breast_tissue_01.tif",
        agreement=agreement_table(expls),
        faithfulness=faith,
    )
    path = save_pdf(fig, tmp_path / "report.pdf")
    pages, text = pdf_text(path)
    assert pages == 1
    flat = re.sub(r"\s+", " ", text)
    for needle in (
        "amil",
        "gradcam",
        "graph",
        "malignant",
        "benign",
        "0.87",
        "0.69",
        "0.60",
        "resnet18",
        "rsf-attention",
        SHA_A[:8],
        SHA_B[:8],
        "breast_tissue_01.tif",
        datetime.date.today().isoformat(),
        "normalised importance",
        "10 µm",
        "explains: malignant",
        "Spearman",
        "deletion",
    ):
        assert needle in flat, f"{needle!r} not in the PDF text"
    assert "research use only, not for diagnosis" in flat.lower()
    assert SYNTHETIC_NOTICE in flat


def test_no_scale_bar_without_pixel_size_and_no_synthetic_notice_for_real_weights(tmp_path):
    fig = render_figure(tissue(), explanations()[1:2], image_name="x.png", date="2024-01-02")
    _, text = pdf_text(save_pdf(fig, tmp_path / "r.pdf"))
    assert "µm" not in text and "2024-01-02" in text
    assert RESEARCH_NOTICE in re.sub(r"\s+", " ", text)
    assert "Synthetic" not in text


def test_existing_files_are_never_overwritten(tmp_path):
    fig = render_figure(tissue(), explanations()[1])
    for save, name in ((save_png, "a.png"), (save_pdf, "a.pdf")):
        path = tmp_path / name
        path.write_bytes(b"mine")
        with pytest.raises(FileExistsError, match=name):
            save(fig, path)
        assert path.read_bytes() == b"mine"
        save(fig, path, overwrite=True)
        assert path.read_bytes() != b"mine"


def test_numbered_names_and_no_partial_file_on_error(tmp_path):
    fig = render_figure(tissue(), explanations()[1])
    (tmp_path / "a.png").write_bytes(b"mine")
    assert save_png(fig, tmp_path / "a.png", numbered=True) == tmp_path / "a-1.png"
    assert save_pdf(fig, tmp_path / "a.pdf", numbered=True) == tmp_path / "a.pdf"
    assert (tmp_path / "a.png").read_bytes() == b"mine"

    def fails_midway(fh, **kwargs):
        fh.write(b"%PDF-1.4 half a page")
        raise RuntimeError("renderer failed")

    fig.savefig = fails_midway
    for save, name in ((save_png, "b.png"), (save_pdf, "b.pdf")):
        with pytest.raises(RuntimeError, match="renderer failed"):
            save(fig, tmp_path / name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-1.png", "a.pdf", "a.png"]


def test_bad_inputs():
    with pytest.raises(ValueError, match="no explanations"):
        render_figure(tissue(), [])
    with pytest.raises(ValueError, match="titles"):
        render_figure(tissue(), explanations(), titles=["one"])
