"""Every method's slide summary states the prediction the same way (the dock, the CLI and
batch summaries read one form)."""

from __future__ import annotations

from histoview.explain.slide_outputs import free_stem, uniform_prediction


def test_list_probabilities_and_a_class_name():
    s = uniform_prediction(
        {
            "classes": ["benign", "malignant"],
            "probabilities": [0.2, 0.8],
            "predicted_class": "malignant",
        }
    )
    assert s["probabilities"] == {"benign": 0.2, "malignant": 0.8}
    assert s["predicted_class"] == 1 and s["predicted_label"] == s["prediction"] == "malignant"


def test_dict_probabilities_and_an_index():
    s = uniform_prediction(
        {
            "classes": ["a", "b", "c"],
            "probabilities": {"a": 0.1, "b": 0.7, "c": 0.2},
            "predicted_class": 1,
        }
    )
    assert s["predicted_label"] == "b" and s["probabilities"]["b"] == 0.7


def test_prediction_by_name_only_and_no_prediction():
    s = uniform_prediction({"classes": ["x", "y"], "prediction": "y"})
    assert s["predicted_class"] == 1
    s = uniform_prediction({"classes": ["x", "y"], "predicted_class": None})
    assert s["predicted_class"] is None and "predicted_label" not in s


def test_free_stem_numbers_a_rerun_as_a_whole(tmp_path):
    """A rerun's files share one number; the working store and other methods' files do not
    count, and ``overwrite`` keeps the name."""
    (tmp_path / "s.graph.zarr").mkdir()
    (tmp_path / "s.amil.json").write_text("{}")
    assert free_stem(tmp_path, "s", "graph") == "s"
    (tmp_path / "s.graph.nuclei.npz").write_bytes(b"")
    assert free_stem(tmp_path, "s", "graph") == "s-1"
    (tmp_path / "s-1.graph.ome.tif").write_bytes(b"")
    assert free_stem(tmp_path, "s", "graph") == "s-2"
    assert free_stem(tmp_path, "s", "graph", overwrite=True) == "s"
    (tmp_path / "[a].gradcam.json").write_text("{}")  # glob characters in a slide's name
    assert free_stem(tmp_path, "[a]", "gradcam") == "[a]-1"
