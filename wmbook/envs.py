"""Environments and data collection.

``collect_transitions`` runs a policy in a Gymnasium environment and stores what it sees in a
:class:`~wmbook.buffers.ReplayBuffer`, keeping Gymnasium's two kinds of episode end apart:
``terminated`` (the task ended: the pole fell) and ``truncated`` (a time limit cut the episode
short). Only the first is a "done" a world model should learn to predict.

:class:`DreamEnv` turns any learned world model into an environment in which an agent can
train; :class:`WorldModelEnv` is the same for the MLP model of Chapters 1-3.
"""

from __future__ import annotations

from typing import Callable

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

from wmbook.buffers import ReplayBuffer
from wmbook.models.base import (
    Latent, as_world_model, latent_batch_size, latent_index, latent_map, latent_to, model_device,
    model_dtype)

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


def _time_limit(env):
    while env is not None:
        if isinstance(env, gym.wrappers.TimeLimit):
            return env
        env = getattr(env, "env", None)
    return None


def env_state(env) -> dict:
    """What continues a classic-control environment exactly: its state, step count and generator."""
    core, limit = env.unwrapped, _time_limit(env)
    return {"state": np.asarray(core.state, dtype=np.float64).tolist(),
            "steps_beyond_terminated": core.steps_beyond_terminated,
            "rng": core.np_random.bit_generator.state,
            "elapsed": None if limit is None else limit._elapsed_steps}


def restore_env_state(env, saved: dict) -> None:
    """Put ``env`` back in the state :func:`env_state` saved."""
    env.reset(seed=0)  # lets the order-enforcing wrapper accept steps
    core, limit = env.unwrapped, _time_limit(env)
    core.state = np.asarray(saved["state"], dtype=np.float64)
    core.steps_beyond_terminated = saved["steps_beyond_terminated"]
    core.np_random.bit_generator.state = saved["rng"]
    if limit is not None:
        limit._elapsed_steps = saved["elapsed"]


def _start_rows(rows, keep_integers: bool) -> np.ndarray:
    """``rows`` (array, tensor or ``ReplayBuffer``, whose stored ``obs`` are taken) as a new
    numpy array (the caller's may change), as float32 unless ``keep_integers`` and they are
    integers (e.g. uint8 pixels). Values beyond float32 become inf, for the caller to report."""
    if isinstance(rows, ReplayBuffer):
        rows = rows.all().obs
    if isinstance(rows, torch.Tensor):
        rows = rows.detach().cpu().numpy()
    rows = np.asarray(rows)
    if keep_integers and rows.dtype.kind in "iub":
        return rows.copy()
    with np.errstate(over="ignore"):
        return np.array(rows, dtype=np.float32)


def _check_finite_rows(rows: np.ndarray, name: str) -> None:
    if rows.dtype.kind == "f" and not np.all(np.isfinite(rows)):
        bad = np.flatnonzero(~np.isfinite(rows.reshape(len(rows), -1)).all(1))
        raise ValueError(f"{name} {rows.shape} contain NaN or infinity in rows {bad[:10].tolist()}")


class DreamEnv(gym.Env):
    """Any world model (:class:`~wmbook.models.base.WorldModel`) as a Gymnasium environment, so
    that any agent can train in its imagination.

    ``reset`` draws a start uniformly with ``self.np_random``: a real observation, filtered
    into a fresh latent by ``model.observe`` (``is_first`` true), or a given latent. Each
    ``step`` is one ``model.imagine_step``: the model's reward, and termination from its
    continuation probability, because an imagined state has no real simulator to judge it.
    Truncation is not a property of the task but of the experiment (real data was cut by a time
    limit the model learned to ignore), so it comes from ``max_episode_steps``.

    Args:
        model: meets :class:`~wmbook.models.base.WorldModel` (or has ``predict(obs, action)``,
            then adapted as a Markov model); used on its parameters' device, under
            ``torch.no_grad()``, in whatever train/eval mode it is in (the env never changes its
            mode or weights). A model that samples draws from torch's global generator: seed it
            (``torch.manual_seed``) to repeat episodes.
        start_observations: real observations ``(N, ...)`` (array, tensor or a ``ReplayBuffer``,
            whose every stored ``obs`` is then a possible start) ...
        start_latents: ... or latents whose tensors are ``(N, ...)``; give exactly one.
        action_space: ``Discrete(n)`` starting at 0 (the model receives ``(1,)`` int64
            indices), ``MultiBinary(n)`` (``(1, n)`` float 0/1) or ``Box`` (``(1, *shape)``
            float); it must match the model's ``action_shape`` where the model declares one.
        max_episode_steps: steps after which an episode is truncated.
        done_threshold: ``terminated`` when the termination probability (``1 - continuation``)
            exceeds it ...
        sample_termination: ... or, if true, with that probability (drawn from ``np_random``).
        observation: ``"features"``: the agent sees ``model.features(latent)``, float32
            ``(F,)``; ``"decode"``: it sees ``model.decode(latent)`` (float32, or uint8 images).

    Float observations lie in every finite float32 (``Box(-float32 max, float32 max)``): a
    model can leave any bounded box, and a non-finite prediction raises ``FloatingPointError``
    instead of being returned. ``reset(options={"observation": o})`` starts from the real
    observation ``o``, ``reset(options={"latent": l})`` from a latent of batch size 1;
    ``info["start_index"]`` is the row drawn (-1 for a given start). A step's ``info`` holds
    ``done_prob`` and, for models that report one, ``disagreement``.
    """

    metadata = {"render_modes": []}
    _observation_option = "observation"  # the reset option naming a real start observation

    def __init__(self, model, start_observations=None, *, start_latents: Latent = None,
                 action_space: gym.Space, max_episode_steps: int = 500, done_threshold: float = 0.5,
                 sample_termination: bool = False, observation: str = "features"):
        if (start_observations is None) == (start_latents is None):
            raise ValueError("give exactly one of start_observations and start_latents")
        if observation not in ("features", "decode"):
            raise ValueError(f"observation must be 'features' or 'decode', got {observation!r}")
        if int(max_episode_steps) < 1:
            raise ValueError(f"max_episode_steps must be positive, got {max_episode_steps}")
        if not 0.0 <= done_threshold <= 1.0:
            raise ValueError(f"done_threshold must lie in [0, 1], got {done_threshold}")
        self._device, self._dtype = model_device(model), model_dtype(model)
        if start_observations is not None:
            observations = _start_rows(start_observations, keep_integers=True)
            if observations.ndim < 2 or observations.shape[0] < 1:
                raise ValueError(f"start_observations must have shape (N >= 1, ...), "
                                 f"got {observations.shape}")
            _check_finite_rows(observations, "start_observations")
            self.start_observations, self._start_latents = observations, None
            model = as_world_model(model, obs_dim=observations.shape[-1])
        else:
            self.start_observations = None
            # a copy on the model's device, as the caller's tensors may change
            self._start_latents = latent_map(lambda x: x.detach().clone(),
                                             latent_to(start_latents, self._device))
            latent_batch_size(self._start_latents)  # every tensor must share the batch size
            model = as_world_model(model)
        if observation == "decode" and not callable(getattr(model, "decode", None)):
            raise ValueError(f"observation='decode' needs a model with decode(latent); "
                             f"{type(model).__name__} has none")
        self.model = model
        self.action_space = _check_action_space(action_space, getattr(model, "action_shape", None))
        self.max_episode_steps, self.done_threshold = int(max_episode_steps), float(done_threshold)
        self.sample_termination, self.observation = bool(sample_termination), observation
        # the first start, rendered once, fixes the observation space; the fork keeps a model
        # that samples from shifting the caller's random streams
        devices = [self._device] if self._device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            probe = self._render(self._start(0))
        self.observation_space = _observation_space(probe)
        self._latent, self._obs, self._t = None, probe, 0
        self._reset_needed: str | None = "call reset() before the first step()"

    @property
    def n_starts(self) -> int:
        """How many starts ``reset`` draws from."""
        if self.start_observations is not None:
            return len(self.start_observations)
        return latent_batch_size(self._start_latents)

    # -- starts and observations ------------------------------------------------------------

    def _filter(self, obs: np.ndarray) -> Latent:
        """The latent of one real observation ``(...)`` as the first of its episode."""
        tensor = torch.tensor(obs[None], device=self._device)
        if tensor.is_floating_point():
            tensor = tensor.to(self._dtype)
        is_first = torch.ones(1, dtype=torch.bool, device=self._device)
        return self.model.observe(self.model.initial_state(1, self._device), None, tensor, is_first)

    def _start(self, index: int) -> Latent:
        if self.start_observations is not None:
            return self._filter(self.start_observations[index])
        return latent_index(self._start_latents, slice(index, index + 1))

    def _render(self, latent: Latent) -> np.ndarray:
        """What the agent sees of a latent of batch size 1: a fresh numpy array."""
        seen = self.model.decode(latent) if self.observation == "decode" else self.model.features(latent)
        if seen.shape[:1] != (1,):
            raise ValueError(f"model.{self.observation} must return a batch of 1 for a latent of batch "
                             f"size 1, got shape {tuple(seen.shape)}")
        seen = seen[0].detach().cpu().numpy()
        return seen.astype(np.float32) if seen.dtype.kind == "f" else seen.copy()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = dict(options or {})
        key = self._observation_option
        given_obs, given_latent = options.pop(key, None), options.pop("latent", None)
        if options:
            raise ValueError(f"unknown reset options {sorted(options)}; only {key!r} or 'latent' "
                             f"are supported")
        if given_obs is not None and given_latent is not None:
            raise ValueError(f"give at most one of options[{key!r}] and options['latent']")
        with torch.no_grad():
            if given_obs is not None:
                index, latent = -1, self._filter(self._check_start_observation(given_obs))
            elif given_latent is not None:
                index, latent = -1, latent_to(given_latent, self._device)
                if latent_batch_size(latent) != 1:
                    raise ValueError(f"options['latent'] must have batch size 1, "
                                     f"got {latent_batch_size(latent)}")
            else:
                index = int(self.np_random.integers(self.n_starts))
                latent = self._start(index)
            obs = self._render(latent)
        self._latent, self._obs, self._t, self._reset_needed = latent, obs, 0, None
        return obs.copy(), {"start_index": index}

    def _check_start_observation(self, obs) -> np.ndarray:
        key = self._observation_option
        dtype = self.start_observations.dtype if self.start_observations is not None else np.float32
        obs = np.asarray(obs, dtype=dtype)
        shape = self.start_observations.shape[1:] if self.start_observations is not None else obs.shape
        if obs.shape != shape or not np.all(np.isfinite(obs)):
            raise ValueError(f"options[{key!r}] must be a finite {key} of shape {shape}, "
                             f"got {obs.shape}: {obs}")
        return obs

    # -- stepping ---------------------------------------------------------------------------

    def _action_tensor(self, action) -> torch.Tensor:
        """``action`` checked against the action space, as the model's batch of one."""
        space = self.action_space
        if isinstance(space, gym.spaces.Discrete):
            if not space.contains(action):
                raise ValueError(f"action {action!r} is outside {space}: "
                                 f"expected an integer in [0, {space.n})")
            return torch.tensor([int(action)], device=self._device)
        array = np.asarray(action)
        if isinstance(space, gym.spaces.MultiBinary):
            if not space.contains(array):
                raise ValueError(f"action {action!r} is outside {space}: "
                                 f"expected 0/1 values of shape {space.shape}")
        elif (array.dtype.kind not in "fiub" or array.shape != space.shape
              or not np.all(np.isfinite(array)) or not space.contains(array.astype(space.dtype))):
            raise ValueError(f"action {action!r} is outside {space}: expected finite values of shape "
                             f"{space.shape} within [{space.low.min()}, {space.high.max()}]")
        return torch.tensor(array[None], device=self._device, dtype=self._dtype)

    def step(self, action):
        if self._reset_needed:
            raise gym.error.ResetNeeded(self._reset_needed)
        action_tensor = self._action_tensor(action)
        with torch.no_grad():
            step = self.model.imagine_step(self._latent, action_tensor)
            obs = self._render(step.latent)
        reward, done_prob = float(step.reward.reshape(())), float(step.done_prob.reshape(()))
        # the observation stands for the latent: a NaN hidden elsewhere reaches it a step later
        if not (np.all(np.isfinite(obs)) and np.isfinite(reward) and np.isfinite(done_prob)):
            raise FloatingPointError(
                f"the model predicted NaN or infinity at step {self._t} from state {self._obs} "
                f"with action {action}: observation {obs}, reward {reward}, done_prob {done_prob}")
        self._t += 1
        if self.sample_termination:
            terminated = bool(self.np_random.random() < done_prob)
        else:
            terminated = done_prob > self.done_threshold
        truncated = not terminated and self._t >= self.max_episode_steps
        if terminated or truncated:
            self._reset_needed = (f"the episode was {'terminated' if terminated else 'truncated'} at "
                                  f"step {self._t}: call reset() before stepping again")
        self._latent, self._obs = step.latent, obs
        info = {"done_prob": done_prob}
        if step.disagreement is not None:
            info["disagreement"] = float(step.disagreement.reshape(()))
        return obs.copy(), reward, terminated, truncated, info


def _check_action_space(space: gym.Space, model_shape: tuple[int, ...] | None) -> gym.Space:
    if isinstance(space, gym.spaces.Discrete):
        if space.start != 0:
            raise ValueError(f"a Discrete action space must start at 0, got {space}")
    elif isinstance(space, gym.spaces.MultiBinary):
        if len(space.shape) != 1:
            raise ValueError(f"a MultiBinary action space must be MultiBinary(n), one label per "
                             f"entry, got {space}")
    elif isinstance(space, gym.spaces.Box):
        if not np.issubdtype(space.dtype, np.floating):
            raise ValueError(f"a Box action space must have a floating dtype, got {space}")
        if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
            raise ValueError(f"a Box action space must be bounded, got {space}")
    else:
        raise ValueError(f"action_space must be Discrete, MultiBinary or Box, got {space}")
    if model_shape is not None and tuple(space.shape) != tuple(model_shape):
        raise ValueError(f"action_space {space} gives actions of shape {space.shape}, but the model "
                         f"expects action_shape {tuple(model_shape)}")
    return space


def _observation_space(example: np.ndarray) -> gym.spaces.Box:
    if example.dtype == np.uint8:
        return gym.spaces.Box(0, 255, example.shape, np.uint8)
    if example.dtype != np.float32:
        raise TypeError(f"observations must be floating point or uint8, got {example.dtype}")
    limit = np.finfo(np.float32).max
    return gym.spaces.Box(-limit, limit, example.shape, np.float32)


class WorldModelEnv(DreamEnv):
    """The MLP world model of Chapters 1-3 as a Gymnasium environment: a :class:`DreamEnv`
    whose observations are states and whose starts are real states.

    ``reset`` picks a real start state (uniformly, with ``self.np_random``); each ``step`` asks
    ``model.predict`` for the next state, the reward and the termination probability of one
    ``(state, action)`` pair.

    Args:
        model: has ``predict(obs (B, obs_dim) float, action (B,) int64) -> Prediction`` and
            ``parameters()``; used as in :class:`DreamEnv`.
        start_states: real states ``(N, obs_dim)`` (array or tensor), or a ``ReplayBuffer``,
            whose every stored ``obs`` is then a possible start.
        action_space: ``Discrete(n)`` starting at 0; ``Discrete(model.config.n_actions)`` by default.
        max_episode_steps, done_threshold, sample_termination: as in :class:`DreamEnv`.

    Observations are float32 ``(obs_dim,)`` in ``Box(-float32 max, float32 max)``.
    ``reset(options={"state": s})`` starts from ``s``; ``info["start_index"]`` is the row drawn
    (-1 for a given state) and ``info["done_prob"]`` the predicted termination probability of a
    step.
    """

    _observation_option = "state"

    def __init__(self, model, start_states, action_space: gym.spaces.Discrete | None = None,
                 max_episode_steps: int = 500, done_threshold: float = 0.5,
                 sample_termination: bool = False):
        config = getattr(model, "config", None)
        states = _start_rows(start_states, keep_integers=False)
        obs_dim = getattr(config, "obs_dim", states.shape[-1] if states.ndim else None)
        if states.ndim != 2 or states.shape[0] < 1 or states.shape[1] != obs_dim:
            raise ValueError(f"start_states must have shape (N >= 1, obs_dim={obs_dim}), got {states.shape}")
        _check_finite_rows(states, "start_states")
        if action_space is None:
            if config is None:
                raise ValueError("the model has no config: pass action_space=Discrete(n)")
            action_space = gym.spaces.Discrete(config.n_actions)
        if not isinstance(action_space, gym.spaces.Discrete) or action_space.start != 0:
            raise ValueError(f"action_space must be Discrete(n) starting at 0, got {action_space}")
        super().__init__(as_world_model(model, obs_dim), states, action_space=action_space,
                         max_episode_steps=max_episode_steps, done_threshold=done_threshold,
                         sample_termination=sample_termination)

    @property
    def start_states(self) -> np.ndarray:
        """The possible start states ``(N, obs_dim)``."""
        return self.start_observations
