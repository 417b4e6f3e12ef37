"""The feature cache (histoview.explain.feature_cache, slide_cached): a second A-MIL explain of a
slide never starts the slide engine and gives the uncached result; another head on the same
extractor and a copy of the slide reuse the entry, another pixel size does not; the cache stays
under its bound (least recently used out), clears, and keeps nothing of a cancelled run."""

from __future__ import annotations

import argparse
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from _slides import write_slide  # noqa: E402
from histoview.explain.feature_cache import FeatureCache, extractor_hash  # noqa: E402


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    return write_slide(tmp_path_factory.mktemp("cache-slide") / "slide.tif")


@pytest.fixture(scope="module")
def filled(slide, tmp_path_factory):
    """A cache holding the slide's entry, the uncached run's result beside it."""
    from histoview.explain.slide_run import explain_slide

    root = tmp_path_factory.mktemp("cache")
    out = tmp_path_factory.mktemp("cache-out")
    kw = dict(workers=0, keep_store=True, overwrite=True)
    plain = explain_slide(slide, "amil", out_dir=out / "plain", feature_cache="off", **kw)
    first = explain_slide(slide, "amil", out_dir=out / "first", feature_cache=root, **kw)
    return FeatureCache(root), plain, first


def _no_engine(monkeypatch):
    import histoview.explain.slide_engine as engine

    def refuse(*args, **kwargs):
        raise AssertionError("the slide engine ran: the cache was not used")

    monkeypatch.setattr(engine, "run_tiles", refuse)


def _same_result(a, b, *, exact=True):
    """The same slide result: to float64 rounding (float32 features: the same features
    through the same layers, pooled per batch of tiles), or to float16's rounding."""
    pa, pb = a.summary["probabilities"], b.summary["probabilities"]
    assert a.summary["prediction"] == b.summary["prediction"]
    assert a.summary["num_patches"] == b.summary["num_patches"]
    fa, fb = (np.asarray(r.store.final("attention")[:]) for r in (a, b))
    if exact:
        np.testing.assert_allclose(list(pa.values()), list(pb.values()), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(fa, fb, rtol=1e-5, atol=0)
        return
    np.testing.assert_allclose(list(pa.values()), list(pb.values()), atol=1e-4)
    ma, mb = a.summary["attention_max_logit"], b.summary["attention_max_logit"]
    assert ma == pytest.approx(mb, abs=1e-3)
    assert ((fa > 0) == (fb > 0)).all()  # the same patches in the bag
    np.testing.assert_allclose(fa, fb, rtol=2e-3, atol=1e-6)


def test_a_second_explain_replays_from_the_cache(filled, slide, tmp_path, monkeypatch):
    from histoview.explain.slide_run import explain_slide

    cache, plain, first = filled
    assert first.summary["feature_cache"]["stored"] and not first.summary["feature_cache"]["hit"]
    _same_result(first, plain)  # the run that fills the cache is the uncached run
    info = cache.info()
    assert info["entries"] == 1 and info["bytes"] > 0
    (entry,) = cache.list_entries()
    assert entry["patches"] == plain.summary["num_patches"] and entry["dtype"] == "float32"
    _no_engine(monkeypatch)
    events = []
    again = explain_slide(
        slide, "amil", out_dir=tmp_path, workers=0, feature_cache=cache, keep_store=True,
        progress=events.append,
    )  # fmt: skip
    assert again.summary["feature_cache"]["hit"]
    assert again.summary["tiles_done"] == plain.summary["tiles_done"] and events
    _same_result(again, plain)
    assert again.outputs["map"].exists() and again.outputs["json"].exists()


def test_float16_entries_give_the_result_to_their_rounding(filled, slide, tmp_path):
    from histoview.explain.slide_run import explain_slide

    _, plain, _ = filled
    half = FeatureCache(tmp_path / "half", dtype="float16")
    kw = dict(workers=0, keep_store=True, feature_cache=half)
    explain_slide(slide, "amil", out_dir=tmp_path / "a", **kw)
    (entry,) = half.list_entries()
    assert entry["dtype"] == "float16" and half.get(entry["key"]).features.dtype == np.float16
    again = explain_slide(slide, "amil", out_dir=tmp_path / "b", **kw)
    assert again.summary["feature_cache"]["hit"]
    _same_result(again, plain, exact=False)


def test_another_head_on_the_same_extractor_reuses_the_entry(filled, slide, tmp_path, monkeypatch):
    from histoview.explain.run import load_for_method
    from histoview.explain.slide_run import explain_slide
    from histoview.models.checkpoint import save_checkpoint

    cache, plain, _ = filled
    net, meta, _ = load_for_method("amil", device="cpu")
    before = extractor_hash(net.backbone)
    with torch.no_grad():
        net.pool.w.weight.mul_(-1.0)  # attention turned upside down
    assert extractor_hash(net.backbone) == before
    keep = {
        k: v for k, v in meta.items() if k not in ("format", "format_version", "weights_sha256")
    }
    ckpt = save_checkpoint(tmp_path / "head.safetensors", net, keep)
    _no_engine(monkeypatch)
    other = explain_slide(
        slide, "amil", out_dir=tmp_path / "o", workers=0, feature_cache=cache, checkpoint=ckpt
    )
    assert other.summary["feature_cache"]["hit"] and cache.info()["entries"] == 1
    assert other.summary["checkpoint_sha256"] != plain.summary["checkpoint_sha256"]
    assert other.summary["attention_max_logit"] != pytest.approx(
        plain.summary["attention_max_logit"]
    )


def test_a_copy_hits_and_another_pixel_size_misses(filled, slide, tmp_path, monkeypatch):
    from histoview.explain.slide_run import explain_slide

    cache, plain, _ = filled
    copy = shutil.copy(slide, tmp_path / "renamed copy.tif")
    with monkeypatch.context() as m:
        _no_engine(m)
        hit = explain_slide(copy, "amil", out_dir=tmp_path / "a", workers=0, feature_cache=cache)
    assert hit.summary["feature_cache"]["hit"]
    assert hit.summary["probabilities"] == pytest.approx(plain.summary["probabilities"], abs=1e-4)
    miss = explain_slide(
        slide, "amil", out_dir=tmp_path / "b", workers=0, feature_cache=cache, pixel_size_um=0.45
    )
    note = miss.summary["feature_cache"]
    assert not note["hit"] and note["stored"] and cache.info()["entries"] == 2
    assert cache.info()["slides"] == 1  # the same slide, two settings
    assert cache.clear(slide=note["key"][:12]) == 2 and cache.info()["entries"] == 0


def test_a_cancelled_run_leaves_no_entry_and_its_resume_stores_none(slide, tmp_path):
    from histoview.explain.slide_run import explain_slide

    cache = FeatureCache(tmp_path / "cache")
    events = []
    kw = dict(out_dir=tmp_path / "out", workers=0, batch_size=2, feature_cache=cache)
    res = explain_slide(
        slide, "amil", cancel=lambda: len(events) >= 1, progress=events.append, **kw
    )
    assert res.cancelled and cache.info()["entries"] == 0
    assert not any((cache.root / "tmp").glob("*"))  # the writer's folder is gone
    resumed = explain_slide(slide, "amil", **kw)
    assert resumed.summary["resumed"] and not resumed.summary["feature_cache"]["stored"]
    assert cache.info()["entries"] == 0  # the first tiles' embeddings were never kept


def _entry(cache, key, n=1000, tiles=(0, 1)):
    w = cache.writer(key, {"test": key}, 8)
    rng = np.random.default_rng(len(key))
    tile = np.sort(rng.integers(0, len(tiles), n))
    w.add(rng.random((n, 8)), tile, np.zeros((n, 2)), np.zeros((n, 2)), list(tiles))
    return w.commit(tiles)


def test_eviction_keeps_the_bound_least_recently_used_first(tmp_path):
    probe = FeatureCache(tmp_path / "probe")
    size = _entry(probe, "aa-probe").record["bytes"]
    cache = FeatureCache(tmp_path / "c", max_bytes=int(3.5 * size))
    keys = [f"{c * 8}-k" for c in "abcd"]
    for key in keys[:3]:
        assert _entry(cache, key) is not None
    import os
    import time

    for i, key in enumerate(keys[:3]):  # used stamps a second apart: a, then c, then b last
        os.utime(cache.entries_dir / key / "used", (time.time() - 10 + i, time.time() - 10 + i))
    assert cache.get(keys[1]) is not None  # b read now: most recently used
    _entry(cache, keys[3])
    left = {e["key"] for e in cache.list_entries()}
    assert left == {keys[1], keys[2], keys[3]} and cache.info()["bytes"] <= cache.max_bytes
    # an entry bigger than the whole cache is never kept, and pushes nothing out
    tiny = FeatureCache(tmp_path / "c", max_bytes=size // 2)
    assert _entry(tiny, "ee-big") is None and len(tiny.list_entries()) == 3


def test_a_writer_that_missed_tiles_or_overflows_keeps_nothing(tmp_path):
    cache = FeatureCache(tmp_path)
    w = cache.writer("ab-x", {}, 4)
    w.add(np.ones((2, 4)), [0, 0], np.zeros((2, 2)), np.zeros((2, 2)), [0])
    assert w.commit([0, 1]) is None and cache.info()["entries"] == 0
    half = FeatureCache(tmp_path, dtype="float16")
    for c, bad in ((half, 1e6), (cache, np.nan)):  # beyond float16; not finite
        w = c.writer("ab-y", {}, 4)
        w.add(np.full((2, 4), bad), [0, 0], np.zeros((2, 2)), np.zeros((2, 2)), [0])
        assert w.commit([0]) is None and not any((tmp_path / "tmp").glob("*"))
    assert cache.info()["entries"] == 0


def test_two_writers_of_one_entry_leave_one_whole_entry(tmp_path):
    a, b = FeatureCache(tmp_path), FeatureCache(tmp_path)
    wa, wb = a.writer("cd-same", {}, 8), b.writer("cd-same", {}, 8)
    for w in (wa, wb):
        w.add(np.ones((5, 8)), [0, 0, 1, 1, 1], np.zeros((5, 2)), np.zeros((5, 2)), [0, 1])
    assert wa.commit([0, 1]) is not None and wb.commit([0, 1]) is not None
    (entry,) = a.list_entries()
    assert entry["patches"] == 5 and not any((tmp_path / "tmp").glob("cd-same*"))
    np.testing.assert_array_equal(a.get("cd-same").features, np.ones((5, 8), np.float16))


def test_unsorted_tiles_are_sorted_at_commit(tmp_path):
    cache = FeatureCache(tmp_path)
    w = cache.writer("ef-s", {}, 2)
    feats = np.arange(8, dtype=np.float32).reshape(4, 2)
    w.add(feats, [1, 0, 1, 0], np.arange(8).reshape(4, 2), np.zeros((4, 2)), [1, 0])
    e = w.commit([0, 1])
    np.testing.assert_array_equal(e.tile, [0, 0, 1, 1])
    np.testing.assert_array_equal(e.features, feats[[1, 3, 0, 2]])
    assert e.tile_range(1, 1) == slice(2, 4)


def test_cli_cache_info_and_clear(tmp_path, capsys, monkeypatch):
    from histoview._cli_cache import add_cache_parser

    cache = FeatureCache(tmp_path)
    _entry(cache, "0123abcd-one")
    _entry(cache, "9999ffff-two")
    parser = argparse.ArgumentParser()
    add_cache_parser(parser.add_subparsers(dest="command"))

    def run(*argv):
        args = parser.parse_args(["cache", *argv])
        assert args.func(args) == 0
        return capsys.readouterr().out

    assert "2 entries of 2 slides" in run("info", "--dir", str(tmp_path), "--list")
    assert "removed 1 entries" in run("clear", "--dir", str(tmp_path), "--slide", "0123")
    assert [e["key"] for e in cache.list_entries()] == ["9999ffff-two"]
    assert "removed 1 entries" in run("clear", "--dir", str(tmp_path))
    monkeypatch.setenv("HISTOVIEW_CACHE_DIR", str(tmp_path / "env"))
    assert str(tmp_path / "env" / "features") in run("info")
    monkeypatch.setenv("HISTOVIEW_FEATURE_CACHE_GB", "lots")
    with pytest.raises(ValueError, match="HISTOVIEW_FEATURE_CACHE_GB"):
        FeatureCache()


def test_an_unreadable_entry_is_dropped_and_the_slide_embedded_afresh(filled, slide, tmp_path):
    """A damaged entry (a truncated array) never stops an explanation: the summary names the
    problem, the result is the uncached one, and a whole entry replaces the damaged one."""
    from histoview.explain.slide_run import explain_slide

    _, plain, _ = filled
    root = tmp_path / "cache"
    explain_slide(slide, "amil", out_dir=tmp_path / "first", feature_cache=root, workers=0)
    damaged = FeatureCache(root)
    [entry] = damaged.list_entries()
    (root / "entries" / entry["key"] / "features.npy").write_bytes(b"\x93NUMPY broken")
    res = explain_slide(
        slide, "amil", out_dir=tmp_path / "out", feature_cache=root, workers=0, keep_store=True
    )
    note = res.summary["feature_cache"]
    assert not note["hit"] and "unreadable" in note["error"] and note["stored"]
    _same_result(res, plain)
    assert damaged.get(entry["key"]) is not None  # whole again


def test_a_cache_that_cannot_be_written_never_stops_the_explanation(filled, slide, tmp_path):
    from histoview.explain.slide_run import explain_slide

    _, plain, _ = filled
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder should be")
    res = explain_slide(
        slide, "amil", out_dir=tmp_path / "out", feature_cache=blocked, workers=0, keep_store=True
    )
    note = res.summary["feature_cache"]
    assert not note["stored"] and str(blocked) in note["error"]
    _same_result(res, plain)


def test_histoview_explain_on_a_slide_stores_then_reads_its_embeddings(slide, tmp_path, capsys):
    from histoview.cli import main

    root = tmp_path / "features"
    argv = ["explain", str(slide), "--method", "amil", "--whole-slide", "--workers", "0"]
    assert main([*argv, "--out", str(tmp_path / "a"), "--feature-cache", str(root)]) == 0
    assert f"patch embeddings stored in the feature cache {root}" in capsys.readouterr().out
    assert main([*argv, "--out", str(tmp_path / "b"), "--feature-cache", str(root)]) == 0
    assert f"patch embeddings read from the feature cache {root}" in capsys.readouterr().out
    assert main([*argv, "--out", str(tmp_path / "c"), "--no-feature-cache"]) == 0
    assert "feature cache" not in capsys.readouterr().out
    assert FeatureCache(root).info()["entries"] == 1
