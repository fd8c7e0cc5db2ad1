"""Proximal Policy Optimization (Schulman et al., 2017), written to be read top to bottom.

The pieces, in the order a training run uses them:

1. **Policy heads** turn the actor's outputs into an action distribution. :class:`CategoricalHead`
   serves ``Discrete(n)`` (CartPole); :class:`BernoulliHead` serves ``MultiBinary(n)`` (several
   labels active at once) with a sampler that keeps between ``min_active`` and ``max_active``
   labels on. Any object with ``out_features`` and ``distribution(params)`` returning something
   with ``sample``, ``log_prob``, ``entropy`` and ``mode`` plugs in.
2. :class:`ActorCritic`: two MLPs, the actor (features -> head parameters) and the critic
   (features -> value).
3. :func:`compute_gae`: advantages by generalised advantage estimation (GAE-lambda), with episode
   ends that are true terminations (no bootstrap) kept apart from truncations (bootstrap from
   the value of the state where the episode was cut).
4. :class:`PPO`: the update. For ``n_epochs`` passes over the batch in shuffled minibatches:
   the clipped surrogate ``-min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A)`` with advantages
   normalised per minibatch, the value loss ``0.5 (V - R)^2``, an entropy bonus, gradients
   clipped to ``max_grad_norm``; learning rate and clip range annealed linearly to zero.
5. :func:`rollout`: ``n_steps`` of the policy in an environment written as a step function
   (:class:`GymSteps` for real ones side by side; a world model's dream): every trainer's data.
6. :func:`train_ppo`: the loop for vector observations (tests, benchmark); Chapters 4 and 6
   drive the same :func:`rollout` and :class:`PPO` in their own loops.

All randomness (initial weights, action sampling, minibatch order) comes from the seed of the
:class:`PPOConfig`, so the same config gives the same run.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Protocol

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


# -- 1. policy heads ----------------------------------------------------------------------------

class PolicyHead(Protocol):
    """Maps the actor's outputs ``(B, out_features)`` to a distribution over ``B`` actions with
    ``sample(generator)``, ``log_prob(action)`` ``(B,)``, ``entropy()`` ``(B,)`` and ``mode()``."""

    out_features: int

    def distribution(self, params: torch.Tensor): ...


class Categorical:
    """A categorical distribution over ``n`` actions from logits ``(B, n)``; actions ``(B,)`` int64."""

    def __init__(self, logits: torch.Tensor):
        self.log_probs = F.log_softmax(logits, dim=-1)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.multinomial(self.log_probs.exp(), 1, generator=generator).squeeze(1)

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        return self.log_probs.gather(1, action.long().unsqueeze(1)).squeeze(1)

    def entropy(self) -> torch.Tensor:
        return -(self.log_probs.exp() * self.log_probs).sum(-1)

    def mode(self) -> torch.Tensor:
        return self.log_probs.argmax(-1)


class CategoricalHead:
    """The head for ``Discrete(n)``: the actor outputs ``n`` logits."""

    def __init__(self, n: int):
        if n < 2:
            raise ValueError(f"a categorical head needs at least 2 actions, got {n}")
        self.out_features = n

    def distribution(self, params: torch.Tensor) -> Categorical:
        return Categorical(params)


class IndependentBernoulli:
    """Independent Bernoulli labels from logits ``(B, n)``; actions ``(B, n)`` float 0/1.

    :meth:`sample` draws every label independently and then enforces ``min_active`` to
    ``max_active`` labels on: a row with too few gets its most probable missing labels switched
    on, a row with too many keeps its most probable active labels. ``log_prob`` is the
    independent Bernoulli likelihood of the action actually taken (the constraint moves few
    samples when the policy already fits it, and PPO only needs ratios of these values).
    """

    def __init__(self, logits: torch.Tensor, min_active: int = 1, max_active: int = 3):
        self.logits, self.min_active, self.max_active = logits, min_active, max_active

    def _constrain(self, on: torch.Tensor) -> torch.Tensor:
        """Rows of ``on`` (float 0/1) with between ``min_active`` and ``max_active`` labels set."""
        n = self.logits.shape[1]
        # rank labels: active ones first, then by probability, so top-k keeps or adds the likeliest
        score = self.logits + on * 2 * (self.logits.abs().max() + 1)
        order = score.argsort(dim=1, descending=True)
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(n, device=on.device).expand_as(order))
        count = on.sum(1, keepdim=True).clamp(self.min_active, self.max_active)
        return (rank < count).float()

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        uniform = torch.rand(self.logits.shape, generator=generator, device=self.logits.device)
        return self._constrain((uniform < torch.sigmoid(self.logits)).float())

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        return -F.binary_cross_entropy_with_logits(self.logits, action.float(), reduction="none").sum(1)

    def entropy(self) -> torch.Tensor:
        p = torch.sigmoid(self.logits)
        return F.binary_cross_entropy_with_logits(self.logits, p, reduction="none").sum(1)

    def mode(self) -> torch.Tensor:
        return self._constrain((self.logits > 0).float())


class BernoulliHead:
    """The head for ``MultiBinary(n)``: ``n`` logits, one independent label each, with
    ``min_active`` to ``max_active`` labels on in every sampled or greedy action."""

    def __init__(self, n: int, min_active: int = 1, max_active: int = 3):
        if not 0 <= min_active <= max_active <= n:
            raise ValueError(f"need 0 <= min_active <= max_active <= n, got {min_active}, {max_active}, {n}")
        self.out_features, self.min_active, self.max_active = n, min_active, max_active

    def distribution(self, params: torch.Tensor) -> IndependentBernoulli:
        return IndependentBernoulli(params, self.min_active, self.max_active)


def head_for(space: gym.Space) -> PolicyHead:
    """The default head of an action space: categorical for Discrete, Bernoulli for MultiBinary."""
    if isinstance(space, gym.spaces.Discrete):
        return CategoricalHead(int(space.n))
    if isinstance(space, gym.spaces.MultiBinary) and len(space.shape) == 1:
        return BernoulliHead(int(space.shape[0]))
    raise TypeError(f"no policy head for action space {space}: use Discrete(n) or MultiBinary(n)")


# -- 2. the networks ----------------------------------------------------------------------------

def _mlp(sizes: list[int], out_gain: float) -> nn.Sequential:
    """Tanh MLP with orthogonal weights (gain sqrt(2) inside, ``out_gain`` at the output)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        linear = nn.Linear(n_in, n_out)
        last = i == len(sizes) - 2
        nn.init.orthogonal_(linear.weight, out_gain if last else math.sqrt(2))
        nn.init.zeros_(linear.bias)
        layers += [linear] if last else [linear, nn.Tanh()]
    return nn.Sequential(*layers)


class ActorCritic(nn.Module):
    """Actor and critic, two MLPs over the same features ``(B, obs_dim)``; the actor's last layer
    starts near zero (gain 0.01), so the first policy is close to uniform."""

    def __init__(self, obs_dim: int, head: PolicyHead, hidden_sizes: tuple[int, ...] = (64, 64)):
        super().__init__()
        self.head = head
        self.actor = _mlp([obs_dim, *hidden_sizes, head.out_features], 0.01)
        self.critic = _mlp([obs_dim, *hidden_sizes, 1], 1.0)

    def distribution(self, obs: torch.Tensor):
        return self.head.distribution(self.actor(obs))

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """``(B,)`` state values."""
        return self.critic(obs).squeeze(-1)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, generator: torch.Generator | None = None, greedy: bool = False
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Action, its log-probability ``(B,)`` and the value ``(B,)`` of observations ``(B, obs_dim)``."""
        dist = self.distribution(obs)
        action = dist.mode() if greedy else dist.sample(generator)
        return action, dist.log_prob(action), self.value(obs)


# -- 3. advantages ------------------------------------------------------------------------------

def compute_gae(rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor,
                terminated: torch.Tensor, episode_end: torch.Tensor, gamma: float, lam: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE-lambda advantages and returns of ``T`` steps of ``N`` parallel streams.

    Args:
        rewards, values: ``(T, N)``; ``values[t]`` is V(s_t).
        next_values: ``(T, N)``, V(s_{t+1}) of the state the step reached (for a truncated step:
            the state where the episode was cut, before any reset).
        terminated: ``(T, N)`` bool, a true end: no value after it.
        episode_end: ``(T, N)`` bool, terminated or truncated: the advantage does not flow back
            across it (the next row of the stream belongs to a new episode or rollout).

    Returns:
        advantages and returns (advantages + values), each ``(T, N)``.
    """
    not_terminal = 1.0 - terminated.float()
    not_end = 1.0 - episode_end.float()
    deltas = rewards + gamma * next_values * not_terminal - values
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in reversed(range(len(rewards))):
        running = deltas[t] + gamma * lam * not_end[t] * running
        advantages[t] = running
    return advantages, advantages + values


class Batch(NamedTuple):
    """Flat PPO data of ``B`` steps: ``obs`` ``(B, obs_dim)``, ``actions`` ``(B, ...)``,
    ``log_probs``, ``advantages``, ``returns`` ``(B,)``."""

    obs: torch.Tensor
    actions: torch.Tensor
    log_probs: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor

    @staticmethod
    def cat(batches: "list[Batch]") -> "Batch":
        return Batch(*(torch.cat(parts) for parts in zip(*batches)))


# -- 4. the update ------------------------------------------------------------------------------

@dataclass(frozen=True)
class PPOConfig:
    """PPO's settings; the defaults are rl-baselines3-zoo's tuned CartPole-v1 values (8 envs,
    32 steps each, minibatches of 256, 20 epochs, gamma 0.98, lambda 0.8, learning rate 1e-3 and
    clip range 0.2 both annealed linearly to 0, no entropy bonus), with 64-64 tanh networks."""

    env_id: str = "CartPole-v1"
    total_timesteps: int = 100_000
    num_envs: int = 8
    n_steps: int = 32
    batch_size: int = 256
    n_epochs: int = 20
    gamma: float = 0.98
    gae_lambda: float = 0.8
    clip_range: float = 0.2
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    learning_rate: float = 1e-3
    anneal: bool = True
    normalize_advantage: bool = True
    hidden_sizes: tuple[int, ...] = (64, 64)
    seed: int = 0
    eval_every: int = 0            # real steps between greedy evaluations (0: none)
    eval_episodes: int = 10
    solved_return: float | None = None  # None: the task's reward_threshold
    stop_when_solved: bool = False  # end training at the first evaluation that solves the task

    def __post_init__(self) -> None:
        for name in ("total_timesteps", "num_envs", "n_steps", "batch_size", "n_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 < self.gamma <= 1 or not 0 <= self.gae_lambda <= 1:
            raise ValueError(f"need 0 < gamma <= 1 and 0 <= gae_lambda <= 1, got {self.gamma}, {self.gae_lambda}")


class PPO:
    """The PPO learner: an :class:`ActorCritic`, its optimiser and :meth:`update` (:func:`ppo_update`)."""

    def __init__(self, obs_dim: int, head: PolicyHead, config: PPOConfig, device: torch.device | str = "cpu"):
        self.config, self.device = config, torch.device(device)
        torch.manual_seed(config.seed)  # the initial weights
        self.net = ActorCritic(obs_dim, head, config.hidden_sizes).to(self.device)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=config.learning_rate, eps=1e-5)
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)  # actions
        self.shuffle = torch.Generator().manual_seed(config.seed + 1)  # minibatch order
        self.updates = 0

    def progress_remaining(self, steps_done: int) -> float:
        """1 at the start of training, falling linearly to 0 at ``total_timesteps``."""
        if not self.config.anneal:
            return 1.0
        return max(0.0, 1.0 - steps_done / self.config.total_timesteps)

    def update(self, batch: Batch, steps_done: int) -> dict[str, float]:
        return ppo_update(self, batch, steps_done)

    def state_dict(self) -> dict:
        return {"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(), "shuffle": self.shuffle.get_state(),
                "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"].cpu())  # a checkpoint loaded onto a GPU moves it there
        self.shuffle.set_state(state["shuffle"].cpu())
        self.updates = int(state["updates"])


def ppo_update(ppo: PPO, batch: Batch, steps_done: int) -> dict[str, float]:
    """``n_epochs`` passes of minibatch PPO over ``batch`` (learning rate and clip range annealed
    by ``steps_done``); returns the mean losses."""
    c = ppo.config
    remaining = ppo.progress_remaining(steps_done)
    for group in ppo.optimizer.param_groups:
        group["lr"] = c.learning_rate * remaining
    clip = c.clip_range * remaining
    n = len(batch.obs)
    totals = {"policy_loss": 0.0, "value_loss": 0.0, "entropy": 0.0, "approx_kl": 0.0, "clip_fraction": 0.0}
    count = 0
    for _ in range(c.n_epochs):
        order = torch.randperm(n, generator=ppo.shuffle).to(ppo.device)
        for start in range(0, n, c.batch_size):
            idx = order[start:start + c.batch_size]
            obs, actions, old_log_probs = batch.obs[idx], batch.actions[idx], batch.log_probs[idx]
            advantages, returns = batch.advantages[idx], batch.returns[idx]
            if c.normalize_advantage and len(idx) > 1:
                advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

            dist = ppo.net.distribution(obs)
            log_ratio = dist.log_prob(actions) - old_log_probs
            ratio = log_ratio.exp()
            # the clipped surrogate: no gain from moving the ratio outside [1 - clip, 1 + clip]
            policy_loss = -torch.min(ratio * advantages,
                                     ratio.clamp(1 - clip, 1 + clip) * advantages).mean()
            value_loss = 0.5 * (ppo.net.value(obs) - returns).pow(2).mean()
            entropy = dist.entropy().mean()
            loss = policy_loss + c.vf_coef * value_loss - c.ent_coef * entropy
            if not torch.isfinite(loss):
                raise FloatingPointError(f"PPO loss is not finite at update {ppo.updates}: policy "
                                         f"{policy_loss.item()}, value {value_loss.item()}")

            ppo.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(ppo.net.parameters(), c.max_grad_norm)
            ppo.optimizer.step()
            ppo.updates += 1

            with torch.no_grad():
                measured = {"policy_loss": policy_loss, "value_loss": value_loss, "entropy": entropy,
                            "approx_kl": ((ratio - 1) - log_ratio).mean(),
                            "clip_fraction": ((ratio - 1).abs() > clip).float().mean()}
            totals = {name: totals[name] + value.item() for name, value in measured.items()}
            count += 1
    return {name: value / max(count, 1) for name, value in totals.items()}


# -- 5. the rollout ------------------------------------------------------------------------------

class Rollout(NamedTuple):
    """``T`` steps of ``N`` streams, each field ``(T, N, ...)``, in :func:`compute_gae`'s terms."""

    obs: torch.Tensor
    actions: torch.Tensor
    log_probs: torch.Tensor
    values: torch.Tensor
    next_values: torch.Tensor
    rewards: torch.Tensor
    terminated: torch.Tensor
    ended: torch.Tensor

    def batch(self, gamma: float, lam: float, rewards: torch.Tensor | None = None,
              keep: torch.Tensor | None = None) -> Batch:
        """PPO's flat data: GAE on ``rewards`` (default the rollout's own, e.g. penalised ones
        instead), only the steps where ``keep`` ``(T, N)`` is true (default all)."""
        rewards = self.rewards if rewards is None else rewards
        advantages, returns = compute_gae(rewards, self.values, self.next_values, self.terminated, self.ended,
                                          gamma, lam)
        flat = Batch(self.obs.flatten(0, 1), self.actions.flatten(0, 1), self.log_probs.flatten(),
                     advantages.flatten(), returns.flatten())
        return flat if keep is None else Batch(*(x[keep.flatten()] for x in flat))


# step(actions (N, ...)) -> rewards (N,), terminated (N,), ended (N,), the observations the step
# reached (N, D) (before any reset: a truncated step is bootstrapped from there) and the
# observations the next step starts from (N, D) (after the resets)
StepFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]


def rollout(ppo: "PPO", obs: torch.Tensor, step: StepFn, n_steps: int,
            stop: Callable[[], bool] | None = None) -> Rollout:
    """``n_steps`` of ``ppo``'s policy from observations ``obs`` ``(N, D)`` in ``step``, the
    environment written as a function; ``stop()``, asked after every step, may end it sooner."""
    steps = []
    for _ in range(n_steps):
        action, log_prob, value = ppo.net.act(obs, ppo.generator)
        reward, terminated, ended, reached, next_obs = step(action)
        with torch.no_grad():
            next_value = ppo.net.value(reached)
        steps.append((obs, action, log_prob, value, next_value, reward, terminated, ended))
        obs = next_obs
        if stop is not None and stop():
            break
    return Rollout(*(torch.stack(parts) for parts in zip(*steps)))


class GymSteps:
    """Gymnasium environments with vector observations stepped side by side, as a
    :data:`StepFn`: an episode that ends is reset at once (so a truncated step is bootstrapped
    from the state where it was cut), and its return goes to ``episode_returns``."""

    def __init__(self, envs: list[gym.Env], seed: int, device: torch.device | str = "cpu"):
        self.envs, self.device = envs, device
        self.obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]).astype(np.float32)
        self.running = np.zeros(len(envs))
        self.episode_returns: list[float] = []

    def observations(self) -> torch.Tensor:
        return torch.as_tensor(self.obs, device=self.device)

    def __call__(self, action: torch.Tensor):
        n = len(self.envs)
        reward, terminated, ended = np.zeros(n, np.float32), np.zeros(n, bool), np.zeros(n, bool)
        reached, obs = np.empty_like(self.obs), np.empty_like(self.obs)
        for i, env in enumerate(self.envs):
            reached[i], reward[i], terminated[i], truncated, _ = env.step(
                np.asarray(action[i].cpu().numpy(), dtype=env.action_space.dtype))
            ended[i] = terminated[i] or truncated
            self.running[i] += reward[i]
            obs[i] = reached[i]
            if ended[i]:
                self.episode_returns.append(float(self.running[i]))
                self.running[i] = 0.0
                obs[i] = env.reset()[0]
        self.obs = obs
        return (*(torch.as_tensor(x, device=self.device) for x in (reward, terminated, ended, reached)),
                self.observations())


# -- 6. training on vector observations ---------------------------------------------------------

@dataclass
class PPOResult:
    """What :func:`train_ppo` produced: the learner, the evaluation curve, when it first solved."""

    ppo: PPO
    eval_steps: list[int] = field(default_factory=list)
    eval_returns: list[float] = field(default_factory=list)
    episode_returns: list[float] = field(default_factory=list)
    solved_at: int | None = None
    seconds: float = 0.0


def train_ppo(config: PPOConfig, device: torch.device | str = "cpu", progress: bool = True,
              make_env: Callable[[], gym.Env] | None = None,
              evaluate: Callable[[Callable[[np.ndarray], np.ndarray]], np.ndarray] | None = None) -> PPOResult:
    """Train PPO on ``num_envs`` copies of an environment with vector observations
    (:class:`GymSteps`). Every ``eval_every`` real steps (over all environments; a multiple of
    ``num_envs``), ``evaluate(policy)`` is called with the greedy policy (observations ``(n,
    obs_dim)`` -> actions ``(n,)``) and returns the episode returns; by default Chapter 3's
    protocol (:func:`wmbook.evaluation.evaluate` from :func:`~wmbook.agents.dqn.evaluation_seed`).
    """
    from tqdm.auto import tqdm

    from wmbook.agents.dqn import evaluation_seed
    from wmbook.evaluation import evaluate as play, record, solved_return, stateless

    c = config
    started = time.perf_counter()
    make_env = make_env or (lambda: gym.make(c.env_id))
    envs = [make_env() for _ in range(c.num_envs)]
    for i, env in enumerate(envs):
        env.action_space.seed(c.seed + i)
    obs_dim = int(np.prod(envs[0].observation_space.shape))
    ppo = PPO(obs_dim, head_for(envs[0].action_space), c, device)
    evaluate = evaluate or (lambda policy: play(stateless(policy), c.env_id, c.eval_episodes, evaluation_seed(c.seed)))
    if c.eval_every and c.eval_every % c.num_envs:
        raise ValueError(f"eval_every ({c.eval_every}) must be a multiple of num_envs ({c.num_envs})")

    def greedy(obs: np.ndarray) -> np.ndarray:
        tensor = torch.as_tensor(np.asarray(obs, dtype=np.float32), device=ppo.device)
        return ppo.net.act(tensor, greedy=True)[0].cpu().numpy()

    result = PPOResult(ppo)
    real = GymSteps(envs, c.seed, ppo.device)
    result.episode_returns = real.episode_returns
    steps = 0
    bar = tqdm(total=c.total_timesteps, desc="PPO", disable=not progress, leave=False)

    def count_and_evaluate() -> bool:
        """After every step of all environments: count it; evaluate when due; stop once solved."""
        nonlocal steps
        steps += c.num_envs
        bar.update(c.num_envs)
        if c.eval_every and steps % c.eval_every == 0:
            solved = record(result, steps, evaluate(greedy), solved_return(c.env_id, c.solved_return))
            return bool(solved and c.stop_when_solved)
        return False

    while steps < c.total_timesteps:
        data = rollout(ppo, real.observations(), real, c.n_steps, stop=count_and_evaluate)
        if c.stop_when_solved and result.solved_at is not None:
            break
        ppo.update(data.batch(c.gamma, c.gae_lambda), steps)
    bar.close()
    for env in envs:
        env.close()
    result.seconds = time.perf_counter() - started
    return result
