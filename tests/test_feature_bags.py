"""Training an A-MIL head on cached slide embeddings (histoview.training.feature_bags): the
slides' bags come from the feature cache, split by patient; `histoview train` writes a
whole A-MIL checkpoint with the source extractor, which explains a slide from the same cache
entry without the slide engine, its prediction the trained head on the cached features."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from _slides import GLASS, write_slide  # noqa: E402

#: (file, label, patient): 3 benign and 3 invasive patients, one with two slides
SLIDES = [
    ("b0.tif", "benign", "p0"),
    ("b1.tif", "benign", "p1"),
    ("b1-second.tif", "benign", "p1"),
    ("b2.tif", "benign", "p2"),
    ("m0.tif", "malignant", "p3"),
    ("m1.tif", "malignant", "p4"),
    ("m2.tif", "malignant", "p5"),
]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    from histoview.preprocessing.phantom import make_phantom

    root = tmp_path_factory.mktemp("feature-bags")
    (root / "slides").mkdir()
    for i, (name, label, _) in enumerate(SLIDES):
        canvas = np.full((448, 448, 3), GLASS, np.uint8)
        kind = "benign" if label == "benign" else "invasive"
        canvas[16:432, 16:432] = make_phantom(kind, shape=(416, 416), seed=20 + i).image
        write_slide(root / "slides" / name, canvas)
    lines = ["path,label,patient", *(f"slides/{n},{lab},{p}" for n, lab, p in SLIDES)]
    (root / "slides.csv").write_text("\n".join(lines) + "\n")
    return root


def _demo_checkpoint():
    from histoview.explain.methods import get_method
    from histoview.models.library import bundled_checkpoint

    return bundled_checkpoint(get_method("amil").demo_weights)


def test_missing_embeddings_are_named_and_the_split_keeps_patients(table, tmp_path):
    from histoview.training.datasets import discover_dataset
    from histoview.training.feature_bags import slide_features_dataset

    spec = {"slides": str(table / "slides.csv")}
    spec |= {"checkpoint": str(_demo_checkpoint()), "cache": str(tmp_path / "empty")}
    with pytest.raises(ValueError, match=r"7 slides have no cached embeddings.*data.fill"):
        slide_features_dataset(**spec)
    with pytest.raises(ValueError, match="histoview train CONFIG runs it"):
        discover_dataset({"type": "slide_features", **spec})
    with pytest.raises(ValueError, match="a slide_features sample"):
        from histoview.training.feature_bags import FeatureSample

        FeatureSample(0, "p", table / "slides" / "b0.tif", entry="x").load()


def test_train_writes_an_amil_head_checkpoint_that_explains_from_the_cache(
    table, tmp_path, capsys, monkeypatch
):
    import histoview.explain.slide_engine as engine
    from histoview.cli import main
    from histoview.explain.feature_cache import FeatureCache, extractor_hash
    from histoview.explain.run import load_for_method
    from histoview.explain.slide_run import explain_slide
    from histoview.models.checkpoint import load_model, read_metadata
    from histoview.training.datasets import split_dataset
    from histoview.training.feature_bags import slide_features_dataset

    source = _demo_checkpoint()
    config = table / "head.yaml"
    config.write_text(
        "model: amil\n"
        "data: {type: slide_features, slides: slides.csv, cache: cache, fill: true, "
        f"checkpoint: '{source}'}}\n"
        "train: {epochs: 2, batch_size: 2, lr: 0.001}\n"
        "output_dir: run\n"
    )
    monkeypatch.chdir(table)  # relative paths: against the current folder
    assert main(["train", str(config)]) == 0
    captured = capsys.readouterr()
    assert "embedding" in captured.out + captured.err and "checkpoint:" in captured.out
    cache = FeatureCache(table / "cache")
    assert cache.info()["entries"] == len(SLIDES)
    ckpt = table / "run" / "best.safetensors"
    meta, src_meta = read_metadata(ckpt), read_metadata(source)
    for key in ("model", "patch", "pixel_size_um", "classes"):
        assert meta[key] == src_meta[key]
    assert meta["data"]["split"]["test"] >= 1 and "test" in meta["metrics"]
    src, _ = load_model(source, device="cpu")
    net, _ = load_model(ckpt, device="cpu")
    assert extractor_hash(net.backbone) == extractor_hash(src.backbone)  # frozen, the source's
    assert not torch.equal(net.pool.V.weight, src.pool.V.weight)  # the head was trained
    # the split keeps a patient's slides together
    data = meta["data"]["features"]
    dataset = slide_features_dataset(
        slides=str(table / "slides.csv"), cache=data["cache"], checkpoint=str(source)
    )
    _, parts = split_dataset(dataset, None)
    where = {s.path.name: i for i, part in enumerate(parts) for s in part}
    assert where["b1.tif"] == where["b1-second.tif"] and len(where) == len(SLIDES)
    # the new checkpoint explains a slide from the same entry, never reading a tile
    monkeypatch.setattr(engine, "run_tiles", lambda *a, **k: pytest.fail("the engine ran"))
    slide = table / "slides" / "m1.tif"
    res = explain_slide(slide, "amil", out_dir=tmp_path, checkpoint=ckpt, feature_cache=cache)
    assert res.summary["feature_cache"]["hit"]
    (sample,) = [s for s in dataset.samples if s.path.name == "m1.tif"]
    h = torch.from_numpy(np.array(cache.get(sample.entry).features, np.float32))
    head, _, _ = load_for_method("amil", checkpoint=ckpt, device="cpu")
    with torch.no_grad():
        probs = torch.softmax(head.forward_head(h[None]).double(), -1)[0].numpy()
    got = [res.summary["probabilities"][c] for c in meta["classes"]]
    np.testing.assert_allclose(got, probs, atol=1e-5)


def test_a_head_run_on_several_processes_is_refused_before_any_starts(table, tmp_path, capsys):
    """``--nproc 2`` on cached slide features: one line naming the config, no process
    started, nothing written (the cache is read by one process)."""
    from histoview.cli import main

    config = tmp_path / "head.yaml"
    config.write_text(
        "model: amil\n"
        f"data: {{type: slide_features, slides: '{table / 'slides.csv'}', "
        f"cache: '{tmp_path / 'cache'}', checkpoint: '{_demo_checkpoint()}'}}\n"
        f"output_dir: '{tmp_path / 'run'}'\n"
    )
    assert main(["train", str(config), "--nproc", "2"]) != 0
    err = capsys.readouterr().err
    assert f"{config}: a slide_features run trains in one process (no --nproc)" in err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()
