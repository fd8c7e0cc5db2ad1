"""Chapter 6's policies scored both ways: against the expert's labels (DARIL's anticipation
mAP) and against the truth in the simulator, with the return the world model promised.

* :func:`policy_map_table`: a policy's anticipation mAP at ``+k`` seconds: from each test
  frame's context, the policy's probabilities for the next action, then its own actions rolled
  through the world model.
* :func:`evaluate_policy`: the ``tdmpc``/``iql``/``ppo`` commands' ``--mode eval``.
* :func:`compare_policies`, :func:`format_comparison`: every policy trained against one world
  model and scored both ways (the ``compare`` command); the model-exploitation gap is the
  return the world model promised over the first ``gap_steps`` seconds minus the true return
  over the same seconds.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from wmbook.agents.iql import IQL
from wmbook.stats import markdown_table
from wmbook.surgical.env import SurgicalEnv
from wmbook.surgical.evaluation import ivt_map
from wmbook.surgical.imitation import context_windows, filter_context
from wmbook.surgical.model import SurgicalLatent, SurgicalWorldModel
from wmbook.surgical.policies import (Chooser, LatentPolicy, PPOWorldModelConfig, SurgicalMethod,
                                      chooser_from_checkpoint, expert_risk_budget, imitation_chooser, iql_chooser,
                                      offline_transitions, ppo_chooser, reward_vector, tdmpc_chooser,
                                      train_ppo_in_world_model)
from wmbook.surgical.tdmpc import PlannerConfig, SurgicalTDMPC


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
    env = SurgicalEnv(config.simulator, model.config.reward_weights)
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
