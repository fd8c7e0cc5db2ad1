"""Real steps to solve CartPole: our DQN, our Dyna-DQN and stable-baselines3's tuned DQN.

Every method runs on the same seeds under the same evaluation protocol as Chapter 3: every
``--eval-every`` real steps, the greedy policy plays 10 episodes from fixed start states; a run
has solved CartPole at the first evaluation with a mean return of at least 475, and stops
there. stable-baselines3's DQN uses rl-baselines3-zoo's CartPole-v1 hyperparameters.

Across seeds, each method is summarised by ``wmbook.stats`` (rliable): interquartile mean and
median of the real steps to solve with 95 % stratified-bootstrap confidence intervals, and the
probability that Dyna-DQN needs fewer steps than each DQN. A run that never solves counts as
the budget, a censored value that favours the unsolved method.

    python benchmarks/dyna_vs_sb3.py                       # 5 seeds, writes the book's table
    python benchmarks/dyna_vs_sb3.py --seeds 0 1 --budget 20000 --out -   # a quick look

The tables go to ``book/benchmark_results.md`` (shown by the book's appendix page), with the
command, versions, machine and date that produced it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib.metadata
import multiprocessing
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from wmbook.stats import (REPS, Interval, Summary, aggregate, probability_of_improvement, steps_to_solve,
                          summary_table)

# rl-baselines3-zoo, hyperparams/dqn.yml, CartPole-v1 ("almost tuned"); n_timesteps 5e4
ZOO_CARTPOLE_DQN = dict(
    learning_rate=2.3e-3, batch_size=64, buffer_size=100_000, learning_starts=1_000, gamma=0.99,
    target_update_interval=10, train_freq=256, gradient_steps=128, exploration_fraction=0.16,
    exploration_final_eps=0.04, policy_kwargs=dict(net_arch=[256, 256]),
)
ZOO_TIMESTEPS = 50_000


@dataclasses.dataclass
class Outcome:
    method: str
    seed: int
    solved_at: int | None
    seconds: float


def run_wmbook(method: str, seed: int, imagined_updates: int, budget: int, eval_every: int) -> Outcome:
    import torch

    from wmbook.agents import DQNConfig, DynaConfig, train_dqn, train_dyna_dqn

    torch.set_num_threads(1)
    config = DQNConfig(total_steps=budget, eval_every=eval_every, stop_when_solved=True, seed=seed)
    if imagined_updates == 0:
        result = train_dqn(config, progress=False)
    else:
        result, _ = train_dyna_dqn(config, DynaConfig(imagined_updates=imagined_updates), progress=False)
    return Outcome(method, seed, result.solved_at, result.seconds)


def run_sb3(method: str, seed: int, budget: int, eval_every: int) -> Outcome:
    import torch
    from stable_baselines3 import DQN
    from stable_baselines3.common.callbacks import BaseCallback

    from wmbook.agents import DQNConfig, evaluate_greedy, evaluation_seed
    from wmbook.envs import make_env

    protocol = DQNConfig()  # Chapter 3's evaluation protocol, as our runs use it

    torch.set_num_threads(1)

    class SameProtocol(BaseCallback):
        """Chapter 3's evaluation, every `eval_every` real steps; stops the run once solved."""

        solved_at: int | None = None

        def _on_step(self) -> bool:
            if self.num_timesteps % eval_every:
                return True
            returns = evaluate_greedy(lambda obs: self.model.predict(obs, deterministic=True)[0],
                                      protocol.env_id, protocol.eval_episodes, evaluation_seed(seed))
            if returns.mean() >= protocol.solved_return:
                self.solved_at = self.num_timesteps
                return False
            return True

    started = time.perf_counter()
    model = DQN("MlpPolicy", make_env(protocol.env_id), seed=seed, device="cpu", **ZOO_CARTPOLE_DQN)
    callback = SameProtocol()
    model.learn(total_timesteps=budget, callback=callback)
    return Outcome(method, seed, callback.solved_at, time.perf_counter() - started)


def job(args: tuple) -> Outcome:
    kind, *rest = args
    return run_sb3(*rest) if kind == "sb3" else run_wmbook(*rest)


def median_steps(outcomes: list[Outcome]) -> float:
    """The median run's real steps to solve; infinite when that run did not solve."""
    return float(np.median([o.solved_at if o.solved_at is not None else np.inf for o in outcomes]))


def per_seed_table(outcomes: list[Outcome], methods: list[str], budget: int) -> str:
    lines = ["| method | real steps to solve, per seed | median wall time per run |", "|---|---|---|"]
    for method in methods:
        runs = [o for o in outcomes if o.method == method]
        per_seed = ", ".join(f"{o.solved_at:,}" if o.solved_at else f"> {budget:,}" for o in runs)
        wall = np.median([o.seconds for o in runs])
        lines.append(f"| {method} | {per_seed} | {wall:.0f} s |")
    return "\n".join(lines)


def compare(p: Interval, better: str, other: str) -> str:
    """What an interval of P(`better` needs fewer steps than `other`) establishes."""
    if p.low > 0.5:
        return f"{better} needs fewer steps than {other} on these seeds"
    if p.high < 0.5:
        return f"{better} needs more steps than {other} on these seeds"
    return "the interval contains 0.5: these seeds do not establish which of the two needs fewer steps"


def statistics(outcomes: list[Outcome], methods: list[str], budget: int,
               reps: int) -> tuple[str, dict[str, Summary]]:
    """IQM and median steps to solve with 95 % CIs, and Dyna-DQN's probability of improvement."""
    solved_at = {m: [o.solved_at for o in outcomes if o.method == m] for m in methods}
    steps = {m: steps_to_solve(solved_at[m], budget) for m in methods}
    summaries = aggregate(steps, reps=reps, seed=0)
    table = summary_table(summaries, metric="steps").splitlines()
    table[0] += " unsolved runs |"
    table[1] += "---|"
    for row, method in enumerate(methods, start=2):
        table[row] += f" {solved_at[method].count(None)} |"

    # rank on the IQMs as printed, so that methods shown with the same number tie in the text too
    shown = {m: round(summaries[m].iqm.estimate) for m in methods}
    ranks = [[m for m in methods if shown[m] == value] for value in sorted(set(shown.values()))]
    bullets = ["Fewest real steps to solve by IQM: " + ", then ".join(
        " and ".join(group) + f" with {shown[group[0]]:,}" for group in ranks) + "."]
    dyna = methods[1]
    for other in (methods[2], methods[0]):
        p = probability_of_improvement(steps[dyna], steps[other], lower_is_better=True, reps=reps, seed=0)
        bullets.append(f"Probability that a {dyna} run needs fewer real steps than a {other} run "
                       f"(ties count half): {p.format(digits=2)}; {compare(p, dyna, other)}.")
    text = "\n\n".join([
        f"Across seeds, with 95 % stratified-bootstrap confidence intervals (rliable, {reps:,} "
        f"resamples, seed 0). A run that did not solve counts as the budget of {budget:,} steps, "
        f"so for a method with unsolved runs the IQM and median are lower bounds:",
        "\n".join(table),
        "\n".join(f"- {b}" for b in bullets),
    ])
    return text, summaries


def verdict(outcomes: list[Outcome], methods: list[str], budget: int,
            summaries: dict[str, Summary]) -> list[str]:
    """The two targets set for Dyna-DQN, judged on medians; an unsolved median run is beyond the budget."""
    medians = {m: median_steps([o for o in outcomes if o.method == m]) for m in methods}
    dyna, sb3 = medians[methods[1]], medians[methods[2]]
    if not np.isfinite(dyna):
        return [f"Dyna-DQN's median run did not solve within {budget:,} steps (target: at most 10,000) "
                f"- not met.", "Ratio to stable-baselines3's median (target: at most 1/3) - not met."]
    median = summaries[methods[1]].median if summaries else None
    ci = f", 95 % CI [{median.low:,.0f}, {median.high:,.0f}]" if median else ""
    lines = [f"Dyna-DQN's median steps to solve: {dyna:,.0f}{ci} (target: at most 10,000) - "
             f"{'met' if dyna <= 10_000 else 'not met'}."]
    if np.isfinite(sb3):
        lines.append(f"Ratio to stable-baselines3's median: {dyna / sb3:.2f} (target: at most 1/3) - "
                     f"{'met' if dyna <= sb3 / 3 else 'not met'}.")
    else:
        lines.append(f"stable-baselines3's median run did not solve within {budget:,} steps, so the ratio "
                     f"is below {dyna / budget:.2f} (target: at most 1/3) - "
                     f"{'met' if dyna <= budget / 3 else 'undecided'}.")
    return lines


def provenance(argv: list[str], workers: int) -> str:
    import gymnasium
    import stable_baselines3
    import torch

    import wmbook
    from wmbook.device import cpu_model

    cpu = cpu_model()
    return "\n".join([
        f"- command: `{' '.join(['python benchmarks/dyna_vs_sb3.py', *argv])}`",
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {platform.system()} {platform.machine()}, {os.cpu_count()} cores ({cpu}), "
        f"{workers} runs side by side, one torch thread each",
        f"- versions: wmbook {wmbook.__version__}, torch {torch.__version__}, gymnasium "
        f"{gymnasium.__version__}, stable-baselines3 {stable_baselines3.__version__}, rliable "
        f"{importlib.metadata.version('rliable')}, Python {platform.python_version()}",
    ])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--budget", type=int, default=ZOO_TIMESTEPS, help="real steps per run at most")
    parser.add_argument("--k", type=int, default=5, help="Dyna's imagined updates per real step")
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--out", default="book/benchmark_results.md", help="'-' prints only")
    parser.add_argument("--reps", type=int, default=REPS, help="bootstrap resamples per interval")
    args = parser.parse_args(argv)

    methods = ["DQN (wmbook)", f"Dyna-DQN, K={args.k} (wmbook)", "DQN (stable-baselines3, rl-zoo settings)"]
    jobs = []
    for seed in args.seeds:
        jobs += [("wmbook", methods[0], seed, 0, args.budget, args.eval_every),
                 ("wmbook", methods[1], seed, args.k, args.budget, args.eval_every),
                 ("sb3", methods[2], seed, args.budget, args.eval_every)]
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if args.workers > 1:
            pool = stack.enter_context(ProcessPoolExecutor(
                max_workers=args.workers, mp_context=multiprocessing.get_context("spawn")))
            results = pool.map(job, jobs)
        else:
            results = map(job, jobs)
        outcomes = []
        for outcome in results:
            solved = f"{outcome.solved_at:,}" if outcome.solved_at else "not solved"
            print(f"{outcome.method:>42} seed {outcome.seed}: {solved} ({outcome.seconds:.0f} s)",
                  flush=True)
            outcomes.append(outcome)
    parts = [per_seed_table(outcomes, methods, args.budget)]
    summaries = {}
    if len(args.seeds) >= 2:
        stats_started = time.perf_counter()
        text, summaries = statistics(outcomes, methods, args.budget, args.reps)
        parts.append(text)
        print(f"statistics across seeds: {time.perf_counter() - stats_started:.0f} s", flush=True)
    else:
        parts.append("Confidence intervals need at least 2 seeds: rerun with more `--seeds`.")
    parts += ["\n".join(f"- {line}" for line in verdict(outcomes, methods, args.budget, summaries)),
              provenance(argv, args.workers), f"Total wall time: {time.perf_counter() - started:.0f} s."]
    report = "\n\n".join(parts)
    print("\n" + report)
    if args.out != "-":
        Path(args.out).write_text(report + "\n")
        print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
