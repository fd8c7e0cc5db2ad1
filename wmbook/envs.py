"""Environments and data collection.

``collect_transitions`` runs a policy in a Gymnasium environment and stores what it sees in a
:class:`~wmbook.buffers.ReplayBuffer`, keeping Gymnasium's two kinds of episode end apart:
``terminated`` (the task ended: the pole fell) and ``truncated`` (a time limit cut the episode
short). Only the first is a "done" a world model should learn to predict.
"""

from __future__ import annotations

from typing import Callable

import gymnasium as gym
import numpy as np
from tqdm.auto import tqdm

from wmbook.buffers import ReplayBuffer

Policy = Callable[[np.ndarray], "int | np.ndarray"]


def make_env(env_id: str = "CartPole-v1", seed: int | None = None, **kwargs) -> gym.Env:
    """``gymnasium.make(env_id)``, with its action space seeded when ``seed`` is given."""
    try:
        env = gym.make(env_id, **kwargs)
    except gym.error.Error as error:
        raise ValueError(f"cannot make environment {env_id!r}: {error}") from error
    if seed is not None:
        env.action_space.seed(seed)
    return env


class RandomPolicy:
    """Uniformly random actions from ``action_space``, drawn from the policy's own generator."""

    def __init__(self, action_space: gym.Space, seed: int = 0):
        self.action_space = action_space
        self.action_space.seed(seed)

    def __call__(self, obs: np.ndarray):
        return self.action_space.sample()


class EpsilonGreedy:
    """With probability ``epsilon`` a uniformly random action, else ``greedy(obs)``."""

    def __init__(self, greedy: Policy, n_actions: int, epsilon: float, seed: int = 0):
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must lie in [0, 1], got {epsilon}")
        self.greedy, self.n_actions, self.epsilon = greedy, n_actions, epsilon
        self.rng = np.random.default_rng(seed)

    def __call__(self, obs: np.ndarray):
        if self.rng.random() < self.epsilon:
            return int(self.rng.integers(self.n_actions))
        return self.greedy(obs)


def buffer_for(env: gym.Env, capacity: int, seed: int = 0) -> ReplayBuffer:
    """An empty :class:`ReplayBuffer` shaped for ``env``'s observation and action spaces."""
    space = env.action_space
    if isinstance(space, gym.spaces.Discrete):
        return ReplayBuffer(capacity, env.observation_space.shape, (), np.int64, seed=seed)
    if isinstance(space, gym.spaces.Box):
        return ReplayBuffer(capacity, env.observation_space.shape, space.shape, np.float32, seed=seed)
    raise TypeError(f"unsupported action space {space}")


def collect_transitions(
    env: gym.Env,
    n_steps: int,
    policy: Policy | None = None,
    seed: int = 0,
    buffer: ReplayBuffer | None = None,
    progress: bool = False,
) -> ReplayBuffer:
    """Run ``policy`` (random by default) for ``n_steps`` environment steps.

    The environment is reset with ``seed`` first and after every episode end. Transitions are
    added to ``buffer`` (a new one holding exactly ``n_steps`` when omitted), which is returned.
    The final episode may be cut off by ``n_steps``: its last transition then carries neither
    flag, as the episode did not end.
    """
    if n_steps < 1:
        raise ValueError(f"n_steps must be positive, got {n_steps}")
    policy = policy or RandomPolicy(env.action_space, seed)
    buffer = buffer if buffer is not None else buffer_for(env, n_steps, seed)
    obs, _ = env.reset(seed=seed)
    for _ in tqdm(range(n_steps), desc="collect", disable=not progress, leave=False):
        action = policy(obs)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        buffer.add(obs, action, reward, next_obs, terminated, truncated)
        obs = next_obs
        if terminated or truncated:
            obs, _ = env.reset()
    return buffer


def episode_lengths(buffer: ReplayBuffer) -> np.ndarray:
    """Lengths of the completed episodes in ``buffer`` (an unfinished last one is left out)."""
    order = buffer.chronological_indices()
    ends = np.flatnonzero(buffer.terminated[order] | buffer.truncated[order])
    return np.diff(np.concatenate([[-1], ends]))


def set_cartpole_state(env: gym.Env, state: np.ndarray) -> None:
    """Put a reset CartPole into ``state`` = (x, x_dot, theta, theta_dot).

    Lets a real rollout start exactly where an imagined one does. Call after ``env.reset()``.
    """
    core = env.unwrapped
    state = np.asarray(state, dtype=np.float64)
    if not hasattr(core, "state") or not hasattr(core, "theta_threshold_radians"):
        raise TypeError(f"set_cartpole_state needs a CartPole environment, got {core}")
    if state.shape != (4,):
        raise ValueError(f"a CartPole state has shape (4,), got {state.shape}")
    if not np.all(np.isfinite(state)):
        raise ValueError(f"CartPole state contains NaN or infinity: {state}")
    core.state = state.copy()
    core.steps_beyond_terminated = None
