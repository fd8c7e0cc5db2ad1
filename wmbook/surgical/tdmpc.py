"""Surgical TD-MPC: plan in the world model with a learned value, over multi-label actions.

TD-MPC (Hansen et al., 2022; TD-MPC2, 2024) acts by *planning*: from the current latent it
samples action sequences, rolls each through the learned model for ``H`` steps, scores it by
the predicted rewards plus a learned value at the end, refits the sampling distribution to the
best sequences (the elites), repeats, and executes the first action. The value, learned by
temporal differences, stands in for everything after the horizon; a policy prior seeds the
search so that a few samples suffice.

**Multi-label actions.** TD-MPC2 plans continuous actions with a Gaussian per dimension. A
surgical frame instead holds 1 to 3 of 100 triplets, so the planner's distribution is one
Bernoulli probability per label and step, ``p`` ``(H, 100)``:

1. start from the policy prior's probabilities along its own most likely rollout, with a
   floor (``explore``) so that every label can be tried;
2. sample ``N`` sequences label by label and enforce 1 to 3 active labels per step
   (:func:`~wmbook.surgical.model.sample_triplets`: surplus labels dropped, least likely
   first; a missing one added, most likely first); sample 0 is the distribution's mode;
3. score each: ``sum_h gamma^h c_h r_h + gamma^H c_H V(s_H)`` with ``c`` the predicted
   probability that the procedure is still running;
4. the cross-entropy step for Bernoulli variables: the new ``p`` is the (MPPI-weighted,
   ``exp(score / temperature)``) frequency of each label among the ``K`` elites, mixed with
   the old ``p`` by ``momentum``;
5. execute the first action of the best sequence seen.

A risk budget (:mod:`wmbook.agents.safety`) ranks sequences whose predicted mean risk
exceeds it below every feasible one.

**The value (seed 001's components).** The reward a plan is scored with is the world model's
weighted sum of its five predicted components plus three terms built from the offline data
(:class:`ValueComponents`): *progress in embedding space* (a ridge regression of a frame's
position in its procedure on its embedding; reward: the predicted advance), *action-specific
rewards* (per phase, how much better than the phase's average the logged reward was when a
triplet was active, shrunk towards 0 for rare triplets) and an *exploration bonus* (the
distance of the imagined frame to the nearest of ``k`` centroids of the logged frames,
capped). The value head ``V(h, z)`` is learned by TD(0) on the logged transitions with those
rewards and a Polyak-averaged target; the policy prior by advantage-weighted per-label
likelihood with TD advantages ``r + gamma V(s') - V(s)``.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Callable, Mapping, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from sklearn.linear_model import Ridge
from torch import nn
from tqdm.auto import tqdm

from wmbook.agents.safety import constrained_scores
from wmbook.models.layers import mlp
from wmbook.surgical.model import SurgicalWorldModel, sample_triplets
from wmbook.surgical.triplets import REWARD_NAMES

RISK = REWARD_NAMES.index("_r_risk")

# dynamics(latent, actions (M, n)) -> (next latent, reward (M,), risk (M,), continuation (M,))
Dynamics = Callable[[object, torch.Tensor], tuple[object, torch.Tensor, torch.Tensor, torch.Tensor]]


# -- the planner ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannerConfig:
    """The planner's budget and settings. The defaults (horizon 5, 64 samples, 3 iterations,
    8 elites: 960 imagined steps per decision, in 15 batched model calls) are sized for a CPU."""

    horizon: int = 5
    samples: int = 64
    iterations: int = 3
    elites: int = 8
    temperature: float = 0.5
    momentum: float = 0.1
    explore: float = 0.01
    gamma: float = 0.95
    min_active: int = 1
    max_active: int = 3
    risk_budget: float | None = None

    def __post_init__(self) -> None:
        for name in ("horizon", "samples", "iterations", "elites"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.elites > self.samples:
            raise ValueError(f"elites ({self.elites}) cannot exceed samples ({self.samples})")
        if self.temperature <= 0 or not 0 <= self.momentum < 1 or not 0 <= self.explore < 1:
            raise ValueError("need temperature > 0, 0 <= momentum < 1 and 0 <= explore < 1")


class PlanResult(NamedTuple):
    """``action`` ``(B, n)``: the first action of the best plan; ``probs`` ``(B, H, n)``: the
    planner's final Bernoulli probabilities; ``score`` ``(B,)``: the best plan's score;
    ``risk`` ``(B,)``: its predicted mean risk."""

    action: torch.Tensor
    probs: torch.Tensor
    score: torch.Tensor
    risk: torch.Tensor


def _repeat(latent, times: int):
    """Every row of a latent (a tensor or a tuple of tensors, batch first) ``times`` times."""
    if isinstance(latent, torch.Tensor):
        return latent.repeat_interleave(times, 0)
    return type(latent)(*(x.repeat_interleave(times, 0) for x in latent))


@torch.no_grad()
def plan(dynamics: Dynamics, value: Callable[[object], torch.Tensor], latent,
         prior: Callable[[object], torch.Tensor], config: PlannerConfig,
         generator: torch.Generator | None = None) -> PlanResult:
    """Plan from a batch of ``B`` latents (see the module docstring).

    Args:
        dynamics: ``(latent (M, ...), actions (M, n)) -> (latent, reward (M,), risk (M,),
            continuation (M,))``.
        value: ``latent (M, ...) -> (M,)``, the value after the horizon.
        latent: a tensor or tuple of tensors with batch ``B`` first.
        prior: ``latent (M, ...) -> probabilities (M, n)`` of the next action.
    """
    c = config
    H, N, K = c.horizon, c.samples, c.elites
    # 1. the prior's own rollout gives the initial probabilities (B, H, n)
    probs, roll = [], latent
    for _ in range(H):
        p = prior(roll)
        probs.append(p)
        roll = dynamics(roll, sample_triplets(p, deterministic=True, min_active=c.min_active,
                                              max_active=c.max_active))[0]
    p = torch.stack(probs, 1).clamp(min=c.explore, max=1 - 1e-4)
    B, n = p.shape[0], p.shape[-1]
    start = _repeat(latent, N)
    best_score = torch.full((B,), -float("inf"))
    best_action = torch.zeros(B, n)
    best_risk = torch.zeros(B)
    for _ in range(c.iterations):
        # 2. sample N sequences per row, 1 to 3 labels per step; sample 0 is the mode
        flat = p[:, None].expand(B, N, H, n).reshape(-1, n)
        actions = sample_triplets(flat, generator, c.min_active, c.max_active).view(B, N, H, n)
        actions[:, 0] = sample_triplets(p.reshape(-1, n), deterministic=True, min_active=c.min_active,
                                        max_active=c.max_active).view(B, H, n)
        # 3. roll every sequence through the model
        ret, risk = torch.zeros(B * N), torch.zeros(B * N)
        alive, discount, state = torch.ones(B * N), 1.0, start
        for h in range(H):
            state, reward, step_risk, cont = dynamics(state, actions[:, :, h].reshape(B * N, n))
            ret += discount * alive * reward
            risk += step_risk
            alive = alive * cont
            discount *= c.gamma
        ret += discount * alive * value(state)
        ret, risk = ret.view(B, N), risk.view(B, N) / H
        score = constrained_scores(ret, risk, c.risk_budget)
        # 4. refit the Bernoulli probabilities to the weighted elites
        top, index = score.topk(K, dim=1)
        weights = torch.softmax((top - top[:, :1]) / c.temperature, dim=1)          # (B, K)
        elites = actions[torch.arange(B)[:, None], index]                            # (B, K, H, n)
        p = c.momentum * p + (1 - c.momentum) * torch.einsum("bk,bkhn->bhn", weights, elites)
        p = p.clamp(min=1e-4, max=1 - 1e-4)
        better = top[:, 0] > best_score
        best_score = torch.where(better, top[:, 0], best_score)
        best_action[better] = elites[better, 0, 0]
        best_risk = torch.where(better, risk[torch.arange(B), index[:, 0]], best_risk)
    return PlanResult(best_action, p, best_score, best_risk)


# -- seed 001's value components -----------------------------------------------------------------


class ValueComponents(nn.Module):
    """The three data-derived reward terms of the surgical planner (module docstring), fitted
    by :meth:`fit` on logged procedures and kept as buffers (so they travel in checkpoints).

    ``forward(z, z_next, phase_probs, actions)`` with ``z``, ``z_next`` ``(M, D)``,
    ``phase_probs`` ``(M, 7)``, ``actions`` ``(M, 100)`` returns ``{"progress", "action",
    "explore"}`` each ``(M,)``, unweighted.
    """

    def __init__(self, embedding_dim: int, n_actions: int = 100, n_phases: int = 7, n_centroids: int = 32):
        super().__init__()
        self.register_buffer("progress_w", torch.zeros(embedding_dim + 1))
        self.register_buffer("action_table", torch.zeros(n_phases, n_actions))
        self.register_buffer("centroids", torch.zeros(n_centroids, embedding_dim))
        self.register_buffer("novelty_scale", torch.ones(()))

    @torch.no_grad()
    def fit(self, procedures, reward_weights: Mapping[str, float], ridge: float = 1.0,
            shrinkage: float = 20.0, seed: int = 0) -> "ValueComponents":
        """Fit the three terms to ``procedures`` (with ``rewards``): a ridge regression of
        ``t / (T - 1)`` on the embedding, the per-phase triplet advantage table (shrunk by
        ``shrinkage`` pseudo-counts) and ``k``-means centroids of the embeddings."""
        z = np.concatenate([p.embeddings for p in procedures]).astype(np.float64)
        position = np.concatenate([np.arange(len(p)) / max(1, len(p) - 1) for p in procedures])
        fit = Ridge(alpha=ridge).fit(z, position)
        self.progress_w.copy_(torch.from_numpy(np.r_[fit.coef_, fit.intercept_]).float())

        weights = np.array([reward_weights.get(name, 0.0) for name in REWARD_NAMES])
        reward = np.concatenate([p.rewards @ weights for p in procedures])
        phases = np.concatenate([p.phases for p in procedures])
        actions = np.concatenate([p.triplets for p in procedures]).astype(np.float64)
        table = np.zeros(tuple(self.action_table.shape))
        for phase in range(table.shape[0]):
            rows = phases == phase
            if not rows.any():
                continue
            centred = reward[rows] - reward[rows].mean()
            counts = actions[rows].sum(0)
            table[phase] = (actions[rows] * centred[:, None]).sum(0) / (counts + shrinkage)
        self.action_table.copy_(torch.from_numpy(table).float())

        kmeans = KMeans(n_clusters=self.centroids.shape[0], n_init=1, random_state=seed).fit(z)
        distance = kmeans.transform(z).min(1)
        self.centroids.copy_(torch.from_numpy(kmeans.cluster_centers_).float())
        self.novelty_scale.fill_(float(np.quantile(distance, 0.9)) + 1e-6)
        return self

    def progress(self, z: torch.Tensor) -> torch.Tensor:
        """``(M,)`` the estimated position in the procedure (0 start, 1 end) of frames ``(M, D)``."""
        return z @ self.progress_w[:-1] + self.progress_w[-1]

    def forward(self, z: torch.Tensor, z_next: torch.Tensor, phase_probs: torch.Tensor,
                actions: torch.Tensor) -> dict[str, torch.Tensor]:
        progress = 10.0 * (self.progress(z_next) - self.progress(z))
        table = phase_probs @ self.action_table                                  # (M, n)
        action = (actions * table).sum(1) / actions.sum(1).clamp(min=1.0)
        distance = torch.cdist(z_next, self.centroids).min(1).values
        explore = (distance / self.novelty_scale).clamp(max=1.0)
        return {"progress": progress, "action": action, "explore": explore}


# -- the agent -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TDMPCConfig:
    """TD-MPC's settings: networks, TD learning of the value, the prior, the components'
    weights (``component_weights``: ``progress``, ``action``, ``explore``) and the planner."""

    hidden: int = 128
    steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-3
    gamma: float = 0.95
    tau: float = 0.01
    beta: float = 3.0            # advantage temperature of the prior's weights
    max_weight: float = 20.0
    component_weights: dict = field(default_factory=lambda: {"progress": 1.0, "action": 1.0, "explore": 0.05})
    planner: PlannerConfig = field(default_factory=PlannerConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = set(self.component_weights) - {"progress", "action", "explore"}
        if unknown:
            raise ValueError(f"unknown value components {sorted(unknown)}; known: progress, action, explore")
        if isinstance(self.planner, Mapping):
            object.__setattr__(self, "planner", PlannerConfig(**self.planner))
        if self.steps < 1 or self.batch_size < 1 or not 0 < self.gamma < 1:
            raise ValueError("need steps >= 1, batch_size >= 1 and 0 < gamma < 1")

    def to_dict(self) -> dict:
        return asdict(self)


class SurgicalTDMPC(nn.Module):
    """Value head ``V`` ``(F,) -> ()`` with its target copy, policy prior ``(F,) -> (100,)``
    logits and the :class:`ValueComponents`, over the world model's features ``F = H + D``."""

    def __init__(self, feature_dim: int, embedding_dim: int, config: TDMPCConfig | None = None,
                 n_actions: int = 100, plan_fn: Callable = plan):
        super().__init__()
        self.plan_fn = plan_fn  # the planner :meth:`act` runs (a chapter hands its page's copy)
        self.config = config = config or TDMPCConfig()
        self.feature_dim, self.embedding_dim, self.n_actions = feature_dim, embedding_dim, n_actions
        torch.manual_seed(config.seed)
        self.value = mlp(feature_dim, config.hidden, 2, 1, activation="silu")
        self.target_value = copy.deepcopy(self.value).requires_grad_(False)
        self.prior = mlp(feature_dim, config.hidden, 2, n_actions, activation="silu")
        self.components = ValueComponents(embedding_dim, n_actions)

    def v(self, features: torch.Tensor, target: bool = False) -> torch.Tensor:
        """``(M,)`` values of features ``(M, F)``."""
        return (self.target_value if target else self.value)(features).squeeze(-1)

    def shaped_reward(self, base: torch.Tensor, z: torch.Tensor, z_next: torch.Tensor,
                      phase_probs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """``base`` ``(M,)`` plus the weighted value components."""
        terms = self.components(z, z_next, phase_probs, actions)
        return base + sum(w * terms[k] for k, w in self.config.component_weights.items())

    # -- planning with a world model ---------------------------------------------------------

    def dynamics(self, model: SurgicalWorldModel, reward_weights: torch.Tensor | None = None) -> Dynamics:
        """The planner's view of ``model``: the shaped reward, the predicted risk component and
        the predicted continuation."""
        weights = model.reward_weights if reward_weights is None else reward_weights

        def step(latent, actions):
            pred = model.predict(latent, actions)
            base = pred.rewards @ weights
            reward = self.shaped_reward(base, latent.z, pred.embedding,
                                        torch.softmax(pred.phase_logits, -1), actions)
            return (pred.latent, reward, pred.rewards[:, RISK].clamp(0.0, 1.0),
                    1.0 - torch.sigmoid(pred.done_logit))
        return step

    @torch.no_grad()
    def act(self, model: SurgicalWorldModel, latent, generator: torch.Generator | None = None,
            planner: PlannerConfig | None = None, reward_weights: torch.Tensor | None = None) -> PlanResult:
        """Plan from ``latent`` (batch ``B``) in ``model``."""
        return self.plan_fn(self.dynamics(model, reward_weights),
                    lambda s: self.v(model.features(s)), latent,
                    lambda s: torch.sigmoid(self.prior(model.features(s))),
                    planner or self.config.planner, generator)


class OfflineBatch(NamedTuple):
    """Logged transitions ``(N, ...)``: features ``s`` and ``s_next`` ``(N, F)``, the next
    ``actions`` ``(N, 100)``, the reward ``(N,)`` (weighted logged components), frames ``z``
    and ``z_next`` ``(N, D)``, the next ``phase`` ``(N,)`` int, ``done`` ``(N,)`` float."""

    s: torch.Tensor
    actions: torch.Tensor
    reward: torch.Tensor
    s_next: torch.Tensor
    done: torch.Tensor
    z: torch.Tensor
    z_next: torch.Tensor
    phase: torch.Tensor

    def index(self, rows: torch.Tensor) -> "OfflineBatch":
        return OfflineBatch(*(x[rows] for x in self))


def tdmpc_losses(agent: SurgicalTDMPC, batch: OfflineBatch) -> dict[str, torch.Tensor]:
    """The value's TD(0) loss and the prior's advantage-weighted per-label likelihood on a
    batch of logged transitions."""
    c = agent.config
    phase = F.one_hot(batch.phase.long(), agent.components.action_table.shape[0]).float()
    reward = agent.shaped_reward(batch.reward, batch.z, batch.z_next, phase, batch.actions)
    with torch.no_grad():
        target = reward + c.gamma * (1 - batch.done) * agent.v(batch.s_next, target=True)
    v = agent.v(batch.s)
    value_loss = F.mse_loss(v, target)
    advantage = (target - v).detach()
    weights = torch.exp(c.beta * advantage).clamp(max=c.max_weight)
    nll = F.binary_cross_entropy_with_logits(agent.prior(batch.s), batch.actions, reduction="none").sum(1)
    return {"value": value_loss, "prior": (weights * nll).mean() / agent.n_actions}


def train_tdmpc(agent: SurgicalTDMPC, data: OfflineBatch, progress: bool = False,
                start_step: int = 0, optimiser_state: dict | None = None,
                on_checkpoint: Callable[[int, dict], None] | None = None,
                checkpoint_every: int = 0, loss_fn: Callable = tdmpc_losses) -> dict[str, list[float]]:
    """Learn the value by TD and the prior from ``data`` for ``config.steps`` steps (from
    ``start_step`` when resuming, with the saved ``optimiser_state``), minimising ``loss_fn``
    (:func:`tdmpc_losses`); returns the losses. ``on_checkpoint(step, optimiser_state)`` is
    called every ``checkpoint_every`` steps."""
    c = agent.config
    optimiser = torch.optim.Adam(list(agent.value.parameters()) + list(agent.prior.parameters()), lr=c.lr)
    if optimiser_state is not None:
        optimiser.load_state_dict(optimiser_state)
    history: dict[str, list[float]] = {"value": [], "prior": []}
    n = len(data.s)
    for step in tqdm(range(start_step, c.steps), desc="TD-MPC", disable=not progress, leave=False):
        rows = torch.from_numpy(np.random.default_rng((c.seed, step)).integers(0, n, c.batch_size))
        losses = loss_fn(agent, data.index(rows))
        total = losses["value"] + losses["prior"]
        if not torch.isfinite(total):
            raise FloatingPointError(f"TD-MPC loss became {total.item()} at step {step}")
        optimiser.zero_grad(set_to_none=True)
        total.backward()
        optimiser.step()
        with torch.no_grad():  # Polyak-averaged target value
            for p, q in zip(agent.value.parameters(), agent.target_value.parameters()):
                q.lerp_(p, c.tau)
        for key, value in losses.items():
            history[key].append(value.item())
        if on_checkpoint is not None and checkpoint_every and (step + 1) % checkpoint_every == 0:
            on_checkpoint(step + 1, optimiser.state_dict())
    return history
