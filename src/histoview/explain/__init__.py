"""Explanations of a model's decision on one image, as plain data (no napari, no Qt).

The methods and their registry (:mod:`~histoview.explain.methods`), explaining an image
or a file with any of them (:mod:`~histoview.explain.run`), the :class:`Explanation` they
return (:mod:`~histoview.explain.base`), comparing and scoring explanations (agreement,
deletion/insertion faithfulness), and writing them out (GeoJSON/CSV, report figures).
The names below import their module on first use: ``import histoview.explain`` loads no
torch.
"""

from histoview._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        ".base": ["DenseMap", "Explanation", "NucleiPoints", "write_explanation"],
        ".methods": [
            "METHODS",
            "ExplainContext",
            "Method",
            "get_method",
            "list_methods",
            "method_title",
            "predictor_for",
            "register_method",
        ],
        ".run": ["explain_array", "explain_file", "explain_path", "load_for_method"],
        ".agreement": ["agreement_table"],
        ".faithfulness": ["FaithfulnessResult", "deletion_insertion"],
        ".export": ["export_csv", "export_geojson"],
        ".report": ["render_figure", "save_pdf", "save_png"],
        ".amil": ["explain_amil"],
        ".gradcam": ["GradCAM", "GradCAMPlusPlus", "explain_cnn"],
        ".graph": ["explain_graph", "occlusion_importance"],
        ".rmcg": ["explain_rmcg"],
    },
)
