"""Chapter 1, a neural world model of CartPole: its budgets.

:class:`~wmbook.models.recipe.ModelRecipe` is how the chapter trains its world model on
random-policy data; Chapter 2 reuses it to study that very model.
"""

from __future__ import annotations

from dataclasses import dataclass

from wmbook.models.recipe import CI_EXERCISE_RECIPE, CI_RECIPE, EXERCISE_RECIPE, FULL_RECIPE, ModelRecipe


@dataclass(frozen=True)
class WorldModelChapter:
    """Chapter 1, a neural world model of CartPole."""

    model: ModelRecipe
    rollout_starts: int       # held-out start states for the multi-step teaser
    rollout_horizon: int      # imagined steps in the teaser
    exercise: ModelRecipe     # the exercises' models
    check_headline: bool      # assert the book's targets (only meaningful at full budget)


PROFILES = {
    "full": WorldModelChapter(model=FULL_RECIPE, rollout_starts=200, rollout_horizon=50,
                              exercise=EXERCISE_RECIPE, check_headline=True),
    "ci": WorldModelChapter(model=CI_RECIPE, rollout_starts=20, rollout_horizon=20,
                            exercise=CI_EXERCISE_RECIPE, check_headline=False),
}
