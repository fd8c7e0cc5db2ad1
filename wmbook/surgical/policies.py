"""Chapter 6's learned policies in one place: the logged transitions they learn from, PPO in
the world model, policies that act in the simulator, and their scores against the expert's
labels (mAP) and against the truth.

* :func:`offline_transitions`: every logged step ``(s_t, a_{t+1}, r_{t+1}, s_{t+1})`` of the
  training procedures, with ``s`` the world model's features ``[h, z]`` after reading the
  ``context`` frames up to ``t`` (the logged triplets as their actions).
* :func:`train_ppo_in_world_model`: Chapter 4's PPO (independent-Bernoulli head, 1 to 3 labels)
  in the dream environment (:func:`~wmbook.surgical.dream.make_dream_env`'s starts), rewarded
  with the weighted five predicted components; advantages by GAE from the learned value; with
  ``safety``, the predicted risk is a Lagrangian constraint
  (:class:`~wmbook.agents.safety.LagrangeMultiplier`).
* :class:`LatentPolicy`: any of them acting in :class:`~wmbook.surgical.simulator.SurgicalEnv`,
  keeping its last ``context`` frames and its own actions, as the imitation policy does.
* :func:`policy_map_table`: DARIL's anticipation mAP of a policy at ``+k`` seconds: from each
  test frame's context, the policy's probabilities for the next action, then its own actions
  rolled through the world model.
* :func:`train_policy`, :func:`evaluate_policy`: the ``tdmpc``/``iql``/``ppo`` commands, with
  atomic checkpoints that record the world model they were trained against, and resume.
* :func:`compare_policies`, :func:`format_comparison`: every policy trained against one world
  model and scored both ways (the ``compare`` command); the model-exploitation gap is the
  return the world model promised over the first ``gap_steps`` seconds minus the true return
  over the same seconds.
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
from wmbook.envs import DreamEnv
from wmbook.models.base import Step
from wmbook.surgical.model import SurgicalLatent, SurgicalWorldModel, sample_triplets, window_losses
from wmbook.surgical.dream import start_latents
from wmbook.surgical.evaluation import ivt_map
from wmbook.surgical.imitation import context_windows, filter_context
from wmbook.stats import markdown_table
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
    """A :class:`Chooser` acting in :class:`~wmbook.surgical.simulator.SurgicalEnv`: it keeps
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


# -- mAP of a policy -------------------------------------------------------------------------------


@torch.no_grad()
def policy_anticipation(model: SurgicalWorldModel, procedure, choose: Chooser,
                        horizons: Sequence[int] = (1, 5, 10), actions: str = "recognised",
                        stride: int = 1, chunk: int = 256) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """``{k: (scores (N_k, 100), targets (N_k, 100))}`` for ``k >= 1``: from every
    ``stride``-th full-context frame ``t``, the policy's probabilities at step ``k`` of its
    own rollout in the world model, scored against the expert's ``a_{t+k}``."""
    if any(k < 1 for k in horizons):
        raise ValueError(f"a policy anticipates k >= 1 seconds ahead, got {list(horizons)}")
    windows = context_windows(procedure, model.config.context, actions)
    keep = slice(None, None, stride)
    windows = {key: value[keep] for key, value in windows.items()}
    latent_all, _ = filter_context(model, windows, actions == "recognised")
    t_all, T = windows["t"].numpy(), len(procedure)
    scores: dict[int, list[np.ndarray]] = {k: [] for k in horizons}
    targets: dict[int, list[np.ndarray]] = {k: [] for k in horizons}
    for lo in range(0, len(t_all), chunk):
        latent = SurgicalLatent(latent_all.h[lo:lo + chunk], latent_all.z[lo:lo + chunk])
        t = t_all[lo:lo + chunk]
        for k in range(1, max(horizons) + 1):
            probs, action = choose(latent)
            if k in horizons:
                valid = t + k < T
                scores[k].append(probs.numpy()[valid])
                targets[k].append(procedure.triplets[t[valid] + k])
            latent = model.predict(latent, action).latent
    return {k: (np.concatenate(scores[k]), np.concatenate(targets[k])) for k in horizons}


def policy_map_table(model: SurgicalWorldModel, procedures: Sequence, choose: Chooser,
                     horizons: Sequence[int] = (1, 5, 10), actions: str = "recognised",
                     stride: int = 1, components: Sequence[str] | None = None) -> dict[int, dict[str, float]]:
    """``{k: {component: mAP}}`` of a policy's anticipation over ``procedures`` (every
    component of ivtmetrics, or only ``components``)."""
    per_video = [policy_anticipation(model, p, choose, horizons, actions, stride) for p in procedures]
    if components is None:
        return {k: ivt_map([video[k] for video in per_video]) for k in horizons}
    return {k: ivt_map([video[k] for video in per_video], tuple(components)) for k in horizons}


def true_prefix_return(env, make_policy: Callable[[object], object], starts: Sequence, steps: int) -> float:
    """The mean true return of the first ``steps`` seconds after each start (less where the
    procedure ends sooner): the second term of the model-exploitation gap."""
    totals = []
    for start in starts:
        policy = make_policy(start)
        obs, info = env.reset(options={"start": start})
        policy.reset(start)
        total = 0.0
        for _ in range(steps):
            obs, reward, terminated, truncated, info = env.step(policy.act(obs, info))
            total += reward
            if terminated or truncated:
                break
        totals.append(total)
    return float(np.mean(totals))


@torch.no_grad()
def promised_return(model: SurgicalWorldModel, starts: Sequence, choose: Chooser, steps: int,
                    reward_weights: Mapping[str, float] | None = None) -> float:
    """The mean return over ``steps`` imagined steps that the world model promises a policy
    from each start's context (the true triplets of its history), ended where it predicts the
    end of the procedure: the first term of the model-exploitation gap."""
    weights = reward_vector(reward_weights)
    W = model.config.context
    z = torch.from_numpy(np.stack([s.embeddings[-W:] for s in starts]).astype(np.float32))
    a = torch.from_numpy(np.stack([s.triplets[-W:] for s in starts]).astype(np.float32))
    latent = model.filter_window(z, a)
    total, alive = torch.zeros(len(starts)), torch.ones(len(starts))
    for _ in range(steps):
        _, action = choose(latent)
        pred = model.predict(latent, action)
        total += alive * (pred.rewards @ weights)
        alive = alive * (torch.sigmoid(pred.done_logit) < 0.5).float()
        latent = pred.latent
    return float(total.mean())


# -- checkpoints and the command line ------------------------------------------------------------

KINDS = {"tdmpc": "SurgicalTDMPC", "iql": "SurgicalIQL", "ppo": "SurgicalPPO"}


def _world_model_signature(model: SurgicalWorldModel) -> dict:
    c = model.config
    return {"embedding_dim": c.embedding_dim, "hidden_dim": c.hidden_dim, "n_actions": c.n_actions,
            "context": c.context}


def save_policy(path, method: str, model: SurgicalWorldModel, agent, config, step: int,
                optimiser: dict | None = None, extra: dict | None = None) -> None:
    """Write a policy checkpoint atomically, with the world model it was trained against."""
    from wmbook.checkpoint import save_checkpoint

    save_checkpoint(path, KINDS[method], {"config": config.to_dict(), "state": agent.state_dict(), "step": step,
                                          "optimiser": optimiser, "world_model": _world_model_signature(model),
                                          **(extra or {})})


def load_policy(path, method: str, model: SurgicalWorldModel) -> dict:
    """Read a policy checkpoint and check it was trained against a world model like ``model``."""
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
        agent.load_state_dict(saved["state"])
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
    agent.load_state_dict(saved["state"])
    if method == "tdmpc":
        return tdmpc_chooser(model, agent.eval(), planner)
    if method == "iql":
        return iql_chooser(model, agent.eval())
    return ppo_chooser(model, agent)


def evaluate_policy(method: str, model: SurgicalWorldModel, dataset, path, config,
                    truth: bool = True, map_stride: int = 1, progress: bool = False) -> dict:
    """A saved policy's anticipation mAP on the test procedures and, with ``truth``, its true
    outcome in the simulator from their start states."""
    from wmbook.surgical import evaluation as E

    ev = config.evaluation
    choose = chooser_from_checkpoint(method, model, path)
    horizons = [k for k in ev.horizons if k >= 1]
    out: dict = {"map": {str(k): v for k, v in policy_map_table(
        model, dataset.test, choose, horizons, ev.context_actions, map_stride).items()}}
    if truth:
        starts = [p.start(ev.start_frame) for p in dataset.test]
        outcome = E.simulator_outcomes({method: lambda start: LatentPolicy(model, choose)}, starts,
                                       config.simulator, model.config.reward_weights, progress)
        out["truth"] = outcome[method]["mean"]
    return out


# -- the comparison harness ----------------------------------------------------------------------


@dataclass(frozen=True)
class CompareSettings:
    """What :func:`compare_policies` trains and how it scores: training budgets, the planner,
    ``map_stride`` (every k-th test frame starts an anticipation, for every policy alike) and
    the ablations (``safety``: constrained vs unconstrained TD-MPC and PPO;
    ``alt_weights``: PPO under one alternative reward weighting). ``map_policies`` limits the
    mAP table to those policies (``None``: all) and ``map_components`` to those components
    (``None``: all of ivtmetrics'); ivtmetrics' per-class scoring is the slowest step."""

    ppo_steps: int = 16_000
    offline_steps: int = 2000
    planner: PlannerConfig = field(default_factory=lambda: PlannerConfig(horizon=3, samples=32, iterations=2,
                                                                         elites=4))
    map_stride: int = 10
    gap_steps: int = 50
    safety: bool = True
    alt_weights: dict | None = field(default_factory=lambda: {
        "_r_phase_completion": 1.0, "_r_phase_progression": 0.5, "_r_risk": -2.0,
        "_r_action_probability": 0.0, "_r_global_progression": 0.3})
    seed: int = 0
    map_policies: tuple | None = None
    map_components: tuple | None = None


@dataclass(frozen=True)
class SurgicalMethod:
    """The functions the surgical runs train and act with: the world model's losses (its
    next-triplet head is the imitation policy), TD-MPC's offline objective and its planner. The
    package's own by default; Chapter 6 hands the copies on its page."""

    world_model_losses: Callable = window_losses
    tdmpc_losses: Callable = tdmpc_losses
    plan: Callable = plan


def compare_policies(config, dataset, model: SurgicalWorldModel, settings: CompareSettings | None = None,
                     progress: bool = False, keep_policies: bool = False,
                     wrap: Callable[[str, object], object] | None = None,
                     method: SurgicalMethod = SurgicalMethod()) -> dict:
    """Train every policy against ``model`` on the training procedures and score each on the
    test procedures both ways: anticipation mAP against the expert's labels and the true
    outcome in the simulator, with the return the world model promised (the model-exploitation
    gap is promised minus true). Returns ``{"map": {policy: {k: {component: mAP}}}, "truth":
    {policy: outcome}, "curves": ..., "seconds": ...}``. Progress is printed per stage.

    ``keep_policies`` adds ``"choosers"`` (name -> :data:`Chooser`) to the result, for analysis
    after the run (not JSON); ``wrap(name, policy)`` replaces each policy (the expert's
    included) that plays the full test procedures, e.g. to record what it does."""
    from wmbook.agents.iql import IQLConfig, train_iql
    from wmbook.surgical.tdmpc import TDMPCConfig, train_tdmpc
    from wmbook.surgical import evaluation as E
    from wmbook.surgical.experiment import expert_for
    from wmbook.surgical.imitation import ImitationPolicy

    s = settings or CompareSettings()
    ev = config.evaluation
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    data = offline_transitions(model, dataset.train)
    budget = expert_risk_budget(dataset.train)
    tdmpc = SurgicalTDMPC(data.s.shape[1], model.config.embedding_dim,
                          TDMPCConfig(steps=s.offline_steps, planner=s.planner, seed=s.seed), plan_fn=method.plan)
    tdmpc.components.fit(dataset.train, model.config.reward_weights, seed=s.seed)
    curves = {"tdmpc": train_tdmpc(tdmpc, data, progress, loss_fn=method.tdmpc_losses)}
    seconds["tdmpc"] = time.perf_counter() - clock
    clock = time.perf_counter()
    iql = IQL(data.s.shape[1], model.config.n_actions, IQLConfig(steps=s.offline_steps, seed=s.seed))
    curves["iql"] = train_iql(iql, data.s, data.actions, data.reward, data.s_next, data.done, progress)
    seconds["iql"] = time.perf_counter() - clock
    choosers: dict[str, Chooser] = {"imitation": imitation_chooser(model)}
    ppo_runs = {"ppo": PPOWorldModelConfig(total_timesteps=s.ppo_steps, seed=s.seed)}
    if s.safety:
        ppo_runs["ppo_safe"] = PPOWorldModelConfig(total_timesteps=s.ppo_steps, seed=s.seed, safety=True,
                                                   risk_budget=budget)
    if s.alt_weights:
        ppo_runs["ppo_alt_weights"] = PPOWorldModelConfig(total_timesteps=s.ppo_steps, seed=s.seed,
                                                          reward_weights=dict(s.alt_weights))
    for name, ppo_config in ppo_runs.items():
        clock = time.perf_counter()
        result = train_ppo_in_world_model(model, dataset.train, ppo_config, progress)
        curves[name] = {"episode_returns": result.episode_returns, "episode_risks": result.episode_risks,
                        "lagrange": result.lagrange}
        choosers[name] = ppo_chooser(model, result.ppo)
        seconds[name] = time.perf_counter() - clock
        if progress:
            print(f"{name}: trained in {seconds[name]:.0f} s", flush=True)
    choosers["iql"] = iql_chooser(model, iql)
    choosers["tdmpc"] = tdmpc_chooser(model, tdmpc, s.planner, s.seed)
    if s.safety:
        safe_planner = PlannerConfig(**{**asdict(s.planner), "risk_budget": budget})
        choosers["tdmpc_safe"] = tdmpc_chooser(model, tdmpc, safe_planner, s.seed)

    horizons = [k for k in ev.horizons if k >= 1]
    out: dict = {"map": {}, "truth": {}, "promised": {}, "curves": curves, "risk_budget": budget}
    out["map"]["imitation_current"] = E.map_table(model, dataset.test, [0], ev.context_actions)[0]
    starts = [p.start(ev.start_frame) for p in dataset.test]
    expert = expert_for(dataset)
    if wrap is not None:
        expert = lambda start, make=expert: wrap("expert", make(start))  # noqa: E731
    truth = E.simulator_outcomes({"expert": expert}, starts, config.simulator,
                                 model.config.reward_weights)
    out["truth"]["expert"] = truth["expert"]["mean"]
    env = E.SurgicalEnv(config.simulator, model.config.reward_weights)
    for name, choose in choosers.items():
        clock = time.perf_counter()
        if s.map_policies is None or name in s.map_policies:
            out["map"][name] = {str(k): v for k, v in policy_map_table(
                model, dataset.test, choose, horizons, ev.context_actions, s.map_stride,
                s.map_components).items()}
        if name == "imitation":  # the part-1 policy: samples its 1 to 3 labels from the head
            factory = lambda start: ImitationPolicy(model, ev.policy_seed)  # noqa: E731
        else:
            factory = lambda start, choose=choose: LatentPolicy(model, choose)  # noqa: E731
        played = factory if wrap is None else \
            (lambda start, make=factory, name=name: wrap(name, make(start)))  # noqa: E731
        result = E.simulator_outcomes({name: played}, starts, config.simulator, model.config.reward_weights,
                                      progress)
        out["truth"][name] = result[name]["mean"]
        # the gap over the first gap_steps seconds: what the model promised, what happened
        promised = promised_return(model, starts, choose, s.gap_steps)
        true = true_prefix_return(env, factory, starts, s.gap_steps)
        out["truth"][name].update(promised_return=promised, true_prefix_return=true,
                                  exploitation_gap=promised - true)
        seconds[f"eval_{name}"] = time.perf_counter() - clock
        if progress:
            print(f"{name}: evaluated in {seconds[f'eval_{name}']:.0f} s", flush=True)
    out["seconds"] = seconds
    if keep_policies:
        out["choosers"] = choosers
    return out


def _cell(value: float, spec: str) -> str:
    return "-" if value != value else format(value, spec)  # NaN (not measured) reads as -


def truth_rows(truth: Mapping[str, dict], names: Sequence[str], label: Callable[[str], str] = str) -> list[dict]:
    """The truth table's rows, one per policy of ``names``: completion, time, adverse events, true
    risk and return, and the return the world model promised against the true one."""
    nan = float("nan")
    return [{"policy": label(n), "completed": f"{100 * r['completed']:.0f} %", "time to complete (s)": _cell(r["frames"], ".0f"),
             "adverse events": _cell(r["adverse_events"], ".2f"), "true risk": _cell(r["true_risk"], ".1f"),
             "true return": _cell(r["true_return"], ".1f"), "promised": _cell(r.get("promised_return", nan), ".1f"),
             "true (same s)": _cell(r.get("true_prefix_return", nan), ".1f"),
             "exploitation gap": _cell(r.get("exploitation_gap", nan), ".1f")}
            for n in names for r in [truth[n]]]


def map_rows(maps: Mapping[str, dict], names: Sequence[str], horizons: Sequence, label: Callable[[str], str] = str,
             current: str = "", scale: float = 100.0) -> list[dict]:
    """DARIL's table in miniature, one row per policy: ivt mAP (%, the maps times ``scale``) per
    horizon (keys of each policy's map), and i, v, t at the first; ``current`` fills the
    recognition column, if any."""
    rows = []
    for n in names:
        row, first = maps[n], maps[n][horizons[0]]
        rows.append({"policy": label(n), **({"ivt current": current if n == "imitation" else "-"} if current else {}),
                     **{f"ivt +{k} s": f"{scale * row[k]['ivt']:.1f}" for k in horizons},
                     **{c if c != "t" else "t (+1 s)": _cell(scale * first.get(c, float("nan")), ".1f") for c in "ivt"}})
    return rows


def format_comparison(results: dict) -> str:
    """Both tables in markdown: ivt mAP by horizon, and the truth, one row per policy, each
    with its rank."""
    names = [n for n in results["truth"] if n != "expert"]
    scored = [n for n in names if n in results["map"]]
    horizons = sorted({k for n in scored for k in results["map"][n]}, key=int)
    current = results["map"]["imitation_current"]
    by_map = sorted(scored, key=lambda n: -results["map"][n][horizons[0]]["ivt"])
    by_truth = sorted(names, key=lambda n: -results["truth"][n]["true_return"])
    return "\n".join([markdown_table(map_rows(results["map"], scored, horizons)), "",
                      f"Imitation, current frame (recognition): ivt {100 * current['ivt']:.1f}", "",
                      markdown_table(truth_rows(results["truth"], ["expert", *names])), "",
                      "Ranking by ivt mAP (+1 s): " + " > ".join(by_map),
                      "Ranking by true return: " + " > ".join(by_truth)])
