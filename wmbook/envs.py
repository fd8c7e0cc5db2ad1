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
import torch
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


class WorldModelEnv(gym.Env):
    """A learned world model as a Gymnasium environment, so that any agent can train inside it.

    ``reset`` picks a real start state (uniformly, with ``self.np_random``); each ``step`` asks
    ``model.predict`` for the next state, the reward and the termination probability of one
    ``(state, action)`` pair. Reward and termination come from the model's heads because an
    imagined state has no real simulator to judge it; truncation is not a property of the task
    but of the experiment (real data was cut by a time limit the model learned to ignore), so it
    comes from ``max_episode_steps``.

    Args:
        model: has ``predict(obs (B, obs_dim) float, action (B,) int64) -> Prediction`` and
            ``parameters()``; used on its parameters' device, under ``torch.no_grad()``, in
            whatever train/eval mode it is in (the env never changes its mode or weights).
        start_states: real states ``(N, obs_dim)`` (array or tensor), or a ``ReplayBuffer``,
            whose every stored ``obs`` is then a possible start.
        action_space: ``Discrete(n)`` starting at 0; ``Discrete(model.config.n_actions)`` by default.
        max_episode_steps: steps after which an episode is truncated.
        done_threshold: ``terminated`` when the predicted probability exceeds it ...
        sample_termination: ... or, if true, with that probability (drawn from ``np_random``).

    Observations are float32 ``(obs_dim,)``. The observation space is every finite float32
    (``Box(-float32 max, float32 max)``): a model can leave any bounded box, and a non-finite
    prediction raises ``FloatingPointError`` instead of being returned. ``reset(options=
    {"state": s})`` starts from ``s``; ``info["start_index"]`` is the row drawn (-1 for a given
    state) and ``info["done_prob"]`` the predicted termination probability of a step.
    """

    metadata = {"render_modes": []}

    def __init__(self, model, start_states, action_space: gym.spaces.Discrete | None = None,
                 max_episode_steps: int = 500, done_threshold: float = 0.5,
                 sample_termination: bool = False):
        config = getattr(model, "config", None)
        if isinstance(start_states, ReplayBuffer):
            start_states = start_states.all().obs
        if isinstance(start_states, torch.Tensor):
            start_states = start_states.detach().cpu().numpy()
        with np.errstate(over="ignore"):  # values beyond float32 become inf, reported below
            states = np.array(start_states, dtype=np.float32)  # a copy, as the caller's may change
        obs_dim = getattr(config, "obs_dim", states.shape[-1] if states.ndim else None)
        if states.ndim != 2 or states.shape[0] < 1 or states.shape[1] != obs_dim:
            raise ValueError(f"start_states must have shape (N >= 1, obs_dim={obs_dim}), got {states.shape}")
        if not np.all(np.isfinite(states)):
            bad = np.flatnonzero(~np.isfinite(states).all(1))
            raise ValueError(f"start_states {states.shape} contain NaN or infinity in rows {bad[:10].tolist()}")
        if action_space is None:
            if config is None:
                raise ValueError("the model has no config: pass action_space=Discrete(n)")
            action_space = gym.spaces.Discrete(config.n_actions)
        if not isinstance(action_space, gym.spaces.Discrete) or action_space.start != 0:
            raise ValueError(f"action_space must be Discrete(n) starting at 0, got {action_space}")
        if int(max_episode_steps) < 1:
            raise ValueError(f"max_episode_steps must be positive, got {max_episode_steps}")
        if not 0.0 <= done_threshold <= 1.0:
            raise ValueError(f"done_threshold must lie in [0, 1], got {done_threshold}")
        limit = np.finfo(np.float32).max
        self.observation_space = gym.spaces.Box(-limit, limit, (obs_dim,), np.float32)
        self.action_space = action_space
        self.model, self.start_states = model, states
        self.max_episode_steps, self.done_threshold = int(max_episode_steps), float(done_threshold)
        self.sample_termination = bool(sample_termination)
        parameter = next(iter(model.parameters()), None)
        self._device = parameter.device if parameter is not None else torch.device("cpu")
        self._dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
        self._state, self._t = np.zeros(obs_dim, np.float32), 0
        self._reset_needed: str | None = "call reset() before the first step()"

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = dict(options or {})
        state = options.pop("state", None)
        if options:
            raise ValueError(f"unknown reset options {sorted(options)}; only 'state' is supported")
        if state is None:
            index = int(self.np_random.integers(len(self.start_states)))
            state = self.start_states[index]
        else:
            index, state = -1, np.asarray(state, dtype=np.float32)
            if state.shape != self.observation_space.shape or not np.all(np.isfinite(state)):
                raise ValueError(f"options['state'] must be a finite state of shape "
                                 f"{self.observation_space.shape}, got {state.shape}: {state}")
        self._state, self._t, self._reset_needed = state.copy(), 0, None
        return state.copy(), {"start_index": index}

    def step(self, action):
        if self._reset_needed:
            raise gym.error.ResetNeeded(self._reset_needed)
        if not self.action_space.contains(action):
            raise ValueError(f"action {action!r} is outside {self.action_space}: "
                             f"expected an integer in [0, {self.action_space.n})")
        with torch.no_grad():
            obs = torch.as_tensor(self._state[None], device=self._device, dtype=self._dtype)
            prediction = self.model.predict(obs, torch.tensor([int(action)], device=self._device))
        next_obs = prediction.next_obs.reshape(-1).cpu().numpy().astype(np.float32)
        reward, done_prob = float(prediction.reward.reshape(())), float(prediction.done_prob.reshape(()))
        if not (np.all(np.isfinite(next_obs)) and np.isfinite(reward) and np.isfinite(done_prob)):
            raise FloatingPointError(
                f"the model predicted NaN or infinity at step {self._t} from state {self._state} "
                f"with action {action}: next_obs {next_obs}, reward {reward}, done_prob {done_prob}")
        self._t += 1
        if self.sample_termination:
            terminated = bool(self.np_random.random() < done_prob)
        else:
            terminated = done_prob > self.done_threshold
        truncated = not terminated and self._t >= self.max_episode_steps
        if terminated or truncated:
            self._reset_needed = (f"the episode was {'terminated' if terminated else 'truncated'} at "
                                  f"step {self._t}: call reset() before stepping again")
        self._state = next_obs
        return next_obs.copy(), reward, terminated, truncated, {"done_prob": done_prob}
