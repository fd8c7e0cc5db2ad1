"""The book's models."""

from wmbook.models.dynamics import (
    DynamicsConfig,
    DynamicsEvaluation,
    DynamicsModel,
    Prediction,
    TrainConfig,
    TrainHistory,
    evaluate_dynamics,
    multistep_loss,
    train_dynamics,
)
from wmbook.models.ensemble import DynamicsEnsemble, train_ensemble
from wmbook.models.layers import Normalizer, mlp

__all__ = [
    "DynamicsConfig",
    "DynamicsEnsemble",
    "DynamicsEvaluation",
    "DynamicsModel",
    "Normalizer",
    "Prediction",
    "TrainConfig",
    "TrainHistory",
    "evaluate_dynamics",
    "mlp",
    "multistep_loss",
    "train_dynamics",
    "train_ensemble",
]
