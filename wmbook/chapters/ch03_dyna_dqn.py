"""Chapter 3, Dyna-DQN against model-free DQN: its budgets and its experiment harness.

A :class:`RunSpec` names one run (method, seed, K, h, updates per real step); :func:`run_all`
executes a list of them, one process per core, and returns plain :class:`RunRecord` results.
Every run depends on its spec and configs alone, so the results do not depend on how the
runs were scheduled.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass

from tqdm.auto import tqdm

from wmbook.agents.dqn import DQNConfig, train_dqn
from wmbook.agents.dyna import DynaConfig, train_dyna_dqn


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


PROFILES = {
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
        seeds=(0, 1), imagined_updates=(0, 2), branch_k=2, branch_length=3, control_k=(2,),
        workers=2, check_headline=False),
}



@dataclass(frozen=True)
class RunSpec:
    """One training run. ``imagined_updates`` = 0 is model-free DQN."""

    label: str
    seed: int
    imagined_updates: int = 0      # K
    rollout_length: int = 1        # h
    updates_per_step: int = 1      # updates on real data per real step


@dataclass
class RunRecord:
    """What a run produced, as plain values."""

    spec: RunSpec
    eval_steps: list[int]
    eval_returns: list[float]
    solved_at: int | None
    gradient_updates: int
    imagined_transitions: int
    seconds: float


def run_one(spec: RunSpec, dqn: DQNConfig, dyna: DynaConfig, threads: int = 1) -> RunRecord:
    """Train one run on the CPU with ``threads`` torch threads."""
    import torch

    torch.set_num_threads(threads)
    dqn = dataclasses.replace(dqn, seed=spec.seed, updates_per_step=spec.updates_per_step)
    if spec.imagined_updates == 0:
        result, imagined = train_dqn(dqn, progress=False), 0
    else:
        dyna = dataclasses.replace(dyna, imagined_updates=spec.imagined_updates,
                                   rollout_length=spec.rollout_length)
        result, planner = train_dyna_dqn(dqn, dyna, progress=False)
        imagined = planner.imagined
    return RunRecord(spec, result.eval_steps, result.eval_returns, result.solved_at,
                     result.gradient_updates, imagined, result.seconds)


def run_all(specs: list[RunSpec], dqn: DQNConfig, dyna: DynaConfig, workers: int = 2,
            progress: bool = True) -> list[RunRecord]:
    """Run every spec, ``workers`` at a time (in this process when ``workers`` is 1), and
    return the records in the order of ``specs``."""
    if workers <= 1:
        return [run_one(spec, dqn, dyna) for spec in tqdm(specs, desc="runs", disable=not progress)]
    records: dict[RunSpec, RunRecord] = {}
    context = multiprocessing.get_context("spawn")  # a clean interpreter per worker
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {pool.submit(run_one, spec, dqn, dyna): spec for spec in specs}
        for future in tqdm(as_completed(futures), total=len(futures), desc="runs", disable=not progress):
            records[futures[future]] = future.result()
    return [records[spec] for spec in specs]
