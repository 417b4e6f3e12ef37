"""Models and their registry (timm style).

The modules below register their models when imported; listing them here,
explicitly, is the only registration step.
"""

from histoview.models import amil, attention_cnns, cnn, graph_nets, rmcg  # noqa: F401  (registration)
from histoview.models.registry import (
    ModelConfig,
    create_model,
    get_model_config,
    list_models,
    register_model,
)

__all__ = ["ModelConfig", "create_model", "get_model_config", "list_models", "register_model"]
