"""Imagined rollouts of a learned model, and the same rollouts replayed in the real environment.

``imagine`` advances many start states at once through a :class:`~wmbook.models.DynamicsModel`
(one batched forward pass per step). ``replay_real`` plays the same action sequences from the
same start states in CartPole, so that the two can be compared step by step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import gymnasium as gym
import numpy as np
import torch

from wmbook.envs import set_cartpole_state


@dataclass
class Rollout:
    """A batch of ``B`` trajectories of ``H`` steps.

    Shapes: ``states`` ``(B, H + 1, obs_dim)`` (``states[:, 0]`` is the start), ``actions``
    ``(B, H)``, ``rewards`` and ``done_probs`` ``(B, H)``, ``alive`` ``(B, H)`` bool: step ``t``
    belongs to the trajectory (no termination happened before it); ``disagreement``
    ``(B, H)`` for ensembles, else ``None``.
    """

    states: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    done_probs: torch.Tensor
    alive: torch.Tensor
    disagreement: torch.Tensor | None = None

    @property
    def horizon(self) -> int:
        return self.actions.shape[1]


@torch.no_grad()
def imagine(
    model,
    start_states: torch.Tensor,
    horizon: int,
    actions: torch.Tensor | None = None,
    policy: Callable[[torch.Tensor], torch.Tensor] | None = None,
    done_threshold: float = 0.5,
) -> Rollout:
    """Roll ``model`` forward from ``start_states`` (``(B, obs_dim)``) for ``horizon`` steps.

    Give either ``actions`` (``(B, horizon)`` integer, open loop) or ``policy`` (a function
    from ``(B, obs_dim)`` states to ``(B,)`` actions, closed loop). A trajectory stops being
    ``alive`` after the first step whose predicted termination probability exceeds
    ``done_threshold``; later steps are still computed but masked.
    """
    if horizon < 1:
        raise ValueError(f"horizon must be at least 1 step, got {horizon}")
    if (actions is None) == (policy is None):
        raise ValueError("give exactly one of `actions` (open loop) or `policy` (closed loop)")
    if start_states.ndim != 2:
        raise ValueError(f"start_states must have shape (B, obs_dim), got {tuple(start_states.shape)}")
    batch = start_states.shape[0]
    if actions is not None and actions.shape != (batch, horizon):
        raise ValueError(f"actions must have shape ({batch}, {horizon}), got {tuple(actions.shape)}")
    device = next(model.parameters()).device
    state = start_states.to(device, torch.float32)
    states, taken, rewards, done_probs, disagreement = [state], [], [], [], []
    for t in range(horizon):
        action = actions[:, t].to(device) if actions is not None else policy(state)
        prediction = model.predict(state, action)
        state = prediction.next_obs
        states.append(state)
        taken.append(action)
        rewards.append(prediction.reward)
        done_probs.append(prediction.done_prob)
        disagreement.append(prediction.disagreement)
    done_probs_t = torch.stack(done_probs, 1)
    ended = (done_probs_t > done_threshold).long()
    # alive[t]: no predicted termination at any step before t
    alive = torch.cumsum(ended, 1) - ended == 0
    spread = torch.stack(disagreement, 1) if disagreement[0] is not None else None
    return Rollout(torch.stack(states, 1), torch.stack(taken, 1), torch.stack(rewards, 1),
                   done_probs_t, alive, spread)


@dataclass
class RealRollout:
    """Real trajectories. ``states`` ``(B, H + 1, obs_dim)``; ``actions`` ``(B, H)``;
    ``alive`` ``(B, H)`` as in :class:`Rollout`; ``terminated_at`` ``(B,)`` the step at which
    the real episode ended (``H`` if it did not). After the end, states repeat the last one
    and actions are 0."""

    states: np.ndarray
    actions: np.ndarray
    alive: np.ndarray
    terminated_at: np.ndarray


def replay_real(env: gym.Env, start_states: np.ndarray, actions: np.ndarray | None = None,
                policy: Callable[[np.ndarray], int] | None = None,
                horizon: int | None = None) -> RealRollout:
    """Play CartPole from each of ``start_states`` (``(B, 4)``): either the given ``actions``
    (``(B, H)``, open loop) or ``policy`` (observation to action) for ``horizon`` steps.

    Each trajectory stops at its real termination.
    """
    start_states = np.asarray(start_states)
    if start_states.ndim != 2:
        raise ValueError(f"start_states must have shape (B, obs_dim), got {start_states.shape}")
    if (actions is None) == (policy is None):
        raise ValueError("give exactly one of `actions` or `policy` (with `horizon`)")
    if actions is not None:
        actions = np.asarray(actions)
        if actions.ndim != 2 or actions.shape[0] != start_states.shape[0]:
            raise ValueError(f"actions {actions.shape} must be (B, H) for start_states "
                             f"{start_states.shape}")
        if horizon is not None and horizon != actions.shape[1]:
            raise ValueError(f"horizon {horizon} disagrees with the {actions.shape[1]} steps of actions")
        horizon = actions.shape[1]
    if horizon is None or horizon < 1:
        raise ValueError(f"horizon must be at least 1 step, got {horizon}")
    batch = start_states.shape[0]
    states = np.repeat(start_states[:, None, :].astype(np.float32), horizon + 1, axis=1)
    taken = np.zeros((batch, horizon), dtype=np.int64)
    alive = np.zeros((batch, horizon), dtype=bool)
    terminated_at = np.full(batch, horizon)
    for i in range(batch):
        env.reset()
        set_cartpole_state(env, start_states[i])
        obs = start_states[i]
        for t in range(horizon):
            action = int(actions[i, t]) if actions is not None else int(policy(obs))
            alive[i, t], taken[i, t] = True, action
            obs, _, terminated, _, _ = env.step(action)
            states[i, t + 1:] = obs
            if terminated:
                terminated_at[i] = t
                break
    return RealRollout(states, taken, alive, terminated_at)


def rollout_error(imagined: np.ndarray, real: np.ndarray, scale: np.ndarray, alive: np.ndarray) -> np.ndarray:
    """Per-step error ``(B, H)``: RMS over dimensions of ``(imagined - real) / scale``.

    ``imagined`` and ``real`` are ``(B, H + 1, obs_dim)`` state sequences; steps where ``alive``
    is false are NaN, so that ``np.nanmedian`` summarises only steps the real system reached.
    """
    diff = (np.asarray(imagined)[:, 1:] - np.asarray(real)[:, 1:]) / np.asarray(scale)
    error = np.sqrt((diff ** 2).mean(-1))
    return np.where(alive, error, np.nan)


def valid_horizon(imagined: Rollout, real: RealRollout, scale: np.ndarray, tolerance: float,
                  done_threshold: float = 0.5) -> np.ndarray:
    """How many steps each imagined trajectory stays trustworthy, ``(B,)`` integers.

    A step fails when the imagined state is further than ``tolerance`` from the real one (RMS
    over dimensions in units of ``scale``, as :func:`rollout_error`), or when the model's
    termination call (``done_prob > done_threshold``) disagrees with reality. The valid horizon
    is the number of steps before the first failure; a trajectory that never fails counts every
    step the real episode lasted.
    """
    states = imagined.states.detach().cpu().numpy()
    error = rollout_error(states, real.states, scale, real.alive)
    steps = np.arange(real.alive.shape[1])
    really_ended = steps[None, :] == real.terminated_at[:, None]
    model_ended = imagined.done_probs.detach().cpu().numpy() > done_threshold
    # written as "not within tolerance" so that a NaN state counts as a failure
    failed = real.alive & (~(error <= tolerance) | (model_ended != really_ended))
    first_failure = np.where(failed.any(1), failed.argmax(1), real.alive.sum(1))
    return first_failure
