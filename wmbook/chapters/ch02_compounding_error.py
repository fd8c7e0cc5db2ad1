"""Chapter 2, compounding error of imagined rollouts and what reduces it: its budgets."""

from __future__ import annotations

from dataclasses import dataclass

from wmbook.models.recipe import CI_EXERCISE_RECIPE, CI_RECIPE, EXERCISE_RECIPE, FULL_RECIPE, ModelRecipe


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
    exercise: ModelRecipe     # the exercises' models (smaller, compared among themselves)
    exercise_windows: tuple[int, ...]  # the longer multi-step windows of exercise 3
    check_headline: bool


PROFILES = {
    "full": CompoundingErrorChapter(
        model=FULL_RECIPE, controller_steps=50_000, test_steps=20_000, starts=200,
        horizon=200, plot_horizon=50, tolerance=0.05, ensemble_members=5,
        multistep_length=5, exercise=EXERCISE_RECIPE, exercise_windows=(10, 20),
        check_headline=True),
    "ci": CompoundingErrorChapter(
        model=CI_RECIPE, controller_steps=2_000, test_steps=2_000, starts=20, horizon=40,
        plot_horizon=20, tolerance=0.05, ensemble_members=2, multistep_length=3,
        exercise=CI_EXERCISE_RECIPE, exercise_windows=(4, 6), check_headline=False),
}
