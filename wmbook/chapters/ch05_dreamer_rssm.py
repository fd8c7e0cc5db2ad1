"""Chapter 5, Dreamer's RSSM: its budgets, its experiment harness and its figures.

A :class:`DreamerSpec` names one Dreamer run (seed, switches turned off); :func:`run_all`
executes a list of them with the book's job runner and returns plain :class:`DreamerRecord`
results. Chapter 3's DQN and Dyna-DQN runs are repeated here on the same seeds, under the same
evaluation protocol (greedy episodes from ``evaluation_seed(seed)``), so that the curves can be
drawn side by side. Every run depends on its spec and configs alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch

from wmbook.agents.dqn import DQNConfig
from wmbook.agents.dreamer import Dreamer, DreamerConfig, UpdateFn
from wmbook.agents.dreamer_trainer import train_dreamer
from wmbook.agents.dyna import DynaConfig, RunSpec, run_one as run_chapter3
from wmbook.runner import run_jobs
from wmbook.stats import aggregate, probability_of_improvement

# switch -> the setting that turns it off (each on by default in DreamerConfig)
ABLATIONS: dict[str, dict[str, object]] = {
    "discrete latents": {"discrete": False},
    "symlog": {"symlog_obs": False},
    "two-hot heads": {"twohot": False},
    "KL balance": {"kl_balance": False},
    "free bits": {"free_bits": 0.0},
    "return normalisation": {"return_norm": False},
    "lambda-returns": {"lambda_returns": False},
    "slow critic": {"slow_critic": False},
}


@dataclass(frozen=True)
class DreamerChapter:
    """Chapter 5, Dreamer on CartPole-v1 from vector observations."""

    agent: DreamerConfig               # every Dreamer run (seed set per run)
    seeds: tuple[int, ...]             # the reported runs (settings were tuned on seeds >= 100)
    ablations: tuple[str, ...]         # keys of ABLATIONS switched off one at a time, same seeds
    ablation_steps: int                # real-step budget of each ablation run (compute is the limit)
    dqn: DQNConfig                     # Chapter 3's DQN half and evaluation protocol
    dyna: DynaConfig
    dyna_k: int                        # imagined updates per real step of the Dyna-DQN runs
    open_loop_context: int             # observed steps before the prior imagines alone
    open_loop_horizon: int
    workers: int
    check_headline: bool
    bootstrap_reps: int = 2_000        # resamples of the bootstrap intervals
    min_solved: int = 0                # the headline: seeds that must solve within the budget


PROFILES = {
    "full": DreamerChapter(
        agent=DreamerConfig(total_steps=20_000, prefill=1_000, replay_ratio=0.25, seq_len=16,
                            imagine_starts=128, bins=41, eval_every=1_000, stop_when_solved=True),
        seeds=(0, 1, 2),
        ablations=tuple(ABLATIONS),
        ablation_steps=2_000,
        dqn=DQNConfig(total_steps=7_000, eval_every=500),
        dyna=DynaConfig(), dyna_k=5,
        open_loop_context=5, open_loop_horizon=50,
        workers=2, check_headline=True, min_solved=2),
    "ci": DreamerChapter(
        agent=DreamerConfig(total_steps=600, prefill=200, replay_ratio=0.1, batch_size=4, seq_len=8,
                            deter=16, stoch=4, classes=4, hidden=16, ac_hidden=16, horizon=5,
                            imagine_starts=16, bins=41, eval_every=200, eval_episodes=3),
        seeds=(0, 1),
        ablations=("lambda-returns",),
        ablation_steps=600,
        dqn=DQNConfig(total_steps=600, learning_starts=200, eval_every=200, eval_episodes=3,
                      exploration_steps=300, hidden_size=32, batch_size=32),
        dyna=DynaConfig(model_every=200, model_updates=10, model_hidden_size=32, model_layers=2), dyna_k=2,
        open_loop_context=3, open_loop_horizon=12,
        workers=2, check_headline=False, bootstrap_reps=200),
}


@dataclass(frozen=True)
class DreamerSpec:
    """One Dreamer run: a seed, the switches turned off, and its real-step budget."""

    label: str
    seed: int
    off: tuple[str, ...] = ()
    total_steps: int | None = None     # None: the chapter's agent budget
    keep_weights: bool = False         # return the trained weights (for the open-loop figures)


@dataclass
class DreamerRecord:
    """What a Dreamer run produced, as plain values."""

    spec: DreamerSpec
    eval_steps: list[int]
    eval_returns: list[float]
    solved_at: int | None
    env_steps: int
    gradient_updates: int
    imagined_steps: int
    seconds: float
    history: dict[str, list[float]] = field(default_factory=dict)
    weights: dict | None = None


def spec_config(spec: DreamerSpec, agent: DreamerConfig) -> DreamerConfig:
    """The run's config: the chapter's, with the spec's seed, budget and switches off."""
    changes: dict[str, object] = {"seed": spec.seed}
    if spec.total_steps is not None:
        changes["total_steps"] = spec.total_steps
    for name in spec.off:
        if name not in ABLATIONS:
            raise KeyError(f"unknown switch {name!r}; known: {', '.join(ABLATIONS)}")
        changes.update(ABLATIONS[name])
    return dataclasses.replace(agent, **changes)


def run_dreamer(spec: DreamerSpec, agent: DreamerConfig, update_fn: UpdateFn | None = None) -> DreamerRecord:
    """Train one Dreamer run on the CPU (the job runner sets its torch threads); ``update_fn``:
    one update of the agent (:func:`~wmbook.agents.dreamer.dreamer_update` by default)."""
    result = train_dreamer(spec_config(spec, agent), progress=False, update_fn=update_fn)
    weights = {k: v.cpu() for k, v in result.agent.state_dict().items()} if spec.keep_weights else None
    return DreamerRecord(spec, result.eval_steps, result.eval_returns, result.solved_at, result.env_steps,
                         result.gradient_updates, result.imagined_steps, result.seconds,
                         result.history, weights)


def _run(job):
    kind, spec, configs = job
    if kind == "dreamer":
        return run_dreamer(spec, *configs)
    return run_chapter3(spec, *configs)


def run_all(dreamer_specs: list[DreamerSpec], baseline_specs: list[RunSpec], config: DreamerChapter,
            progress: bool = True, update_fn: UpdateFn | None = None) -> tuple[list[DreamerRecord], list]:
    """Run every spec, ``config.workers`` at a time (in this process when 1); return the Dreamer
    records and Chapter 3's records, each in the order of their specs. ``update_fn``: Dreamer's
    update (the chapter passes the copy defined on its page, so that an edit reaches every run)."""
    jobs = [("dreamer", spec, (config.agent, update_fn)) for spec in dreamer_specs]
    jobs += [("chapter3", spec, (config.dqn, config.dyna)) for spec in baseline_specs]
    # longest first, so two workers finish together
    order = sorted(range(len(jobs)), key=lambda i: jobs[i][0] != "dreamer")
    done = dict(zip(order, run_jobs(_run, [jobs[i] for i in order], config.workers, progress=progress)))
    records = [done[i] for i in range(len(jobs))]
    return records[:len(dreamer_specs)], records[len(dreamer_specs):]


def chapter_specs(config: DreamerChapter) -> tuple[list[DreamerSpec], list[RunSpec]]:
    """The chapter's runs: Dreamer per seed (the first keeps its weights), each ablation per
    seed, and Chapter 3's DQN and Dyna-DQN per seed."""
    main = [DreamerSpec("Dreamer", seed, keep_weights=(i == 0)) for i, seed in enumerate(config.seeds)]
    ablations = [DreamerSpec(f"no {name}", seed, (name,), config.ablation_steps)
                 for name in config.ablations for seed in config.seeds]
    baselines = [RunSpec("DQN", seed) for seed in config.seeds]
    baselines += [RunSpec(f"Dyna-DQN (K={config.dyna_k})", seed, config.dyna_k) for seed in config.seeds]
    return main + ablations, baselines


def load_agent(record: DreamerRecord, agent: DreamerConfig) -> Dreamer:
    """The trained agent of a record that kept its weights."""
    if record.weights is None:
        raise ValueError(f"run {record.spec} did not keep its weights (keep_weights=False)")
    env = gym.make(agent.env_id)
    model = Dreamer(env.observation_space.shape[0], int(env.action_space.n), spec_config(record.spec, agent))
    model.load_state_dict(record.weights)
    env.close()
    return model


# -- open-loop prediction ---------------------------------------------------------------------


@dataclass
class OpenLoop:
    """A real episode and the prior's open-loop imagination of it.

    ``real`` ``(T + 1, obs_dim)``: the observations; ``actions`` ``(T,)``; ``imagined``
    ``(H + 1, obs_dim)``: decoded states from step ``context`` on (row 0 is the posterior at
    ``context``), ``continuation`` ``(H,)``: the predicted probability of going on at each
    imagined step; ``terminated_at``: the real step at which the episode ended (or ``T``).
    """

    real: np.ndarray
    actions: np.ndarray
    imagined: np.ndarray
    continuation: np.ndarray
    context: int
    terminated_at: int


@torch.no_grad()
def real_episode(agent: Dreamer, seed: int, steps: int, random_fraction: float = 0.0) -> tuple[np.ndarray, np.ndarray, int]:
    """Play up to ``steps`` steps of CartPole with the greedy agent, each action replaced by a
    random one with probability ``random_fraction`` (so that the pole does fall). Returns the
    observations ``(n + 1, 4)``, the actions ``(n,)`` and whether it terminated at step ``n``."""
    env = gym.make(agent.config.env_id)
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    observations, actions = [obs], []
    latent, action, terminated = None, None, False
    first = torch.ones(1, dtype=torch.bool)
    for _ in range(steps):
        greedy, latent = agent.act(latent, action, torch.as_tensor(obs, dtype=torch.float32)[None], first, greedy=True)
        first = torch.zeros(1, dtype=torch.bool)
        chosen = int(rng.integers(2)) if rng.random() < random_fraction else int(greedy[0])
        action = torch.tensor([chosen])
        obs, _, terminated, truncated, _ = env.step(chosen)
        observations.append(obs)
        actions.append(chosen)
        if terminated or truncated:
            break
    env.close()
    return np.asarray(observations, np.float32), np.asarray(actions), int(terminated)


@torch.no_grad()
def open_loop(agent: Dreamer, observations: np.ndarray, actions: np.ndarray, context: int,
              horizon: int) -> OpenLoop:
    """Filter the first ``context + 1`` observations, then let the prior imagine ``horizon``
    steps (at most to the episode's end) under the real actions, with the latent's mode
    (no sampling), and decode what it imagines."""
    wm = agent.world_model
    n = len(actions)
    if not 0 <= context < n:
        raise ValueError(f"context {context} must be below the episode's {n} steps")
    horizon = min(horizon, n - context)
    latent, action = wm.initial_state(1), None
    for t in range(context + 1):
        first = torch.tensor([t == 0])
        latent = wm.observe(latent, action, torch.as_tensor(observations[t])[None], first, sample=False)
        action = torch.tensor([int(actions[t])]) if t < n else None
    imagined, continuation = [wm.decode(latent)[0].numpy()], []
    for t in range(context, context + horizon):
        step = wm.imagine_step(latent, torch.tensor([int(actions[t])]), sample=False)
        latent = step.latent
        imagined.append(wm.decode(latent)[0].numpy())
        continuation.append(float(step.continuation[0]))
    return OpenLoop(observations, actions, np.asarray(imagined), np.asarray(continuation), context, n)


# -- summaries --------------------------------------------------------------------------------


def curve_matrix(steps_list: list[list[int]], returns_list: list[list[float]], grid: np.ndarray) -> np.ndarray:
    """Returns on a common grid of real steps ``(runs, len(grid))``; a run that stopped when it
    solved keeps its last evaluated return (NaN before its first evaluation)."""
    out = np.full((len(steps_list), len(grid)), np.nan)
    for i, (steps, returns) in enumerate(zip(steps_list, returns_list)):
        for j, g in enumerate(grid):
            known = [r for s, r in zip(steps, returns) if s <= g]
            if known:
                out[i, j] = known[-1]
    return out


def ablation_table(records: list[DreamerRecord], budget: int) -> list[dict[str, object]]:
    """Per label: steps to solve per seed (None: not solved within ``budget``; a run solved
    later counts as unsolved, so that rows with different budgets compare fairly), the median
    (unsolved counted as the budget), how many seeds solved, and the greedy return at the last
    evaluation within the budget per seed (``returns``) and its mean (``mean_return``)."""
    rows: dict[str, dict[str, object]] = {}
    for record in records:
        row = rows.setdefault(record.spec.label, {"label": record.spec.label, "solved_at": []})
        solved = record.solved_at if record.solved_at is not None and record.solved_at <= budget else None
        row["solved_at"].append(solved)
        within = [r for s, r in zip(record.eval_steps, record.eval_returns) if s <= budget]
        row.setdefault("returns", []).append(within[-1] if within else float("nan"))
    for row in rows.values():
        row["mean_return"] = float(np.mean(row["returns"]))
        steps = [budget if s is None else s for s in row["solved_at"]]
        row["median"] = float(np.median(steps))
        row["solved"] = sum(s is not None for s in row["solved_at"])
    return list(rows.values())


def ablation_statistics(table: list[dict[str, object]], reps: int, seed: int = 0) -> dict[str, list[str]]:
    """Adds rliable statistics to the rows of :func:`ablation_table` (the full agent first), in
    place: ``iqm``, the IQM of the return at the budget with its bootstrap interval, and on every
    other row ``p_full_better``, the probability that a run of the full agent ends the budget
    with a higher return than a run with that piece switched off. Returns the labels grouped by
    what the intervals establish: ``hurt`` (switching the piece off lowered the return: the
    interval lies above one half), ``helped`` (below one half) and ``unresolved``."""
    if len(table) < 2:
        raise ValueError("the ablation table needs the full agent and at least one switch")
    full = table[0]
    summaries = aggregate({row["label"]: row["returns"] for row in table}, reps=reps, seed=seed)
    groups: dict[str, list[str]] = {"hurt": [], "helped": [], "unresolved": []}
    for row in table:
        row["iqm"] = summaries[row["label"]].iqm
        if row is full:
            continue
        p = probability_of_improvement(full["returns"], row["returns"], reps=reps, seed=seed)
        row["p_full_better"] = p
        groups["hurt" if p.low > 0.5 else "helped" if p.high < 0.5 else "unresolved"].append(row["label"])
    return groups


def smooth(values: list[float], points: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """A loss history thinned to about ``points`` means of consecutive windows: ``(index, mean)``."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return np.zeros(0), np.zeros(0)
    width = max(1, len(values) // points)
    usable = len(values) // width * width
    means = values[:usable].reshape(-1, width).mean(1)
    return np.arange(len(means)) * width + width / 2, means
