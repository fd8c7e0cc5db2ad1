"""Chapter 6's learned policies: the logged transitions they learn from, PPO in the world
model, and policies that act in the simulator (their scores: :mod:`wmbook.surgical.compare`).

* :func:`offline_transitions`: every logged step ``(s_t, a_{t+1}, r_{t+1}, s_{t+1})`` of the
  training procedures, with ``s`` the world model's features ``[h, z]`` after reading the
  ``context`` frames up to ``t`` (the logged triplets as their actions).
* :func:`train_ppo_in_world_model`: Chapter 4's PPO (independent-Bernoulli head, 1 to 3 labels)
  in the dream environment (starts from :func:`~wmbook.surgical.imitation.start_latents`), rewarded
  with the weighted five predicted components; advantages by GAE from the learned value; with
  ``safety``, the predicted risk is a Lagrangian constraint
  (:class:`~wmbook.agents.safety.LagrangeMultiplier`).
* :class:`LatentPolicy`: any of them acting in :class:`~wmbook.surgical.env.SurgicalEnv`,
  keeping its last ``context`` frames and its own actions, as the imitation policy does.
* :func:`train_policy`: the ``tdmpc``/``iql``/``ppo`` commands, with atomic checkpoints that
  record the world model they were trained against, and resume.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Mapping, Sequence

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

from wmbook.agents.iql import IQL
from wmbook.agents.ppo import PPO, BernoulliHead, GymSteps, PPOConfig, rollout
from wmbook.agents.safety import LagrangeMultiplier
from wmbook.surgical.tdmpc import RISK, OfflineBatch, PlannerConfig, SurgicalTDMPC, plan, tdmpc_losses
from wmbook.checkpoint import restore_states
from wmbook.envs import DreamEnv
from wmbook.models.base import Step
from wmbook.surgical.model import SurgicalLatent, SurgicalWorldModel, sample_triplets, window_losses
from wmbook.surgical.imitation import context_windows, filter_context, start_latents
from wmbook.surgical.triplets import DEFAULT_REWARD_WEIGHTS, REWARD_NAMES

# -- logged transitions ------------------------------------------------------------------------


def reward_vector(weights: Mapping[str, float] | None) -> torch.Tensor:
    """``(5,)`` weights in ``REWARD_NAMES`` order; unknown names are an error."""
    weights = dict(DEFAULT_REWARD_WEIGHTS if weights is None else weights)
    unknown = set(weights) - set(REWARD_NAMES)
    if unknown:
        raise KeyError(f"unknown reward components {sorted(unknown)}; known: {list(REWARD_NAMES)}")
    return torch.tensor([float(weights.get(n, 0.0)) for n in REWARD_NAMES])


@torch.no_grad()
def offline_transitions(model: SurgicalWorldModel, procedures: Sequence,
                        reward_weights: Mapping[str, float] | None = None) -> OfflineBatch:
    """The logged transitions of ``procedures`` (which need ``rewards``) as an
    :class:`~wmbook.surgical.tdmpc.OfflineBatch`; the reward is the weighted logged components."""
    weights = reward_vector(reward_weights)
    parts: list[OfflineBatch] = []
    for p in procedures:
        if p.rewards is None:
            raise ValueError(f"procedure {p.name} has no rewards: offline RL needs logged rewards")
        windows = context_windows(p, model.config.context, "true")
        latent, _ = filter_context(model, windows, False)
        feats = model.features(latent)                                     # (N, F) for t = W-1..T-1
        t = windows["t"].numpy()[:-1]
        T = len(p)
        parts.append(OfflineBatch(
            s=feats[:-1], actions=torch.from_numpy(p.triplets[t + 1].astype(np.float32)),
            reward=torch.from_numpy((p.rewards[t + 1] @ weights.numpy().astype(np.float64)).astype(np.float32)),
            s_next=feats[1:], done=torch.from_numpy((t + 1 == T - 1).astype(np.float32)),
            z=torch.from_numpy(p.embeddings[t]), z_next=torch.from_numpy(p.embeddings[t + 1]),
            phase=torch.from_numpy(p.phases[t + 1].astype(np.int64))))
    return OfflineBatch(*(torch.cat(x) for x in zip(*parts)))


def expert_risk_budget(procedures: Sequence) -> float:
    """The mean true per-frame risk of the logged procedures: the safety budget."""
    return float(np.mean(np.concatenate([p.rewards[:, RISK] for p in procedures])))


# -- PPO in the world model -------------------------------------------------------------------


class _RiskRecorder:
    """The world model as seen by :class:`~wmbook.envs.DreamEnv`, rewarding with ``weights``
    and keeping the predicted risk ``(1,)`` of the last imagined step in ``last_risk``."""

    def __init__(self, model: SurgicalWorldModel, weights: torch.Tensor):
        self.model, self.weights, self.last_risk = model, weights, 0.0
        self.action_shape = model.action_shape

    def parameters(self):
        return self.model.parameters()

    def initial_state(self, batch_size, device=None):
        return self.model.initial_state(batch_size, device)

    def observe(self, latent, action, obs, is_first):
        return self.model.observe(latent, action, obs, is_first)

    def imagine_step(self, latent, action) -> Step:
        pred = self.model.predict(latent, action.float())
        self.last_risk = float(pred.rewards[0, RISK].clamp(0, 1))
        return Step(pred.latent, pred.rewards @ self.weights, done_prob=torch.sigmoid(pred.done_logit))

    def features(self, latent):
        return self.model.features(latent)

    def decode(self, latent):
        return self.model.decode(latent)


@dataclass(frozen=True)
class PPOWorldModelConfig:
    """PPO in the dream: ``episode_steps`` per imagined episode (the seed's 50), the reward
    weights of the five components (the seed's by default), the safety constraint, and PPO's
    own settings (:class:`~wmbook.agents.ppo.PPOConfig`, whose ``env_id`` is not read)."""

    total_timesteps: int = 20_000
    num_envs: int = 8
    n_steps: int = 50
    episode_steps: int = 50
    start_stride: int = 10
    reward_weights: dict = field(default_factory=lambda: dict(DEFAULT_REWARD_WEIGHTS))
    safety: bool = False
    risk_budget: float | None = None  # None: the logged procedures' mean risk
    lagrange_lr: float = 5.0
    batch_size: int = 200
    n_epochs: int = 4
    gamma: float = 0.95
    gae_lambda: float = 0.9
    learning_rate: float = 3e-4
    ent_coef: float = 0.0
    hidden_sizes: tuple = (128, 128)
    seed: int = 0

    def ppo_config(self) -> PPOConfig:
        return PPOConfig(env_id="surgical-dream", total_timesteps=self.total_timesteps,
                         num_envs=self.num_envs, n_steps=self.n_steps, batch_size=self.batch_size,
                         n_epochs=self.n_epochs, gamma=self.gamma, gae_lambda=self.gae_lambda,
                         learning_rate=self.learning_rate, ent_coef=self.ent_coef,
                         hidden_sizes=tuple(self.hidden_sizes), seed=self.seed)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["hidden_sizes"] = list(self.hidden_sizes)
        return out


@dataclass
class PPOWorldModelResult:
    """The trained learner, the imagined episode returns during training (the reward curve),
    the multiplier's trajectory and the wall time."""

    ppo: PPO
    episode_returns: list[float] = field(default_factory=list)
    episode_risks: list[float] = field(default_factory=list)
    lagrange: list[float] = field(default_factory=list)
    seconds: float = 0.0


def train_ppo_in_world_model(model: SurgicalWorldModel, procedures: Sequence, config: PPOWorldModelConfig,
                             progress: bool = False) -> PPOWorldModelResult:
    """Train PPO in ``config.num_envs`` dream environments started from ``procedures``."""
    c = config
    started = time.perf_counter()
    weights = reward_vector(c.reward_weights)
    starts = start_latents(model.eval(), procedures, c.start_stride)
    recorders = [_RiskRecorder(model, weights) for _ in range(c.num_envs)]
    envs = [DreamEnv(r, start_latents=starts, action_space=gym.spaces.MultiBinary(model.config.n_actions),
                     max_episode_steps=c.episode_steps) for r in recorders]
    obs_dim = int(envs[0].observation_space.shape[0])
    ppo = PPO(obs_dim, BernoulliHead(model.config.n_actions, 1, 3), c.ppo_config())
    budget = c.risk_budget if c.risk_budget is not None else expert_risk_budget(procedures)
    multiplier = LagrangeMultiplier(budget, c.lagrange_lr) if c.safety else None
    result = PPOWorldModelResult(ppo)
    dreams = GymSteps(envs, c.seed)
    result.episode_returns = dreams.episode_returns
    episode_risk, episode_length = np.zeros(c.num_envs), np.zeros(c.num_envs)
    risks = []  # (N,) per step: the risk of the step each dream took

    def step(action: torch.Tensor):
        out = dreams(action)
        risk = np.array([recorder.last_risk for recorder in recorders])
        risks.append(torch.as_tensor(risk, dtype=torch.float32))
        episode_risk[:] += risk
        episode_length[:] += 1
        for i in np.flatnonzero(out[2].numpy()):  # episodes that ended: their mean risk per step
            result.episode_risks.append(float(episode_risk[i] / episode_length[i]))
            episode_risk[i] = episode_length[i] = 0.0
        return out

    steps = 0
    bar = tqdm(total=c.total_timesteps, desc="PPO in the world model", disable=not progress, leave=False)
    while steps < c.total_timesteps:
        risks.clear()
        data = rollout(ppo, dreams.observations(), step, c.n_steps)
        steps += c.n_steps * c.num_envs
        bar.update(c.n_steps * c.num_envs)
        risk = torch.stack(risks)
        rewards = data.rewards if multiplier is None else multiplier.penalise(data.rewards, risk)
        ppo.update(data.batch(c.gamma, c.gae_lambda, rewards=rewards), steps)
        if multiplier is not None:  # dual ascent on the risk this rollout measured
            result.lagrange.append(multiplier.update(float(risk.mean())))
    bar.close()
    result.seconds = time.perf_counter() - started
    return result


# -- policies in the simulator --------------------------------------------------------------------

# choose(latent (B, ...)) -> (probabilities (B, 100), action (B, 100))
Chooser = Callable[[SurgicalLatent], tuple[torch.Tensor, torch.Tensor]]


def ppo_chooser(model: SurgicalWorldModel, ppo: PPO, greedy: bool = True,
                generator: torch.Generator | None = None) -> Chooser:
    """PPO's actor on the world model's features (its mode by default)."""
    def choose(latent):
        dist = ppo.net.distribution(model.features(latent))
        action = dist.mode() if greedy else dist.sample(generator)
        return torch.sigmoid(dist.logits), action
    return choose


def iql_chooser(model: SurgicalWorldModel, agent: IQL) -> Chooser:
    """IQL's extracted policy: its expected number (1 to 3) of most likely labels."""
    def choose(latent):
        probs = torch.sigmoid(agent.logits(model.features(latent)))
        return probs, sample_triplets(probs, deterministic=True)
    return choose


def tdmpc_chooser(model: SurgicalWorldModel, agent: SurgicalTDMPC, planner: PlannerConfig | None = None,
                  seed: int = 0, reward_weights: torch.Tensor | None = None) -> Chooser:
    """TD-MPC's planner: the first action of its best plan; as probabilities, its final
    Bernoulli probabilities of the first step."""
    generator = torch.Generator().manual_seed(seed)

    def choose(latent):
        result = agent.act(model, latent, generator, planner, reward_weights)
        return result.probs[:, 0], result.action
    return choose


def imitation_chooser(model: SurgicalWorldModel) -> Chooser:
    """The imitation head, as the anticipation baseline uses it."""
    def choose(latent):
        probs = torch.sigmoid(model.next_action_logits(latent.h))
        return probs, sample_triplets(probs, deterministic=True)
    return choose


class LatentPolicy:
    """A :class:`Chooser` acting in :class:`~wmbook.surgical.env.SurgicalEnv`: it keeps
    the last ``context`` frames with its own actions, reads them into a latent from a zero
    state, and returns the chosen labels ``(100,)`` int8."""

    def __init__(self, model: SurgicalWorldModel, choose: Chooser):
        self.model, self.choose = model.eval(), choose
        self._frames: list[np.ndarray] = []
        self._actions: list[np.ndarray] = []
        self._pending: np.ndarray | None = None

    def reset(self, start=None) -> None:
        W = self.model.config.context
        self._frames = [] if start is None else list(start.embeddings[-W:])
        self._actions = [] if start is None else list(np.asarray(start.triplets[-W:], np.float32))
        self._pending = None

    @torch.no_grad()
    def act(self, observation: np.ndarray, info: dict | None = None) -> np.ndarray:
        W = self.model.config.context
        if self._pending is not None:
            self._frames = (self._frames + [np.asarray(observation, np.float32)])[-W:]
            self._actions = (self._actions + [self._pending.astype(np.float32)])[-W:]
        if self._frames:
            z = torch.from_numpy(np.stack(self._frames)[None].astype(np.float32))
            a = torch.from_numpy(np.stack(self._actions)[None].astype(np.float32))
            latent = self.model.filter_window(z, a)
        else:
            latent = self.model.initial_state(1)
        action = self.choose(latent)[1][0].numpy().astype(np.int8)
        self._pending = action
        return action


# -- checkpoints and the command line ------------------------------------------------------------

KINDS = {"tdmpc": "SurgicalTDMPC", "iql": "SurgicalIQL", "ppo": "SurgicalPPO"}


def _world_model_signature(model: SurgicalWorldModel) -> dict:
    c = model.config
    return {"embedding_dim": c.embedding_dim, "hidden_dim": c.hidden_dim, "n_actions": c.n_actions,
            "context": c.context}


def save_policy(path, method: str, model: SurgicalWorldModel, agent, config, step: int,
                optimiser: dict | None = None, extra: dict | None = None) -> None:
    """Write a policy checkpoint atomically (:func:`~wmbook.checkpoint.save_state`), with the
    world model it was trained against."""
    from wmbook.checkpoint import save_state

    save_state(path, KINDS[method], {"agent": agent}, config=config.to_dict(), step=step, optimiser=optimiser,
               world_model=_world_model_signature(model), **(extra or {}))


def load_policy(path, method: str, model: SurgicalWorldModel) -> dict:
    """Read a policy checkpoint and check it was trained against a world model like ``model``
    (the agent's state goes back with :func:`~wmbook.checkpoint.restore_states`)."""
    from wmbook.checkpoint import load_checkpoint

    data = load_checkpoint(path, KINDS[method])
    expected = _world_model_signature(model)
    if data["world_model"] != expected:
        raise ValueError(f"{path} was trained against a world model with {data['world_model']}, "
                         f"the given world model has {expected}")
    return data


def build_agent(method: str, model: SurgicalWorldModel, config_values: Mapping | None = None):
    """A fresh agent of ``method`` for ``model`` and its config (from plain values or defaults)."""
    from wmbook.agents.iql import IQLConfig
    from wmbook.surgical.tdmpc import TDMPCConfig

    values = dict(config_values or {})
    feature_dim = model.config.hidden_dim + model.config.embedding_dim
    if method == "tdmpc":
        config = TDMPCConfig(**values)
        return SurgicalTDMPC(feature_dim, model.config.embedding_dim, config), config
    if method == "iql":
        config = IQLConfig(**values)
        return IQL(feature_dim, model.config.n_actions, config), config
    if method == "ppo":
        if "hidden_sizes" in values:
            values["hidden_sizes"] = tuple(values["hidden_sizes"])
        config = PPOWorldModelConfig(**values)
        return PPO(feature_dim, BernoulliHead(model.config.n_actions, 1, 3), config.ppo_config()), config
    raise ValueError(f"unknown method {method!r}; known: {sorted(KINDS)}")


def train_policy(method: str, model: SurgicalWorldModel, procedures: Sequence, path,
                 overrides: Mapping | None = None, progress: bool = False,
                 checkpoint_every: int = 250) -> dict:
    """Train a ``method`` policy against ``model`` on ``procedures`` and save it to ``path``.

    An existing checkpoint at ``path`` with the same settings is resumed from its step (TD-MPC
    and IQL save every ``checkpoint_every`` steps; a finished one is simply reused); a
    checkpoint with other settings is an error, so nothing is overwritten by accident."""
    from pathlib import Path

    from wmbook.agents.iql import train_iql
    from wmbook.surgical.tdmpc import train_tdmpc

    agent, config = build_agent(method, model, overrides)
    start, optimiser = 0, None
    if Path(path).is_file():
        saved = load_policy(path, method, model)
        if saved["config"] != config.to_dict():
            raise ValueError(f"{path} holds a {method} policy trained with other settings; "
                             f"remove it or choose another --policy path")
        if method == "ppo":
            return {"step": saved["step"], "resumed": True, "finished": True}
        restore_states(saved, {"agent": agent}, path)
        start, optimiser = int(saved["step"]), saved["optimiser"]
        if start >= config.steps:
            return {"step": start, "resumed": True, "finished": True}
    started = time.perf_counter()
    info: dict = {"resumed": start > 0}
    if method == "ppo":
        result = train_ppo_in_world_model(model, procedures, config, progress)
        save_policy(path, method, model, result.ppo, config, config.total_timesteps,
                    extra={"episode_returns": result.episode_returns, "lagrange": result.lagrange})
        info["episode_returns"] = result.episode_returns
    else:
        data = offline_transitions(model, procedures)
        if method == "tdmpc" and start == 0:
            agent.components.fit(procedures, model.config.reward_weights, seed=config.seed)

        def checkpoint(step, optimiser_state):
            save_policy(path, method, model, agent, config, step, optimiser_state)
        if method == "tdmpc":
            train_tdmpc(agent, data, progress, start, optimiser, checkpoint, checkpoint_every)
        else:
            train_iql(agent, data.s, data.actions, data.reward, data.s_next, data.done, progress, start,
                      optimiser, checkpoint, checkpoint_every)
        save_policy(path, method, model, agent, config, config.steps, None)
    info.update(step=config.steps if method != "ppo" else config.total_timesteps,
                seconds=time.perf_counter() - started, finished=True)
    return info


def chooser_from_checkpoint(method: str, model: SurgicalWorldModel, path,
                            planner: PlannerConfig | None = None) -> Chooser:
    """The :class:`Chooser` of a saved policy (the latest saved state of an unfinished run)."""
    saved = load_policy(path, method, model)
    agent, config = build_agent(method, model, saved["config"])
    restore_states(saved, {"agent": agent}, path)
    if method == "tdmpc":
        return tdmpc_chooser(model, agent.eval(), planner)
    if method == "iql":
        return iql_chooser(model, agent.eval())
    return ppo_chooser(model, agent)


@dataclass(frozen=True)
class SurgicalMethod:
    """The functions the surgical runs train and act with: the world model's losses (its
    next-triplet head is the imitation policy), TD-MPC's offline objective and its planner. The
    package's own by default; Chapter 6 hands the copies on its page."""

    world_model_losses: Callable = window_losses
    tdmpc_losses: Callable = tdmpc_losses
    plan: Callable = plan
