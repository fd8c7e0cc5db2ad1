"""Dyna-DQN against DQN, like for like: ours, ours at Dyna's replay ratio, and stable-baselines3's.

Five methods run on the same seeds under Chapter 3's evaluation protocol: every
``--eval-every`` real steps the greedy policy plays 10 episodes from start states fixed per
seed. Every run goes on to its full budget, so the tables report both the real steps to the
first solve (the first evaluation with a mean return of at least 475) and where the run ended:

- ``DQN (wmbook)``: our DQN, one update per real step (Chapter 3's baseline);
- ``DQN, 1+K updates/step (wmbook)``: the model-free control, as many updates as Dyna;
- ``Dyna-DQN, K (wmbook)``: K imagined updates per real step, K chosen on tuning seeds that
  the reported runs do not use (``--tune-seeds``; or fixed with ``--k``);
- ``DQN (stable-baselines3, rl-zoo settings)``: rl-baselines3-zoo's tuned CartPole-v1 settings;
- ``DQN (stable-baselines3, 1+K updates/step)``: the same settings at Dyna's replay ratio
  (one environment step, then 1+K gradient steps), so that "more updates" and "imagined
  data" are separated here as in Chapter 3.

Across seeds each method is summarised through ``wmbook.stats`` (rliable): interquartile mean
and median with 95 % stratified-bootstrap confidence intervals of the real steps to solve and
of the final return, and the probability that Dyna-DQN needs fewer steps than each other
method. A run that never solves counts as the budget, a censored value that favours it.

    python benchmarks/dyna_vs_sb3.py                        # 10 seeds, writes the book's table
    python benchmarks/dyna_vs_sb3.py --seeds 2 --budget 3000 --k 5 --out -   # a quick look

``--seeds N`` runs seeds 0 .. N-1 (or give a list). Each run's outcome is kept in ``--runs``
(one JSON file per method, seed and settings) the moment it ends, and a rerun of the same
command reads the kept runs instead of repeating them: the full benchmark is fifty-six
single-core runs (six of them tuning K), the slowest taking the better part of an hour, so it
can be run in parts. The tables go to
``book/benchmarks/dyna_vs_sb3.md`` (shown by the book's appendix page), with the command, versions,
machine and date that produced them.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import os
import platform
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

from wmbook.runner import run_jobs
from wmbook.stats import (REPS, Interval, Summary, aggregate, improvement_sentence,
                          probability_of_improvement, steps_to_solve, summary_table)

# rl-baselines3-zoo, hyperparams/dqn.yml, CartPole-v1 ("almost tuned"); n_timesteps 5e4
ZOO_CARTPOLE_DQN = dict(
    learning_rate=2.3e-3, batch_size=64, buffer_size=100_000, learning_starts=1_000, gamma=0.99,
    target_update_interval=10, train_freq=256, gradient_steps=128, exploration_fraction=0.16,
    exploration_final_eps=0.04, policy_kwargs=dict(net_arch=[256, 256]),
)
ZOO_TIMESTEPS = 50_000
SOLVED = 475.0


@dataclasses.dataclass
class Outcome:
    """One run: its evaluation curve and when it first solved."""

    method: str
    seed: int
    solved_at: int | None
    seconds: float
    eval_steps: list[int] = dataclasses.field(default_factory=list)
    eval_returns: list[float] = dataclasses.field(default_factory=list)

    @property
    def final_return(self) -> float:
        """Mean greedy return at the last evaluation (0 if the run was never evaluated)."""
        return self.eval_returns[-1] if self.eval_returns else 0.0

    @property
    def kept_solved(self) -> float:
        """Share of the evaluations after the first solve still at 475 or above; NaN when the
        run never solved or solved at its last evaluation."""
        from wmbook.evaluation import kept_solved

        return kept_solved(self.eval_steps, self.eval_returns, self.solved_at, SOLVED)


@dataclasses.dataclass(frozen=True)
class Methods:
    """The five methods' names for a given K."""

    k: int

    @property
    def dqn(self) -> str:
        return "DQN (wmbook)"

    @property
    def control(self) -> str:
        return f"DQN, {1 + self.k} updates/step (wmbook)"

    @property
    def dyna(self) -> str:
        return f"Dyna-DQN, K={self.k} (wmbook)"

    @property
    def zoo(self) -> str:
        return "DQN (stable-baselines3, rl-zoo settings)"

    @property
    def sb3_ratio(self) -> str:
        return f"DQN (stable-baselines3, {1 + self.k} updates/step)"

    def all(self) -> list[str]:
        return [self.dqn, self.control, self.dyna, self.zoo, self.sb3_ratio]


def run_wmbook(method: str, seed: int, imagined_updates: int, updates_per_step: int, budget: int,
               eval_every: int) -> Outcome:
    import torch

    from wmbook.agents import DQNConfig, DynaConfig, train_dqn, train_dyna_dqn

    torch.set_num_threads(1)
    config = DQNConfig(total_steps=budget, eval_every=eval_every, seed=seed,
                       updates_per_step=updates_per_step)
    if imagined_updates == 0:
        result = train_dqn(config, progress=False)
    else:
        result, _ = train_dyna_dqn(config, DynaConfig(imagined_updates=imagined_updates), progress=False)
    return Outcome(method, seed, result.solved_at, result.seconds, result.eval_steps, result.eval_returns)


def run_sb3(method: str, seed: int, gradient_steps: int | None, budget: int, eval_every: int) -> Outcome:
    """stable-baselines3's DQN with the zoo's settings; with ``gradient_steps``, one environment
    step then that many gradient steps (a replay ratio to match Dyna's)."""
    import torch
    from stable_baselines3 import DQN
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.logger import Logger

    from wmbook.agents import DQNConfig, evaluation_seed
    from wmbook.envs import make_env
    from wmbook.evaluation import evaluate, solved_return, stateless

    protocol = DQNConfig()  # Chapter 3's evaluation protocol, as our runs use it
    torch.set_num_threads(1)

    class SameProtocol(BaseCallback):
        """Chapter 3's evaluation, every `eval_every` real steps, to the end of the budget."""

        def __init__(self):
            super().__init__()
            self.solved_at, self.steps, self.returns = None, [], []

        def _on_step(self) -> bool:
            if self.num_timesteps % eval_every:
                return True
            returns = evaluate(stateless(lambda obs: self.model.predict(obs, deterministic=True)[0]),
                               protocol.env_id, protocol.eval_episodes, evaluation_seed(seed))
            self.steps.append(self.num_timesteps)
            self.returns.append(float(returns.mean()))
            if self.solved_at is None and returns.mean() >= solved_return(protocol.env_id, protocol.solved_return):
                self.solved_at = self.num_timesteps
            return True

    settings = dict(ZOO_CARTPOLE_DQN)
    if gradient_steps is not None:
        settings.update(train_freq=1, gradient_steps=gradient_steps)
    started = time.perf_counter()
    model = DQN("MlpPolicy", make_env(protocol.env_id), seed=seed, device="cpu", **settings)
    model.set_logger(Logger(folder=None, output_formats=[]))  # no log folder in the system's temporary folder
    callback = SameProtocol()
    model.learn(total_timesteps=budget, callback=callback)
    return Outcome(method, seed, callback.solved_at, time.perf_counter() - started,
                   callback.steps, callback.returns)


def job(args: tuple) -> Outcome:
    kind, *rest = args
    return run_sb3(*rest) if kind == "sb3" else run_wmbook(*rest)


def jobs_for(seeds: list[int], k: int, budget: int, eval_every: int) -> list[tuple]:
    """Every run of the benchmark, seed by seed, the slowest first within a seed."""
    names = Methods(k)
    jobs = []
    for seed in seeds:
        jobs += [("wmbook", names.dyna, seed, k, 1, budget, eval_every),
                 ("wmbook", names.control, seed, 0, 1 + k, budget, eval_every),
                 ("sb3", names.sb3_ratio, seed, 1 + k, budget, eval_every),
                 ("wmbook", names.dqn, seed, 0, 1, budget, eval_every),
                 ("sb3", names.zoo, seed, None, budget, eval_every)]
    return jobs


def job_file(cache: Path, args: tuple) -> Path:
    """Where the outcome of one job is kept: its settings spelled out in the file name."""
    kind, method, seed, *settings = args
    slug = "".join(c if c.isalnum() else "-" for c in method.lower()).strip("-")
    return cache / f"{slug}_seed{seed}_{'_'.join(str(x) for x in settings)}.json"


def save_outcome(path: Path, outcome: Outcome) -> None:
    from wmbook.checkpoint import write_json

    write_json(path, dataclasses.asdict(outcome))


def load_outcome(path: Path) -> Outcome:
    import json

    try:
        return Outcome(**json.loads(path.read_text()))
    except (ValueError, TypeError) as error:
        raise SystemExit(f"{path}: not a run outcome of this benchmark ({error}); delete it to rerun") from None


def _run_and_keep(args: tuple, cache: Path | None) -> Outcome:
    """One job; with ``cache``, its outcome written there (atomically) as soon as it ends."""
    outcome = job(args)
    if cache is not None:
        save_outcome(job_file(cache, args), outcome)
    return outcome


def run_cached(jobs: list[tuple], workers: int, echo: bool = True, cache: Path | None = None) -> list[Outcome]:
    """Run ``jobs`` with the book's job runner, ``workers`` at a time (in this process when 1),
    and return their outcomes in the order given. With ``cache``, each outcome is written there
    as soon as its run ends, and a job whose outcome is already there is not run again: an
    interrupted benchmark resumes where it stopped, losing only the runs in flight."""
    outcomes: dict[int, Outcome] = {}
    todo = []
    for index, args in enumerate(jobs):
        if cache is not None and job_file(cache, args).is_file():
            outcomes[index] = load_outcome(job_file(cache, args))
        else:
            todo.append(index)
    if echo and cache is not None and outcomes:
        print(f"{len(outcomes)} of {len(jobs)} runs read from {cache}", flush=True)
    done = run_jobs(partial(_run_and_keep, cache=cache), [jobs[i] for i in todo], workers, progress=echo)
    for index, outcome in zip(todo, done):
        if echo:
            solved = f"{outcome.solved_at:,}" if outcome.solved_at else "not solved"
            print(f"{outcome.method:>44} seed {outcome.seed}: {solved}, final return "
                  f"{outcome.final_return:.0f} ({outcome.seconds:.0f} s)", flush=True)
        outcomes[index] = outcome
    return [outcomes[index] for index in range(len(jobs))]


def choose_k(candidates: list[int], seeds: list[int], budget: int, eval_every: int,
             workers: int, cache: Path | None = None) -> tuple[int, dict[int, float]]:
    """K among ``candidates`` by the IQM of Dyna-DQN's real steps to solve on ``seeds`` (which
    the reported runs must not use), as Chapter 3 chooses it."""
    from wmbook.chapters.ch03_dyna_dqn import RunRecord, RunSpec, choose_k as chapter_choose_k

    jobs = [("wmbook", f"tuning K={k}", s, k, 1, budget, eval_every) for k in candidates for s in seeds]
    outcomes = run_cached(jobs, workers, cache=cache)
    records = [RunRecord(RunSpec(o.method, o.seed, imagined_updates=int(o.method.split("=")[1])),
                         o.eval_steps, o.eval_returns, o.solved_at, 0, 0, o.seconds)
               for o in outcomes]
    return chapter_choose_k(records, budget)


def per_seed_table(outcomes: list[Outcome], methods: list[str], budget: int) -> str:
    lines = ["| method | real steps to first solve, per seed | final return, per seed | "
             "kept solved | median wall time per run |", "|---|---|---|---|---|"]
    for method in methods:
        runs = [o for o in outcomes if o.method == method]
        per_seed = ", ".join(f"{o.solved_at:,}" if o.solved_at else f"> {budget:,}" for o in runs)
        finals = ", ".join(f"{o.final_return:.0f}" for o in runs)
        kept = [o.kept_solved for o in runs if np.isfinite(o.kept_solved)]
        kept_text = f"{100 * np.mean(kept):.0f}% ({len(kept)} runs)" if kept else "-"
        wall = np.median([o.seconds for o in runs])
        lines.append(f"| {method} | {per_seed} | {finals} | {kept_text} | {wall:.0f} s |")
    lines.append("")
    lines.append("*Kept solved*: the share of the evaluations after a run's first solve that still "
                 "reach 475, averaged over the runs that solved before their last evaluation.")
    return "\n".join(lines)


def statistics(outcomes: list[Outcome], names: Methods, budget: int,
               reps: int) -> tuple[str, dict[str, Summary], dict[str, Summary]]:
    """IQM and median of real steps to solve and of final return with 95 % CIs, and the
    probability of improvement of Dyna-DQN against every other method."""
    methods = names.all()
    solved_at = {m: [o.solved_at for o in outcomes if o.method == m] for m in methods}
    steps = {m: steps_to_solve(solved_at[m], budget) for m in methods}
    finals = {m: np.array([o.final_return for o in outcomes if o.method == m]) for m in methods}
    step_summaries = aggregate(steps, reps=reps, seed=0)
    final_summaries = aggregate(finals, reps=reps, seed=0)
    table = summary_table(step_summaries, metric="steps").splitlines()
    table[0] += " unsolved runs |"
    table[1] += "---|"
    for row, method in enumerate(methods, start=2):
        table[row] += f" {solved_at[method].count(None)} |"
    final_table = summary_table(final_summaries, metric="final return").splitlines()

    runs = len(solved_at[names.dyna])
    bullets = []
    for other in methods:
        if other == names.dyna:
            continue
        p = probability_of_improvement(steps[names.dyna], steps[other], lower_is_better=True,
                                       reps=reps, seed=0)
        bullets.append(improvement_sentence(p, names.dyna, other, "needs fewer real steps than", runs))
    p = probability_of_improvement(finals[names.dyna], finals[names.zoo], reps=reps, seed=0)
    bullets.append(improvement_sentence(p, names.dyna, names.zoo, "ends with a higher return than", runs))
    text = "\n\n".join([
        f"Across seeds, with 95 % stratified-bootstrap confidence intervals (rliable, {reps:,} "
        f"resamples, seed 0). Real steps to the first solve; a run that did not solve counts as "
        f"the budget of {budget:,} steps, so for a method with unsolved runs the IQM and median "
        f"are lower bounds:",
        "\n".join(table),
        "Final return (the mean greedy return at the last evaluation, after the whole budget):",
        "\n".join(final_table),
        "Probabilities of improvement (ties count half):",
        "\n".join(f"- {b[0].upper() + b[1:]}." for b in bullets),
    ])
    return text, step_summaries, final_summaries


def verdict(names: Methods, steps: dict[str, Summary], finals: dict[str, Summary]) -> list[str]:
    """The two targets set for Dyna-DQN against the tuned stable-baselines3 DQN, judged on IQMs;
    where the intervals leave the verdict open, the line says so."""
    dyna, zoo = steps[names.dyna].iqm, steps[names.zoo].iqm
    ratio = dyna.estimate / zoo.estimate
    met = dyna.estimate <= zoo.estimate / 3
    settled = (dyna.high <= zoo.low / 3) if met else (dyna.low > zoo.high / 3)
    lines = [f"IQM real steps to solve, Dyna-DQN {dyna.format()} against stable-baselines3 (rl-zoo) "
             f"{zoo.format()}: ratio {ratio:.2f} (target: at most 1/3) - {'met' if met else 'not met'}"
             + ("" if settled else "; the intervals do not settle it at this number of seeds") + "."]
    dyna_final, zoo_final = finals[names.dyna].iqm, finals[names.zoo].iqm
    met = dyna_final.estimate >= zoo_final.estimate
    overlap = dyna_final.low <= zoo_final.high and zoo_final.low <= dyna_final.high
    lines.append(f"IQM final return, Dyna-DQN {dyna_final.format()} against stable-baselines3 (rl-zoo) "
                 f"{zoo_final.format()} (target: at least as high) - {'met' if met else 'not met'}"
                 + ("; the intervals overlap, so the difference is not resolved at this number of seeds"
                    if overlap else "") + ".")
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
        f"{workers} run{'s' if workers != 1 else ''} side by side, one torch thread each",
        f"- versions: wmbook {wmbook.__version__}, torch {torch.__version__}, gymnasium "
        f"{gymnasium.__version__}, stable-baselines3 {stable_baselines3.__version__}, rliable "
        f"{importlib.metadata.version('rliable')}, Python {platform.python_version()}",
    ])


def wall_time_line(outcomes: list[Outcome], kept: int, started: float) -> str:
    """The benchmark's cost: the sum of its runs' own wall times, and how many of them this
    invocation ran (the rest were read back from the kept outcomes of earlier invocations)."""
    total = sum(o.seconds for o in outcomes)
    line = (f"Wall time: the {len(outcomes)} runs took {total:,.0f} s ({total / 3600:.1f} h) in all, the sum of "
            f"each run's own wall time; this invocation took {time.perf_counter() - started:,.0f} s")
    if kept:
        line += f" and ran {len(outcomes) - kept} of them, the other {kept} read back from earlier invocations"
    return line + "."


def write_report(parts: list[str], out: str) -> None:
    """Print the report's ``parts`` and, unless ``out`` is ``-``, write them to ``out``."""
    report = "\n\n".join(parts)
    print("\n" + report)
    if out != "-":
        Path(out).write_text(report + "\n")
        print(f"\nwritten to {out}")


def seed_list(values: list[int]) -> list[int]:
    """``--seeds N`` means seeds 0 .. N-1; two or more values are the seeds themselves."""
    return list(range(values[0])) if len(values) == 1 else values


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[10],
                        help="N for seeds 0..N-1, or the seeds themselves (default 10)")
    parser.add_argument("--budget", type=int, default=ZOO_TIMESTEPS, help="real steps per run")
    parser.add_argument("--k", type=int, default=None,
                        help="Dyna's imagined updates per real step (default: chosen on --tune-seeds)")
    parser.add_argument("--k-candidates", type=int, nargs="+", default=[1, 5, 10])
    parser.add_argument("--tune-seeds", type=int, nargs="+", default=[100, 101])
    parser.add_argument("--tune-budget", type=int, default=7_000,
                        help="real steps per tuning run (Chapter 3's budget)")
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--out", default="book/benchmarks/dyna_vs_sb3.md", help="'-' prints only")
    parser.add_argument("--reps", type=int, default=REPS, help="bootstrap resamples per interval")
    parser.add_argument("--runs", default="benchmarks/runs/dyna_vs_sb3",
                        help="folder that keeps each run's outcome, so that an interrupted "
                             "benchmark resumes ('-' keeps nothing)")
    args = parser.parse_args(argv)
    cache = None if args.runs == "-" else Path(args.runs)
    seeds = seed_list(args.seeds)
    if set(seeds) & set(args.tune_seeds) and args.k is None:
        parser.error(f"tuning seeds {args.tune_seeds} overlap the reported seeds {seeds}")

    started = time.perf_counter()
    parts = []
    if args.k is None:
        k, iqms = choose_k(args.k_candidates, args.tune_seeds, args.tune_budget, args.eval_every,
                           args.workers, cache)
        parts.append(f"K chosen on tuning seeds {', '.join(map(str, args.tune_seeds))} (not reported "
                     f"below), {args.tune_budget:,} real steps each, by the IQM of Dyna-DQN's real "
                     f"steps to solve: " + "; ".join(f"K = {c}: {v:,.0f}" for c, v in iqms.items())
                     + f". Chosen: K = {k}.")
    else:
        k = args.k
        parts.append(f"K = {k}, given on the command line.")
    names = Methods(k)
    jobs = jobs_for(seeds, k, args.budget, args.eval_every)
    kept = 0 if cache is None else sum(job_file(cache, j).is_file() for j in jobs)
    outcomes = run_cached(jobs, args.workers, cache=cache)
    outcomes.sort(key=lambda o: (names.all().index(o.method), o.seed))
    parts.append(per_seed_table(outcomes, names.all(), args.budget))
    if len(seeds) >= 2:
        stats_started = time.perf_counter()
        text, step_summaries, final_summaries = statistics(outcomes, names, args.budget, args.reps)
        parts.append(text)
        parts.append("\n".join(f"- {line}" for line in verdict(names, step_summaries, final_summaries)))
        print(f"statistics across seeds: {time.perf_counter() - stats_started:.0f} s", flush=True)
    else:
        parts.append("Confidence intervals need at least 2 seeds: rerun with more `--seeds`.")
    write_report(parts + [provenance(argv, args.workers), wall_time_line(outcomes, kept, started)], args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
