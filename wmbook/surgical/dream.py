"""The surgical world model as an environment: :class:`wmbook.envs.DreamEnv` with
``MultiBinary(100)`` actions, starting from latents filtered from real procedures.

A start is a window of ``context`` frames of a training procedure (with its true triplets), read
by the model from a zero state, as in training; the dream then runs on the model's own
predictions. The reward is the weighted sum of the five predicted components (the model's
``reward_weights``, the seed's by default) and an episode ends when the model predicts the end
of the procedure or after ``max_episode_steps``.
"""

from __future__ import annotations

from typing import Sequence

import gymnasium as gym
import numpy as np
import torch

from wmbook.envs import DreamEnv
from wmbook.surgical.model import SurgicalLatent, SurgicalWorldModel
from wmbook.surgical.imitation import context_windows


@torch.no_grad()
def start_latents(model: SurgicalWorldModel, procedures: Sequence, stride: int = 10,
                  actions: str = "true") -> SurgicalLatent:
    """Latents ``(N, ...)`` at every ``stride``-th full-context frame of ``procedures``."""
    if stride < 1:
        raise ValueError(f"stride must be positive, got {stride}")
    hs, zs = [], []
    for procedure in procedures:
        windows = context_windows(procedure, model.config.context, actions)
        keep = slice(None, None, stride)
        conf = model.confidence(windows["actions"][keep].shape[:2], actions == "recognised")
        h = model.encode_sequence(windows["embeddings"][keep], windows["actions"][keep], conf)[:, -1]
        hs.append(h)
        zs.append(windows["embeddings"][keep][:, -1])
    if not hs:
        raise ValueError("no procedure to start from")
    return SurgicalLatent(torch.cat(hs), torch.cat(zs))


def make_dream_env(model: SurgicalWorldModel, procedures: Sequence, max_episode_steps: int = 50,
                   stride: int = 10, done_threshold: float = 0.5) -> DreamEnv:
    """A :class:`~wmbook.envs.DreamEnv` over ``model`` with ``MultiBinary(100)`` actions whose
    starts are :func:`start_latents` of ``procedures``; observations are ``model.features``
    ``(H + D,)``."""
    return DreamEnv(model.eval(), start_latents=start_latents(model, procedures, stride),
                    action_space=gym.spaces.MultiBinary(model.config.n_actions),
                    max_episode_steps=max_episode_steps, done_threshold=done_threshold)


def rollout_returns(env: DreamEnv, policy, episodes: int, seed: int = 0) -> np.ndarray:
    """Returns of ``episodes`` dream episodes of ``policy(observation) -> labels (100,)``."""
    returns = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(policy(obs))
            total += reward
            done = terminated or truncated
        returns.append(total)
    return np.array(returns)
