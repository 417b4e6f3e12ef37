"""The bundled real weights (trained on the CC0 IDC patches), their sample, tile-by-tile
explanation of a mosaic and the out-of-distribution warnings.

The realdata tests load the weights as a user does (by library name) and reproduce the test
metrics their sidecars and model cards give, on the development patients they were tested on.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from histoview.explain.ood import ood_warnings, pixel_size_warning, stain_warning
from histoview.models.checkpoint import load_model, read_metadata, sha256_file
from histoview.models.library import bundled_weights_dir, find_checkpoint, list_checkpoints

REAL = ("patchcnn-idc", "amil-idc")


@pytest.fixture(scope="module")
def sample():
    from histoview.viewer._sample_data import idc_sample

    (rgb, kwargs, _), (truth, _, _) = idc_sample()
    return rgb, kwargs, truth


@pytest.fixture(scope="module")
def patchcnn():
    path = find_checkpoint("patchcnn-idc")
    net, meta = load_model(path, device="cpu")
    return net, meta, sha256_file(path)


def test_real_weights_are_listed_apart_from_the_demos_with_their_model_cards():
    entries = {e.name: e for e in list_checkpoints()}
    for name in REAL:
        entry = entries[name]
        assert entry.source == "bundled" and not entry.synthetic
        assert entry.label().endswith("[real tissue]") and "synthetic" not in entry.label()
        assert entry.meta["data"]["layout"] == "idc" and "CC0" in entry.meta["data_licence"]
        card = bundled_weights_dir() / entry.meta["model_card"]
        text = card.read_text()
        assert "CC0" in text and "Janowczyk" in text and "Cruz-Roa" in text
        assert "2.5X" in text and "Research use only" in text
        split = entry.meta["data"]["split"]
        assert (
            split["patients"]["train"] == ["8863", "8864"] and "8865" in split["patients"]["test"]
        )
    assert [e.synthetic for e in list_checkpoints() if e.source == "bundled"] == sorted(
        (e.synthetic for e in list_checkpoints() if e.source == "bundled"), reverse=True
    )  # the demos first: the docks' default stays the demo weights
    assert entries["amil-phantom"].label().endswith("[synthetic demo]")


def test_the_sample_is_a_held_out_patient_with_its_truth(sample):
    rgb, kwargs, truth = sample
    assert rgb.shape == (2350, 2850, 3) and kwargs["scale"] == (4.0, 4.0)
    info = kwargs["metadata"]["histoview"]
    assert info["pixel_size_source"] == "file" and info["patient"] == "8865"
    assert "CC0" in info["notice"] and "Janowczyk" in info["notice"]
    assert truth.shape == rgb.shape[:2] and set(np.unique(truth)) == {0, 1, 2}
    for name in REAL:  # never trained on the sample's patient
        trained = read_metadata(find_checkpoint(name))["data"]["split"]["patients"]["train"]
        assert info["patient"] not in trained


def test_a_mosaic_is_explained_tile_by_tile_and_its_map_finds_the_carcinoma(sample, patchcnn):
    from histoview.explain.run import explain_array
    from histoview.training.metrics import roc_auc

    rgb, _, truth = sample
    net, meta, sha = patchcnn
    expl = explain_array(rgb, "gradcam", net, meta, sha, pixel_size_um=4.0)
    assert expl.extra["tiled"] and expl.extra["tile_px"] == 50  # the data set's patches
    assert np.array(expl.extra["tile_probabilities"], dtype=object).shape == (47, 57)
    assert expl.values.shape == rgb.shape[:2] and expl.target_class == 1  # idc
    assert not expl.extra.get("warnings")  # at its own pixel size and stain: in distribution
    tissue = truth > 0
    assert roc_auc(truth[tissue] == 2, expl.to_dense()[tissue]) >= 0.75
    # one patch is the model's field: classified whole, as in training
    r, c = np.argwhere(truth[25::50, 25::50] == 2)[0] * 50  # an IDC patch of the grid
    one = explain_array(
        rgb[r : r + 50, c : c + 50].copy(), "gradcam", net, meta, sha, pixel_size_um=4.0
    )
    assert "tiled" not in one.extra


def test_ood_warnings_fire_on_a_2x_pixel_size_and_a_foreign_stain(sample, patchcnn):
    from histoview.explain.run import explain_array
    from histoview.preprocessing.phantom import make_phantom

    rgb, _, _ = sample
    net, meta, sha = patchcnn
    trained = meta["pixel_size_um"]
    assert pixel_size_warning(meta, trained) is None
    assert pixel_size_warning(meta, trained * 1.3) is None
    for factor in (2.0, 0.5):
        text = pixel_size_warning(meta, trained * factor)
        assert text and "out of distribution" in text and "2.0 times" in text
    assert (
        pixel_size_warning(meta, None)
        and pixel_size_warning({**meta, "synthetic": True}, None) is None
    )
    assert pixel_size_warning(meta, trained * 2, kind="graph") is None  # graphs work in um
    assert stain_warning(meta, rgb) is None
    phantom = make_phantom("invasive", seed=0).image  # synthetic colours, not the IDC slides'
    assert "stain" in stain_warning(meta, phantom)
    assert (
        stain_warning({k: v for k, v in meta.items() if k != "stain_normalisation"}, phantom)
        is None
    )
    crop = rgb[300:900, 1000:1600].copy()
    expl = explain_array(crop, "gradcam", net, meta, sha, pixel_size_um=2 * trained)
    assert any("times coarser" in w for w in expl.extra["warnings"])
    assert ood_warnings(meta, crop, trained) == []


@pytest.mark.gui
def test_the_sample_opens_from_the_file_menu(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("histoview", "idc_8865")
    image, truth = viewer.layers
    assert image.rgb and tuple(image.scale) == (4.0, 4.0) and not truth.visible
    assert image.metadata["histoview"]["pixel_size_um"] == 4.0


def _channels_last(x):
    """Channels-last memory (same values): the CPU's convolutions and pools run faster."""
    import torch

    return x.contiguous(memory_format=torch.channels_last)


def _on_two_threads(fn, items) -> list:
    """``[fn(item) for item in items]`` under ``torch.no_grad()``, on two threads: each call
    runs on one torch thread (``one_torch_thread``), so the values are those of one call
    after the other, in half the time on two cores."""
    import torch

    def call(item):
        with torch.no_grad():  # (per thread)
            return fn(item)

    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(call, items))


def _reproduce(name: str, patients: set[str] | None = None):
    """The checkpoint's test metrics recomputed from its sidecar's test patients."""
    import torch

    from conftest import shared_data_dir
    from histoview.models.inputs import InputSpec
    from histoview.training.evaluate import dataset_for_checkpoint, training_test_split
    from histoview.training.metrics import roc_auc
    from histoview.training.patient_bootstrap import balanced_accuracy, f1_positive

    data = shared_data_dir("idc")
    net, meta = load_model(find_checkpoint(name), device="cpu")
    net.eval()
    test = training_test_split(dataset_for_checkpoint(str(data), meta), meta)
    spec = InputSpec.from_checkpoint(meta, net)
    if spec.kind == "image":
        batch = np.full((len(test), 50, 50, 3), 255, np.uint8)
        for i, s in enumerate(test):
            im = s.load()[0]
            batch[i, : im.shape[0], : im.shape[1]] = im
        chunks = _on_two_threads(
            lambda i: torch.softmax(net(_channels_last(spec.images(batch[i : i + 512]))), 1)[
                :, 1
            ].numpy(),
            range(0, len(batch), 512),
        )
        p = np.concatenate(chunks)
    else:
        p = np.array(
            _on_two_threads(
                lambda s: float(torch.softmax(net(spec.bag(s.load()[0])[0]), 1)[0, 1]), test
            )
        )
    y = np.array([s.label for s in test])
    decided = (p >= (meta.get("threshold") or 0.5)).astype(int)
    return meta["metrics"]["test"], {
        "n": len(y),
        "balanced_accuracy": balanced_accuracy(y, decided),
        "f1": f1_positive(y, decided),
        "roc_auc": roc_auc(y == 1, p),
    }


def _check(recorded, now):
    assert now["n"] == recorded["n"]
    assert now["balanced_accuracy"] == pytest.approx(recorded["balanced_accuracy"], abs=1e-3)
    assert now["f1"] == pytest.approx(recorded["per_class"]["idc"]["f1"], abs=1e-3)
    assert now["roc_auc"] == pytest.approx(recorded["roc_auc"], abs=1e-3)


@pytest.mark.realdata
def test_the_patch_classifier_reproduces_its_model_card(one_torch_thread):
    recorded, now = _reproduce("patchcnn-idc")
    _check(recorded, now)
    card = (bundled_weights_dir() / "patchcnn-idc.md").read_text()
    assert f"{recorded['balanced_accuracy']:.3f}" in card and f"{recorded['roc_auc']:.3f}" in card


@pytest.mark.realdata
@pytest.mark.slow
def test_the_amil_model_reproduces_its_model_card(one_torch_thread):
    recorded, now = _reproduce("amil-idc")
    _check(recorded, now)
    card = (bundled_weights_dir() / "amil-idc.md").read_text()
    assert f"{recorded['balanced_accuracy']:.3f}" in card and f"{recorded['roc_auc']:.3f}" in card
