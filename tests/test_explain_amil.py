"""A-MIL explanations: the model, the CLI outputs, and localisation with the demo weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from histoview.cli import main
from histoview.models import create_model
from histoview.models.checkpoint import sha256_file
from histoview.models.library import bundled_checkpoint
from histoview.preprocessing.patches import patch_labels_from_mask
from histoview.preprocessing.phantom import make_phantom
from histoview.training.metrics import roc_auc


def test_amil_attention_sums_to_one_and_paths():
    model = create_model("amil").eval()
    bag = torch.randn(400, 3, 28, 28)
    logits, att = model(bag, return_attention=True)
    assert logits.shape == (1, 2) and att.shape == (1, 400)
    assert torch.allclose(att.sum(), torch.tensor(1.0), atol=1e-5)
    # paper's Table II: 800 features after the second pool, 500 extracted features
    assert model.backbone[8].in_features == 800 and model.backbone[8].out_features == 500
    gated = create_model("amil-gated").eval()
    assert gated.pool.gated and gated(bag).shape == (1, 2)
    big = create_model("amil", patch_size=124).eval()
    assert big(torch.randn(192, 3, 124, 124)).shape == (1, 2)
    # batches of bags
    assert model(torch.randn(3, 10, 3, 28, 28)).shape == (3, 2)


def test_attention_is_permutation_equivariant():
    model = create_model("amil").eval()
    bag = torch.randn(20, 3, 28, 28)
    perm = torch.randperm(20)
    l1, a1 = model(bag, return_attention=True)
    l2, a2 = model(bag[perm], return_attention=True)
    assert torch.allclose(l1, l2, atol=1e-5) and torch.allclose(a1[0, perm], a2[0], atol=1e-6)


@pytest.fixture(scope="module")
def heldout_phantom(tmp_path_factory):
    ph = make_phantom("invasive", preset="breakhis", seed=8_123_457)
    path = tmp_path_factory.mktemp("img") / "phantom_invasive.png"
    Image.fromarray(ph.image).save(path)
    return ph, path


def test_explain_cli_writes_json_and_full_resolution_map(heldout_phantom, tmp_path, capsys):
    ph, path = heldout_phantom
    out = tmp_path / "out"
    assert main(["explain", str(path), "--method", "amil", "--out", str(out)]) == 0
    record = json.loads((out / "phantom_invasive.amil.json").read_text())
    assert record["model"] == "amil" and record["method"] == "amil"
    assert record["predicted_class"] in ("benign", "malignant")
    assert sum(record["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert record["checkpoint_sha256"] == sha256_file(bundled_checkpoint("amil-phantom"))
    assert "synthetic" in record["weights_notice"].lower()
    attention = tifffile.imread(out / "phantom_invasive.amil.tif")
    assert attention.dtype == np.float32 and attention.shape == (460, 700)
    # each patch's weight over its pixels; the 25 x 16 grid covers 700 x 448, the rest is 0
    assert np.ptp(attention[0:28, 0:28]) == 0 and attention[450:].max() == 0
    assert attention.sum() == pytest.approx(28 * 28, rel=1e-3)  # weights sum to 1
    # a second run never overwrites the first
    assert main(["explain", str(path), "--method", "amil", "--out", str(out)]) == 0
    assert (out / "phantom_invasive-1.amil.json").exists() or (
        out / "phantom_invasive.amil-1.json"
    ).exists()


def test_demo_weights_localise_malignant_tissue(heldout_phantom, tmp_path):
    """The bundled A-MIL (trained by training/amil-phantom.yaml) on phantoms it never saw.

    Patches are labelled by the phantom's tumour-cell mask, the instance-level truth of
    MIL (a patch is positive when it holds cancer cells, Ilse et al. 2018)."""
    from histoview.explain.run import explain_array, load_for_method

    net, meta, sha = load_for_method("amil")
    aucs = []
    for seed in range(8_200_000, 8_200_004):
        ph = make_phantom(("invasive", "in_situ")[seed % 2], preset="breakhis", seed=seed)
        expl = explain_array(ph.image, "amil", net, meta, sha)
        assert expl.predicted_label == "malignant"
        labels = patch_labels_from_mask(expl.geometry, ph.tumour_mask)
        aucs.append(roc_auc(labels, expl.values))
    assert np.mean(aucs) >= 0.9, aucs
    benign = make_phantom("benign", preset="breakhis", seed=8_300_001)
    assert explain_array(benign.image, "amil", net, meta, sha).predicted_label == "benign"


def test_explain_errors_are_clear(tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    assert main(["explain", str(bad), "--method", "amil", "--out", str(tmp_path)]) == 2
    assert "bad.png" in capsys.readouterr().err
    assert (
        main(
            [
                "explain",
                str(bad),
                "--method",
                "amil",
                "--checkpoint",
                str(tmp_path / "nope.safetensors"),
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "nope.safetensors" in capsys.readouterr().err
    # A folder (or an empty name) is not taken for the current directory's checkpoint.
    assert (
        main(
            [
                "explain",
                str(bad),
                "--method",
                "amil",
                "--checkpoint",
                str(tmp_path),
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "is not a checkpoint" in capsys.readouterr().err


def test_operating_threshold_decides_the_predicted_class():
    """A binary checkpoint's Youden threshold, not the arg-max, makes the call."""
    from histoview.explain.run import explain_array

    ph = make_phantom("invasive", preset="breakhis", seed=8_500_001)
    net = create_model("amil").eval()
    plain = explain_array(ph.image, "amil", net, {"classes": ["benign", "malignant"]}, None)
    p1 = float(plain.probabilities[1])
    assert plain.predicted_class == int(p1 >= 0.5)
    for threshold, expected in ((p1 + 1e-4, 0), (p1 - 1e-4, 1)):
        meta = {"classes": ["benign", "malignant"], "threshold": threshold}
        expl = explain_array(ph.image, "amil", net, meta, None)
        assert expl.predicted_class == expected and expl.target_class == expected
        assert expl.summary()["predicted_class"] == ["benign", "malignant"][expected]
