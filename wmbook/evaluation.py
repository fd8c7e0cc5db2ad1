"""One evaluation protocol for every agent of the book, and one rule for "solved".

:func:`evaluate` plays ``episodes`` episodes side by side with a greedy policy, episode ``i``
from ``reset(seed=seed + i)``, so that every evaluation of every method faces the same start
states. A policy maps the observations of the episodes still running ``(n, ...)`` and their rows
``(n,)`` (which of the ``episodes`` they are) to actions ``(n,)``; a policy with a memory
(Dreamer's latent state, V + M's) keeps it per row and gets ``reset(first_observations)`` before
the episodes start.

A task is solved at the first evaluation whose mean return reaches the task's own bar,
Gymnasium's ``spec.reward_threshold`` (CartPole-v1: 475), unless a run sets another
(:func:`solved_return`). :func:`record` keeps a run's curve and its first solve;
:func:`kept_solved` says how much of the curve after it stayed solved.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import gymnasium as gym
import numpy as np


class Policy(Protocol):
    def __call__(self, obs: np.ndarray, rows: np.ndarray) -> np.ndarray: ...


def solved_return(env_id: str, override: float | None = None) -> float | None:
    """The mean return that counts as solving ``env_id``: ``override`` if given, else the task's
    ``spec.reward_threshold`` (None when the task has none: then no run is judged solved)."""
    if override is not None:
        return float(override)
    threshold = gym.spec(env_id).reward_threshold
    return None if threshold is None else float(threshold)


def evaluate(policy: Policy, env: str | Callable[[], gym.Env] = "CartPole-v1", episodes: int = 10,
             seed: int = 0) -> np.ndarray:
    """Returns ``(episodes,)`` of ``episodes`` episodes of ``policy`` run side by side in ``env``
    (a Gymnasium id, or a function making one environment), episode ``i`` from
    ``reset(seed=seed + i)``."""
    make_env = (lambda: gym.make(env)) if isinstance(env, str) else env
    envs = [make_env() for _ in range(episodes)]
    obs = [e.reset(seed=seed + i)[0] for i, e in enumerate(envs)]
    if hasattr(policy, "reset"):
        policy.reset(np.stack(obs))
    returns, running = np.zeros(episodes), np.ones(episodes, dtype=bool)
    try:
        while running.any():
            rows = np.flatnonzero(running)
            actions = np.asarray(policy(np.stack([obs[i] for i in rows]), rows))
            for action, i in zip(actions, rows):
                obs[i], reward, terminated, truncated, _ = envs[i].step(action.item() if action.ndim == 0 else action)
                returns[i] += reward
                running[i] = not (terminated or truncated)
    finally:
        for e in envs:
            e.close()
    return returns


def stateless(act: Callable[[np.ndarray], np.ndarray]) -> Policy:
    """A :data:`Policy` from a function of the observations alone (``(n, ...)`` -> ``(n,)``)."""
    return lambda obs, rows: act(obs)


def record(result, step: int, returns: Sequence[float], threshold: float | None) -> bool:
    """Append an evaluation at ``step`` to ``result.eval_steps`` and ``result.eval_returns`` (the
    mean return) and set ``result.solved_at`` at the first that reaches ``threshold``; whether this
    one did."""
    mean = float(np.mean(returns))
    result.eval_steps.append(step)
    result.eval_returns.append(mean)
    solved = threshold is not None and mean >= threshold
    if solved and result.solved_at is None:
        result.solved_at = step
    return solved


def kept_solved(steps: Sequence[int], returns: Sequence[float], solved_at: int | None,
                threshold: float | None) -> float:
    """Share of the evaluations after the first solve that still reach ``threshold``; NaN when
    the run never solved or solved at its last evaluation."""
    after = [r for s, r in zip(steps, returns) if solved_at is not None and s > solved_at]
    return float(np.mean([r >= threshold for r in after])) if after else float("nan")
