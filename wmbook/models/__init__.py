"""The book's models."""

from wmbook.models.dynamics import (
    DynamicsConfig,
    DynamicsEvaluation,
    DynamicsModel,
    Prediction,
    TrainConfig,
    TrainHistory,
    evaluate_dynamics,
    train_dynamics,
)
from wmbook.models.layers import Normalizer, mlp

__all__ = [
    "DynamicsConfig",
    "DynamicsEvaluation",
    "DynamicsModel",
    "Normalizer",
    "Prediction",
    "TrainConfig",
    "TrainHistory",
    "evaluate_dynamics",
    "mlp",
    "train_dynamics",
]
