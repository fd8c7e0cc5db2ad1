"""Dyna-DQN: DQN that also learns from transitions imagined by a learned world model.

Everything real is plain :func:`~wmbook.agents.dqn.train_dqn`. After each real step the
:class:`DynaPlanner` hook (Sutton, 1991) branches short rollouts from real states in the
buffer with the current policy inside the learned model, and makes ``K`` more DQN updates on
the imagined transitions; on a schedule it refits the model to the growing real buffer. Short
branches from real states keep the model on familiar ground, as in MBPO (Janner et al., 2019).

The refits are warm starts done carefully:

* the normalisation statistics move with the data, and the weights are rescaled with them
  (:meth:`~wmbook.models.dynamics.DynamicsModel.update_normalizers`), so the old weights
  keep predicting what they predicted;
* the validation split is drawn per *episode*, by a hash of the episode's first state, so an
  episode stays on its side at every refit and neighbouring steps never straddle the split;
* the starting weights, which compete with every epoch for the best validation score, have
  therefore never trained on a validation row.

At each refit the planner also measures the refitted model on the validation episodes, one
step and ``error_horizon`` steps ahead (:class:`ModelCheck`), so that what the imagined data
are worth rests on a measured model.
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from wmbook.agents.dqn import DQNAgent, DQNConfig, DQNResult, epsilon_at, train_dqn
from wmbook.buffers import ReplayBuffer, Transitions
from wmbook.device import to_device
from wmbook.envs import make_env
from wmbook.evaluation import kept_solved
from wmbook.models.dynamics import DynamicsConfig, DynamicsModel
from wmbook.models.training import TrainConfig, train_dynamics
from wmbook.models.ensemble import DynamicsEnsemble, train_ensemble
from wmbook.rollout import imagine


@dataclass
class DynaConfig:
    """The imagined half of Dyna-DQN.

    ``model_mixed_precision`` becomes ``mixed_precision`` of the world model's
    :class:`~wmbook.models.training.TrainConfig`: on CUDA its refits train under autocast.
    Imagined rollouts and every DQN update stay float32.

    ``ensemble_members`` > 1 replaces the single model by a bootstrapped ensemble whose
    rollouts draw one member per transition (MBPO); ``max_disagreement`` then cuts a branch at
    the first step where the members' disagreement exceeds it (``None``: never).
    """

    imagined_updates: int = 5      # K: DQN updates on imagined minibatches per real step
    rollout_length: int = 1        # h: model steps per branch from a real state
    model_every: int = 250         # real steps between model refits
    model_updates: int = 150       # gradient steps per refit (warm-started from the last fit)
    model_hidden_size: int = 200
    model_layers: int = 3
    model_batch_size: int = 256
    model_lr: float = 1e-3
    done_threshold: float = 0.5    # imagined termination: done_prob above this
    model_mixed_precision: bool = True
    val_fraction: float = 0.1      # share of episodes held out to pick and measure the model
    error_horizon: int = 5         # steps of the multi-step model check
    ensemble_members: int = 1      # 1: a single model
    max_disagreement: float | None = None


@dataclass(frozen=True)
class ModelCheck:
    """The model after one refit, measured on the held-out episodes of the real buffer.

    ``one_step`` and ``multi_step``: mean squared next-state error, one step and
    ``horizon`` steps ahead (open loop, the real actions replayed), in units of the spread of
    the one-step change in the first refit's data (a scale that stays fixed); NaN when no
    held-out window is long enough.
    """

    step: int            # real steps when the refit happened
    train_size: int      # transitions the model trained on
    val_size: int        # held-out transitions
    one_step: float
    multi_step: float
    horizon: int
    kept_start: bool     # no epoch beat the warm-started weights on the held-out episodes


def episode_ids(data: Transitions) -> np.ndarray:
    """The episode of each transition of chronological ``data`` ``(N, ...)``, integers from 0:
    a new episode starts after every terminated or truncated transition."""
    ends = (data.terminated.bool() | data.truncated.bool()).cpu().numpy()
    if len(ends) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([[0], np.cumsum(ends[:-1])]).astype(np.int64)


def held_out_episodes(data: Transitions, fraction: float, seed: int) -> np.ndarray:
    """Which transitions of chronological ``data`` (``buffer.all()``) belong to held-out
    episodes, ``(N,)`` bool.

    Each episode gets a number from a hash (CRC-32, the same on every machine) of ``seed``
    and its first state; it is held out when that number falls in the lowest ``fraction`` of
    its range. The decision depends on the episode alone, so it does not change as the buffer
    grows: a transition never trains the model at one refit and judges it at the next. If
    that leaves one side empty, the episode with the lowest number is the only one held out
    (it can later return to training, which leaks nothing; a newer episode replaces it).
    """
    if not 0 < fraction < 1:
        raise ValueError(f"the held-out fraction must lie strictly between 0 and 1, got {fraction}")
    ids = episode_ids(data)
    if len(ids) == 0 or ids[-1] == 0:
        raise ValueError(f"need at least 2 episodes to hold one out, the data hold {ids[-1] + 1 if len(ids) else 0}")
    first_states = data.obs[np.flatnonzero(np.diff(ids, prepend=-1))].cpu().numpy()
    salt = np.int64(seed).tobytes()
    numbers = np.array([zlib.crc32(salt + np.ascontiguousarray(s).tobytes()) for s in first_states])
    held = numbers < fraction * 2 ** 32
    if held.all() or not held.any():
        held = numbers == numbers.min()
    return held[ids]


def windows_within(ids: np.ndarray, rows: np.ndarray, length: int) -> np.ndarray:
    """Starts ``(W,)`` (positions in ``buffer.all()`` order) of the windows of ``length``
    consecutive transitions that lie in one episode and among ``rows`` (bool ``(N,)``)."""
    n = len(ids) - length + 1
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.arange(n)
    same = (ids[starts] == ids[starts + length - 1]) & rows[starts] & rows[starts + length - 1]
    return starts[same]


@torch.no_grad()
def multi_step_error(model, data: Transitions, starts: np.ndarray, horizon: int,
                     scale: torch.Tensor) -> float:
    """Mean squared error ``horizon`` steps ahead, open loop, in units of ``scale`` ``(obs_dim,)``.

    ``data`` is ``buffer.all()``; each window starts at a position of ``starts`` and replays
    the real actions of its ``horizon`` transitions in ``model`` (any world model) from the
    real first state; the last imagined state is compared with the real one.
    """
    if len(starts) == 0:
        return float("nan")
    rows = torch.as_tensor(starts[:, None] + np.arange(horizon)[None, :])
    imagined = imagine(model, data.obs[rows[:, 0]], horizon, actions=data.action[rows])
    last = data.next_obs[rows[:, -1]]
    error = (to_device(imagined.states[:, -1], last.device) - last) / scale
    return float((error ** 2).mean())


def imagined_transitions(model, buffer: ReplayBuffer, policy, n_branches: int,
                         rollout_length: int, done_threshold: float = 0.5,
                         device: torch.device | str = "cpu",
                         max_disagreement: float | None = None) -> Transitions:
    """Roll ``policy`` (states ``(B, obs_dim)`` to actions ``(B,)``) for ``rollout_length``
    steps in ``model`` (any world model :func:`~wmbook.rollout.imagine` accepts) from
    ``n_branches`` states sampled from ``buffer``.

    Returns the imagined transitions as a flat batch, dropping the steps after a predicted
    termination (``done_prob > done_threshold``) and, with ``max_disagreement``, every step
    from the first whose ensemble disagreement exceeds it. ``terminated`` holds the model's
    termination *probability*, so that a DQN update makes the expected backup
    ``r + gamma * (1 - p) * max Q(s')`` rather than trusting a hard call the model may get wrong.

    The rollout runs in float32, never under autocast: its errors compound from step to step
    and its states become the inputs and targets of DQN updates.
    """
    starts = buffer.sample(n_branches, device).obs
    rollout = imagine(model, starts, rollout_length, policy=policy, done_threshold=done_threshold)
    alive = rollout.alive
    if max_disagreement is not None:
        if rollout.disagreement is None:
            raise ValueError("max_disagreement needs a model that reports disagreement (an ensemble)")
        trusted = torch.cumsum((rollout.disagreement > max_disagreement).long(), 1) == 0
        alive = alive & trusted
    return Transitions(
        obs=rollout.states[:, :-1][alive],
        action=rollout.actions[alive],
        reward=rollout.rewards[alive],
        next_obs=rollout.states[:, 1:][alive],
        terminated=rollout.done_probs[alive],
        truncated=torch.zeros_like(rollout.rewards, dtype=torch.bool)[alive],
    )


Fit = Callable[[object, Transitions, Transitions, TrainConfig, bool], bool]
"""``fit(model, train, val, train_config, first)`` refits a world model in place and returns
whether it kept its starting weights; ``first`` is true at the first refit."""


def fit_dynamics(model, train: Transitions, val: Transitions, config: TrainConfig, first: bool) -> bool:
    """The refit of a :class:`DynamicsModel` or :class:`DynamicsEnsemble`: statistics set at
    the first refit, moved with the weights after it (each member on its own resample)."""
    device = next(model.parameters()).device
    if isinstance(model, DynamicsEnsemble):
        if not first:
            for member in model.members:
                member.update_normalizers(train)
        histories = train_ensemble(model, train, val, config, device, progress=False,
                                   fit_normalizers=first)
        return all(h.best_epoch == -1 for h in histories)
    if not first:
        model.update_normalizers(train)
    history = train_dynamics(model, train, val, config, device=device, progress=False,
                             fit_normalizers=first)
    return history.best_epoch == -1


class DynaPlanner:
    """The ``after_step`` hook of :func:`train_dqn` that turns DQN into Dyna-DQN.

    ``model``: any world model :func:`~wmbook.rollout.imagine` accepts, with ``fit`` to refit
    it (see :data:`Fit`); by default a :class:`DynamicsModel`, or a :class:`DynamicsEnsemble`
    of ``config.ensemble_members``, refitted by :func:`fit_dynamics`. An ensemble imagines
    with one member drawn per transition.
    """

    def __init__(self, config: DynaConfig, dqn_config: DQNConfig, obs_dim: int, n_actions: int,
                 device: torch.device | str = "cpu", model=None, fit: Fit | None = None,
                 step_fn: "DynaStep | None" = None):
        self.config, self.dqn_config, self.device = config, dqn_config, torch.device(device)
        if model is None:
            model_config = DynamicsConfig(obs_dim, n_actions, config.model_hidden_size, config.model_layers)
            with torch.random.fork_rng(devices=[]):  # initial weights depend on the seed alone
                torch.manual_seed(dqn_config.seed + 1)
                model = (DynamicsModel(model_config) if config.ensemble_members <= 1 else
                         DynamicsEnsemble(model_config, config.ensemble_members))
            model = model.to(self.device)
        elif fit is None and not isinstance(model, (DynamicsModel, DynamicsEnsemble)):
            raise TypeError(f"a {type(model).__name__} needs a fit(model, train, val, config, first) "
                            "function to be refitted")
        self.model, self.fit = model, fit or fit_dynamics
        self.step_fn = step_fn or dyna_step  # what runs after each real step (the notebook may pass its own)
        self.generator = torch.Generator(device=self.device).manual_seed(dqn_config.seed)
        self.refits, self.imagined = 0, 0
        self.checks: list[ModelCheck] = []
        self.error_scale: torch.Tensor | None = None  # the first refit's spread of the change

    @property
    def imagination_model(self):
        """The model rollouts run in: an ensemble draws one member per transition."""
        if isinstance(self.model, DynamicsEnsemble):
            return self.model.sampled(self.generator)
        return self.model

    def refit(self, buffer: ReplayBuffer, step: int) -> ModelCheck:
        """Refit the model to the training episodes of the buffer, pick the weights on the
        held-out episodes, and measure the result there."""
        config = self.config
        data = buffer.all()
        held = held_out_episodes(data, config.val_fraction, self.dqn_config.seed)
        train_rows, val_rows = (torch.as_tensor(np.flatnonzero(mask)) for mask in (~held, held))
        train, val = data.index(train_rows), data.index(val_rows)
        steps_per_epoch = max(1, len(train) // config.model_batch_size)
        epochs = -(-config.model_updates // steps_per_epoch)  # ceil: at least model_updates steps
        train_config = TrainConfig(epochs=epochs, batch_size=config.model_batch_size,
                                   lr=config.model_lr, patience=epochs, seed=step,
                                   mixed_precision=config.model_mixed_precision)
        kept = self.fit(self.model, train.to(self.device), val.to(self.device), train_config,
                        self.refits == 0)
        if self.error_scale is None:
            change = train.next_obs - train.obs
            self.error_scale = change.std(0, unbiased=False).clamp_min(1e-6)
        self.refits += 1
        check = self.measure(data, held, step, len(train), bool(kept))
        self.checks.append(check)
        return check

    def measure(self, data: Transitions, held: np.ndarray, step: int, train_size: int,
                kept_start: bool) -> ModelCheck:
        """One-step and multi-step next-state error on the held-out episodes."""
        ids = episode_ids(data)
        horizon = self.config.error_horizon
        one = multi_step_error(self.model, data, windows_within(ids, held, 1), 1, self.error_scale)
        many = multi_step_error(self.model, data, windows_within(ids, held, horizon), horizon,
                                self.error_scale)
        return ModelCheck(step, train_size, int(held.sum()), one, many, horizon, kept_start)

    def policy(self, agent: DQNAgent, epsilon: float):
        """The agent's epsilon-greedy policy on batches of imagined states."""
        def act(states: torch.Tensor) -> torch.Tensor:
            greedy = agent.greedy(states)
            explore = torch.rand(len(states), generator=self.generator, device=self.device) < epsilon
            random = torch.randint(agent.n_actions, (len(states),), generator=self.generator, device=self.device)
            return torch.where(explore, random, greedy)
        return act

    def __call__(self, step: int, agent: DQNAgent, buffer: ReplayBuffer) -> None:
        self.step_fn(self, step, agent, buffer)


def dyna_step(planner: DynaPlanner, step: int, agent: DQNAgent, buffer: ReplayBuffer) -> None:
    """Dyna's planning step after real step ``step``: refit the model on schedule, imagine a
    pool of transitions from real states with the agent's own exploration, and make
    ``imagined_updates`` DQN updates on minibatches of it. Chapter 3 shows this function and
    hands its own copy to the runs (``train_dyna_dqn(..., step_fn=...)``)."""
    config, batch_size = planner.config, planner.dqn_config.batch_size
    if planner.refits == 0 or step % config.model_every == 0:
        planner.refit(buffer, step)
    if config.imagined_updates == 0:
        return
    n_branches = -(-config.imagined_updates * batch_size // config.rollout_length)
    imagined = imagined_transitions(
        planner.imagination_model, buffer, planner.policy(agent, epsilon_at(step, planner.dqn_config)),
        n_branches, config.rollout_length, config.done_threshold, planner.device, config.max_disagreement)
    planner.imagined += len(imagined)
    if len(imagined) == 0:  # every branch cut at its first step: nothing to learn from
        return
    for _ in range(config.imagined_updates):  # minibatches drawn from the imagined pool
        rows = torch.randint(len(imagined), (batch_size,), generator=planner.generator, device=planner.device)
        agent.update(imagined.index(rows))


DynaStep = Callable[[DynaPlanner, int, DQNAgent, ReplayBuffer], None]


def train_dyna_dqn(dqn_config: DQNConfig, dyna_config: DynaConfig, device: torch.device | str = "cpu",
                   progress: bool = True, model=None, fit: Fit | None = None, step_fn: DynaStep | None = None
                   ) -> tuple[DQNResult, DynaPlanner]:
    """Dyna-DQN: :func:`train_dqn` with a :class:`DynaPlanner` after every real step
    (``model``, ``fit`` and ``step_fn``, by default :func:`dyna_step`, as there)."""
    env = make_env(dqn_config.env_id)  # only to read the spaces
    planner = DynaPlanner(dyna_config, dqn_config, env.observation_space.shape[0],
                          int(env.action_space.n), device, model=model, fit=fit, step_fn=step_fn)
    env.close()
    return train_dqn(dqn_config, device, progress, after_step=planner), planner


# -- one run of a grid: DQN or Dyna-DQN under a spec, its outcome as plain values (Chapters 3, 5)


@dataclass(frozen=True)
class RunSpec:
    """One training run. ``imagined_updates`` = 0 is model-free DQN."""

    label: str
    seed: int
    imagined_updates: int = 0      # K
    rollout_length: int = 1        # h
    updates_per_step: int = 1      # updates on real data per real step
    ensemble_members: int = 1      # 1: a single world model
    max_disagreement: float | None = None


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
    model_checks: list[ModelCheck] = field(default_factory=list)  # one per refit (Dyna only)

    @property
    def final_return(self) -> float:
        """Mean greedy return at the last evaluation."""
        return self.eval_returns[-1]

    def kept_solved(self, threshold: float) -> float:
        """Share of the evaluations after the first solve that still reach ``threshold``; NaN
        when the run never solved or solved at its last evaluation."""
        return kept_solved(self.eval_steps, self.eval_returns, self.solved_at, threshold)


def run_one(spec: RunSpec, dqn: DQNConfig, dyna: DynaConfig, step_fn: DynaStep | None = None) -> RunRecord:
    """Train one run of DQN (``spec.imagined_updates`` 0) or Dyna-DQN under ``dqn`` and ``dyna``
    with the spec's seed and settings (Chapters 3 and 5; the job runner sets its torch threads)."""
    dqn = dataclasses.replace(dqn, seed=spec.seed, updates_per_step=spec.updates_per_step)
    if spec.imagined_updates == 0:
        result, imagined, checks = train_dqn(dqn, progress=False), 0, []
    else:
        dyna = dataclasses.replace(dyna, imagined_updates=spec.imagined_updates,
                                   rollout_length=spec.rollout_length,
                                   ensemble_members=spec.ensemble_members,
                                   max_disagreement=spec.max_disagreement)
        result, planner = train_dyna_dqn(dqn, dyna, progress=False, step_fn=step_fn)
        imagined, checks = planner.imagined, planner.checks
    return RunRecord(spec, result.eval_steps, result.eval_returns, result.solved_at,
                     result.gradient_updates, imagined, result.seconds, list(checks))
