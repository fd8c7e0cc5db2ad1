"""Many DQN and Dyna-DQN runs, side by side in worker processes.

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
