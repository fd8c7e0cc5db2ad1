"""Recipes of the MLP world model of Chapters 1 and 2: how much random play it learns from, its
size, and how it trains (:class:`ModelRecipe`), with the chapters' presets."""

from __future__ import annotations

from dataclasses import dataclass

from wmbook.models.dynamics import DynamicsConfig
from wmbook.models.training import TrainConfig


@dataclass(frozen=True)
class ModelRecipe:
    """Data, size and training of an MLP world model learned from random play."""

    train_steps: int          # random-policy transitions to learn from
    val_steps: int            # held-out transitions, from separately seeded episodes
    hidden_size: int          # width of the model's trunk
    n_layers: int             # hidden layers in the trunk
    epochs: int               # upper bound; early stopping may end sooner
    batch_size: int
    lr: float                 # peak of the one-cycle learning-rate schedule
    patience: int             # epochs without validation improvement before stopping

    def model_config(self, obs_dim: int, n_actions: int) -> DynamicsConfig:
        """The model for an environment with ``obs_dim`` state variables and ``n_actions``
        discrete actions (CartPole: 4 and 2)."""
        return DynamicsConfig(obs_dim=obs_dim, n_actions=n_actions, hidden_size=self.hidden_size,
                              n_layers=self.n_layers)

    def train_config(self, seed: int) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                           patience=self.patience, seed=seed)


FULL_RECIPE = ModelRecipe(train_steps=100_000, val_steps=20_000, hidden_size=200, n_layers=3,
                          epochs=20, batch_size=256, lr=3e-3, patience=5)
CI_RECIPE = ModelRecipe(train_steps=4_000, val_steps=1_000, hidden_size=64, n_layers=2,
                        epochs=6, batch_size=128, lr=3e-3, patience=3)


EXERCISE_RECIPE = ModelRecipe(train_steps=20_000, val_steps=4_000, hidden_size=128, n_layers=2,
                              epochs=8, batch_size=256, lr=3e-3, patience=8)
CI_EXERCISE_RECIPE = ModelRecipe(train_steps=2_000, val_steps=500, hidden_size=32, n_layers=2,
                                 epochs=3, batch_size=128, lr=3e-3, patience=3)
"""Smaller models for the exercises' solutions, each compared with a reference of the same
recipe: seconds, not minutes, under ``full``; a few seconds in all under ``ci``."""
