"""Chapter 3, Dyna-DQN against model-free DQN: its budgets and its experiment harness.

A :class:`~wmbook.agents.dyna.RunSpec` names one run (method, seed, K, h, updates per real step, ensemble);
:func:`run_all` executes a list of them with the book's job runner and returns plain
:class:`~wmbook.agents.dyna.RunRecord` results. Every run depends on its spec and configs alone, so the results
do not depend on how the runs were scheduled (a test holds parallel runs to serial ones).

The chapter tunes before it reports: :func:`choose_k` picks the number of imagined updates K
on ``tuning_seeds``, which the reported runs (``seeds``) never use, so the reported comparison
is not flattered by a choice made on the same runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from scipy.stats import trim_mean

from wmbook.agents.dqn import DQNConfig
from wmbook.agents.dyna import DynaConfig, DynaStep, RunRecord, RunSpec, run_one  # noqa: F401 (the chapter's names)
from wmbook.runner import run_jobs
from wmbook.stats import REPS, steps_to_solve


@dataclass(frozen=True)
class DynaChapter:
    """Chapter 3, Dyna-DQN against model-free DQN."""

    dqn: DQNConfig                    # every run's DQN half and evaluation protocol
    dyna: DynaConfig                  # every Dyna run's model half (K, h, members set per run)
    tuning_seeds: tuple[int, ...]     # runs that choose K; never reported
    seeds: tuple[int, ...]            # the reported runs
    imagined_updates: tuple[int, ...]  # the K values tried on the tuning seeds
    branch_length: int                # the longer rollout length h compared with h = 1
    ensemble_members: int             # members of the ensemble compared with one model
    max_disagreement: float | None    # the ensemble's branches stop where members disagree more
    workers: int                      # runs side by side (one per CPU core)
    exercise_steps: int               # real steps of the exercises' runs
    bootstrap_reps: int               # resamples per confidence interval (wmbook.stats)
    check_headline: bool


PROFILES = {
    "full": DynaChapter(
        dqn=DQNConfig(total_steps=7_000, eval_every=500),
        dyna=DynaConfig(),
        tuning_seeds=(100, 101), seeds=(0, 1, 2, 3, 4), imagined_updates=(1, 5, 10),
        branch_length=5, ensemble_members=3, max_disagreement=None, workers=2,
        exercise_steps=2_000, bootstrap_reps=REPS, check_headline=True),
    "ci": DynaChapter(
        dqn=DQNConfig(total_steps=900, learning_starts=300, eval_every=300, eval_episodes=3,
                      exploration_steps=600, hidden_size=32, batch_size=32),
        dyna=DynaConfig(model_every=300, model_updates=20, model_hidden_size=32, model_layers=2),
        tuning_seeds=(100,), seeds=(0, 1), imagined_updates=(1, 2), branch_length=3,
        ensemble_members=2, max_disagreement=None, workers=2, exercise_steps=500,
        bootstrap_reps=500, check_headline=False),
}


def run_all(specs: list[RunSpec], dqn: DQNConfig, dyna: DynaConfig, workers: int = 2,
            progress: bool = True, step_fn: DynaStep | None = None) -> list[RunRecord]:
    """Run every spec, ``workers`` at a time (in this process when ``workers`` is 1), and
    return the records in the order of ``specs``. ``step_fn``: Dyna's planning step
    (:func:`~wmbook.agents.dyna.dyna_step` by default); the chapter passes the copy defined on
    its page, so that an edit there reaches every run."""
    return run_jobs(partial(run_one, dqn=dqn, dyna=dyna, step_fn=step_fn), specs, workers, progress=progress)


def tuning_specs(config: DynaChapter, shift: int = 0) -> list[RunSpec]:
    """One Dyna run per K candidate and tuning seed (seeds shifted by ``shift``)."""
    return [RunSpec(f"Dyna K={k}", shift + s, imagined_updates=k)
            for k in config.imagined_updates for s in config.tuning_seeds]


def choose_k(records: list[RunRecord], budget: int) -> tuple[int, dict[int, float]]:
    """The K whose runs reach the solved threshold in the fewest real steps by interquartile
    mean (an unsolved run counts as ``budget``); on a tie, the smaller K, which leans less on
    the model. Returns that K and the IQM of every K tried."""
    by_k: dict[int, list[int | None]] = {}
    for record in records:
        if record.spec.imagined_updates <= 0:
            raise ValueError(f"choose_k compares Dyna runs, got a model-free run {record.spec}")
        by_k.setdefault(record.spec.imagined_updates, []).append(record.solved_at)
    if not by_k:
        raise ValueError("choose_k needs at least one Dyna run")
    iqms = {}
    for k, solved in by_k.items():
        iqms[k] = float(trim_mean(steps_to_solve(solved, budget), 0.25))  # rliable's IQM
    best = min(iqms, key=lambda k: (round(iqms[k], 6), k))
    return best, iqms


def reported_specs(config: DynaChapter, k: int, shift: int = 0) -> list[RunSpec]:
    """The chapter's comparison at the chosen ``k`` on its reported seeds (shifted by ``shift``):
    DQN, Dyna, the model-free control making as many updates, longer branches, an ensemble."""
    seeds = [shift + s for s in config.seeds]
    methods = [
        dict(label="DQN"),
        dict(label=f"Dyna K={k}", imagined_updates=k),
        dict(label=f"DQN, {1 + k} updates/step", updates_per_step=1 + k),
        dict(label=f"Dyna K={k}, h={config.branch_length}", imagined_updates=k,
             rollout_length=config.branch_length),
        dict(label=f"Dyna K={k}, ensemble of {config.ensemble_members}", imagined_updates=k,
             ensemble_members=config.ensemble_members, max_disagreement=config.max_disagreement),
    ]
    return [RunSpec(seed=s, **method) for method in methods for s in seeds]
