"""Models and their registry (timm style).

The modules below register their models when imported; listing them here,
explicitly, is the only registration step.
"""

from histoview._lazy import lazy_exports
from histoview.models import (  # noqa: F401  (registration)
    amil,
    attention_cnns,
    cnn,
    graph_nets,
    pixel_graph_baselines,
    rmcg,
)

# the registry's names; checkpoints, the model library and input specifications (first use)
__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        ".registry": [
            "ModelConfig",
            "create_model",
            "get_model_config",
            "list_models",
            "register_model",
        ],
        ".checkpoint": ["CheckpointError", "load_model", "read_metadata", "save_checkpoint"],
        ".library": ["LibraryEntry", "add_to_library", "find_checkpoint", "list_checkpoints"],
        ".inputs": ["InputSpec"],
    },
)
