"""The explanation report and its PNG / PDF files (histoview.explain.report)."""

from __future__ import annotations

import datetime
import re

import numpy as np
import pytest

from histoview import RESEARCH_NOTICE, SYNTHETIC_NOTICE
from histoview.explain._report_common import MAX_EDGES_DRAWN, scale_bar_length_um
from histoview.explain.agreement import agreement_table
from histoview.explain.base import DenseMap, Explanation, NucleiPoints
from histoview.explain.faithfulness import deletion_insertion
from histoview.explain.methods import METHODS
from histoview.explain.report import (
    Report,
    default_paper,
    render_figure,
    save_pdf,
    save_png,
)
from histoview.preprocessing.patches import extract_patches

CLASSES = ("benign", "malignant")
SHA_A = "a1b2c3d4e5f6" + "0" * 52
SHA_B = "9f8e7d6c5b4a" + "1" * 52
#: PDF page sizes in points (1/72 inch), portrait
A4_PT, LETTER_PT = (595.28, 841.89), (612.0, 792.0)


def tissue() -> np.ndarray:
    img = np.full((96, 128, 3), (236, 178, 205), np.uint8)
    img[24:56, 40:88] = (200, 30, 40)
    return img


def cam() -> np.ndarray:
    yy, xx = np.mgrid[0:12, 0:16]
    return np.exp(-(((yy - 5) / 3) ** 2 + ((xx - 8) / 3) ** 2)).astype(np.float32)


def dt_gradcam() -> Explanation:
    from histoview.explain.gradcam import dynamic_threshold

    values, thr = dynamic_threshold(cam())
    return Explanation(
        "dt-gradcam",
        "resnet18",
        CLASSES,
        np.array([0.31, 0.69]),
        1,
        values,
        DenseMap((96, 128)),
        checkpoint_sha256=SHA_B,
        threshold=thr,
        extra={"threshold_method": "otsu"},
    )


def explanations(synthetic: bool = False) -> list[Explanation]:
    img = tissue()
    patches, grid = extract_patches(img, 16)
    weights = (patches[..., 1] < 100).mean(axis=(1, 2)).astype(np.float32)
    amil = Explanation(
        "amil",
        "amil",
        CLASSES,
        np.array([0.13, 0.87]),
        1,
        weights,
        grid,
        checkpoint_sha256=SHA_A,
        synthetic=synthetic,
    )
    gradcam = Explanation(
        "gradcam",
        "resnet18",
        CLASSES,
        np.array([0.31, 0.69]),
        1,
        cam(),
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


def model(images):
    p = np.clip((images[..., 1] < 100).mean(axis=(1, 2)) / 0.1, 0, 1)
    return np.stack([1 - p, p], 1)


def pdf_pages(path) -> list[tuple[tuple[float, float], str]]:
    """((width, height) in points, text with whitespace collapsed) per page."""
    from pypdf import PdfReader

    out = []
    for page in PdfReader(path).pages:
        box = page.mediabox
        text = re.sub(r"\s+", " ", page.extract_text())
        out.append(((float(box.width), float(box.height)), text))
    return out


def pdf_text(path) -> str:
    return " ".join(text for _, text in pdf_pages(path))


def test_scale_bar_lengths_are_round():
    assert scale_bar_length_um(700, 0.5) == 50  # 350 um wide
    assert scale_bar_length_um(2048, 0.42) == 200
    assert scale_bar_length_um(128, 0.5) == 10
    assert scale_bar_length_um(10, 0.01) == 1  # nothing fits: the smallest


@pytest.mark.parametrize(
    ("environ", "paper"),
    [
        ({"LANG": "en_US.UTF-8"}, "letter"),
        ({"LANG": "en_GB.UTF-8"}, "a4"),
        ({"LANG": "de_DE.UTF-8", "LC_PAPER": "en_CA.UTF-8"}, "letter"),  # LC_PAPER over LANG
        ({"LC_ALL": "fr_FR.UTF-8", "LC_PAPER": "en_US.UTF-8"}, "a4"),  # LC_ALL over LC_PAPER
        ({"LANG": "es_MX"}, "letter"),
        ({"LANG": "fil_PH.UTF-8"}, "letter"),
        ({"LANG": "C.UTF-8"}, "a4"),
        ({"LANG": "POSIX"}, "a4"),
        ({"LANG": "en_US.UTF-8", "HISTOVIEW_PAPER": "A4"}, "a4"),  # the setting wins
        ({"LANG": "de_DE", "HISTOVIEW_PAPER": "US Letter"}, "letter"),
    ],
)
def test_paper_follows_the_setting_then_the_paper_locale(environ, paper):
    assert default_paper(environ) == paper


def test_unknown_paper_is_refused(monkeypatch):
    monkeypatch.setenv("HISTOVIEW_PAPER", "a5")
    with pytest.raises(ValueError, match="a5"):
        default_paper()
    with pytest.raises(ValueError, match="legal"):
        render_figure(tissue(), explanations()[1], paper="legal")


@pytest.mark.parametrize(("paper", "size"), [("a4", A4_PT), ("letter", LETTER_PT)])
def test_pdf_pages_are_a4_or_letter(tmp_path, paper, size):
    report = render_figure(tissue(), explanations(), paper=paper)
    assert (report.paper, report.orientation) == (paper, "portrait")
    pages = pdf_pages(save_pdf(report, tmp_path / "r.pdf"))
    assert len(pages) == 1
    np.testing.assert_allclose(pages[0][0], size, atol=0.1)
    landscape = render_figure(tissue(), explanations(), paper=paper, orientation="landscape")
    ((box, _),) = pdf_pages(save_pdf(landscape, tmp_path / "l.pdf"))
    np.testing.assert_allclose(box, size[::-1], atol=0.1)


@pytest.mark.parametrize(("setting", "size"), [("letter", LETTER_PT), ("a4", A4_PT)])
def test_the_paper_setting_is_honoured(tmp_path, monkeypatch, setting, size):
    monkeypatch.setenv("LC_ALL", "en_US.UTF-8" if setting == "a4" else "de_DE.UTF-8")
    monkeypatch.setenv("HISTOVIEW_PAPER", setting)
    ((box, _),) = pdf_pages(save_pdf(render_figure(tissue(), explanations()), tmp_path / "a.pdf"))
    np.testing.assert_allclose(box, size, atol=0.1)
    other = "a4" if setting == "letter" else "letter"  # an argument beats the setting
    assert render_figure(tissue(), explanations()[0], paper=other).paper == other


def test_png_is_the_same_page_as_a_picture(tmp_path):
    from PIL import Image

    report = render_figure(tissue(), explanations()[0], pixel_size_um=0.5, paper="a4")
    assert isinstance(report, Report) and len(report.pages) == 1
    path = save_png(report, tmp_path / "report.png", dpi=100)
    with Image.open(path) as im:
        assert im.format == "PNG"
        np.testing.assert_allclose(im.size, (826.8, 1169.3), atol=1)  # A4 at 100 dpi
        assert im.text["Disclaimer"] == RESEARCH_NOTICE
        arr = np.asarray(im.convert("RGB"))
    assert arr.std() > 10 and len(np.unique(arr.reshape(-1, 3), axis=0)) > 50


def test_pdf_carries_prediction_model_agreement_faithfulness_and_notices(tmp_path):
    expls = explanations(synthetic=True) + [dt_gradcam()]
    img = tissue()
    faith = {e.method: deletion_insertion(e, model, img, steps=5, baseline="mean") for e in expls}
    agreement = agreement_table(expls)
    report = render_figure(
        img,
        expls,
        pixel_size_um=0.5,
        image_name="breast_tissue_01.tif",
        agreement=agreement,
        faithfulness=faith,
        paper="a4",
    )
    pages = pdf_pages(save_pdf(report, tmp_path / "report.pdf"))
    assert len(pages) == 1
    text = pages[0][1]
    for needle in (
        *(METHODS[e.method].title for e in expls),
        *(METHODS[e.method].values[:40] for e in expls),  # what 0 and 1 mean
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
        "histoview",
        "normalised importance",
        "10 µm",
        "explains: malignant",
        "Spearman",
        "IoU",
        "deletion",
        "insertion",
    ):
        assert needle in text, f"{needle!r} not in the PDF text"
    assert RESEARCH_NOTICE.lower() in text.lower() and SYNTHETIC_NOTICE in text
    n = len(expls)  # every off-diagonal cell of the agreement table: "rho / iou"
    for i in range(n):
        for j in range(n):
            if i != j:
                rho, iou = agreement["spearman"][i][j], agreement["topk_iou"][i][j]
                assert f"{rho:.2f} / {iou:.2f}" in text
    for res in faith.values():  # one small plot per method, with its areas
        assert f"deletion AUC {res.deletion_auc:.2f}" in text
        assert f"insertion AUC {res.insertion_auc:.2f}" in text
    curves = [
        ax
        for ax in report.axes
        if [line.get_label() for line in ax.lines] == ["deletion", "insertion"]
    ]
    assert len(curves) == len(faith)


@pytest.mark.parametrize(
    "name",
    [
        "SOB_M_DC-14-10926-100-001.png",  # a BreakHis name: ran into the research line
        "TCGA-A2-A0CM-01Z-00-DX1.AC4901DE-4B6D-4185-BB9F-156033839828_region_12_of_40.svs",
    ],
)
def test_no_text_of_the_page_runs_into_another_or_off_the_page(name):
    report = render_figure(
        tissue(), explanations(synthetic=True), pixel_size_um=0.5, image_name=name, paper="a4"
    )
    fig = report.pages[0]
    renderer = fig.canvas.get_renderer()
    page = fig.bbox
    boxes = [
        (t.get_text(), t.get_window_extent(renderer))
        for t in fig.texts  # the header, footer and panel titles placed on the page
        if t.get_text().strip()
    ]
    shown = " ".join(text for text, _ in boxes)
    assert RESEARCH_NOTICE in shown and name[:20] in shown
    for i, (text, box) in enumerate(boxes):
        assert page.x0 <= box.x0 and box.x1 <= page.x1, f"{text!r} runs off the page"
        for other, obox in boxes[i + 1 :]:
            assert not box.overlaps(obox), f"{text!r} runs into {other!r}"


def test_agreement_of_maps_explaining_different_classes_is_marked(tmp_path):
    expls = explanations()
    graph = expls[2]  # explains "malignant" like the others; now "benign"
    expls[2] = Explanation(
        graph.method, graph.model, CLASSES, graph.probabilities, 0, graph.values, graph.geometry
    )
    report = render_figure(tissue(), expls, pixel_size_um=0.5, paper="a4")
    text = pdf_text(save_pdf(report, tmp_path / "report.pdf"))
    assert "explain different classes" in text and "Nuclei importance: benign" in text
    table = report.info["agreement"]  # in panel order: A-MIL, Grad-CAM, nuclei
    assert table["explains"] == ["malignant", "malignant", "benign"]
    rho, iou = table["spearman"][0][2], table["topk_iou"][0][2]
    assert f"{rho:.2f} / {iou:.2f} *" in text  # the pair with the graph map is marked
    rho, iou = table["spearman"][0][1], table["topk_iou"][0][1]
    assert f"{rho:.2f} / {iou:.2f} *" not in text  # amil and gradcam: the same class


def test_flat_faithfulness_curves_are_said_to_tell_nothing(tmp_path):
    """A saturated model (p = 1.00 whatever is removed) draws deletion and insertion as one
    flat line at 1: the plot says so, in the report and in the compare dock's figure."""
    from matplotlib.figure import Figure

    from histoview.explain.faithfulness import FLAT_NOTE, FaithfulnessResult, flat_curves
    from histoview.viewer._compare_results import draw_faithfulness

    f = np.linspace(0, 1, 6)
    flat = FaithfulnessResult(f, np.full(6, 0.999), np.full(6, 1.0), 0.999, 1.0, "amil")
    falling = FaithfulnessResult(f, 1 - f, f, 0.5, 0.5, "gradcam")
    assert flat_curves(flat) and flat_curves(flat.to_dict()) and not flat_curves(falling)
    assert not flat_curves({"deletion": None, "insertion": []})  # no curves: nothing said
    expls = explanations()[:2]
    report = render_figure(
        tissue(),
        expls,
        pixel_size_um=0.5,
        paper="a4",
        faithfulness={"amil": flat, "gradcam": falling},
    )
    text = pdf_text(save_pdf(report, tmp_path / "report.pdf"))
    assert text.count("cannot judge the map") == 1  # the flat plot only
    fig = Figure()
    draw_faithfulness(fig, {"amil": flat, "gradcam": falling})
    said = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert sum(" ".join(t.split()) == FLAT_NOTE for t in said) == 1


def test_dt_gradcam_shows_its_threshold(tmp_path):
    from matplotlib.contour import ContourSet

    dt = dt_gradcam()
    thr = float(dt.threshold)  # the map peaks at 1 and is 0 below the threshold: same scale
    report = render_figure(tissue(), [explanations()[1], dt], paper="a4")
    text = pdf_text(save_pdf(report, tmp_path / "dt.pdf"))
    assert f"{thr:.2f} threshold" in text and f"Otsu threshold {thr:.2f}" in text
    outlined = [ax for ax in report.axes if any(isinstance(c, ContourSet) for c in ax.collections)]
    assert len(outlined) == 1  # DT Grad-CAM's region, not Grad-CAM's
    colour_bars = [ax for ax in report.axes if hasattr(ax, "_colorbar")]
    marked = [ax for ax in colour_bars if any(abs(y - thr) < 1e-6 for y in ax.get_yticks())]
    assert len(colour_bars) == 2 and len(marked) == 1


def test_below_the_threshold_the_tissue_stays_bare():
    from matplotlib import colormaps

    from histoview.explain._report_panels import _blend

    img = tissue()
    dt = dt_gradcam()
    below = dt.to_dense(img.shape[:2]) == 0
    assert below.any() and not below.all()
    turbo = colormaps["turbo"]
    bare = _blend(img, dt, turbo, 0.55, thresholded=True)
    np.testing.assert_allclose(bare[below], img[below] / 255, atol=1e-6)
    tinted = _blend(img, explanations()[1], turbo, 0.55, thresholded=False)
    assert np.abs(tinted - img / 255).max(axis=-1).min() > 0.01  # Grad-CAM tints everywhere


def test_panels_use_the_registry_colour_maps():
    expls = explanations() + [dt_gradcam()]
    report = render_figure(tissue(), expls, paper="a4")
    bars = [ax._colorbar.cmap.name for ax in report.axes if hasattr(ax, "_colorbar")]
    assert bars == [METHODS[e.method].colormap for e in expls]


def test_agreement_is_shown_in_panel_order_and_computed_when_missing(tmp_path):
    expls = explanations()
    table = agreement_table(expls[::-1])  # the compare dock may list methods in another order
    report = render_figure(tissue(), expls, agreement=table)
    shown = report.info["agreement"]
    assert shown["methods"] == ["amil", "gradcam", "graph"]
    direct = agreement_table(expls)
    np.testing.assert_allclose(
        np.array(shown["spearman"], float), np.array(direct["spearman"], float), atol=1e-6
    )
    computed = render_figure(tissue(), expls).info["agreement"]  # none given: computed
    assert computed["spearman"] == direct["spearman"]
    text = pdf_text(save_pdf(render_figure(tissue(), expls), tmp_path / "a.pdf"))
    assert "Agreement between methods" in text and "Faithfulness" in text
    assert "Not computed" in text  # faithfulness needs the models
    assert render_figure(tissue(), expls, agreement=False).info["agreement"] is None
    assert render_figure(tissue(), expls[0]).info["agreement"] is None  # one method


def test_many_methods_take_several_pages_of_the_same_paper(tmp_path):
    from PIL import Image

    expls = explanations() * 3
    report = render_figure(tissue(), expls, paper="letter")
    assert len(report.pages) >= 2
    pages = pdf_pages(save_pdf(report, tmp_path / "many.pdf"))
    assert len(pages) == len(report.pages)
    for box, text in pages:  # portrait or landscape, whichever needs fewer pages
        np.testing.assert_allclose(sorted(box), sorted(LETTER_PT), atol=0.1)
        assert (box[0] > box[1]) == (report.orientation == "landscape")
        assert RESEARCH_NOTICE in text
    assert f"page 1 of {len(pages)}" in pages[0][1]
    titles = report.info["titles"]
    assert len(set(titles)) == len(titles) and "A-MIL attention (amil) #2" in titles
    width, height = (np.array(pages[0][0]) / 72 * 50).astype(int)
    with Image.open(save_png(report, tmp_path / "many.png", dpi=50)) as im:
        assert im.width == width and im.height > len(pages) * height  # one below the other


def test_no_contrast_and_many_edges_are_said_not_drawn(tmp_path):
    flat = Explanation(
        "gradcam",
        "resnet18",
        CLASSES,
        np.array([0.4, 0.6]),
        1,
        np.full((12, 16), 0.5, np.float32),
        DenseMap((96, 128)),
    )
    rng = np.random.default_rng(0)
    cents = rng.uniform(0, 96, (400, 2))
    ei = np.array([(i, j) for i in range(400) for j in range(i + 1, min(i + 12, 400))]).T
    assert ei.shape[1] > MAX_EDGES_DRAWN
    dense_graph = Explanation(
        "graph",
        "rsf",
        CLASSES,
        np.array([0.6, 0.4]),
        0,
        rng.random(400).astype(np.float32),
        NucleiPoints(cents, (96, 128), ei),
    )
    report = render_figure(tissue(), [flat, dense_graph], paper="a4")
    text = pdf_text(save_pdf(report, tmp_path / "n.pdf"))
    assert "no contrast" in text.lower()
    assert f"its {ei.shape[1]} graph edges are not drawn" in text
    panel = next(ax for ax in report.axes if len(ax.collections) and ax.images)
    assert all(len(getattr(c, "get_segments", list)()) == 0 for c in panel.collections)


def test_no_scale_bar_without_pixel_size_and_no_synthetic_notice_for_real_weights(tmp_path):
    fig = render_figure(tissue(), explanations()[1:2], image_name="x.png", date="2024-01-02")
    text = pdf_text(save_pdf(fig, tmp_path / "r.pdf"))
    assert "µm" not in text and "2024-01-02" in text
    assert RESEARCH_NOTICE in text
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
        if hasattr(fh, "write"):  # PNG: the file; PDF: matplotlib's PdfPages over the file
            fh.write(b"half a picture")
        raise RuntimeError("renderer failed")

    fig.pages[0].savefig = fails_midway  # a page failing midway, for PNG and PDF alike
    for save, name in ((save_png, "b.png"), (save_pdf, "b.pdf")):
        with pytest.raises(RuntimeError, match="renderer failed"):
            save(fig, tmp_path / name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-1.png", "a.pdf", "a.png"]


def test_bad_inputs():
    with pytest.raises(ValueError, match="no explanations"):
        render_figure(tissue(), [])
    with pytest.raises(ValueError, match="titles"):
        render_figure(tissue(), explanations(), titles=["one"])
    with pytest.raises(ValueError, match="orientation"):
        render_figure(tissue(), explanations(), orientation="sideways")
