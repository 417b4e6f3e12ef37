"""Training and evaluating models: configs and recipes, data sets, the engine, metrics,
and the papers' experiments (``histoview reproduce``).

The names below import their module on first use: ``import histoview.training`` loads no
torch.
"""

from histoview._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        ".run": ["iter_train_from_config", "train_from_config"],
        ".config": ["load_config", "validate_config"],
        ".recipes": ["list_recipes", "recipe_for"],
        ".datasets": ["TASKS", "Dataset", "Sample", "detect_layout", "discover_dataset"],
        ".engine": ["TrainOptions", "fit"],
        ".prediction": ["TrainingCancelled", "predict"],
        ".evaluate": ["evaluate_checkpoint"],
        ".metrics": ["classification_metrics", "confusion_matrix", "roc_auc"],
        ".experiments": ["get_experiment"],
        ".reproduce": ["list_experiments", "run_experiment"],
    },
)
