"""Deep Q-learning (Mnih et al., 2015) for discrete actions, in one readable loop.

``train_dqn`` acts epsilon-greedily in a real environment, stores every transition in a
replay buffer and, after each real step, makes ``updates_per_step`` gradient updates on
minibatches from it. An optional ``after_step`` hook lets Dyna add updates on imagined
transitions without changing anything else (see :mod:`wmbook.agents.dyna`).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Callable

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from wmbook.buffers import ReplayBuffer, Transitions
from wmbook.device import to_device
from wmbook.envs import buffer_for, make_env
from wmbook.evaluation import evaluate, record, solved_return, stateless
from wmbook.models.layers import mlp


@dataclass
class DQNConfig:
    """Hyperparameters of DQN and of the evaluation protocol.

    There is no mixed-precision switch: DQN runs in float32 on every device (see
    :meth:`DQNAgent.update`).
    """

    total_steps: int = 20_000        # real environment steps
    learning_rate: float = 1e-3
    batch_size: int = 64
    buffer_size: int = 50_000
    gamma: float = 0.99
    learning_starts: int = 1_000     # random steps before the first update
    updates_per_step: int = 1        # gradient updates after each real step
    target_tau: float = 0.005        # Polyak averaging of the target network per update
    epsilon_start: float = 1.0
    epsilon_end: float = 0.05
    exploration_steps: int = 5_000   # real steps over which epsilon decays linearly
    hidden_size: int = 128
    n_layers: int = 2
    eval_every: int = 1_000          # real steps between greedy evaluations
    eval_episodes: int = 10
    solved_return: float | None = None  # "solved": a mean return of this; None: the task's reward_threshold
    stop_when_solved: bool = False   # end the run at the first solved evaluation
    env_id: str = "CartPole-v1"
    seed: int = 0


class DQNAgent:
    """A Q-network, its target network and their optimiser."""

    def __init__(self, obs_dim: int, n_actions: int, config: DQNConfig, device: torch.device | str = "cpu"):
        self.config, self.n_actions, self.device = config, n_actions, torch.device(device)
        self.q = mlp(obs_dim, config.hidden_size, config.n_layers, out_dim=n_actions,
                     activation="relu").to(self.device)
        self.target = copy.deepcopy(self.q).requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.q.parameters(), lr=config.learning_rate,
                                          fused=self.device.type in ("cpu", "cuda"))
        self.updates = 0

    @torch.no_grad()
    def greedy(self, obs: torch.Tensor) -> torch.Tensor:
        """Greedy actions ``(B,)`` on the agent's device for observations ``(B, obs_dim)``."""
        return self.q(to_device(obs.float(), self.device)).argmax(-1)

    def update(self, batch: Transitions) -> float:
        """One gradient step on the Huber TD error; returns the loss.

        The Huber loss caps the TD error each sample feeds back at 1 (the error clipping of
        Mnih et al., 2015), so no gradient-norm clipping is added on top.

        The update runs in float32 even on CUDA, never under autocast: the Q-values grow to
        about ``1 / (1 - gamma)`` (100 for gamma = 0.99) while the gaps between actions that
        decide the greedy policy can be a small fraction of that, below bfloat16's resolution
        (0.5 at 100), and a network this small gains no speed from lower precision.
        ``batch`` must already be on the agent's device (``buffer.sample(n, agent.device)``).
        """
        with torch.no_grad():
            next_value = self.target(batch.next_obs).max(-1).values
            # a terminal transition has no future; a time-limit truncation does. An imagined
            # transition may carry a termination probability instead of a flag: the target is
            # then the expected backup
            ended = batch.terminated.to(batch.reward.dtype)
            target = batch.reward + self.config.gamma * (1.0 - ended) * next_value
        q_taken = self.q(batch.obs).gather(1, batch.action.long().unsqueeze(1)).squeeze(1)
        loss = F.smooth_l1_loss(q_taken, target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():  # Polyak averaging: target <- (1 - tau) target + tau online
            torch._foreach_lerp_(list(self.target.parameters()), list(self.q.parameters()),
                                 self.config.target_tau)
        self.updates += 1
        return loss.item()


def epsilon_at(step: int, config: DQNConfig) -> float:
    """Linear decay from ``epsilon_start`` to ``epsilon_end`` over ``exploration_steps``."""
    if config.exploration_steps <= 0:
        return config.epsilon_end
    fraction = min(1.0, step / config.exploration_steps)
    return config.epsilon_start + fraction * (config.epsilon_end - config.epsilon_start)


def evaluation_seed(run_seed: int) -> int:
    """Seed of the first evaluation episode of a run: far from the training seeds, fixed per
    run, so every evaluation of a run (and of every method on that seed) faces the same starts."""
    return 10_000 * (run_seed + 1)


@dataclass
class DQNResult:
    """What a run produced: the agent, the evaluation curve and when it first solved the task."""

    agent: DQNAgent
    buffer: ReplayBuffer
    eval_steps: list[int] = field(default_factory=list)     # real steps at each evaluation
    eval_returns: list[float] = field(default_factory=list)  # mean greedy return there
    episode_returns: list[float] = field(default_factory=list)
    solved_at: int | None = None                             # real steps at first solve
    seconds: float = 0.0

    @property
    def gradient_updates(self) -> int:
        return self.agent.updates


def train_dqn(config: DQNConfig, device: torch.device | str = "cpu", progress: bool = True,
              after_step: Callable[[int, DQNAgent, ReplayBuffer], None] | None = None,
              env: gym.Env | None = None) -> DQNResult:
    """Train DQN on ``config.env_id``; evaluate the greedy policy every ``eval_every`` steps.

    ``after_step(step, agent, buffer)`` runs after the updates of each real step (once
    learning has started); Dyna uses it for its imagined updates.

    ``env``: train in this environment instead (e.g. a learned model wrapped as a
    :class:`~wmbook.envs.WorldModelEnv`, reset with ``config.seed``); the evaluations still
    play ``config.env_id``, the real task.

    The replay buffer stays in host memory; each minibatch and each observation to act on is
    copied to ``device`` through :func:`~wmbook.device.to_device` (pinned and non-blocking on
    CUDA). Everything runs in float32 (see :meth:`DQNAgent.update`).
    """
    started = time.perf_counter()
    env = make_env(config.env_id, seed=config.seed) if env is None else env
    if not isinstance(env.action_space, gym.spaces.Discrete):
        raise TypeError(f"DQN needs a discrete action space, {config.env_id} has {env.action_space}")
    with torch.random.fork_rng(devices=[]):  # the initial weights depend on config.seed alone
        torch.manual_seed(config.seed)
        agent = DQNAgent(env.observation_space.shape[0], int(env.action_space.n), config, device)
    buffer = buffer_for(env, config.buffer_size, seed=config.seed)
    result = DQNResult(agent, buffer)
    rng = np.random.default_rng(config.seed)
    obs, _ = env.reset(seed=config.seed)
    episode_return = 0.0
    bar = tqdm(range(config.total_steps), desc="real steps", disable=not progress)
    for step in bar:
        if step < config.learning_starts or rng.random() < epsilon_at(step, config):
            action = int(rng.integers(agent.n_actions))
        else:
            action = int(agent.greedy(torch.as_tensor(obs[None]))[0])
        next_obs, reward, terminated, truncated, _ = env.step(action)
        buffer.add(obs, action, reward, next_obs, terminated, truncated)
        episode_return += reward
        obs = next_obs
        if terminated or truncated:
            result.episode_returns.append(episode_return)
            obs, episode_return = env.reset()[0], 0.0

        if step >= config.learning_starts:
            for _ in range(config.updates_per_step):
                agent.update(buffer.sample(config.batch_size, agent.device))
            if after_step is not None:
                after_step(step, agent, buffer)

        if (step + 1) % config.eval_every == 0:
            returns = evaluate(stateless(lambda o: agent.greedy(torch.as_tensor(o)).cpu().numpy()),
                               config.env_id, config.eval_episodes, evaluation_seed(config.seed))
            bar.set_postfix(eval=f"{returns.mean():.0f}")
            if record(result, step + 1, returns, solved_return(config.env_id, config.solved_return)) \
                    and config.stop_when_solved:
                break
    bar.close()
    result.seconds = time.perf_counter() - started
    return result
