"""From pixels to what models take: patches, nuclei, cell graphs, and synthetic phantoms.

The names below import their module on first use (``import histoview.preprocessing``
loads neither torch nor scikit-image).
"""

from histoview._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        ".patches": ["PATCH_PRESETS", "PatchGrid", "extract_patches", "patch_labels_from_mask"],
        ".nuclei": ["FEATURE_NAMES", "Nuclei", "NucleiDetectorConfig", "detect_nuclei"],
        ".graph": [
            "DEFAULT_THRESHOLD_UM",
            "NucleiGraph",
            "build_nuclei_graph",
            "graph_from_image",
            "load_graph",
            "save_graph",
        ],
        ".phantom": ["PHANTOM_CLASSES", "Phantom", "make_phantom"],
        ".tissue": ["NoTissueError", "TissueMask", "detect_tissue", "tissue_mask_from_rgb"],
    },
)
