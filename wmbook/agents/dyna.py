"""Dyna-DQN: DQN that also learns from transitions imagined by a learned world model.

Everything real is plain :func:`~wmbook.agents.dqn.train_dqn`. After each real step the
:class:`DynaPlanner` hook (Sutton, 1991) branches short rollouts from real states in the
buffer with the current policy inside the learned model, and makes ``K`` more DQN updates on
the imagined transitions; on a schedule it refits the model to the growing real buffer. Short
branches from real states keep the model on familiar ground, as in MBPO (Janner et al., 2019).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from wmbook.agents.dqn import DQNAgent, DQNConfig, DQNResult, epsilon_at, train_dqn
from wmbook.buffers import ReplayBuffer, Transitions
from wmbook.device import to_device
from wmbook.envs import make_env
from wmbook.models.dynamics import DynamicsConfig, DynamicsModel, TrainConfig, train_dynamics
from wmbook.rollout import imagine


@dataclass
class DynaConfig:
    """The imagined half of Dyna-DQN.

    ``model_mixed_precision`` becomes ``mixed_precision`` of the world model's
    :class:`~wmbook.models.dynamics.TrainConfig`: on CUDA its refits train under autocast.
    Imagined rollouts and every DQN update stay float32.
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


def imagined_transitions(model: DynamicsModel, buffer: ReplayBuffer, policy, n_branches: int,
                         rollout_length: int, done_threshold: float = 0.5,
                         device: torch.device | str = "cpu") -> Transitions:
    """Roll ``policy`` (states ``(B, obs_dim)`` to actions ``(B,)``) for ``rollout_length``
    steps in ``model`` from ``n_branches`` states sampled from ``buffer``.

    Returns the imagined transitions as a flat batch, dropping the steps after a predicted
    termination (``done_prob > done_threshold``). ``terminated`` holds the model's termination
    *probability*, so that a DQN update makes the expected backup
    ``r + gamma * (1 - p) * max Q(s')`` rather than trusting a hard call the model may get wrong.

    The rollout runs in float32, never under autocast: its errors compound from step to step
    and its states become the inputs and targets of DQN updates.
    """
    starts = buffer.sample(n_branches, device).obs
    rollout = imagine(model, starts, rollout_length, policy=policy, done_threshold=done_threshold)
    alive = rollout.alive
    return Transitions(
        obs=rollout.states[:, :-1][alive],
        action=rollout.actions[alive],
        reward=rollout.rewards[alive],
        next_obs=rollout.states[:, 1:][alive],
        terminated=rollout.done_probs[alive],
        truncated=torch.zeros_like(rollout.rewards, dtype=torch.bool)[alive],
    )


class DynaPlanner:
    """The ``after_step`` hook of :func:`train_dqn` that turns DQN into Dyna-DQN."""

    def __init__(self, config: DynaConfig, dqn_config: DQNConfig, obs_dim: int, n_actions: int,
                 device: torch.device | str = "cpu"):
        self.config, self.dqn_config, self.device = config, dqn_config, torch.device(device)
        model_config = DynamicsConfig(obs_dim, n_actions, config.model_hidden_size, config.model_layers)
        with torch.random.fork_rng(devices=[]):  # initial weights depend on the seed alone
            torch.manual_seed(dqn_config.seed + 1)
            self.model = DynamicsModel(model_config).to(self.device)
        self.generator = torch.Generator(device=self.device).manual_seed(dqn_config.seed)
        self.refits, self.imagined = 0, 0

    def refit(self, buffer: ReplayBuffer, step: int) -> None:
        """Fit the model to every real transition so far; 10% are held out to keep the best weights."""
        config = self.config
        data = buffer.all(self.device)
        order = to_device(torch.randperm(len(data), generator=torch.Generator().manual_seed(step)),
                          self.device)
        n_val = max(1, len(data) // 10)
        steps_per_epoch = max(1, (len(data) - n_val) // config.model_batch_size)
        epochs = -(-config.model_updates // steps_per_epoch)  # ceil: at least model_updates steps
        train_dynamics(self.model, data.index(order[n_val:]), data.index(order[:n_val]),
                       TrainConfig(epochs=epochs, batch_size=config.model_batch_size,
                                   lr=config.model_lr, patience=epochs, seed=step,
                                   mixed_precision=config.model_mixed_precision),
                       device=self.device, progress=False)
        self.refits += 1

    def policy(self, agent: DQNAgent, epsilon: float):
        """The agent's epsilon-greedy policy on batches of imagined states."""
        def act(states: torch.Tensor) -> torch.Tensor:
            greedy = agent.greedy(states)
            explore = torch.rand(len(states), generator=self.generator, device=self.device) < epsilon
            random = torch.randint(agent.n_actions, (len(states),), generator=self.generator, device=self.device)
            return torch.where(explore, random, greedy)
        return act

    def __call__(self, step: int, agent: DQNAgent, buffer: ReplayBuffer) -> None:
        config, batch_size = self.config, self.dqn_config.batch_size
        if self.refits == 0 or step % config.model_every == 0:
            self.refit(buffer, step)
        if config.imagined_updates == 0:
            return
        n_branches = -(-config.imagined_updates * batch_size // config.rollout_length)
        imagined = imagined_transitions(
            self.model, buffer, self.policy(agent, epsilon_at(step, self.dqn_config)), n_branches,
            config.rollout_length, config.done_threshold, self.device)
        self.imagined += len(imagined)
        for _ in range(config.imagined_updates):  # minibatches drawn from the imagined pool
            rows = torch.randint(len(imagined), (batch_size,), generator=self.generator, device=self.device)
            agent.update(imagined.index(rows))


def train_dyna_dqn(dqn_config: DQNConfig, dyna_config: DynaConfig, device: torch.device | str = "cpu",
                   progress: bool = True) -> tuple[DQNResult, DynaPlanner]:
    """Dyna-DQN: :func:`train_dqn` with a :class:`DynaPlanner` after every real step."""
    env = make_env(dqn_config.env_id)  # only to read the spaces
    planner = DynaPlanner(dyna_config, dqn_config, env.observation_space.shape[0],
                          int(env.action_space.n), device)
    env.close()
    return train_dqn(dqn_config, device, progress, after_step=planner), planner
