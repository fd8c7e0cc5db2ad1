"""Imagined rollouts of a learned model, and the same rollouts replayed in the real environment.

``imagine`` advances many start states at once through any model that meets the
:class:`~wmbook.models.base.WorldModel` interface (one batched ``imagine_step`` per step); the
MLP models of Chapters 1-3 meet it directly, and any object with a ``predict(obs, action)``
method is adapted. ``replay_real`` plays the same action sequences from the same start states
in CartPole, so that the two can be compared step by step.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import gymnasium as gym
import numpy as np
import torch

from wmbook.device import to_device
from wmbook.envs import set_cartpole_state
from wmbook.models.base import Latent, as_world_model, latent_stack, latent_to, model_device


@dataclass
class Rollout:
    """A batch of ``B`` trajectories of ``H`` steps.

    Shapes: ``states`` ``(B, H + 1, F)``, the model's features at each step (``states[:, 0]``
    is the start; for the MLP models of Chapters 1-3 the features are the state itself, so
    ``F = obs_dim``); ``actions`` ``(B, H, ...)`` (``(B, H)`` for discrete actions);
    ``rewards`` and ``done_probs`` ``(B, H)``; ``alive`` ``(B, H)`` bool: step ``t`` belongs to
    the trajectory (no termination happened before it); ``disagreement`` ``(B, H)`` for
    ensembles, else ``None``; ``latents`` the latent at each step, every tensor
    ``(B, H + 1, ...)`` (the same tensor as ``states`` when features are the latent);
    ``continuations`` ``(B, H)`` the probabilities of not terminating.
    """

    states: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    done_probs: torch.Tensor
    alive: torch.Tensor
    disagreement: torch.Tensor | None = None
    latents: Latent = None
    continuations: torch.Tensor | None = None

    def __post_init__(self):
        if self.latents is None:
            self.latents = self.states
        if self.continuations is None:
            self.continuations = 1 - self.done_probs

    @property
    def horizon(self) -> int:
        return self.actions.shape[1]

    @property
    def features(self) -> torch.Tensor:
        """``states`` under the name later chapters use: ``(B, H + 1, F)``."""
        return self.states


def imagine(
    model,
    start_states: torch.Tensor | None,
    horizon: int,
    actions: torch.Tensor | None = None,
    policy: Callable[[torch.Tensor], torch.Tensor] | None = None,
    done_threshold: float = 0.5,
    *,
    start_latent: Latent = None,
    grad: bool = False,
) -> Rollout:
    """Roll ``model`` forward for ``horizon`` steps from a batch of ``B`` starts.

    Start from real observations ``start_states`` ``(B, ...)``, each filtered into a fresh
    latent (``observe`` with ``is_first`` true), or from latents ``start_latent`` (e.g. the
    posteriors of a replayed sequence; pass ``start_states=None``).

    Give either ``actions`` (``(B, horizon, ...)``, open loop; ``(B, horizon)`` integers for
    discrete actions) or ``policy`` (a function from features ``(B, F)`` to actions
    ``(B, ...)``, closed loop). A trajectory stops being ``alive`` after the first step whose
    predicted termination probability exceeds ``done_threshold``; later steps are still
    computed but masked (a soft alternative: weigh step ``t`` by the product of
    ``continuations`` before it).

    By default the rollout runs under ``torch.no_grad()``. With ``grad=True`` gradients flow
    through the model and the policy into every returned tensor, so that an actor can be
    trained by backpropagating imagined returns (Dreamer); detach the start latents first
    (:func:`~wmbook.models.base.latent_detach`) unless the model should learn from that loss too.
    """
    if horizon < 1:
        raise ValueError(f"horizon must be at least 1 step, got {horizon}")
    if (actions is None) == (policy is None):
        raise ValueError("give exactly one of `actions` (open loop) or `policy` (closed loop)")
    if (start_states is None) == (start_latent is None):
        raise ValueError("give exactly one of `start_states` (observations) or `start_latent`")
    if start_states is not None and start_states.ndim < 2:
        raise ValueError(f"start_states must have shape (B, obs_dim), got {tuple(start_states.shape)}")
    world = as_world_model(model, obs_dim=None if start_states is None else start_states.shape[-1])
    device = model_device(world)
    with contextlib.nullcontext() if grad else torch.no_grad():
        if start_latent is None:  # filter each start observation into a fresh latent
            obs = to_device(start_states, device)
            if obs.is_floating_point():  # integer observations (e.g. pixels) keep their dtype
                obs = obs.to(torch.float32)
            is_first = torch.ones(obs.shape[0], dtype=torch.bool, device=device)
            latent = world.observe(world.initial_state(obs.shape[0], device), None, obs, is_first)
        else:
            latent = latent_to(start_latent, device)
        features = world.features(latent)
        if actions is not None:
            check_actions(world, actions, features.shape[0], horizon)
            actions = to_device(actions, device)  # once, not a copy per step
        latents, states, taken, rewards, done_probs, continuations, disagreement = (
            [latent], [features], [], [], [], [], [])
        for t in range(horizon):
            action = actions[:, t] if actions is not None else policy(features)
            step = world.imagine_step(latent, action)
            latent = step.latent
            features = world.features(latent)
            latents.append(latent)
            states.append(features)
            taken.append(action)
            rewards.append(step.reward)
            done_probs.append(step.done_prob)
            continuations.append(step.continuation)
            disagreement.append(step.disagreement)
    done_probs = torch.stack(done_probs, 1)
    ended = (done_probs > done_threshold).long()
    alive = torch.cumsum(ended, 1) - ended == 0  # alive[t]: no predicted termination before t
    spread = torch.stack(disagreement, 1) if disagreement[0] is not None else None
    # features that are the latent itself need not be stored twice
    same = all(f is l for f, l in zip(states, latents))
    states = torch.stack(states, 1)
    return Rollout(states, torch.stack(taken, 1), torch.stack(rewards, 1), done_probs, alive, spread,
                   states if same else latent_stack(latents, 1), torch.stack(continuations, 1))


def check_actions(world, actions: torch.Tensor, batch: int, horizon: int) -> None:
    """Open-loop actions must be ``(batch, horizon, *action_shape)``."""
    expected = getattr(world, "action_shape", None)
    if actions.shape[:2] != (batch, horizon) or (expected is not None and actions.shape[2:] != tuple(expected)):
        wanted = (batch, horizon, *expected) if expected is not None else f"({batch}, {horizon}, ...)"
        raise ValueError(f"actions must have shape {wanted}, got {tuple(actions.shape)}")


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
