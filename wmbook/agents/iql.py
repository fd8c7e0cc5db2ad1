"""Implicit Q-learning (Kostrikov et al., 2022) for multi-label actions: the offline baseline.

Why IQL and not CQL or BCQ. Offline, the danger is the value of actions the data never shows:
a Q-function trained by Bellman backups with ``max_a Q(s', a)`` believes its own errors on
unseen actions. CQL fights this by pushing down ``log sum_a exp Q(s, a)``; with 100 labels and
1 to 3 active there are about 160,000 actions, so that sum must be estimated by sampling, and
its variance grows with the space. BCQ needs a generative model of the behaviour's actions
and a perturbation network, both awkward for sets of labels. IQL never evaluates an action
outside the data at all:

* ``V(s)`` is fitted to an upper **expectile** ``tau`` of ``Q(s, a)`` over the logged actions
  (``L = |tau - 1(u < 0)| u^2`` with ``u = Q(s, a) - V(s)``): close to the best logged action's
  value, without a max over actions;
* ``Q(s, a)`` (two heads, the minimum is used) is fitted to ``r + gamma V(s')``: only logged
  ``(s, a)`` pairs ever enter a loss;
* the policy is extracted by **advantage-weighted likelihood**: the per-label Bernoulli
  log-likelihood of the logged action, weighted by ``exp(beta (Q - V))`` capped at
  ``max_weight``. Per-label likelihoods suit multi-label actions: the weighted cross-entropy of
  100 independent sigmoids, the imitation loss with weights. At ``beta = 0`` it *is* imitation.

Shapes: features ``s`` ``(B, F)``, actions ``(B, 100)`` float 0/1, rewards ``(B,)``.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from wmbook.models.layers import mlp


@dataclass(frozen=True)
class IQLConfig:
    """IQL's settings (the paper's locomotion values for ``tau``, ``beta``, the cap and ``tau``
    of the target, on the book's small networks)."""

    hidden: int = 128
    steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-3
    gamma: float = 0.95
    expectile: float = 0.7
    beta: float = 3.0
    max_weight: float = 100.0
    polyak: float = 0.005
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.expectile < 1:
            raise ValueError(f"expectile must lie in (0, 1), got {self.expectile}")
        if self.steps < 1 or self.batch_size < 1 or not 0 < self.gamma < 1 or self.beta < 0:
            raise ValueError("need steps >= 1, batch_size >= 1, 0 < gamma < 1 and beta >= 0")

    def to_dict(self) -> dict:
        return asdict(self)


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """Mean of ``|expectile - 1(diff < 0)| * diff^2`` over ``diff = Q - V`` ``(B,)``."""
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return (weight * diff.pow(2)).mean()


class IQL(nn.Module):
    """Twin ``Q(s, a)``, ``V(s)`` and a policy of 100 Bernoulli logits over features ``(F,)``."""

    def __init__(self, feature_dim: int, n_actions: int = 100, config: IQLConfig | None = None):
        super().__init__()
        self.config = config = config or IQLConfig()
        self.feature_dim, self.n_actions = feature_dim, n_actions
        torch.manual_seed(config.seed)
        self.q1 = mlp(feature_dim + n_actions, config.hidden, 2, 1)
        self.q2 = mlp(feature_dim + n_actions, config.hidden, 2, 1)
        self.v = mlp(feature_dim, config.hidden, 2, 1)
        self.policy = mlp(feature_dim, config.hidden, 2, n_actions)
        self.target_q1 = copy.deepcopy(self.q1).requires_grad_(False)
        self.target_q2 = copy.deepcopy(self.q2).requires_grad_(False)

    def q(self, s: torch.Tensor, a: torch.Tensor, target: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The two Q-values ``(B,)`` of ``(s, a)``."""
        x = torch.cat([s, a], -1)
        heads = (self.target_q1, self.target_q2) if target else (self.q1, self.q2)
        return heads[0](x).squeeze(-1), heads[1](x).squeeze(-1)

    def value(self, s: torch.Tensor) -> torch.Tensor:
        return self.v(s).squeeze(-1)

    def logits(self, s: torch.Tensor) -> torch.Tensor:
        """``(B, 100)`` the policy's per-label logits."""
        return self.policy(s)


def iql_losses(agent: IQL, s: torch.Tensor, a: torch.Tensor, r: torch.Tensor, s_next: torch.Tensor,
               done: torch.Tensor) -> dict[str, torch.Tensor]:
    """IQL's three losses on a batch of logged transitions (module docstring)."""
    c = agent.config
    with torch.no_grad():
        q_target = torch.min(*agent.q(s, a, target=True))
        backup = r + c.gamma * (1.0 - done) * agent.value(s_next)
    v = agent.value(s)
    value_loss = expectile_loss(q_target - v, c.expectile)
    q1, q2 = agent.q(s, a)
    q_loss = F.mse_loss(q1, backup) + F.mse_loss(q2, backup)
    weights = torch.exp(c.beta * (q_target - v.detach())).clamp(max=c.max_weight)
    nll = F.binary_cross_entropy_with_logits(agent.logits(s), a, reduction="none").sum(1)
    return {"value": value_loss, "q": q_loss, "policy": (weights * nll).mean()}


def train_iql(agent: IQL, s: torch.Tensor, a: torch.Tensor, r: torch.Tensor, s_next: torch.Tensor,
              done: torch.Tensor, progress: bool = False, start_step: int = 0,
              optimiser_state: dict | None = None,
              on_checkpoint: Callable[[int, dict], None] | None = None,
              checkpoint_every: int = 0) -> dict[str, list[float]]:
    """Train ``agent`` on logged transitions ``(N, ...)`` for ``config.steps`` steps (from
    ``start_step`` when resuming); minibatches are drawn from a generator seeded by the step,
    so a resumed run repeats an uninterrupted one. Returns the losses per step."""
    c = agent.config
    n = len(s)
    for name, x in (("a", a), ("r", r), ("s_next", s_next), ("done", done)):
        if len(x) != n:
            raise ValueError(f"{name} has {len(x)} rows, s has {n}")
    parameters = [*agent.q1.parameters(), *agent.q2.parameters(), *agent.v.parameters(),
                  *agent.policy.parameters()]
    optimiser = torch.optim.Adam(parameters, lr=c.lr)
    if optimiser_state is not None:
        optimiser.load_state_dict(optimiser_state)
    history: dict[str, list[float]] = {"value": [], "q": [], "policy": []}
    for step in tqdm(range(start_step, c.steps), desc="IQL", disable=not progress, leave=False):
        rows = torch.from_numpy(np.random.default_rng((c.seed, step)).integers(0, n, c.batch_size))
        losses = iql_losses(agent, s[rows], a[rows], r[rows], s_next[rows], done[rows])
        total = losses["value"] + losses["q"] + losses["policy"] / agent.n_actions
        if not torch.isfinite(total):
            raise FloatingPointError(f"IQL loss became {total.item()} at step {step}")
        optimiser.zero_grad(set_to_none=True)
        total.backward()
        optimiser.step()
        with torch.no_grad():
            for net, target in ((agent.q1, agent.target_q1), (agent.q2, agent.target_q2)):
                for p, q in zip(net.parameters(), target.parameters()):
                    q.lerp_(p, c.polyak)
        for key, value in losses.items():
            history[key].append(value.item())
        if on_checkpoint is not None and checkpoint_every and (step + 1) % checkpoint_every == 0:
            on_checkpoint(step + 1, optimiser.state_dict())
    return history
