"""Dreamer (Hafner et al., 2020; 2021; 2023): an RSSM world model and an actor-critic trained on
its imagined trajectories, in one readable loop.

Every real step the agent filters its observation into the RSSM's posterior and acts from it;
the step goes into a :class:`~wmbook.buffers.SequenceBuffer`. ``replay_ratio`` gradient updates
per real step (on average) then train, each in the seven steps of the chapter:

1. collect: real steps with the current policy (random before ``prefill``) into the buffer;
2. encode and filter: a batch of chunks, ``e_t = enc(o_t)`` and the posterior ``q(z_t | h_t, e_t)``;
3. sequence model: ``h_t = GRU(h_{t-1}, z_{t-1}, a_{t-1})`` along each chunk;
4. decode and predict: ``o_hat_t``, ``r_hat_t``, ``c_hat_t`` from ``(h_t, z_t)``;
5. the losses: reconstruction, reward, continuation, KL (balanced, with free bits);
6. their weighted sum, the world-model loss;
7. one optimiser step on the world model;

then imagination from every posterior state of the batch (:func:`wmbook.rollout.imagine`),
lambda-returns, and one update of the actor and of the critic. Steps 2-6 live in
:meth:`~wmbook.models.rssm.RSSM.loss`; the rest reads top to bottom in :func:`dreamer_update`. The
training loop, its checkpoints and the command line are in :mod:`wmbook.agents.dreamer_trainer`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from wmbook.buffers import SequenceBatch
from wmbook.device import to_device
from wmbook.models.base import latent_detach
from wmbook.models.rssm import RSSM, RSSMConfig, RSSMState, TwoHot, block, zero_init
from wmbook.rollout import imagine


@dataclass(frozen=True)
class DreamerConfig:
    """Every setting of a Dreamer run, the evaluation protocol of Chapter 3 included.

    The robustness switches (``discrete`` ... ``slow_critic``) are DreamerV3's pieces, each on
    by default; Chapter 5 switches them off one at a time.
    """

    env_id: str = "CartPole-v1"
    seed: int = 0
    total_steps: int = 20_000        # real environment steps
    prefill: int = 1_000             # random real steps before the first update
    replay_ratio: float = 0.25       # gradient updates per real step (one per 4 steps at 0.25)
    batch_size: int = 16             # chunks per update
    seq_len: int = 16                # steps per chunk
    buffer_size: int = 100_000       # time steps kept
    # world model
    deter: int = 64
    stoch: int = 8
    classes: int = 8
    hidden: int = 64
    layers: int = 1
    model_lr: float = 1e-3
    # actor-critic
    horizon: int = 15                # imagined steps per start state
    imagine_starts: int = 128        # posterior states that start imagination (0: all B x T)
    bins: int = 41                   # two-hot bins of the reward and critic heads (V3: 255)
    gamma: float = 0.99
    lam: float = 0.95
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    entropy: float = 3e-3            # entropy bonus (returns are normalised, so it is in units of S)
    ac_hidden: int = 64
    grad_clip: float = 100.0
    return_percentiles: tuple[float, float] = (0.05, 0.95)
    return_decay: float = 0.99       # EMA of the return range S
    slow_critic_rate: float = 0.02   # slow critic <- (1 - rate) slow + rate critic, every update
    # robustness switches (DreamerV3), all on by default
    discrete: bool = True            # categorical latents, straight-through, with unimix
    unimix: float = 0.01             # uniform mix in latent and policy probabilities
    symlog_obs: bool = True
    twohot: bool = True              # two-hot reward and critic heads
    kl_balance: bool = True
    free_bits: float = 1.0
    return_norm: bool = True         # divide advantages by max(1, S)
    lambda_returns: bool = True      # off: one-step targets r + gamma c V(s')
    slow_critic: bool = True         # bootstrap from a slowly moving copy of the critic
    # evaluation (Chapter 3's protocol) and bookkeeping
    eval_every: int = 1_000
    eval_episodes: int = 10
    solved_return: float | None = None  # None: the task's reward_threshold
    stop_when_solved: bool = False
    checkpoint_every: int = 2_000    # real steps between checkpoints (at episode ends)

    def model_config(self, obs_dim: int, action_dim: int, discrete_actions: bool = True) -> RSSMConfig:
        return RSSMConfig(
            obs_dim=obs_dim, action_dim=action_dim, discrete_actions=discrete_actions,
            deter=self.deter, stoch=self.stoch, classes=self.classes, hidden=self.hidden,
            layers=self.layers, discrete=self.discrete, unimix=self.unimix if self.discrete else 0.0,
            symlog_obs=self.symlog_obs, twohot_reward=self.twohot, kl_balance=self.kl_balance,
            free_bits=self.free_bits, reward_bins=self.bins)

    def check(self) -> None:
        """Raise a ``ValueError`` naming the first impossible setting."""
        positive = ("total_steps", "batch_size", "seq_len", "buffer_size", "horizon", "eval_every",
                    "eval_episodes", "checkpoint_every", "deter", "stoch", "classes", "hidden")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.replay_ratio < 0 or self.prefill < 0:
            raise ValueError(f"replay_ratio and prefill must be non-negative, got {self.replay_ratio}, {self.prefill}")
        if not (0 < self.gamma <= 1 and 0 <= self.lam <= 1):
            raise ValueError(f"need 0 < gamma <= 1 and 0 <= lam <= 1, got {self.gamma}, {self.lam}")


# -- small pieces ---------------------------------------------------------------------------


def lambda_returns(rewards: torch.Tensor, values: torch.Tensor, continues: torch.Tensor,
                   gamma: float, lam: float) -> torch.Tensor:
    """Lambda-returns ``(B, H)`` of imagined trajectories.

    ``rewards`` ``(B, H)``: reward of step ``t -> t+1``; ``continues`` ``(B, H)``: probability
    that state ``t+1`` is not terminal; ``values`` ``(B, H + 1)``: ``V(s_t)``. Backwards from
    ``R_H = V(s_H)``: ``R_t = r_t + gamma c_t ((1 - lam) V(s_{t+1}) + lam R_{t+1})``, a blend of
    n-step returns that is ``lam = 0``: one-step TD targets, ``lam = 1``: the Monte-Carlo return
    bootstrapped at the horizon.
    """
    if rewards.shape != continues.shape or values.shape != (*rewards.shape[:-1], rewards.shape[-1] + 1):
        raise ValueError(f"need rewards and continues (B, H) and values (B, H + 1), got "
                         f"{tuple(rewards.shape)}, {tuple(continues.shape)}, {tuple(values.shape)}")
    returns = []
    last = values[:, -1]
    for t in reversed(range(rewards.shape[1])):
        last = rewards[:, t] + gamma * continues[:, t] * ((1 - lam) * values[:, t + 1] + lam * last)
        returns.append(last)
    return torch.stack(returns[::-1], 1)


class ReturnScale(nn.Module):
    """DreamerV3's return normalisation: ``S``, an EMA of the 5th-95th percentile range of the
    lambda-returns; advantages are divided by ``max(1, S)``, so large returns are scaled down
    while small ones (sparse rewards) are not blown up."""

    def __init__(self, low: float = 0.05, high: float = 0.95, decay: float = 0.99):
        super().__init__()
        if not 0 <= low < high <= 1:
            raise ValueError(f"percentiles must satisfy 0 <= low < high <= 1, got {low}, {high}")
        self.low, self.high, self.decay = low, high, decay
        self.register_buffer("range", torch.zeros(()))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def update(self, returns: torch.Tensor) -> torch.Tensor:
        """Fold the percentile range of ``returns`` (any shape) into ``S``; returns ``max(1, S)``."""
        flat = returns.detach().float().flatten()
        spread = torch.quantile(flat, self.high) - torch.quantile(flat, self.low)
        if bool(self.initialised):
            self.range.mul_(self.decay).add_((1 - self.decay) * spread)
        else:
            self.range.copy_(spread)
            self.initialised.fill_(True)
        return self.scale()

    def scale(self) -> torch.Tensor:
        return self.range.clamp(min=1.0)


class Actor(nn.Module):
    """``pi(a_t | h_t, z_t)``: categorical logits ``(B, n_actions)`` with a uniform mix."""

    def __init__(self, feature_size: int, n_actions: int, hidden: int, unimix: float):
        super().__init__()
        self.net = nn.Sequential(block(feature_size, hidden, 2), nn.Linear(hidden, n_actions))
        self.unimix = unimix

    def log_probs(self, feat: torch.Tensor) -> torch.Tensor:
        """Log-probabilities ``(..., n_actions)``."""
        logits = self.net(feat)
        if self.unimix > 0:
            probs = (1 - self.unimix) * logits.softmax(-1) + self.unimix / logits.shape[-1]
            return probs.log()
        return logits.log_softmax(-1)

    def sample(self, feat: torch.Tensor) -> torch.Tensor:
        """Actions ``(B,)`` drawn from the policy (torch's global generator)."""
        return torch.multinomial(self.log_probs(feat).exp(), 1).squeeze(-1)

    def greedy(self, feat: torch.Tensor) -> torch.Tensor:
        return self.net(feat).argmax(-1)


class Critic(nn.Module):
    """``V(h_t, z_t)``: a two-hot distribution over symlog bins, or a plain scalar."""

    def __init__(self, feature_size: int, hidden: int, twohot: bool, bins: int = 255):
        super().__init__()
        self.twohot = TwoHot(bins) if twohot else None
        self.net = nn.Sequential(block(feature_size, hidden, 2),
                                 zero_init(nn.Linear(hidden, bins if twohot else 1)))

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        """The value ``(...)``."""
        out = self.net(feat)
        return self.twohot.decode(out) if self.twohot is not None else out.squeeze(-1)

    def loss(self, feat: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-state loss ``(...)`` against ``target`` ``(...)``."""
        out = self.net(feat)
        if self.twohot is not None:
            return self.twohot.loss(out, target)
        return 0.5 * (out.squeeze(-1) - target) ** 2


# -- the agent ------------------------------------------------------------------------------


class Dreamer(nn.Module):
    """The world model, the actor, the critic and its slow copy, with their optimisers."""

    def __init__(self, obs_dim: int, n_actions: int, config: DreamerConfig, device: torch.device | str = "cpu",
                 update_fn: "UpdateFn | None" = None):
        super().__init__()
        self.config, self.n_actions = config, n_actions
        self.update_fn = update_fn or dreamer_update  # what one update does (the notebook may pass its own)
        self.world_model = RSSM(config.model_config(obs_dim, n_actions))
        feat = self.world_model.config.feature_size
        self.actor = Actor(feat, n_actions, config.ac_hidden, config.unimix)
        self.critic = Critic(feat, config.ac_hidden, config.twohot, config.bins)
        self.slow_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.return_scale = ReturnScale(*config.return_percentiles, config.return_decay)
        self.to(device)
        self.device = torch.device(device)
        fused = self.device.type in ("cpu", "cuda")
        self.model_opt = torch.optim.Adam(self.world_model.parameters(), config.model_lr, eps=1e-6, fused=fused)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), config.actor_lr, eps=1e-6, fused=fused)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), config.critic_lr, eps=1e-6, fused=fused)
        self.updates = 0

    def optimisers(self) -> dict[str, torch.optim.Optimizer]:
        return {"model": self.model_opt, "actor": self.actor_opt, "critic": self.critic_opt}

    @torch.no_grad()
    def act(self, latent: RSSMState | None, action: torch.Tensor | None, obs: torch.Tensor,
            is_first: torch.Tensor, greedy: bool = False) -> tuple[torch.Tensor, RSSMState]:
        """Filter ``obs`` ``(B, obs_dim)`` into the latent and choose actions ``(B,)``.

        Greedy acting takes the posterior's mode and the most likely action, so it draws no
        random numbers; otherwise both are sampled.
        """
        if latent is None:
            latent = self.world_model.initial_state(obs.shape[0], self.device)
        latent = self.world_model.observe(latent, action, obs, is_first, sample=not greedy)
        feat = self.world_model.features(latent)
        return (self.actor.greedy(feat) if greedy else self.actor.sample(feat)), latent

    def optimise(self, optimiser: torch.optim.Optimizer, loss: torch.Tensor, params) -> None:
        """One gradient step of ``optimiser`` on ``loss``, the gradient norm clipped to ``grad_clip``."""
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, self.config.grad_clip)
        optimiser.step()

    def update(self, batch: SequenceBatch, env_step: int = -1) -> dict[str, float]:
        """One update of world model, actor and critic: ``self.update_fn`` (by default
        :func:`dreamer_update`)."""
        return self.update_fn(self, batch, env_step)


def dreamer_update(agent: Dreamer, batch: SequenceBatch, env_step: int = -1) -> dict[str, float]:
    """One world-model update (steps 2-7), then imagination and one actor-critic update.

    ``batch`` holds chunks ``(B, T, ...)`` on the agent's device. Returns the losses as
    floats; a non-finite world-model loss raises ``FloatingPointError`` naming the step. Chapter
    5 shows this function and hands its own copy to the runs (``train_dreamer(...,
    update_fn=...)``).
    """
    c, wm = agent.config, agent.world_model
    # -- steps 2-6: encode and filter, sequence model, decode and predict, losses, sum
    losses, posteriors = wm.loss(batch.float_obs(), batch.action, batch.reward, batch.terminated,
                                 batch.is_first)
    if not torch.isfinite(losses.total):
        parts = ", ".join(f"{k} {v:.4g}" for k, v in losses.as_floats().items())
        raise FloatingPointError(f"world-model loss is not finite at environment step {env_step} "
                                 f"(update {agent.updates + 1}): {parts}")
    # -- step 7: optimise encoder, GRU, prior, posterior, decoder and predictors
    agent.optimise(agent.model_opt, losses.total, wm.parameters())

    # -- imagination: every posterior state of the batch starts a trajectory
    start = latent_detach(RSSMState(posteriors.h.flatten(0, 1), posteriors.z.flatten(0, 1)))
    if 0 < c.imagine_starts < start.h.shape[0]:  # a random subset, to save compute
        keep = torch.randperm(start.h.shape[0], device=start.h.device)[:c.imagine_starts]
        start = RSSMState(start.h[keep], start.z[keep])
    wm.requires_grad_(False)  # the actor-critic update must not train the world model
    rollout = imagine(wm, None, c.horizon, policy=agent.actor.sample, start_latent=start)
    wm.requires_grad_(True)
    feat = rollout.features.detach()                    # (N, H + 1, F)
    with torch.no_grad():
        start_cont = wm.continuation(feat[:, 0])
        # the weight of state t: the probability that the trajectory reaches it
        reach = torch.cumprod(torch.cat([start_cont[:, None], rollout.continuations[:, :-1]], 1), 1)
        bootstrap = (agent.slow_critic if c.slow_critic else agent.critic)(feat)  # (N, H + 1)
        lam = c.lam if c.lambda_returns else 0.0
        returns = lambda_returns(rollout.rewards, bootstrap, rollout.continuations, c.gamma, lam)
        scale = agent.return_scale.update(returns) if c.return_norm else torch.ones(())
        advantage = (returns - agent.critic(feat[:, :-1])) / scale

    # -- actor: REINFORCE on imagined actions, with an entropy bonus
    log_probs = agent.actor.log_probs(feat[:, :-1])      # (N, H, n_actions)
    taken = log_probs.gather(-1, rollout.actions.long().unsqueeze(-1)).squeeze(-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    actor_loss = -(reach * (taken * advantage + c.entropy * entropy)).mean()
    agent.optimise(agent.actor_opt, actor_loss, agent.actor.parameters())

    # -- critic: regress the lambda-returns; the slow critic trails it
    critic_loss = (reach * agent.critic.loss(feat[:, :-1], returns)).mean()
    agent.optimise(agent.critic_opt, critic_loss, agent.critic.parameters())
    with torch.no_grad():
        torch._foreach_lerp_(list(agent.slow_critic.parameters()), list(agent.critic.parameters()),
                             c.slow_critic_rate)
    agent.updates += 1
    return {**losses.as_floats(), "actor": float(actor_loss.detach()), "critic": float(critic_loss.detach()),
            "entropy": float(entropy.detach().mean()), "return_scale": float(scale),
            "imagined_return": float(returns[:, 0].mean())}


UpdateFn = Callable[[Dreamer, SequenceBatch, int], dict]


# -- evaluation -------------------------------------------------------------------------------


class GreedyDreamer:
    """Dreamer's greedy policy for :func:`~wmbook.evaluation.evaluate`: the recurrent state is
    carried for every episode, and every row steps together (a finished episode's row keeps its
    last observation), so that a row's actions do not depend on when the others end."""

    def __init__(self, agent: Dreamer):
        self.agent = agent

    @torch.no_grad()
    def reset(self, first_obs: np.ndarray) -> None:
        self.obs = np.asarray(first_obs, dtype=np.float32).copy()
        self.latent, self.action = None, None
        self.is_first = torch.ones(len(first_obs), dtype=torch.bool, device=self.agent.device)

    @torch.no_grad()
    def __call__(self, obs: np.ndarray, rows: np.ndarray) -> np.ndarray:
        if self.latent is not None:  # the rows' new observations (the first step has them already)
            self.obs[rows] = obs
        obs_t = to_device(torch.as_tensor(self.obs), self.agent.device)
        self.action, self.latent = self.agent.act(self.latent, self.action, obs_t, self.is_first, greedy=True)
        self.is_first = torch.zeros_like(self.is_first)
        return self.action.cpu().numpy()[rows]
