"""Stain normalisation end to end: a config's ``stain`` section is fitted at training start,
stored in the checkpoint sidecar, and applied at inference exactly as in training (the same
output as normalising the image by hand first); HED jitter in training only; old
checkpoints without the field still load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from histoview.models.checkpoint import load_model
from histoview.models.inputs import InputSpec
from histoview.models.registry import create_model, get_model_config
from histoview.models.sidecar import sidecar_problem
from histoview.preprocessing.phantom import make_phantom
from histoview.preprocessing.stain import StainNormaliser
from histoview.preprocessing.transforms import to_tensor
from histoview.training.adapters import make_adapter
from histoview.training.config import validate_config
from histoview.training.datasets import discover_dataset, split_dataset
from histoview.training.run import train_from_config
from histoview.training.schema import ConfigError
from histoview.training.stain_fit import reference_samples

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(tmp_path, **extra):
    return {
        "model": "test_cnn",
        "data": {"type": "phantom", "task": "binary", "n_per_class": 4},
        "split": {"fractions": [0.5, 0.25, 0.25]},
        "train": {"epochs": 1, "batch_size": 2, "device": "cpu"},
        "output_dir": str(tmp_path / "run"),
        **extra,
    }


@pytest.fixture(scope="module")
def macenko_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stain-run")
    cfg = _config(tmp, stain={"method": "macenko"}, augment={"hed_jitter": 0.05})
    events = []
    result = train_from_config(cfg, progress=events.append)
    return cfg, result, events


def test_a_macenko_run_stores_the_normaliser_fitted_on_the_training_split(macenko_run):
    cfg, result, events = macenko_run
    meta = json.loads(result["checkpoint"].with_suffix(".json").read_text())
    assert sidecar_problem(meta) is None
    stored = meta["stain_normalisation"]
    assert stored["method"] == "macenko" and len(stored["stain_matrix"]) == 3
    # the fit saw the training split only (not validation or test images)
    dataset = discover_dataset(cfg["data"])
    _, (train, val, test) = split_dataset(dataset, cfg["split"])
    expected = StainNormaliser("macenko").fit([s.load()[0] for s in reference_samples(train, 64)])
    assert StainNormaliser.from_dict(stored) == expected
    assert stored["fitted_on"]["images"] == len(train) < len(dataset.samples)
    assert meta["input"]["hed_jitter"] == 0.05
    assert any("macenko stain normalisation fitted on" in e.get("text", "") for e in events)


def test_inference_applies_it_as_normalising_by_hand_first(macenko_run):
    from histoview.explain.gradcam import explain_cnn

    _, result, _ = macenko_run
    model, meta = load_model(result["checkpoint"], device="cpu")
    model.eval()
    norm = StainNormaliser.from_dict(meta["stain_normalisation"])
    image = make_phantom("invasive", seed=77).image
    cfg = model.model_config
    spec = InputSpec.from_checkpoint(meta, model)
    assert spec.stain == norm
    by_hand = to_tensor(norm.transform(image), cfg.mean, cfg.std, size=cfg.input_size)
    raw = to_tensor(image, cfg.mean, cfg.std, size=cfg.input_size)
    assert torch.equal(spec.model_input(image), by_hand)
    assert not torch.equal(by_hand, raw)
    with torch.no_grad():
        p_hand = torch.softmax(model(by_hand[None]), -1)[0].numpy()
        p_raw = torch.softmax(model(raw[None]), -1)[0].numpy()
    expl = explain_cnn(model, image, checkpoint_meta=meta)
    np.testing.assert_allclose(expl.probabilities, p_hand, rtol=1e-5, atol=1e-6)
    assert not np.allclose(p_hand, p_raw, rtol=0, atol=1e-7)  # so the check above can fail
    # the faithfulness predictor goes through the same spec
    from histoview.explain._faithfulness_inputs import ModelPredictor

    predictor = ModelPredictor(model, meta)
    np.testing.assert_allclose(predictor(image[None])[0], p_hand, rtol=1e-5, atol=1e-6)


def test_training_and_evaluation_inputs_are_normalised_and_jitter_is_training_only():
    mcfg = get_model_config("test_cnn")
    image = make_phantom("in_situ", seed=5).image
    norm = StainNormaliser("reinhard").fit(make_phantom("benign", seed=6).image)
    plain = make_adapter(mcfg, {}, {})
    normed = make_adapter(mcfg, {}, {}, stain=norm.to_dict())
    jittered = make_adapter(mcfg, {}, {}, stain=norm, hed_jitter=0.1)
    from histoview.training.datasets import Sample

    sample = Sample(label=1, patient="p", phantom=("in_situ", 5, "breakhis"))
    rng = np.random.default_rng
    evaluated = normed.prepare(sample, train=False, rng=rng(0))
    cfg = mcfg
    assert torch.equal(
        evaluated, to_tensor(norm.transform(image), cfg.mean, cfg.std, cfg.input_size)
    )
    assert not torch.equal(evaluated, plain.prepare(sample, train=False, rng=rng(0)))
    assert torch.equal(jittered.prepare(sample, train=False, rng=rng(0)), evaluated)
    a = normed.prepare(sample, train=True, rng=rng(1))
    b = jittered.prepare(sample, train=True, rng=rng(1))
    assert a.shape == b.shape and not torch.equal(a, b)
    assert torch.equal(b, jittered.prepare(sample, train=True, rng=rng(1)))  # deterministic
    import pickle

    clone = pickle.loads(pickle.dumps(jittered))  # data-loader workers get the normaliser too
    assert torch.equal(clone.prepare(sample, train=False, rng=rng(0)), evaluated)


def test_an_old_checkpoint_without_the_field_still_loads(tmp_path):
    from histoview.models.checkpoint import save_checkpoint

    model = create_model("test_cnn", num_classes=2)
    meta = {"model": "test_cnn", "classes": ["benign", "malignant"], "input": {}}
    save_checkpoint(tmp_path / "old.safetensors", model, meta)
    loaded, loaded_meta = load_model(tmp_path / "old.safetensors", device="cpu")
    assert "stain_normalisation" not in loaded_meta
    spec = InputSpec.from_checkpoint(loaded_meta, loaded)
    image = make_phantom("benign", seed=3).image
    assert spec.stain is None and spec.normalise_stain(image) is image


def test_a_broken_stored_normaliser_is_refused_by_name():
    meta = {"format": "histoview-checkpoint", "model": "test_cnn", "classes": ["a", "b"]}
    bad = {"method": "macenko", "stain_matrix": [[0.6, 0.2], [0.7, 0.8]]}
    problem = sidecar_problem({**meta, "stain_normalisation": bad})
    assert problem.startswith("field 'stain_normalisation.stain_matrix': expected a 3 x 2 list")
    problem = sidecar_problem({**meta, "stain_normalisation": {"method": "reinhard"}})
    assert "needs 'lab_means' and 'lab_stds'" in problem


def test_stain_reference_file_is_relative_to_the_config(tmp_path):
    from PIL import Image

    Image.fromarray(make_phantom("invasive", seed=9).image).save(tmp_path / "ref.png")
    cfg = validate_config(
        _config(tmp_path, stain={"method": "reinhard", "reference": "ref.png"}), base_dir=tmp_path
    )
    assert cfg["stain"]["reference"] == str(tmp_path / "ref.png")
    from histoview.training.stain_fit import fit_stain_normaliser

    norm = fit_stain_normaliser(cfg["stain"], [], source="c.yaml")
    assert norm.fitted_on["images"] == 1
    Image.fromarray(np.full((64, 64, 3), 250, np.uint8)).save(tmp_path / "blank.png")
    with pytest.raises(ValueError, match=r"c.yaml: stain.reference .*blank.png.*0 tissue pixels"):
        fit_stain_normaliser(
            {"method": "macenko", "reference": str(tmp_path / "blank.png")}, [], source="c.yaml"
        )


def test_config_problems_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="field 'stain.method': expected one of 'macenko'"):
        validate_config(_config(tmp_path, stain={"method": "vahadane"}))
    with pytest.raises(ConfigError, match="field 'augment.hed_jitter': expected a stain-jitter"):
        validate_config(_config(tmp_path, augment={"hed_jitter": 2}))
    graph = {**_config(tmp_path, augment={"hed_jitter": 0.05}), "model": "test_rsf"}
    with pytest.raises(ConfigError, match="applies to bag and image models, not to graph"):
        validate_config(graph)
