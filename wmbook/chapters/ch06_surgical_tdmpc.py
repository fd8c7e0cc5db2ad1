"""Chapter 6, surgical TD-MPC: its budgets, its experiment harness and its figures.

The chapter simulates one data set of procedures, trains one surgical world model on it (and,
for the ablation, a second one without the noisy-action dual path), then trains every policy
against the world model on several seeds with
:func:`~wmbook.surgical.compare.compare_policies`: PPO in the world model (with and without
the risk constraint, and under one alternative reward weighting), IQL, and TD-MPC's planner
(with and without its risk budget). Each is scored twice on the test procedures: anticipation
mAP against the expert's labels, and the true outcome when it operates in the simulator.

The seeds vary the policies (their initialisation, minibatches, imagined starts, the planner's
and the imitation policy's sampling); the data set and the world model are shared by all
seeds, so the intervals say how much the *policies* vary on one world model.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from scipy.stats import kendalltau

from wmbook.agents.iql import IQL, IQLConfig, train_iql
from wmbook.surgical.tdmpc import PlannerConfig
from wmbook.surgical.model import SurgicalWorldModel
from wmbook.runner import run_jobs
from wmbook.stats import markdown_table
from wmbook.surgical import evaluation as E
from wmbook.surgical.analysis import Outlook, Projection, Recording, recorder, running_mean
from wmbook.surgical import experiment as X
from wmbook.surgical import compare as PC
from wmbook.surgical import policies as P
from wmbook.surgical.config import SurgicalConfig, config_from_dict
from wmbook.surgical.data import SurgicalDataset
from wmbook.surgical.imitation import ImitationPolicy
from wmbook.surgical.triplets import PHASES, triplet_name

# policy key -> label in tables and figures, in the order the chapter shows them
LABELS: dict[str, str] = {
    "imitation": "imitation",
    "ppo": "PPO in the WM",
    "iql": "IQL (offline)",
    "tdmpc": "TD-MPC",
    "ppo_safe": "PPO + risk constraint",
    "tdmpc_safe": "TD-MPC + risk budget",
    "ppo_alt_weights": "PPO, alt. weights",
}
MAIN = ("imitation", "ppo", "iql", "tdmpc")          # DARIL's table in miniature
LEARNED = ("ppo", "iql", "tdmpc", "ppo_safe", "tdmpc_safe")  # RL and planner policies
SAFE = ("ppo_safe", "tdmpc_safe")                     # those with the risk as a constraint


@dataclass(frozen=True)
class SurgicalChapter:
    """Chapter 6's budgets: the surgical data, world model and evaluation settings
    (``surgical``; its data root is replaced by the run's own folder), every policy's training
    budget and the planner (``compare``; its seed is set per run) and the policy seeds."""

    surgical: SurgicalConfig
    compare: PC.CompareSettings
    seeds: tuple[int, ...]             # the reported runs; no setting was tuned on them
    trajectory_steps: int              # frames of the trajectory figure after the start
    explorer_horizon: int              # seconds the explorer plays each policy for
    check_headline: bool
    workers: int = 2                   # runs at a time (the job runner's worker processes)
    bootstrap_reps: int = 2_000


def _surgical(values: Mapping) -> SurgicalConfig:
    return config_from_dict(values, "chapter 6 profile")


MAP_COMPONENTS = ("i", "v", "t", "ivt")

PROFILES = {
    "full": SurgicalChapter(
        surgical=_surgical({
            "data": {"procedures": 30, "test": 5, "seed": 0, "surgeons": 6},
            "simulator": {"duration_scale": 0.1, "max_frames_factor": 2.0},
            "model": {"hidden_dim": 96, "head_hidden": 96, "context": 12},
            "training": {"steps": 800, "batch_size": 48},
            "evaluation": {"start_frame": 12},
        }),
        compare=PC.CompareSettings(ppo_steps=8_000, offline_steps=1_500,
                                   planner=PlannerConfig(horizon=3, samples=32, iterations=2, elites=4),
                                   map_stride=5, gap_steps=40, map_policies=MAIN, map_components=MAP_COMPONENTS),
        seeds=(0, 1, 2),
        trajectory_steps=150,
        explorer_horizon=10,
        check_headline=True),
    "ci": SurgicalChapter(
        surgical=_surgical({
            "data": {"procedures": 5, "test": 1, "seed": 0, "surgeons": 3},
            "simulator": {"embedding_dim": 16, "duration_scale": 0.04, "max_frames_factor": 1.5},
            "model": {"hidden_dim": 24, "action_embed_dim": 8, "head_hidden": 24, "context": 6},
            "training": {"steps": 60, "batch_size": 16},
            "evaluation": {"horizons": [0, 1, 5, 10], "start_frame": 6, "embedding_horizon": 3},
        }),
        compare=PC.CompareSettings(ppo_steps=800, offline_steps=60,
                                   planner=PlannerConfig(horizon=2, samples=8, iterations=1, elites=2),
                                   map_stride=4, gap_steps=10, map_policies=MAIN, map_components=MAP_COMPONENTS),
        seeds=(0, 1),
        trajectory_steps=30,
        explorer_horizon=4,
        check_headline=False,
        bootstrap_reps=200),
}


def chapter_config(chapter: SurgicalChapter, root: str | Path) -> SurgicalConfig:
    """The chapter's surgical configuration with its data and checkpoints under ``root``."""
    root = Path(root)
    c = chapter.surgical
    return dataclasses.replace(
        c, data=dataclasses.replace(c.data, root=str(root / "data")),
        output=dataclasses.replace(c.output, world_model=str(root / "world_model.pt"),
                                   results=str(root / "results.json")))


# -- the runs ------------------------------------------------------------------------------------------


def prepare(config: SurgicalConfig, progress: bool = False, method: P.SurgicalMethod = P.SurgicalMethod()
            ) -> tuple[SurgicalDataset, SurgicalWorldModel, SurgicalWorldModel, dict]:
    """Simulate the data and train the dual-path and the clean-only world models with
    ``method``'s losses (saved atomically beside the data). Returns both models and the wall times."""
    started = time.perf_counter()
    dataset = X.ensure_data(config, progress)
    seconds = {"data": time.perf_counter() - started}
    out = Path(config.output.world_model)
    dual, info = X.train(config, dataset, True, out, progress, method.world_model_losses)
    seconds["world_model"] = info["seconds"]
    clean, info = X.train(config, dataset, False, out.with_name(out.stem + "_clean" + out.suffix), progress,
                          method.world_model_losses)
    seconds["world_model_clean"] = info["seconds"]
    return dataset, dual.eval(), clean.eval(), seconds


def run_seed(config: SurgicalConfig, dataset: SurgicalDataset, model: SurgicalWorldModel,
             chapter: SurgicalChapter, seed: int, record: bool = False, progress: bool = False,
             method: P.SurgicalMethod = P.SurgicalMethod()) -> dict:
    """Every policy trained and scored with policy seed ``seed`` (the imitation policy samples
    with it too). With ``record``, the result also holds each policy's :class:`Recording` and
    its chooser (``"recordings"``, ``"choosers"``)."""
    torch.manual_seed(seed)
    seeded = dataclasses.replace(config, evaluation=dataclasses.replace(config.evaluation, policy_seed=seed))
    settings = dataclasses.replace(chapter.compare, seed=seed)
    recordings: dict[str, Recording] = {}
    out = PC.compare_policies(seeded, dataset, model, settings, progress=progress, keep_policies=record,
                              wrap=recorder(recordings) if record else None, method=method)
    if record:
        out["recordings"] = recordings
    out["seed"] = seed
    return out


def _job(job: tuple) -> dict:
    """One seed's :func:`run_seed`, or (given the clean-only model) the dual-path ablation."""
    config, dataset, model, clean_model, chapter, seed, record, method = job
    if clean_model is not None:
        return dual_path_ablation(config, dataset, {"clean only": clean_model}, chapter.compare.offline_steps,
                                  seed, chapter.compare.map_stride, chapter.compare.map_components)
    return run_seed(config, dataset, model, chapter, seed, record=record, method=method)


def run_all(config: SurgicalConfig, dataset: SurgicalDataset, model: SurgicalWorldModel,
            clean_model: SurgicalWorldModel, chapter: SurgicalChapter, seeds: Sequence[int],
            progress: bool = True, method: P.SurgicalMethod = P.SurgicalMethod()) -> tuple[list[dict], dict]:
    """Every seed's :func:`run_seed` (the first recording its play) and the
    :func:`dual_path_ablation` at the first seed, ``chapter.workers`` at a time. Each run
    depends on its seed alone, so where it runs does not change its numbers."""
    jobs = [(config, dataset, model, None, chapter, seed, i == 0, method) for i, seed in enumerate(seeds)]
    jobs.append((config, dataset, model, clean_model, chapter, seeds[0], False, method))
    *runs, clean = run_jobs(_job, jobs, chapter.workers, desc="seeds and ablation", progress=progress)
    # the dual-path model's row is the first seed's own imitation and IQL: the same runs
    ablation = {"dual path": {n: {"map": runs[0]["map"][n]["1"]["ivt"],
                                  "true_return": runs[0]["truth"][n]["true_return"],
                                  "adverse_events": runs[0]["truth"][n]["adverse_events"]}
                              for n in ("imitation", "iql")}}
    ablation.update(clean)
    return runs, ablation


def dual_path_ablation(config: SurgicalConfig, dataset: SurgicalDataset, models: Mapping[str, SurgicalWorldModel],
                       steps: int, seed: int = 0, map_stride: int = 10,
                       components: Sequence[str] | None = None) -> dict[str, dict]:
    """For each world model (e.g. ``{"clean only": ...}``): the imitation policy and an IQL
    policy trained against it exactly as :func:`run_seed` trains them with ``seed``, scored by
    ivt mAP (+1 s, context actions as the recogniser saw them) and by their true outcome.
    Returns ``{model: {policy: {"map": ivt mAP, "true_return": ..., "adverse_events": ...}}}``."""
    ev = config.evaluation
    starts = [p.start(ev.start_frame) for p in dataset.test]
    out: dict[str, dict] = {}
    for label, model in models.items():
        data = P.offline_transitions(model, dataset.train)
        iql = IQL(data.s.shape[1], model.config.n_actions, IQLConfig(steps=steps, seed=seed))
        train_iql(iql, data.s, data.actions, data.reward, data.s_next, data.done)
        policies = {"imitation": (P.imitation_chooser(model), lambda start, m=model: ImitationPolicy(m, seed)),
                    "iql": (P.iql_chooser(model, iql), None)}
        out[label] = {}
        for name, (choose, factory) in policies.items():
            factory = factory or (lambda start, m=model, c=choose: P.LatentPolicy(m, c))
            table = PC.policy_map_table(model, dataset.test, choose, [1], ev.context_actions, map_stride,
                                        components)
            truth = E.simulator_outcomes({name: factory}, starts, config.simulator,
                                         model.config.reward_weights)[name]["mean"]
            out[label][name] = {"map": table[1]["ivt"], "true_return": truth["true_return"],
                                "adverse_events": truth["adverse_events"]}
    return out


# -- summaries ------------------------------------------------------------------------------------------


def per_seed(runs: Sequence[dict], metric: Callable[[dict, str], float], names: Sequence[str]) -> dict[str, np.ndarray]:
    """``{policy: (seeds,)}``: ``metric(run, policy)`` of every run."""
    return {n: np.array([metric(run, n) for run in runs], dtype=np.float64) for n in names}


def true_return(run: dict, name: str) -> float:
    return float(run["truth"][name]["true_return"])


def mean_table(runs: Sequence[dict], names: Sequence[str], horizons: Sequence[int]) -> dict[str, dict]:
    """Means over the seeds, per policy: ``map[k][component]`` in % and every truth metric."""
    out: dict[str, dict] = {}
    for n in names:
        maps = {}
        if n in runs[0]["map"]:  # policies left out of the mAP table have truth only
            maps = {str(k): {c: 100.0 * float(np.mean([run["map"][n][str(k)][c] for run in runs]))
                             for c in runs[0]["map"][n][str(k)]} for k in horizons}
        truth = {key: float(np.mean([run["truth"][n][key] for run in runs])) for key in runs[0]["truth"][n]}
        out[n] = {"map": maps, "truth": truth}
    return out


def ranking(scores: Mapping[str, float], higher_is_better: bool = True) -> list[str]:
    """The names ordered best first (ties keep the order of ``scores``)."""
    names = list(scores)
    return sorted(names, key=lambda n: -scores[n] if higher_is_better else scores[n])


def kendall_tau(first: Sequence[str], second: Sequence[str]) -> float:
    """Kendall's rank correlation of two orderings of the same names: 1 the same order, -1 the
    reverse, 0 unrelated (no ties)."""
    if sorted(first) != sorted(second) or len(set(first)) != len(first):
        raise ValueError(f"the rankings must order the same distinct names, got {first} and {second}")
    if len(first) < 2:
        raise ValueError("Kendall's tau needs at least two names")
    pos = {n: i for i, n in enumerate(second)}
    return float(kendalltau(range(len(first)), [pos[n] for n in first]).statistic)


def format_rank_table(by_map: Sequence[str], by_truth: Sequence[str]) -> str:
    """Markdown: the two rankings side by side, one row per rank."""
    return markdown_table({"rank": i + 1, "by ivt mAP (+1 s) against the expert": LABELS.get(a, a),
                           "by true return in the simulator": LABELS.get(b, b)}
                          for i, (a, b) in enumerate(zip(by_map, by_truth)))


def format_map_table(means: Mapping[str, dict], names: Sequence[str], horizons: Sequence[int],
                     current: Mapping[str, float] | None = None) -> str:
    """Markdown: DARIL's table in miniature, ivt mAP (%) per horizon and i, v, t at the first,
    each a mean over the seeds (already in %); ``current`` is the imitation baseline's
    recognition column."""
    return markdown_table(PC.map_rows({n: means[n]["map"] for n in names}, names, [str(k) for k in horizons],
                                      lambda n: LABELS.get(n, n),
                                      f"{100 * current['ivt']:.1f}" if current is not None else "-", scale=1.0))


def format_truth_table(means: Mapping[str, dict], names: Sequence[str]) -> str:
    """Markdown: the truth table, means over the seeds (the expert's row is its own play)."""
    return markdown_table(PC.truth_rows({n: means[n]["truth"] for n in names}, names, lambda n: LABELS.get(n, n)))


# -- figures ---------------------------------------------------------------------------------------------


def smooth(values: Sequence[float], window: int) -> tuple[np.ndarray, np.ndarray]:
    """``(index, mean)`` of consecutive windows of ``window`` values (the last partial one dropped)."""
    values = np.asarray(values, dtype=float)
    window = max(1, min(window, len(values)))
    usable = len(values) // window * window
    return np.arange(usable // window) * window + window / 2, values[:usable].reshape(-1, window).mean(1)


def plot_reward_curves(runs: Sequence[dict], names: Sequence[str] = ("ppo", "ppo_safe", "ppo_alt_weights"),
                       window: int = 20):
    """Imagined episode returns of each PPO run during training (one line per seed, smoothed
    over ``window`` episodes), and the Lagrange multiplier of the constrained runs."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
    for i, name in enumerate(names):
        for j, run in enumerate(runs):
            x, y = smooth(run["curves"][name]["episode_returns"], window)
            axes[0].plot(x, y, color=f"C{i}", alpha=0.8, lw=1.2, label=LABELS[name] if j == 0 else None)
    axes[0].set_xlabel("imagined episode")
    axes[0].set_ylabel("return the world model gives")
    axes[0].set_title("PPO in the world model: reward during training")
    axes[0].legend(fontsize=8)
    for j, run in enumerate(runs):
        axes[1].plot(run["curves"]["ppo_safe"]["lagrange"], color="C1", alpha=0.8, label=f"seed {run['seed']}")
    axes[1].set_xlabel("PPO update")
    axes[1].set_ylabel(r"Lagrange multiplier $\lambda$")
    axes[1].set_title("the risk constraint's price")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_action_distributions(distributions: Mapping[str, np.ndarray], top: int = 12):
    """Per phase (rows), the share of the ``top`` triplets most chosen overall (columns), one
    panel per policy."""
    names = list(distributions)
    stacked = np.nan_to_num(np.stack([distributions[n] for n in names]))
    order = np.argsort(-stacked.sum((0, 1)))[:top]
    fig, axes = plt.subplots(1, len(names), figsize=(2.6 * len(names) + 1, 4.2), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, name in zip(axes, names):
        image = ax.imshow(np.nan_to_num(distributions[name][:, order], nan=0.0), vmin=0, vmax=1,
                          cmap="viridis", aspect="auto")
        ax.set_title(LABELS.get(name, name), fontsize=9)
        ax.set_xticks(range(len(order)), [triplet_name(int(i)) for i in order], rotation=90, fontsize=6)
        ax.grid(False)
    axes[0].set_yticks(range(len(PHASES)), [p.replace("_", " ") for p in PHASES], fontsize=7)
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="share of the phase's labels")
    return fig


def plot_state_trajectories(projection: Projection, real: np.ndarray, imagined: np.ndarray,
                            policies: Mapping[str, np.ndarray], cloud: np.ndarray | None = None,
                            window: int = 10):
    """2-D projections of one test procedure's frames from the start: real (the expert),
    imagined by the world model under the expert's actions, and each policy's in the
    simulator, each as a running mean over ``window`` seconds (a frame carries noise that would
    hide the drift); ``cloud``: the training frames, grey, for orientation."""
    fig, ax = plt.subplots(figsize=(9, 5.2))
    if cloud is not None:
        xy = projection(cloud)
        ax.scatter(xy[:, 0], xy[:, 1], s=2, color="0.85", label="training frames")
    for label, frames, style in (("real (expert)", real, dict(color="k", lw=2.2)),
                                 ("imagined (expert's actions)", imagined, dict(color="k", ls="--", lw=1.5))):
        xy = projection(running_mean(frames, window))
        ax.plot(xy[:, 0], xy[:, 1], label=label, **style)
    for i, (name, frames) in enumerate(policies.items()):
        xy = projection(running_mean(frames, window))
        ax.plot(xy[:, 0], xy[:, 1], color=f"C{i}", lw=1.4, alpha=0.9, label=LABELS.get(name, name))
        ax.plot(xy[-1, 0], xy[-1, 1], "o", color=f"C{i}", ms=5)
    xy = projection(running_mean(real, window)[:1])
    ax.plot(xy[0, 0], xy[0, 1], "k*", ms=12, label="start")
    ax.set_xlabel("principal component 1")
    ax.set_ylabel("principal component 2")
    ax.set_title(f"running means over {window} s; a dot marks where each policy ended", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


def plot_rankings(map_scores: Mapping[str, float], truth_scores: Mapping[str, float]):
    """Each policy's ivt mAP against its true return (means over seeds), and the two rankings
    joined by lines: crossing lines are policies the two scores order differently."""
    names = list(map_scores)
    by_map, by_truth = ranking(map_scores), ranking(truth_scores)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.0))
    for i, n in enumerate(names):
        axes[0].scatter(map_scores[n], truth_scores[n], color=f"C{i}", s=40, label=LABELS.get(n, n))
        axes[1].plot([0, 1], [by_map.index(n), by_truth.index(n)], "-o", color=f"C{i}", lw=2)
    axes[0].set_xlabel("ivt mAP at +1 s against the expert (%)")
    axes[0].set_ylabel("true return in the simulator")
    axes[0].legend(fontsize=7)
    axes[1].set_xticks([0, 1], ["rank by mAP", "rank by true return"])
    axes[1].set_yticks(range(len(names)), [f"{i + 1}" for i in range(len(names))])
    axes[1].invert_yaxis()
    for side, order in ((0, by_map), (1, by_truth)):
        for r, n in enumerate(order):
            axes[1].annotate(LABELS.get(n, n), (side, r), xytext=(-8 if side == 0 else 8, 0),
                             textcoords="offset points", ha="right" if side == 0 else "left",
                             va="center", fontsize=8)
    axes[1].set_xlim(-0.8, 1.8)
    axes[1].grid(False)
    fig.tight_layout()
    return fig


def plot_outlook(outlooks: Mapping[str, Outlook], title: str = ""):
    """The explorer's figure: each policy's first labels (as text, above) and its cumulative
    true reward and true risk over the seconds that follow (below)."""
    names = list(outlooks)
    fig = plt.figure(figsize=(12, 3.2 + 0.28 * len(names)))
    grid = fig.add_gridspec(2, 2, height_ratios=[0.28 * len(names) + 0.3, 3.0])
    text = fig.add_subplot(grid[0, :])
    text.axis("off")
    for i, n in enumerate(names):
        labels = "; ".join(outlooks[n].labels) or "nothing"
        text.text(0.0, 1 - (i + 0.5) / len(names), f"{LABELS.get(n, n):<24} {labels}", va="center",
                  fontsize=8, family="monospace", color=f"C{i}", transform=text.transAxes)
    reward, risk = fig.add_subplot(grid[1, 0]), fig.add_subplot(grid[1, 1])
    for i, n in enumerate(names):
        o = outlooks[n]
        steps = np.arange(1, len(o.rewards) + 1)
        reward.plot(steps, np.cumsum(o.rewards), color=f"C{i}", marker="o", ms=3, label=LABELS.get(n, n))
        risk.plot(steps, o.risks, color=f"C{i}", marker="o", ms=3, label=f"{o.events} adverse events")
    reward.set_xlabel("seconds after the moment")
    reward.set_ylabel("cumulative true reward")
    risk.set_xlabel("seconds after the moment")
    risk.set_ylabel("true risk per second")
    reward.legend(fontsize=7)
    risk.legend(fontsize=7)
    text.set_title(title or "next labels", fontsize=10, loc="left")
    fig.tight_layout()
    return fig


# -- sentences built from the numbers ---------------------------------------------------------------


def difference_text(value: float, reference: float, what: str, digits: int = 1) -> str:
    """``"the true return rose from -20.0 to -12.5"`` (or fell, or stayed): ``what`` going
    from ``reference`` to ``value``, in words the numbers support."""
    a, b = round(reference, digits), round(value, digits)
    if a == b:
        return f"{what} stayed at {b:.{digits}f}"
    return f"{what} {'rose' if b > a else 'fell'} from {a:.{digits}f} to {b:.{digits}f}"


def change_text(events: Mapping[str, float], risk: Mapping[str, float]) -> str:
    """The safety ablation in words: per policy, how the constraint changed the adverse events
    per procedure and the accumulated true risk (constrained minus unconstrained)."""
    parts = []
    for name in events:
        e, r = events[name], risk[name]
        parts.append(f"{LABELS[name]} had {abs(e):.2f} {'fewer' if e < 0 else 'more'} adverse events per "
                     f"procedure and {abs(r):.1f} {'less' if r < 0 else 'more'} true risk"
                     if round(e, 2) != 0 else
                     f"{LABELS[name]} had as many adverse events and {abs(r):.1f} "
                     f"{'less' if r < 0 else 'more'} true risk")
    return "; ".join(parts)


def headline_text(reached: bool, best: str, best_return: float, imitation_return: float,
                  best_events: float, expert_events: float, safe: str, safe_return: float,
                  safe_events: float) -> str:
    """The headline in words: whether a planner or RL policy beat imitation on the truth while
    keeping adverse events at or below the surgeons', with the measured numbers."""
    head = (f"The best RL or planner policy, {best}, returned {best_return:.1f} against imitation's "
            f"{imitation_return:.1f}, with {best_events:.2f} adverse events per procedure against the "
            f"surgeons' {expert_events:.2f}")
    if reached:
        return head + ": the target, a policy that beats imitation on the truth as safely as the surgeons, is reached."
    beats = best_return > imitation_return
    why = ("it beat imitation, but with more adverse events than the surgeons" if beats
           else "no RL or planner policy beat imitation on the truth")
    return (head + f": the target is not reached ({why}). The best constrained policy, {safe}, "
            f"returned {safe_return:.1f} with {safe_events:.2f} adverse events.")
