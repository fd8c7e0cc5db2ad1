"""Chapter 4, V + M + C on CartPole from pixels: its budgets and its experiment harness.

Per seed, one trainer collects random data and pretrains V and M once; every controller of that
seed then starts from copies of the same V and M (:func:`fork`), so the imagination ratios are
compared on the same world model. The work is cut into jobs for the book's job runner: one per
seed's pretraining (:func:`pretrain_seeds`), then one per controller (:func:`start_controllers`),
the costliest first. The first seed's V and M come back to the notebook (:func:`snapshot`,
:func:`restore`), and the experiments that look inside the models (reconstructions, the
read-outs, the dream filmstrip, the NLL against a single Gaussian, the temperature sweep) run
there while the controllers train, because they hand models and figures back to the notebook.

How the budgets and settings were sized and tuned (on seeds no reported run uses), and what
fails before C trains, is recorded in ``docs/tuning.md``.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
from tqdm.auto import tqdm

from wmbook.agents.world_model_ppo.config import Config, with_overrides
from wmbook.agents.world_model_ppo.dream import DreamResult, train_in_dream
from wmbook.agents.world_model_ppo.diagnostics import PretrainingCheck, check_pretraining, heldout, heldout_seed
from wmbook.agents.world_model_ppo.trainer import VMCMethod, WorldModelPPOTrainer
from wmbook.evaluation import solved_return
from wmbook.models.mdn_rnn import MDNRNN
from wmbook.runner import Jobs, run_jobs, start_jobs


def _config(**dotted) -> Config:
    return with_overrides(Config(), **dotted)


# what the full profile trains: narrow networks, a small random data set, actions repeated twice
_FULL = dict(**{
    "total_timesteps": 40_000, "checkpoint_every": 1_000_000, "out": "_build/ch04_runs",
    "env.num_envs": 8, "env.action_repeat": 2, "env.fovea": True,
    "ppo.learning_rate": 2e-3, "ppo.gamma": 0.99, "ppo.ent_coef": 0.01,
    "world_model.vae.channels": (16, 32, 64, 128), "world_model.vae.hidden_dims": (256,),
    "world_model.vae.batch_size": 32, "world_model.vae.free_bits": 0.5,
    "world_model.mdn_rnn.hidden_dim": 128,
    "world_model.training.pretrain_epochs": 12, "world_model.training.memory_epochs": 300,
    "world_model.training.memory_refresh_every": 5, "world_model.training.memory_refresh_updates": 100,
    "world_model.data_collection.random_collection_steps": 4_000,
    "evaluation.episodes": 20,
})
_CI = dict(**{
    "total_timesteps": 768, "checkpoint_every": 1_000_000, "out": "_build/ch04_runs_ci",
    "env.num_envs": 4, "env.action_repeat": 2, "env.frame_size": 32,
    "ppo.n_steps": 16, "ppo.batch_size": 64, "ppo.n_epochs": 4,
    "world_model.vae.channels": (8, 16, 32), "world_model.vae.hidden_dims": (64,),
    "world_model.vae.latent_dim": 8, "world_model.vae.batch_size": 32, "world_model.vae.free_bits": 0.5,
    "world_model.mdn_rnn.hidden_dim": 32, "world_model.mdn_rnn.chunk_length": 8,
    "world_model.training.pretrain_epochs": 2, "world_model.training.memory_epochs": 4,
    "world_model.training.memory_refresh_every": 3, "world_model.training.memory_refresh_updates": 4,
    "world_model.data_collection.random_collection_steps": 400,
    "evaluation.episodes": 3,
})


@dataclass(frozen=True)
class VMCChapter:
    """Chapter 4, V + M + C from pixels."""

    trainer: Config                      # every run's trainer (seed and ratio set per run)
    seeds: tuple[int, ...]
    ratios: tuple[float, ...]            # imagination ratios compared (0 = real frames only)
    headline_ratio: float
    temperatures: tuple[float, ...]      # the dream-only sweep
    dream_steps: int                     # imagined steps of each dream-only controller
    dream_episodes: int                  # dream episodes scoring a dream-only controller
    dream_max_steps: int                 # decisions per dream episode at most
    real_episodes_tau: int               # real episodes scoring a dream-only controller
    heldout_steps: int                   # random real steps held out for V's and M's tests
    single_gaussian: bool                # train the one-component M of the NLL comparison
    film_steps: int                      # frames in the dream filmstrip
    workers: int
    check_headline: bool
    min_solved: int = 0                  # seeds whose headline-ratio controller must reach SOLVED


PROFILES = {
    "full": VMCChapter(
        trainer=_config(**_FULL), seeds=(0, 1, 2), ratios=(0.0, 0.5, 0.9), headline_ratio=0.5,
        temperatures=(0.1, 0.5, 1.0, 1.15, 1.3), dream_steps=10_000, dream_episodes=20, dream_max_steps=250,
        real_episodes_tau=10, heldout_steps=1_000, single_gaussian=True, film_steps=12, workers=2,
        check_headline=True, min_solved=2),
    "ci": VMCChapter(
        trainer=_config(**_CI), seeds=(0, 1), ratios=(0.0, 0.5, 0.9), headline_ratio=0.5,
        temperatures=(0.1, 1.0, 1.3), dream_steps=256, dream_episodes=4, dream_max_steps=20,
        real_episodes_tau=2, heldout_steps=100, single_gaussian=True, film_steps=6, workers=1,
        check_headline=False),
}


# -- one seed's runs ----------------------------------------------------------------------------

@dataclass
class RunRecord:
    """One controller's run as plain values."""

    seed: int
    ratio: float
    label: str
    collection_steps: int
    real_steps: int
    imagined_steps: int
    episode_steps: list[int]
    episode_returns: list[float]
    final_returns: list[float]
    seconds: float
    cpu_seconds: float
    mean_dream_length: float = 0.0   # mean length of an imagined rollout (imagination/horizon)

    @property
    def final_return(self) -> float:
        return float(np.mean(self.final_returns))


@dataclass
class SeedRecord:
    """A seed's world model (its pretraining curves) and its controllers."""

    seed: int
    vae_reconstruction: list[float]
    vae_kl: list[float]
    mdn_nll: list[float]
    runs: list[RunRecord] = field(default_factory=list)
    pretrain_cpu_seconds: float = 0.0
    untrained: RunRecord | None = None  # the untrained-M controller, where asked for
    check: "PretrainingCheck | None" = None  # what V and M learned (:func:`check_pretraining`)


def config_for(chapter: VMCChapter, seed: int, ratio: float, **dotted) -> Config:
    return with_overrides(chapter.trainer, seed=seed, out=f"{chapter.trainer.out}/seed{seed}_ratio{ratio}",
                          **{"world_model.training.imagination_ratio": ratio}, **dotted)


def pretrained(chapter: VMCChapter, seed: int, progress: bool = False,
               method: VMCMethod = VMCMethod()) -> WorldModelPPOTrainer:
    """A trainer of ``seed`` with its random data collected and V and M pretrained (with
    ``method``'s losses)."""
    trainer = WorldModelPPOTrainer(config_for(chapter, seed, chapter.headline_ratio), progress=progress,
                                   method=method)
    cpu = time.process_time()
    trainer.pretrain()
    trainer.pretrain_cpu_seconds = time.process_time() - cpu
    return trainer


def fork(trainer: WorldModelPPOTrainer, config: Config) -> WorldModelPPOTrainer:
    """A fresh controller under ``config`` on copies of ``trainer``'s pretrained V and M."""
    child = WorldModelPPOTrainer(config, trainer.device, trainer.progress, trainer.method)
    child.vae.load_state_dict(trainer.vae.state_dict())
    child.mdn.load_state_dict(trainer.mdn.state_dict())
    child.random_frames, child.random_latents = trainer.random_frames, trainer.random_latents
    child.random_states = trainer.random_states
    child.result.collection_steps = trainer.result.collection_steps
    child.result.vae_history, child.result.mdn_history = trainer.result.vae_history, trainer.result.mdn_history
    child.metrics = copy.deepcopy(trainer.metrics)
    child.pretrained = True
    return child


@dataclass
class Pretrained:
    """A seed's pretrained V and M and its random data as plain values, to hand to another
    process (:func:`snapshot`) and to rebuild a trainer from there (:func:`restore`)."""

    seed: int
    vae: dict
    mdn: dict
    random_frames: object
    random_latents: object
    random_states: np.ndarray
    collection_steps: int
    vae_history: dict
    mdn_history: dict
    metrics: list
    cpu_seconds: float
    check: "PretrainingCheck | None" = None


def snapshot(trainer: WorldModelPPOTrainer) -> Pretrained:
    """``trainer``'s pretrained world model and data (see :class:`Pretrained`)."""
    if not trainer.pretrained:
        raise ValueError("snapshot needs a pretrained trainer: call pretrain() first")
    return Pretrained(trainer.config.seed, trainer.vae.state_dict(), trainer.mdn.state_dict(), trainer.random_frames,
                      trainer.random_latents, trainer.random_states, trainer.result.collection_steps,
                      trainer.result.vae_history, trainer.result.mdn_history, trainer.metrics,
                      getattr(trainer, "pretrain_cpu_seconds", 0.0))


def restore(chapter: VMCChapter, saved: Pretrained, method: VMCMethod = VMCMethod()) -> WorldModelPPOTrainer:
    """A trainer of ``saved.seed`` in the state :func:`pretrained` left it in, without pretraining."""
    trainer = WorldModelPPOTrainer(config_for(chapter, saved.seed, chapter.headline_ratio), method=method)
    trainer.vae.load_state_dict(saved.vae)
    trainer.mdn.load_state_dict(saved.mdn)
    trainer.random_frames, trainer.random_latents = saved.random_frames, saved.random_latents
    trainer.random_states = saved.random_states
    trainer.result.collection_steps = saved.collection_steps
    trainer.result.vae_history, trainer.result.mdn_history = saved.vae_history, saved.mdn_history
    trainer.metrics = copy.deepcopy(saved.metrics)
    trainer.pretrain_cpu_seconds = saved.cpu_seconds
    trainer.pretrained = True
    return trainer


def run_controller(trainer: WorldModelPPOTrainer, config: Config, label: str) -> RunRecord:
    """Train a controller under ``config`` on ``trainer``'s V and M and evaluate it."""
    child = fork(trainer, config)
    cpu = time.process_time()
    result = child.train()
    lengths = [m["imagination/horizon"] for m in child.metrics if m.get("imagination/horizon")]
    return RunRecord(config.seed, config.world_model.training.imagination_ratio, label,
                     result.collection_steps, result.real_steps, result.imagined_steps, result.episode_steps,
                     result.episode_returns, result.final_returns, result.seconds, time.process_time() - cpu,
                     float(np.mean(lengths)) if lengths else 0.0)


# The chapter's jobs, run by the book's job runner (:mod:`wmbook.runner`): one per seed's
# pretraining, then one per controller. Each job seeds itself and runs on one thread, so where and
# in what order the jobs run does not change their numbers.

UNTRAINED = "untrained M"  # the label of the untrained-M controller's run


def pretrain_seed(chapter: VMCChapter, seed: int, method: VMCMethod = VMCMethod()) -> Pretrained:
    """``seed``'s pretrained V and M, with what they learned checked on held-out episodes."""
    trainer = pretrained(chapter, seed, method=method)
    saved = snapshot(trainer)
    return dataclasses.replace(saved, check=check_pretraining(trainer, heldout(trainer, chapter.heldout_steps,
                                                                              heldout_seed(seed))))


def train_controller(chapter: VMCChapter, saved: Pretrained, ratio: float | None,
                     method: VMCMethod = VMCMethod()) -> RunRecord:
    """The controller of ``saved``'s seed at imagination ``ratio``; ``None``: the untrained-M run."""
    trainer = restore(chapter, saved, method)
    if ratio is None:
        return untrained_memory_run(chapter, trainer)
    return run_controller(trainer, config_for(chapter, saved.seed, ratio), f"ratio {ratio:g}")


def _controller_job(job: tuple) -> RunRecord:
    return train_controller(*job)


def pretrain_seeds(chapter: VMCChapter, seeds: Sequence[int], progress: bool = True,
                   method: VMCMethod = VMCMethod()) -> list[Pretrained]:
    """Every seed's :func:`pretrain_seed`, ``chapter.workers`` at a time, in the order of ``seeds``."""
    return run_jobs(partial(pretrain_seed, chapter, method=method), seeds, chapter.workers, desc="pretraining",
                    progress=progress)


def start_controllers(chapter: VMCChapter, saved: Sequence[Pretrained], untrained_seed: int | None = None,
                      method: VMCMethod = VMCMethod()) -> Jobs:
    """Every seed's controllers, one per ratio, and for ``untrained_seed`` the untrained-M run,
    started at once in the background, the costliest (highest ratio) first so that the last jobs
    to finish are short ones. The notebook looks inside the first seed's V and M meanwhile;
    ``.results()`` waits for the runs, which :func:`seed_records` files by seed."""
    jobs = [(chapter, s, ratio, method) for s in saved for ratio in chapter.ratios]
    jobs += [(chapter, s, None, method) for s in saved if s.seed == untrained_seed]
    jobs.sort(key=lambda job: -1.0 if job[2] is None else job[2], reverse=True)
    return start_jobs(_controller_job, jobs, chapter.workers, desc="controllers")


def seed_records(chapter: VMCChapter, saved: Sequence[Pretrained], runs: Sequence[RunRecord]) -> list[SeedRecord]:
    """Each seed's record: its pretraining curves and check, its controllers in the order of
    ``chapter.ratios``, and its untrained-M run where there is one."""
    by_key = {(run.seed, None if run.label == UNTRAINED else run.ratio): run for run in runs}
    return [SeedRecord(s.seed, s.vae_history["reconstruction"], s.vae_history["kl"], s.mdn_history["nll"],
                       [by_key[s.seed, ratio] for ratio in chapter.ratios], s.cpu_seconds,
                       by_key.get((s.seed, None)), s.check) for s in saved]


SOLVED = solved_return("CartPole-v1")  # the task's threshold (475), on the mean greedy return


def diagnose(record: SeedRecord, ratio: float) -> str:
    """Where ``record``'s controller at ``ratio`` stands, naming the stage that failed: V or M
    (their pretraining checks), or C (V and M passed, the controller did not reach ``SOLVED``)."""
    run = next(run for run in record.runs if run.ratio == ratio)
    head = f"seed {record.seed}, ratio {ratio:g}: final return {run.final_return:.1f}"
    if run.final_return >= SOLVED:
        return f"{head}, solved"
    if record.check is None:
        return f"{head}; V and M were not checked"
    if record.check.failed_stage is not None:
        return f"{head}; pretraining: {record.check.describe()}"
    return f"{head}; C failed: V and M passed their checks ({record.check.measured()}), " \
           f"the controller did not reach {SOLVED:g}"


def temperature_sweep(chapter: VMCChapter, trainer: WorldModelPPOTrainer, progress: bool = True
                      ) -> list[DreamResult]:
    """A controller trained wholly in the dream at each temperature, scored in the dream and in
    the real environment (same V and M, same PPO seed)."""
    results = []
    for tau in tqdm(chapter.temperatures, desc="temperatures", disable=not progress):
        child = fork(trainer, config_for(chapter, trainer.config.seed, 0.0,
                                         **{"world_model.mdn_rnn.temperature": tau}))
        child.dream_generator.manual_seed(trainer.config.seed + 2)
        results.append(train_in_dream(child, tau, chapter.dream_steps, chapter.dream_episodes,
                                      chapter.dream_max_steps, chapter.real_episodes_tau))
    return results


def untrained_memory_run(chapter: VMCChapter, trainer: WorldModelPPOTrainer) -> RunRecord:
    """A controller on real frames only (ratio 0) whose M keeps its random initial weights (it is
    not refreshed on the controller's episodes either)."""
    config = config_for(chapter, trainer.config.seed, 0.0, **{"world_model.training.memory_refresh_every": 0})
    child = fork(trainer, config)
    torch.manual_seed(config.seed)
    child.mdn.load_state_dict(MDNRNN(trainer.mdn.config).state_dict())  # the initial weights again
    cpu = time.process_time()
    result = child.train()
    return RunRecord(config.seed, 0.0, UNTRAINED, result.collection_steps, result.real_steps,
                     result.imagined_steps, result.episode_steps, result.episode_returns, result.final_returns,
                     result.seconds, time.process_time() - cpu)


# -- figures --------------------------------------------------------------------------------------

def _image(frame: np.ndarray) -> np.ndarray:
    return np.asarray(frame).transpose(1, 2, 0)


def plot_frames(rows: dict[str, np.ndarray], title: str | None = None):
    """A grid of frames: one row per entry of ``rows`` (name -> ``(T, 3, S, S)`` uint8)."""
    import matplotlib.pyplot as plt

    columns = max(len(frames) for frames in rows.values())
    fig, axes = plt.subplots(len(rows), columns, figsize=(1.3 * columns, 1.45 * len(rows)), squeeze=False)
    for r, (name, frames) in enumerate(rows.items()):
        for t in range(columns):
            ax = axes[r, t]
            ax.set_xticks([]), ax.set_yticks([])
            if t < len(frames):
                ax.imshow(_image(frames[t]), interpolation="nearest")
            else:
                ax.axis("off")
        axes[r, 0].set_ylabel(name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_ratio_curves(records: list[SeedRecord], ratios: tuple[float, ...], window: int = 20, grid: int = 50):
    """Training episode return (moving mean of ``window`` episodes) against real controller steps:
    the mean over seeds per ratio, with the range across seeds shaded."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    budget = max(run.real_steps for record in records for run in record.runs)
    xs = np.linspace(0, budget, grid)
    for ratio in ratios:
        curves = []
        for record in records:
            run = next(r for r in record.runs if r.ratio == ratio)
            if not run.episode_returns:
                continue
            smooth = np.convolve(run.episode_returns, np.ones(window) / window, mode="full")[:len(run.episode_returns)]
            counts = np.minimum(np.arange(1, len(smooth) + 1), window)
            smooth = smooth * window / counts
            curves.append(np.interp(xs, run.episode_steps, smooth))
        if curves:
            curves = np.array(curves)
            line, = ax.plot(xs, curves.mean(0), label=f"imagination ratio {ratio:g}")
            ax.fill_between(xs, curves.min(0), curves.max(0), color=line.get_color(), alpha=0.2)
    ax.axhline(SOLVED, color="grey", ls=":", lw=1)
    ax.set_xlabel("real controller steps")
    ax.set_ylabel(f"training return ({window}-episode mean)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_temperature(results: list[DreamResult]):
    """Return in the dream against return in the real environment, per temperature."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    taus = [r.temperature for r in results]
    x = np.arange(len(taus))
    ax.bar(x - 0.2, [np.mean(r.dream_returns) for r in results], 0.4, label="in the dream")
    ax.bar(x + 0.2, [np.mean(r.real_returns) for r in results], 0.4, label="in the real env")
    ax.set_xticks(x, [f"{t:g}" for t in taus])
    ax.set_xlabel("temperature tau")
    ax.set_ylabel("mean return")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
