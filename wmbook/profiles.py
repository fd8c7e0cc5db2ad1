"""Per-chapter budgets, each with a ``full`` preset (the book's results) and a ``ci`` preset
(every code path, in seconds).

A chapter reads its budget once, in its first code cell::

    config = get_profile("01_world_model", profile)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

PROFILE_NAMES = ("full", "ci")


@dataclass(frozen=True)
class WorldModelChapter:
    """Chapter 1, a neural world model of CartPole."""

    train_steps: int          # random-policy transitions to learn from
    val_steps: int            # held-out transitions, from separately seeded episodes
    hidden_size: int          # width of the model's trunk
    n_layers: int             # hidden layers in the trunk
    epochs: int               # upper bound; early stopping may end sooner
    batch_size: int
    lr: float                 # peak of the one-cycle learning-rate schedule
    patience: int             # epochs without validation improvement before stopping
    rollout_starts: int       # held-out start states for the multi-step teaser
    rollout_horizon: int      # imagined steps in the teaser
    check_headline: bool      # assert the book's targets (only meaningful at full budget)


PROFILES: dict[str, dict[str, object]] = {
    "01_world_model": {
        "full": WorldModelChapter(
            train_steps=100_000, val_steps=20_000, hidden_size=200, n_layers=3, epochs=40,
            batch_size=256, lr=3e-3, patience=8, rollout_starts=200, rollout_horizon=50,
            check_headline=True),
        "ci": WorldModelChapter(
            train_steps=4_000, val_steps=1_000, hidden_size=64, n_layers=2, epochs=6,
            batch_size=128, lr=3e-3, patience=3, rollout_starts=20, rollout_horizon=20,
            check_headline=False),
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
    """A profile as a plain dict (for printing and results files)."""
    return dataclasses.asdict(config)
