"""histoview: see why a deep model calls breast tissue benign or malignant.

A napari plugin and a display-free core. Layers, one way only::

    io -> preprocessing -> models -> explain -> training
                                          viewer (napari/Qt), cli

Importing ``histoview`` imports neither torch nor napari; each layer imports
its heavy dependencies where it needs them.

Research use only, not for diagnosis.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("histoview")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"

RESEARCH_NOTICE = "Research use only, not for diagnosis."
SYNTHETIC_NOTICE = (
    "Synthetic demo weights: trained on generated phantom images, not on patient data."
)

__all__ = ["RESEARCH_NOTICE", "SYNTHETIC_NOTICE", "__version__"]
