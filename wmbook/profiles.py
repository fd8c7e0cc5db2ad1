"""Per-chapter budgets, each with a ``full`` preset (the book's results) and a ``ci`` preset
(every code path, in seconds).

A chapter reads its budget once, in its first code cell::

    config = get_profile("01_world_model", profile)
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from wmbook.agents.dqn import DQNConfig
from wmbook.agents.dyna import DynaConfig
from wmbook.models.dynamics import DynamicsConfig, TrainConfig

PROFILE_NAMES = ("full", "ci")


@dataclass(frozen=True)
class ModelRecipe:
    """How Chapter 1 trains its CartPole world model on random-policy data; Chapter 2 reuses
    it to study that very model."""

    train_steps: int          # random-policy transitions to learn from
    val_steps: int            # held-out transitions, from separately seeded episodes
    hidden_size: int          # width of the model's trunk
    n_layers: int             # hidden layers in the trunk
    epochs: int               # upper bound; early stopping may end sooner
    batch_size: int
    lr: float                 # peak of the one-cycle learning-rate schedule
    patience: int             # epochs without validation improvement before stopping

    def model_config(self) -> DynamicsConfig:
        return DynamicsConfig(obs_dim=4, n_actions=2, hidden_size=self.hidden_size, n_layers=self.n_layers)

    def train_config(self, seed: int) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                           patience=self.patience, seed=seed)


FULL_RECIPE = ModelRecipe(train_steps=100_000, val_steps=20_000, hidden_size=200, n_layers=3,
                          epochs=20, batch_size=256, lr=3e-3, patience=5)
CI_RECIPE = ModelRecipe(train_steps=4_000, val_steps=1_000, hidden_size=64, n_layers=2,
                        epochs=6, batch_size=128, lr=3e-3, patience=3)


@dataclass(frozen=True)
class WorldModelChapter:
    """Chapter 1, a neural world model of CartPole."""

    model: ModelRecipe
    rollout_starts: int       # held-out start states for the multi-step teaser
    rollout_horizon: int      # imagined steps in the teaser
    check_headline: bool      # assert the book's targets (only meaningful at full budget)


@dataclass(frozen=True)
class CompoundingErrorChapter:
    """Chapter 2, compounding error of imagined rollouts and what reduces it."""

    model: ModelRecipe        # the Chapter 1 model and every variant share this recipe
    controller_steps: int     # transitions from the balancing controller (coverage variant)
    test_steps: int           # controller transitions to draw start states from
    starts: int               # start states for the comparison
    horizon: int              # steps imagined and replayed from each start
    plot_horizon: int         # steps shown in the error curves
    tolerance: float          # valid-horizon tolerance, RMS error in units of the state's spread
    ensemble_members: int
    multistep_length: int     # k of the multi-step loss
    check_headline: bool


@dataclass(frozen=True)
class DynaChapter:
    """Chapter 3, Dyna-DQN against model-free DQN."""

    dqn: DQNConfig                    # every run's DQN half and evaluation protocol
    dyna: DynaConfig                  # every Dyna run's model half (K and h set per run)
    seeds: tuple[int, ...]
    imagined_updates: tuple[int, ...]  # the K values compared (0 is plain DQN)
    branch_k: int                     # K of the rollout-length comparison
    branch_length: int                # the longer rollout length h compared with h = 1
    control_k: tuple[int, ...]        # Dyna's K values matched by model-free controls
    workers: int                      # runs side by side (one per CPU core)
    check_headline: bool


PROFILES: dict[str, dict[str, object]] = {
    "01_world_model": {
        "full": WorldModelChapter(model=FULL_RECIPE, rollout_starts=200, rollout_horizon=50,
                                  check_headline=True),
        "ci": WorldModelChapter(model=CI_RECIPE, rollout_starts=20, rollout_horizon=20,
                                check_headline=False),
    },
    "02_compounding_error": {
        "full": CompoundingErrorChapter(
            model=FULL_RECIPE, controller_steps=50_000, test_steps=20_000, starts=200,
            horizon=200, plot_horizon=50, tolerance=0.05, ensemble_members=5,
            multistep_length=5, check_headline=True),
        "ci": CompoundingErrorChapter(
            model=CI_RECIPE, controller_steps=2_000, test_steps=2_000, starts=20, horizon=40,
            plot_horizon=20, tolerance=0.05, ensemble_members=2, multistep_length=3,
            check_headline=False),
    },
    "03_dyna_dqn": {
        "full": DynaChapter(
            dqn=DQNConfig(total_steps=7_000, eval_every=500),
            dyna=DynaConfig(),
            seeds=(0, 1, 2), imagined_updates=(0, 1, 5, 10), branch_k=5, branch_length=5,
            control_k=(5, 10), workers=2,
            check_headline=True),
        "ci": DynaChapter(
            dqn=DQNConfig(total_steps=1_200, learning_starts=300, eval_every=300, eval_episodes=3,
                          exploration_steps=600, hidden_size=32, batch_size=32),
            dyna=DynaConfig(model_every=300, model_updates=20, model_hidden_size=32, model_layers=2),
            seeds=(0,), imagined_updates=(0, 2), branch_k=2, branch_length=3, control_k=(2,),
            workers=2, check_headline=False),
    },
}


def get_profile(chapter: str, profile: str):
    """The budget of ``chapter`` under ``profile`` (``"full"`` or ``"ci"``)."""
    if chapter not in PROFILES:
        raise KeyError(f"no profiles for chapter {chapter!r}; known chapters: {', '.join(PROFILES)}")
    if profile not in PROFILES[chapter]:
        raise ValueError(f"unknown profile {profile!r} for {chapter}: use one of "
                         f"{', '.join(PROFILES[chapter])}")
    return PROFILES[chapter][profile]


def describe(config) -> dict[str, object]:
    """A profile as plain JSON values (for printing and results files)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))
