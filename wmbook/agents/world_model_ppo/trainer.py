"""V + M + C's trainer: random collection, V and M pretrained, then PPO on real and imagined steps.

:class:`WorldModelPPOTrainer` reads top to bottom as the run (the package's docstring tells it
in prose): :meth:`~WorldModelPPOTrainer.pretrain`, then per iteration
:meth:`~WorldModelPPOTrainer.collect_real`, :meth:`~WorldModelPPOTrainer.imagine` (with
:func:`dream_rollout`) and the PPO update; :class:`VMCMethod` holds the four functions a reader
may edit on the chapter's page.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from wmbook.agents.ppo import PPO, Batch, PPOConfig, head_for, ppo_update, rollout
from wmbook.agents.world_model_ppo.controller import evaluate_controller
from wmbook.agents.world_model_ppo.config import (MDN_KEYS, VAE_KEYS, Config, collect_random, make_envs,
                                                  memory_epochs)
from wmbook.buffers import SequenceBuffer
from wmbook.checkpoint import atomic_write, load_checkpoint, restore_states, save_state
from wmbook.config import settings, to_dict as config_to_dict
from wmbook.envs import env_state, restore_env_state
from wmbook.models.mdn_rnn import (MDNHistory, MDNRNN, MDNRNNConfig, VisionMemoryModel, VMLatent, latent_buffer,
                                   mdn_loss, train_mdn_rnn)
from wmbook.models.vae import ConvVAE, VAEConfig, train_vae, vae_loss

CHECKPOINT_KIND = "WorldModelPPO"
_MAX_ROUNDS = 4  # rounds of rollouts to reach the wanted number of imagined steps


def dream_rollout(trainer: "WorldModelPPOTrainer", starts: VMLatent, rows: int, horizon: int
                  ) -> tuple[Batch, int]:
    """``rows`` rollouts of C in M's dream, of at most ``horizon`` steps, from latents drawn
    uniformly from ``starts`` ``(N rows)``; their PPO data, flattened time-major, and its
    number of steps. The reward is M's reward head; an episode ends where a draw from M's done
    head says so; a rollout cut by the horizon is bootstrapped from the critic."""
    world, device = trainer.world, trainer.device
    pick = torch.randint(len(starts.z), (rows,), generator=trainer.start_generator).to(device)
    latent = VMLatent(*(x[pick] for x in starts))
    alive = torch.ones(rows, dtype=torch.bool, device=device)
    lives = []  # (rows,) per step: the steps that belong to a rollout

    def dream(action: torch.Tensor):
        nonlocal latent, alive
        step = world.imagine_step(latent, action)
        done = torch.rand(rows, generator=trainer.dream_generator, device=device) < step.done_prob
        lives.append(alive)
        terminated = done & alive
        alive, latent = alive & ~done, step.latent
        features = world.features(latent)
        return step.reward, terminated, terminated, features, features

    data = rollout(trainer.ppo, world.features(latent), dream, horizon, stop=lambda: not alive.any())
    keep = torch.stack(lives)
    p = trainer.config.ppo
    return data.batch(p.gamma, p.gae_lambda, keep=keep), int(keep.sum())


@dataclass(frozen=True)
class VMCMethod:
    """The functions a run trains with: V's loss, M's loss, C's dream rollout and C's update.
    The package's own by default; a chapter hands the copies on its page (in worker processes
    too), so that a reader's edit reaches every run."""

    vae_loss: Callable = vae_loss
    mdn_loss: Callable = mdn_loss
    dream: Callable = dream_rollout
    ppo_update: Callable = ppo_update


@dataclass
class RunResult:
    """What a run produced, as plain values (the chapter plots these)."""

    config: dict
    real_steps: int = 0                       # controller's real environment steps
    collection_steps: int = 0                 # random collection's real steps
    episode_steps: list[int] = field(default_factory=list)     # real steps when each episode ended
    episode_returns: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_returns: list[float] = field(default_factory=list)
    final_returns: list[float] = field(default_factory=list)   # the final greedy episodes
    imagined_steps: int = 0
    vae_history: dict = field(default_factory=dict)
    mdn_history: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def final_return(self) -> float:
        return float(np.mean(self.final_returns)) if self.final_returns else float("nan")


class WorldModelPPOTrainer:
    """Random collection, pretraining of V and M, then PPO on real and imagined experience."""

    def __init__(self, config: Config, device: torch.device | str = "cpu", progress: bool = False,
                 method: VMCMethod = VMCMethod()):
        self.config, self.device, self.progress, self.method = config, torch.device(device), progress, method
        c, wm = config, config.world_model
        self.envs = make_envs(config, c.env.num_envs)
        space = self.envs[0].action_space
        torch.manual_seed(c.seed)  # the world model's initial weights
        self.vae = ConvVAE(VAEConfig(**settings(wm.vae, VAE_KEYS), image_size=c.env.frame_size)).to(self.device)
        self.mdn = MDNRNN(MDNRNNConfig(**settings(wm.mdn_rnn, MDN_KEYS), latent_dim=wm.vae.latent_dim,
                                       action_dim=int(space.n))).to(self.device)
        self.dream_generator = torch.Generator(device=self.device).manual_seed(c.seed + 2)
        self.world = VisionMemoryModel(self.vae, self.mdn, generator=self.dream_generator)
        self.ppo = PPO(self.world.feature_dim, head_for(space), self.ppo_config(), self.device)
        self.start_generator = torch.Generator().manual_seed(c.seed + 3)  # imagination starts
        self.result = RunResult(config=config_to_dict(config))
        self.metrics: list[dict] = []
        self.iteration = 0
        self.pretrained = False
        self._latent: VMLatent | None = None
        self._episode_return = np.zeros(c.env.num_envs)
        # M's training data once the controller runs (the random latents, then its own episodes),
        # the episode each environment is in (latents, actions, rewards, ends), M's optimizer
        self.memory_data: SequenceBuffer | None = None
        self._open_episodes: list[dict | None] = [None] * c.env.num_envs
        self.memory_optimizer: torch.optim.Optimizer | None = None
        self._writer = None

    def ppo_config(self) -> PPOConfig:
        c = self.config
        return PPOConfig(env_id=c.env.id, total_timesteps=c.total_timesteps, num_envs=c.env.num_envs,
                         seed=c.seed, **dataclasses.asdict(c.ppo))

    @property
    def out(self) -> Path:
        return Path(self.config.out)

    # -- steps 1 and 2: data and pretraining ------------------------------------------------

    def pretrain(self) -> None:
        """Random collection, then V, then M (unless ``pretrain_memory`` is false)."""
        c, wm = self.config, self.config.world_model
        (self.out / "metrics.jsonl").unlink(missing_ok=True)
        states: list = []
        frames, steps = collect_random(c, c.seed, self.progress, states)
        self.result.collection_steps = steps
        self.random_states = np.stack(states)
        self.random_frames = frames
        all_frames = np.concatenate([episode.obs for episode in frames.episodes()])
        vae_history = train_vae(self.vae, all_frames, wm.training.pretrain_epochs, wm.vae.batch_size,
                                seed=c.seed, progress=self.progress, loss_fn=self.method.vae_loss)
        latents = latent_buffer(frames, self.vae, seed=c.seed)
        self.random_latents = latents
        mdn_history = MDNHistory()
        if wm.training.pretrain_memory:
            per_epoch = math.ceil(len(latents) / (wm.mdn_rnn.batch_size * wm.mdn_rnn.chunk_length))
            mdn_history = train_mdn_rnn(self.mdn, latents, memory_epochs(self.config) * per_epoch,
                                        wm.mdn_rnn.batch_size, wm.mdn_rnn.chunk_length, progress=self.progress,
                                        loss_fn=self.method.mdn_loss)
        self.result.vae_history = dataclasses.asdict(vae_history)
        self.result.mdn_history = dataclasses.asdict(mdn_history)
        self._log(0, {"vae/reconstruction_loss": vae_history.reconstruction[-1],
                      "vae/kl_divergence": vae_history.kl[-1],
                      **({"mdn/nll": mdn_history.nll[-1]} if mdn_history.nll else {})})
        self.pretrained = True

    # -- step 3: mixed training -------------------------------------------------------------

    def _encode(self, frames: list[np.ndarray]) -> torch.Tensor:
        return self.vae.encode(torch.as_tensor(np.stack(frames), device=self.device))

    def _reset_all(self) -> None:
        c = self.config
        frames = [env.reset(seed=c.seed * 1000 + i)[0] for i, env in enumerate(self.envs)]
        z = self._encode(frames)
        fresh = self.world.initial_state(len(frames), self.device)
        self._latent = VMLatent(z, fresh.h, fresh.c)

    def collect_real(self) -> tuple[Batch, VMLatent, dict]:
        """``n_steps`` real steps of every environment; returns the PPO data, the latent states
        visited ``(n_steps * num_envs rows)`` and counters."""
        c = self.config
        visited: list[VMLatent] = []
        steps_before = self.result.real_steps
        record = self._refreshes_memory()

        def step(action: torch.Tensor):
            """Every environment one step: V encodes the frame it reached, M moves on with the action."""
            latent = self._latent
            visited.append(latent)
            reward, terminated, ended = torch.zeros(len(self.envs)), torch.zeros(len(self.envs), dtype=torch.bool), \
                torch.zeros(len(self.envs), dtype=torch.bool)
            frames, finished = [], []
            for i, env in enumerate(self.envs):
                frame, r, term, trunc, info = env.step(int(action[i]))
                self.result.real_steps += info.get("repeats", 1)
                self._episode_return[i] += r
                reward[i], terminated[i], ended[i] = float(r), term, term or trunc
                frames.append(frame)
                if term or trunc:
                    finished.append(i)
            z = self._encode(frames)  # the frame each step reached (before any reset), for its value
            if record:
                self._record_step(latent.z, action, z, reward, terminated, ended & ~terminated)
            with torch.no_grad():
                _, (h, cell) = self.mdn.step(latent.z, action, (latent.h, latent.c))
            reached = VMLatent(z, h, cell)
            self._latent = reached
            if finished:  # episodes that ended start again from a fresh latent
                for i in finished:
                    self.result.episode_steps.append(self.result.real_steps)
                    self.result.episode_returns.append(float(self._episode_return[i]))
                    self._episode_return[i] = 0.0
                index = torch.tensor(finished, device=self.device)
                fresh_z = self._encode([self.envs[i].reset()[0] for i in finished])
                z, h, cell = z.clone(), h.clone(), cell.clone()
                z[index], h[index], cell[index] = fresh_z, 0.0, 0.0
                self._latent = VMLatent(z, h, cell)
            return (reward.to(self.device), terminated.to(self.device), ended.to(self.device),
                    self.world.features(reached), self.world.features(self._latent))

        data = rollout(self.ppo, self.world.features(self._latent), step, c.ppo.n_steps)
        starts = VMLatent(*(torch.stack(parts).flatten(0, 1) for parts in zip(*visited)))
        return (data.batch(c.ppo.gamma, c.ppo.gae_lambda), starts,
                {"real_steps": self.result.real_steps - steps_before})

    # -- iterative training of M --------------------------------------------------------------

    def _refreshes_memory(self) -> bool:
        training = self.config.world_model.training
        return bool(training.memory_refresh_every and training.memory_refresh_updates and training.pretrain_memory)

    def _record_step(self, z: torch.Tensor, action: torch.Tensor, z_next: torch.Tensor, reward: torch.Tensor,
                     terminated: torch.Tensor, truncated: torch.Tensor) -> None:
        """Add one real step of every environment ``(num_envs rows)`` to the episode it is in; an
        episode that ended goes to :attr:`memory_data`."""
        if self.memory_data is None:
            self.memory_data = self._memory_buffer()
        z, z_next, action = z.cpu().numpy(), z_next.cpu().numpy(), action.cpu().numpy()
        for i, episode in enumerate(self._open_episodes):
            if episode is None:
                episode = self._open_episodes[i] = {"obs": [z[i]], "action": [], "reward": [], "terminated": [],
                                                    "truncated": []}
            episode["obs"].append(z_next[i])
            episode["action"].append(action[i])
            episode["reward"].append(float(reward[i]))
            episode["terminated"].append(bool(terminated[i]))
            episode["truncated"].append(bool(truncated[i]))
            if terminated[i] or truncated[i]:
                self.memory_data.add_episode(*(np.stack(episode[key]) for key in
                                               ("obs", "action", "reward", "terminated", "truncated")))
                self._open_episodes[i] = None

    def _memory_buffer(self) -> SequenceBuffer:
        """The random latents, in a buffer with room for every real episode the controller will play."""
        c, random = self.config, self.random_latents
        decisions = c.total_timesteps // c.env.action_repeat + c.env.num_envs * c.ppo.n_steps
        buffer = SequenceBuffer(len(random) + 2 * decisions, random.obs_shape, np.float32, random.action_kind,
                                random.action_shape, random.n_actions, seed=c.seed + 5)
        for episode in random.episodes():
            buffer.add_episode(episode.obs, episode.action, episode.reward, episode.terminated, episode.truncated)
        return buffer

    def refresh_memory(self) -> float:
        """``memory_refresh_updates`` updates of M on :attr:`memory_data`; returns their mean NLL."""
        training, mdn = self.config.world_model.training, self.config.world_model.mdn_rnn
        if self.memory_optimizer is None:
            self.memory_optimizer = self._new_memory_optimizer()
        history = train_mdn_rnn(self.mdn, self.memory_data, training.memory_refresh_updates, mdn.batch_size,
                                mdn.chunk_length, optimizer=self.memory_optimizer, loss_fn=self.method.mdn_loss)
        return float(np.mean(history.nll))

    def _new_memory_optimizer(self) -> torch.optim.Optimizer:
        """M's own Adam for the refreshes (pretraining's is not kept)."""
        return torch.optim.Adam(self.mdn.parameters(), lr=self.mdn.config.learning_rate)

    def imagine(self, starts: VMLatent, n_steps: int, horizon: int) -> tuple[Batch | None, dict]:
        """``n_steps`` imagined steps in rollouts of at most ``horizon`` steps from latents drawn
        uniformly from ``starts``; returns the PPO data and the rollouts' mean length.

        Rollouts that M ends early yield fewer steps than ``horizon``, so more are started (up
        to ``_MAX_ROUNDS`` rounds, sized by the lengths seen so far) until ``n_steps`` are
        reached; the surplus of the last round is dropped."""
        if n_steps <= 0:
            return None, {"imagined_steps": 0, "mean_length": 0.0}
        parts, steps, rollouts = [], 0, 0
        mean_length = float(horizon)
        for _ in range(_MAX_ROUNDS):
            rows = max(1, math.ceil((n_steps - steps) / max(mean_length, 1.0)))
            batch, count = self.method.dream(self, starts, rows, horizon)
            parts.append(batch)
            steps, rollouts = steps + count, rollouts + rows
            mean_length = steps / rollouts
            if steps >= n_steps:
                break
        batch = Batch.cat(parts)
        batch = Batch(*(x[:n_steps] for x in batch))
        return batch, {"imagined_steps": len(batch.obs), "mean_length": mean_length}

    def iterate(self) -> dict:
        """One iteration: real steps, imagined steps, a PPO update; returns its metrics."""
        c = self.config
        training = c.world_model.training
        real, starts, counters = self.collect_real()
        ratio = training.imagination_ratio
        wanted = round(len(real.obs) * ratio / (1 - ratio))
        imagined, dream = self.imagine(starts, wanted, training.imagination_horizon)
        batch = real if imagined is None else Batch.cat([real, imagined])
        losses = self.method.ppo_update(self.ppo, batch, self.result.real_steps)
        self.result.imagined_steps += dream["imagined_steps"]
        self.iteration += 1
        metrics = {f"ppo/{k}": v for k, v in losses.items()}
        if self._refreshes_memory() and self.iteration % training.memory_refresh_every == 0:
            metrics["mdn/nll"] = self.refresh_memory()
        metrics["imagination/ratio"] = dream["imagined_steps"] / len(batch.obs)
        metrics["imagination/horizon"] = dream["mean_length"]
        recent = self.result.episode_returns[-20:]
        if recent:
            metrics["train/episode_return"] = float(np.mean(recent))
        return metrics

    # -- evaluation ------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, episodes: int) -> np.ndarray:
        """Returns of ``episodes`` greedy episodes in the real environment, run side by side
        from Chapter 3's evaluation seeds (:func:`~wmbook.agents.dqn.evaluation_seed`)."""
        return evaluate_controller(self.world, self.ppo, self.config, episodes)

    # -- logging and checkpoints ------------------------------------------------------------

    def _log(self, step: int, metrics: dict) -> None:
        record = {"step": step, "iteration": self.iteration, **{k: float(v) for k, v in metrics.items()}}
        self.metrics.append(record)
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self._writer is not None:
            for name, value in metrics.items():
                self._writer.add_scalar(name, float(value), step)

    def checkpoint_path(self) -> Path:
        return self.out / "checkpoint.pt"

    def _objects(self) -> dict:
        """What a resumed run needs the state of (M's own optimiser once M is refreshed)."""
        objects = {"vae": self.vae, "mdn": self.mdn, "ppo": self.ppo, "dream_generator": self.dream_generator,
                   "start_generator": self.start_generator}
        return objects if self.memory_optimizer is None else {**objects, "memory_optimizer": self.memory_optimizer}

    def save(self) -> Path:
        """Everything a resumed run needs, written atomically (:func:`~wmbook.checkpoint.save_state`)."""
        memory_file = ""
        if self.memory_data is not None:
            # M's data goes to its own file, named by the iteration, written before the checkpoint
            # that names it; older ones are removed only once that checkpoint is in place
            memory_file = f"memory_{self.iteration}.npz"
            self.memory_data.save(self.out / memory_file)
        path = save_state(
            self.checkpoint_path(), CHECKPOINT_KIND, self._objects(), config=config_to_dict(self.config),
            iteration=self.iteration, pretrained=self.pretrained,
            envs=json.dumps([env_state(env) for env in self.envs]) if self._latent is not None else "",
            latent=list(self._latent) if self._latent is not None else [],
            episode_return=torch.as_tensor(self._episode_return), result=json.dumps(dataclasses.asdict(self.result)),
            metrics=json.dumps(self.metrics), memory_file=memory_file,
            open_episodes=[self._episode_tensors(e) for e in self._open_episodes])
        for old in self.out.glob("memory_*.npz"):
            if old.name != memory_file:
                old.unlink()
        return path

    @staticmethod
    def _episode_tensors(episode: dict | None) -> dict:
        return {} if episode is None else {key: torch.as_tensor(np.stack(values)) for key, values in episode.items()}

    def load(self, path: str | Path) -> None:
        data = load_checkpoint(path, CHECKPOINT_KIND, map_location=self.device)
        if "memory_optimizer" in data.get("states", {}):
            self.memory_optimizer = self._new_memory_optimizer()
        data = restore_states(data, self._objects(), path)
        self.iteration, self.pretrained = int(data["iteration"]), bool(data["pretrained"])
        if data["envs"]:
            for env, saved in zip(self.envs, json.loads(data["envs"])):
                restore_env_state(env, saved)
            self._latent = VMLatent(*data["latent"])
        self._episode_return = data["episode_return"].cpu().numpy().copy()
        memory_file = data["memory_file"]
        self.memory_data = SequenceBuffer.load(Path(path).parent / memory_file) if memory_file else None
        self._open_episodes = [{key: list(value.cpu().numpy()) for key, value in episode.items()} or None
                               for episode in data["open_episodes"]]
        self.result = RunResult(**json.loads(data["result"]))
        self.metrics = json.loads(data["metrics"])
        # the metrics file holds exactly what the checkpoint saw
        with atomic_write(self.out / "metrics.jsonl", "w") as handle:
            handle.writelines(json.dumps(record) + "\n" for record in self.metrics)

    # -- the whole run ---------------------------------------------------------------------

    def train(self, max_iterations: int | None = None) -> RunResult:
        """Run (or continue) to ``total_timesteps`` real controller steps and evaluate.

        ``max_iterations`` stops after that many iterations in total without the final
        evaluation, as an interruption would (the tests resume from there)."""
        from tqdm.auto import tqdm

        c = self.config
        started = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        if c.tensorboard and self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.out / "tensorboard"))
        if not self.pretrained:
            self.pretrain()
            self.save()
        if self._latent is None:
            self._reset_all()
        next_eval = self._next_eval()
        bar = tqdm(total=c.total_timesteps, initial=min(self.result.real_steps, c.total_timesteps),
                   desc="V+M+C", disable=not self.progress, leave=False)
        while self.result.real_steps < c.total_timesteps:
            if max_iterations is not None and self.iteration >= max_iterations:
                bar.close()
                return self.result
            before = self.result.real_steps
            metrics = self.iterate()
            bar.update(min(self.result.real_steps, c.total_timesteps) - min(before, c.total_timesteps))
            if next_eval is not None and self.result.real_steps >= next_eval:
                returns = self.evaluate(c.evaluation.episodes_during_training)
                self.result.eval_steps.append(self.result.real_steps)
                self.result.eval_returns.append(float(returns.mean()))
                metrics["eval/mean_return"] = float(returns.mean())
                next_eval = self._next_eval()
            self._log(self.result.real_steps, metrics)
            if self.iteration % c.checkpoint_every == 0:
                self.save()
        bar.close()
        if not self.result.final_returns:
            self.result.final_returns = self.evaluate(c.evaluation.episodes).tolist()
            self._log(self.result.real_steps, {"eval/final_mean_return": self.result.final_return})
            self.save()
        self.result.seconds += time.perf_counter() - started
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        return self.result

    def _next_eval(self) -> int | None:
        every = self.config.evaluation.every
        if not every:
            return None
        return (self.result.real_steps // every + 1) * every
