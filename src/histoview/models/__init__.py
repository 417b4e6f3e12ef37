"""Models and their registry (timm style).

The modules below register their models when imported; listing them here,
explicitly, is the only registration step.
"""

from histoview.models import (  # noqa: F401  (registration)
    amil,
    attention_cnns,
    cnn,
    graph_nets,
    pixel_graph_baselines,
    rmcg,
)
from histoview.models.registry import (
    ModelConfig,
    create_model,
    get_model_config,
    list_models,
    register_model,
)

__all__ = ["ModelConfig", "create_model", "get_model_config", "list_models", "register_model"]
