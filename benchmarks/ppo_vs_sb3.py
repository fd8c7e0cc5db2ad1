"""Our PPO against stable-baselines3's PPO, both with rl-baselines3-zoo's CartPole-v1 settings.

Both learn CartPole-v1 from its state vector on the same seeds under Chapter 3's evaluation
protocol: every ``--eval-every`` real steps the greedy policy plays 10 episodes from fixed start
states (:func:`wmbook.evaluation.evaluate` from
:func:`wmbook.agents.dqn.evaluation_seed`); a run has solved CartPole at the first evaluation
with a mean return of at least 475. Runs go on to the full budget, and the last evaluation is
the final return.

Across seeds each method is summarised by ``wmbook.stats`` (rliable): interquartile mean and
median of the real steps to solve (an unsolved run counts as the budget, a censored value) and
of the final return, with 95 % stratified-bootstrap confidence intervals, and the wall time of a
run. The pieces shared with the DQN benchmark (per-seed table, interval statements, provenance)
come from ``benchmarks/dyna_vs_sb3.py``.

    python benchmarks/ppo_vs_sb3.py                       # 10 seeds, writes the book's table
    python benchmarks/ppo_vs_sb3.py --seeds 0 1 --out -   # a quick look

rl-baselines3-zoo's ``hyperparams/ppo.yml`` entry for CartPole-v1 (typed in here, not fetched):
8 environments, 1e5 timesteps, ``MlpPolicy``, ``n_steps`` 32, ``batch_size`` 256,
``gae_lambda`` 0.8, ``gamma`` 0.98, ``n_epochs`` 20, ``ent_coef`` 0.0, ``learning_rate``
``lin_0.001`` and ``clip_range`` ``lin_0.2`` (both annealed linearly to zero).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dyna_vs_sb3 import provenance, wall_time_line, write_report  # noqa: E402

from wmbook.runner import run_jobs  # noqa: E402
from wmbook.stats import REPS, aggregate, probability_of_improvement, steps_to_solve, summary_table  # noqa: E402

# rl-baselines3-zoo, hyperparams/ppo.yml, CartPole-v1
ZOO_CARTPOLE_PPO = dict(n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20, ent_coef=0.0)
ZOO_N_ENVS = 8
ZOO_LEARNING_RATE = 1e-3  # lin_1e-3
ZOO_CLIP_RANGE = 0.2      # lin_0.2
ZOO_TIMESTEPS = 100_000


@dataclasses.dataclass
class Outcome:
    method: str
    seed: int
    solved_at: int | None
    final_return: float
    seconds: float


def run_wmbook(method: str, seed: int, budget: int, eval_every: int) -> Outcome:
    import torch

    from wmbook.agents.ppo import PPOConfig, train_ppo

    torch.set_num_threads(1)
    config = PPOConfig(total_timesteps=budget, num_envs=ZOO_N_ENVS, learning_rate=ZOO_LEARNING_RATE,
                       clip_range=ZOO_CLIP_RANGE, eval_every=eval_every, seed=seed, **ZOO_CARTPOLE_PPO)
    result = train_ppo(config, progress=False)
    return Outcome(method, seed, result.solved_at, result.eval_returns[-1], result.seconds)


def run_sb3(method: str, seed: int, budget: int, eval_every: int) -> Outcome:
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.logger import Logger
    from stable_baselines3.common.env_util import make_vec_env

    from wmbook.agents import DQNConfig, evaluation_seed
    from wmbook.evaluation import evaluate, solved_return, stateless

    protocol = DQNConfig()  # Chapter 3's evaluation protocol
    torch.set_num_threads(1)

    class SameProtocol(BaseCallback):
        """Chapter 3's evaluation every `eval_every` real steps (all environments counted)."""

        solved_at: int | None = None
        last: float = float("nan")

        def _on_step(self) -> bool:
            if self.num_timesteps % eval_every:
                return True
            returns = evaluate(stateless(lambda obs: self.model.predict(obs, deterministic=True)[0]),
                               protocol.env_id, protocol.eval_episodes, evaluation_seed(seed))
            self.last = float(returns.mean())
            if self.solved_at is None and self.last >= solved_return(protocol.env_id, protocol.solved_return):
                self.solved_at = self.num_timesteps
            return True

    def linear(initial: float):
        return lambda progress_remaining: progress_remaining * initial

    started = time.perf_counter()
    env = make_vec_env("CartPole-v1", n_envs=ZOO_N_ENVS, seed=seed)
    model = PPO("MlpPolicy", env, seed=seed, device="cpu", learning_rate=linear(ZOO_LEARNING_RATE),
                clip_range=linear(ZOO_CLIP_RANGE), **ZOO_CARTPOLE_PPO)
    model.set_logger(Logger(folder=None, output_formats=[]))  # no log folder in the system's temporary folder
    callback = SameProtocol()
    model.learn(total_timesteps=budget, callback=callback)
    return Outcome(method, seed, callback.solved_at, callback.last, time.perf_counter() - started)


def per_seed_table(outcomes: list[Outcome], methods: list[str], budget: int) -> str:
    lines = ["| method | real steps to first solve, per seed | final return, per seed | median wall time per run |",
             "|---|---|---|---|"]
    for method in methods:
        runs = [o for o in outcomes if o.method == method]
        solved = ", ".join(f"{o.solved_at:,}" if o.solved_at else f"> {budget:,}" for o in runs)
        finals = ", ".join(f"{o.final_return:.0f}" for o in runs)
        lines.append(f"| {method} | {solved} | {finals} | {np.median([o.seconds for o in runs]):.0f} s |")
    return "\n".join(lines)


def compare(p, better: str, other: str, relation: str) -> str:
    """What an interval of P(`better` beats `other`) establishes."""
    if p.low > 0.5:
        return f"{better} {relation} {other} on these seeds"
    if p.high < 0.5:
        return f"{other} {relation} {better} on these seeds"
    return "the interval contains 0.5: these seeds do not establish which of the two " + relation.removesuffix(" than")


def job(args: tuple) -> Outcome:
    kind, *rest = args
    return run_sb3(*rest) if kind == "sb3" else run_wmbook(*rest)


def statistics(outcomes: list[Outcome], methods: list[str], budget: int, reps: int) -> str:
    """IQM and median of steps to solve and of final return, and P(ours beats theirs) on each."""
    solved_at = {m: [o.solved_at for o in outcomes if o.method == m] for m in methods}
    steps = {m: steps_to_solve(solved_at[m], budget) for m in methods}
    finals = {m: np.array([o.final_return for o in outcomes if o.method == m]) for m in methods}
    walls = {m: np.array([o.seconds for o in outcomes if o.method == m]) for m in methods}
    step_table = summary_table(aggregate(steps, reps=reps, seed=0), metric="steps to solve")
    final_table = summary_table(aggregate(finals, reps=reps, seed=0), metric="final return", digits=1)
    wall_table = summary_table(aggregate(walls, reps=reps, seed=0), metric="wall time (s)", digits=1)
    ours, theirs = methods
    p_steps = probability_of_improvement(steps[ours], steps[theirs], lower_is_better=True, reps=reps, seed=0)
    p_final = probability_of_improvement(finals[ours], finals[theirs], reps=reps, seed=0)
    bullets = [
        f"Probability that a run of {ours} needs fewer real steps to solve than a run of {theirs} "
        f"(ties count half): {p_steps.format(digits=2)}; {compare(p_steps, ours, theirs, 'needs fewer steps than')}.",
        f"Probability that a run of {ours} ends with a higher final return than a run of {theirs}: "
        f"{p_final.format(digits=2)}; {compare(p_final, ours, theirs, 'ends higher than')}.",
        "Unsolved runs (counted as the budget): " + ", ".join(f"{m}: {solved_at[m].count(None)}" for m in methods) + ".",
    ]
    return "\n\n".join([
        f"Across seeds, with 95 % stratified-bootstrap confidence intervals (rliable, {reps:,} resamples, "
        f"seed 0). A run that did not solve counts as the budget of {budget:,} steps, so the IQM and median of "
        f"a method with unsolved runs are lower bounds.",
        step_table, final_table, wall_table, "\n".join(f"- {b}" for b in bullets)])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--budget", type=int, default=ZOO_TIMESTEPS, help="real steps per run")
    parser.add_argument("--eval-every", type=int, default=1_000,
                        help="a multiple of 8, the environments (Chapter 3 evaluates every 500 steps; 1,000 is the nearest multiple of 8 that divides the budget into whole evaluations)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--out", default="book/benchmarks/ppo_vs_sb3.md", help="'-' prints only")
    parser.add_argument("--reps", type=int, default=REPS, help="bootstrap resamples per interval")
    args = parser.parse_args(argv)
    if args.eval_every % ZOO_N_ENVS:
        parser.error(f"--eval-every must be a multiple of {ZOO_N_ENVS}, the number of environments")

    methods = ["PPO (wmbook)", "PPO (stable-baselines3, rl-zoo settings)"]
    jobs = []
    for seed in args.seeds:
        jobs += [("wmbook", methods[0], seed, args.budget, args.eval_every),
                 ("sb3", methods[1], seed, args.budget, args.eval_every)]
    started = time.perf_counter()
    outcomes = run_jobs(job, jobs, args.workers)
    for outcome in outcomes:
        solved = f"{outcome.solved_at:,}" if outcome.solved_at else "not solved"
        print(f"{outcome.method:>42} seed {outcome.seed}: {solved}, final {outcome.final_return:.1f} "
              f"({outcome.seconds:.0f} s)", flush=True)
    parts = [per_seed_table(outcomes, methods, args.budget)]
    finals = "\n".join(f"- final return per seed, {m}: " + ", ".join(
        f"{o.final_return:.1f}" for o in outcomes if o.method == m) for m in methods)
    parts.append(finals)
    if len(args.seeds) >= 2:
        parts.append(statistics(outcomes, methods, args.budget, args.reps))
    else:
        parts.append("Confidence intervals need at least 2 seeds: rerun with more `--seeds`.")
    write_report(parts + [provenance(argv, args.workers).replace("dyna_vs_sb3.py", "ppo_vs_sb3.py"),
                          wall_time_line(outcomes, 0, started)], args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
