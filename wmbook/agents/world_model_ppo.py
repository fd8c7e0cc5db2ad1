"""V + M + C: a PPO controller trained partly in the dream of a VAE and an MDN-RNN, from pixels.

The run, top to bottom (:meth:`WorldModelPPOTrainer.train`):

1. **Random collection**: ``data_collection.random_collection_steps`` real steps of a uniformly
   random policy, stored as whole episodes of frames (:class:`~wmbook.buffers.SequenceBuffer`).
2. **Pretraining V** (:class:`~wmbook.models.vae.ConvVAE`) on those frames for
   ``training.pretrain_epochs`` epochs, then **M** (:class:`~wmbook.models.mdn_rnn.MDNRNN`) on
   their latents for ``training.memory_epochs`` passes over the time steps (0: as many as V's
   epochs; ``training.pretrain_memory: false`` leaves M untrained, the ablation of Chapter 4).
   M is cheap and its end head, which carries CartPole's whole task in the dream, needs many
   more updates than V: with few, it predicts little more than how often random play ends.
3. **Mixed training**: every iteration collects ``num_envs x n_steps`` real steps with the
   controller, whose input is ``[z, h]`` (V's latent of the frame and M's hidden state), then
   imagines ``imagination_ratio / (1 - imagination_ratio)`` times as many steps with M, in
   rollouts of at most ``imagination_horizon`` steps that start from the latent states just
   visited; PPO updates on both together. In the dream the reward is M's reward head and an
   episode ends where a draw from M's done head says so; a rollout cut by the horizon is
   bootstrapped from the critic. Optionally (``training.memory_refresh_every`` > 0, off by
   default), Ha and Schmidhuber's iterative procedure: every that many iterations M goes on
   training for ``memory_refresh_updates`` updates on the random data together with the
   controller's own real episodes so far, since random play shows M short falls and a balancing
   controller shows it slow drifts, which M must dream too.

Every iteration's metrics go to ``metrics.jsonl`` in the run folder (and to TensorBoard with
``--tensorboard``), under the names ``vae/reconstruction_loss``, ``vae/kl_divergence``,
``mdn/nll``, ``imagination/ratio`` (imagined steps over all steps the controller learned from),
``imagination/horizon`` (mean length of an imagined rollout) and ``train/episode_return``.
Checkpoints are written atomically at the end of pretraining and every ``checkpoint_every``
iterations; ``--resume`` continues from one to the same result as a run that was never stopped.

Command line (``python -m wmbook train-world-model-ppo --help``)::

    python -m wmbook train-world-model-ppo --env CartPole-v1 --total-timesteps 40000
    python -m wmbook train-world-model-ppo --config configs/world_model_ppo.yaml --tensorboard
    python -m wmbook train-world-model-ppo --resume runs/world_model_ppo/checkpoint.pt
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from wmbook.agents.dqn import evaluation_seed
from wmbook.agents.ppo import PPO, Batch, PPOConfig, head_for, ppo_update, rollout
from wmbook.buffers import SequenceBuffer
from wmbook.envs import set_cartpole_state
from wmbook.evaluation import evaluate
from wmbook.checkpoint import atomic_write, load_checkpoint, save_checkpoint
from wmbook.config import (ConfigError, from_dict, load_yaml, section_of, settings, to_dict as config_to_dict,
                           with_overrides as overrides)
from wmbook.models.mdn_rnn import (MDNHistory, MDNRNN, MDNRNNConfig, VisionMemoryModel, VMLatent, latent_buffer,
                                   mdn_loss, train_mdn_rnn)
from wmbook.models.vae import ConvVAE, VAEConfig, train_vae, vae_loss

CHECKPOINT_KIND = "WorldModelPPO"
# half-widths of the box that diverse random starts are drawn from: x, x_dot, theta, theta_dot
DIVERSE_START = np.array([2.0, 1.0, 0.15, 1.0])
_MAX_ROUNDS = 4  # rounds of rollouts to reach the wanted number of imagined steps
DEFAULT_CONFIG_PATH = Path(__file__).resolve().parents[2] / "configs" / "world_model_ppo.yaml"


# -- configuration ------------------------------------------------------------------------------

# V's and M's sections: these of VAEConfig's and MDNRNNConfig's settings, with their defaults, and
# the batch sizes of their training
VAE_KEYS = ("latent_dim", "hidden_dims", "beta", "learning_rate", "channels", "contrast_weight", "free_bits")
VAESection = section_of("VAESection", VAEConfig, VAE_KEYS, __name__, batch_size=(int, 64))
MDN_KEYS = ("hidden_dim", "num_mixtures", "temperature", "learning_rate", "grad_clip", "log_sigma_min",
            "log_sigma_max")
MDNSection = section_of("MDNSection", MDNRNNConfig, MDN_KEYS, __name__, batch_size=(int, 32), chunk_length=(int, 32))


@dataclass(frozen=True)
class TrainingSection:
    pretrain_epochs: int = 10
    memory_epochs: int = 100  # passes of M over the random data (0: as many as pretrain_epochs)
    # iterative training: every this many iterations M goes on training on the random data plus
    # the controller's own real episodes so far (0: never), for this many updates
    memory_refresh_every: int = 0
    memory_refresh_updates: int = 100
    imagination_ratio: float = 0.5
    imagination_horizon: int = 15
    pretrain_memory: bool = True


@dataclass(frozen=True)
class DataSection:
    random_collection_steps: int = 10_000
    diverse_starts: bool = True  # random episodes start anywhere on the track (CartPole only)


@dataclass(frozen=True)
class WorldModelSection:
    vae: VAESection = VAESection()
    mdn_rnn: MDNSection = MDNSection()
    training: TrainingSection = TrainingSection()
    data_collection: DataSection = DataSection()


@dataclass(frozen=True)
class EnvSection:
    id: str = "CartPole-v1"
    frame_size: int = 64
    action_repeat: int = 2
    num_envs: int = 8
    fovea: bool = True  # CartPole: half the frame is a window centred on the cart (ignored elsewhere)


# the ``ppo`` section: these of PPOConfig's settings, with PPOConfig's defaults (one home for them)
PPO_KEYS = ("n_steps", "batch_size", "n_epochs", "gamma", "gae_lambda", "clip_range", "ent_coef", "vf_coef",
            "max_grad_norm", "learning_rate", "hidden_sizes")
PPOSection = section_of("PPOSection", PPOConfig, PPO_KEYS, __name__)


@dataclass(frozen=True)
class EvaluationSection:
    episodes: int = 20
    every: int = 0  # real steps between greedy evaluations during training (0: only at the end)
    episodes_during_training: int = 5


@dataclass(frozen=True)
class Config:
    """A whole run; ``total_timesteps`` counts the controller's real environment steps (the
    random collection comes on top and is reported apart)."""

    total_timesteps: int = 40_000
    seed: int = 0
    device: str = "auto"
    out: str = "runs/world_model_ppo"
    checkpoint_every: int = 10
    tensorboard: bool = False
    env: EnvSection = EnvSection()
    ppo: PPOSection = PPOSection()
    world_model: WorldModelSection = WorldModelSection()
    evaluation: EvaluationSection = EvaluationSection()


def config_from_dict(data: dict) -> Config:
    """A checked :class:`Config` from nested mappings; a :class:`ConfigError` names any unknown
    or mistyped key and any value out of range."""
    config = from_dict(Config, data)
    check_config(config)
    return config


def load_config(path: str | Path) -> Config:
    """Read a YAML configuration (keys missing from it keep their defaults)."""
    config = load_yaml(Config, path)
    check_config(config)
    return config


def check_config(c: Config) -> None:
    """Range checks that the types cannot express."""
    positive = {"total_timesteps": c.total_timesteps, "checkpoint_every": c.checkpoint_every,
                "env.num_envs": c.env.num_envs, "env.frame_size": c.env.frame_size,
                "env.action_repeat": c.env.action_repeat, "ppo.n_steps": c.ppo.n_steps,
                "ppo.batch_size": c.ppo.batch_size, "ppo.n_epochs": c.ppo.n_epochs,
                "world_model.vae.latent_dim": c.world_model.vae.latent_dim,
                "world_model.mdn_rnn.hidden_dim": c.world_model.mdn_rnn.hidden_dim,
                "world_model.mdn_rnn.num_mixtures": c.world_model.mdn_rnn.num_mixtures,
                "world_model.mdn_rnn.chunk_length": c.world_model.mdn_rnn.chunk_length,
                "world_model.training.imagination_horizon": c.world_model.training.imagination_horizon,
                "world_model.data_collection.random_collection_steps":
                    c.world_model.data_collection.random_collection_steps,
                "evaluation.episodes": c.evaluation.episodes}
    positive.update({f"world_model.vae.{k}": min(getattr(c.world_model.vae, k), default=1)
                     for k in ("hidden_dims", "channels")})
    positive["ppo.hidden_sizes"] = min(c.ppo.hidden_sizes, default=1)
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key} must be positive, got {value}")
    training = c.world_model.training
    for key in ("memory_epochs", "memory_refresh_every", "memory_refresh_updates"):
        if getattr(training, key) < 0:
            raise ConfigError(f"world_model.training.{key} must be >= 0, got {getattr(training, key)}")
    if c.seed < 0:
        raise ConfigError(f"seed must be >= 0, got {c.seed}")
    if not 0.0 <= c.world_model.training.imagination_ratio < 1.0:
        raise ConfigError(f"world_model.training.imagination_ratio must lie in [0, 1), got "
                          f"{c.world_model.training.imagination_ratio} (use train_in_dream for a controller "
                          f"trained wholly in the dream)")
    if not c.world_model.mdn_rnn.temperature > 0:
        raise ConfigError(f"world_model.mdn_rnn.temperature must be positive, got {c.world_model.mdn_rnn.temperature}")
    if c.evaluation.every < 0:
        raise ConfigError(f"evaluation.every must be >= 0, got {c.evaluation.every}")


def memory_epochs(config: Config) -> int:
    """Passes of M over the random data: ``training.memory_epochs``, or V's ``pretrain_epochs`` if 0."""
    training = config.world_model.training
    return training.memory_epochs or training.pretrain_epochs


def with_overrides(config: Config, **dotted: Any) -> Config:
    """``config`` with values replaced by dotted keys, e.g. ``{"world_model.training.imagination_ratio": 0.9}``;
    checked like a file."""
    return overrides(config, check_config, **dotted)


# -- environments ------------------------------------------------------------------------------

def make_envs(config: Config, n: int):
    """``n`` pixel environments (frames ``(3, S, S)`` uint8) of ``config.env``; ``env.fovea`` applies to
    CartPole only (:class:`~wmbook.pixels.PixelObservation`)."""
    from wmbook.pixels import make_pixel_env

    fovea = config.env.fovea and _is_cartpole(config.env.id)
    return [make_pixel_env(config.env.id, config.env.frame_size, action_repeat=config.env.action_repeat,
                           fovea=fovea) for _ in range(n)]


def _is_cartpole(env_id: str) -> bool:
    import gymnasium as gym
    from gymnasium.envs.classic_control import CartPoleEnv

    env = gym.make(env_id)
    try:
        return isinstance(env.unwrapped, CartPoleEnv)
    finally:
        env.close()


def _time_limit(env):
    from gymnasium.wrappers import TimeLimit

    while env is not None:
        if isinstance(env, TimeLimit):
            return env
        env = getattr(env, "env", None)
    return None


def env_state(env) -> dict:
    """What continues a classic-control environment exactly: its state, step count and generator."""
    core, limit = env.unwrapped, _time_limit(env)
    return {"state": np.asarray(core.state, dtype=np.float64).tolist(),
            "steps_beyond_terminated": core.steps_beyond_terminated,
            "rng": core.np_random.bit_generator.state,
            "elapsed": None if limit is None else limit._elapsed_steps}


def restore_env_state(env, saved: dict) -> None:
    env.reset(seed=0)  # lets the order-enforcing wrapper accept steps
    core, limit = env.unwrapped, _time_limit(env)
    core.state = np.asarray(saved["state"], dtype=np.float64)
    core.steps_beyond_terminated = saved["steps_beyond_terminated"]
    core.np_random.bit_generator.state = saved["rng"]
    if limit is not None:
        limit._elapsed_steps = saved["elapsed"]


def collect_random(config: Config, seed: int, progress: bool = False,
                   states: list | None = None) -> tuple[SequenceBuffer, int]:
    """``random_collection_steps`` real steps of random actions as whole episodes of frames.

    Returns the buffer and the number of real environment steps taken (each action counts
    ``action_repeat`` steps, fewer where an episode ended inside the repeat). A list given as
    ``states`` receives the true state of every stored frame, in the buffer's order."""
    from tqdm.auto import tqdm

    env = make_envs(config, 1)[0]
    budget = config.world_model.data_collection.random_collection_steps
    rng = np.random.default_rng(seed)
    buffer = SequenceBuffer.for_spaces(env.observation_space, env.action_space,
                                       capacity=budget + budget // 2 + 1000, seed=seed)
    from gymnasium.envs.classic_control import CartPoleEnv

    # diverse starts set CartPole's state by hand; other environments start as they do
    diverse = config.world_model.data_collection.diverse_starts and isinstance(env.unwrapped, CartPoleEnv)

    def reset(**kwargs) -> np.ndarray:
        obs, info = env.reset(**kwargs)
        state = info["state"]
        if diverse:  # cover the track and the angles a good controller visits, not only the centre
            state = rng.uniform(-DIVERSE_START, DIVERSE_START)
            set_cartpole_state(env, state)
            obs = env.frame()
        if states is not None:
            states.append(np.asarray(state, dtype=np.float64))
        return obs

    obs = reset(seed=seed)
    buffer.start_episode(obs)
    steps = 0
    with tqdm(total=budget, desc="random data", disable=not progress, leave=False) as bar:
        while steps < budget:
            action = int(rng.integers(env.action_space.n))
            obs, reward, terminated, truncated, info = env.step(action)
            steps += info.get("repeats", 1)
            bar.update(info.get("repeats", 1))
            buffer.add(action, reward, obs, terminated, truncated)
            if states is not None:
                states.append(np.asarray(info["state"], dtype=np.float64))
            if terminated or truncated:
                buffer.start_episode(reset())
    env.close()
    return buffer, steps


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


# -- the trainer --------------------------------------------------------------------------------

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

    def save(self) -> Path:
        """Everything a resumed run needs, written atomically."""
        payload = {
            "config": config_to_dict(self.config), "iteration": self.iteration, "pretrained": self.pretrained,
            "vae": self.vae.state_dict(), "mdn": self.mdn.state_dict(), "ppo": self.ppo.state_dict(),
            "dream_generator": self.dream_generator.get_state(),
            "start_generator": self.start_generator.get_state(),
            "envs": json.dumps([env_state(env) for env in self.envs]) if self._latent is not None else "",
            "latent": list(self._latent) if self._latent is not None else [],
            "episode_return": torch.as_tensor(self._episode_return),
            "result": json.dumps(dataclasses.asdict(self.result)), "metrics": json.dumps(self.metrics),
            "memory_file": "", "open_episodes": [self._episode_tensors(e) for e in self._open_episodes],
            "memory_optimizer": self.memory_optimizer.state_dict() if self.memory_optimizer is not None else {},
        }
        if self.memory_data is not None:
            # M's data goes to its own file, named by the iteration, written before the checkpoint
            # that names it; older ones are removed only once that checkpoint is in place
            payload["memory_file"] = f"memory_{self.iteration}.npz"
            self.memory_data.save(self.out / payload["memory_file"])
        path = save_checkpoint(self.checkpoint_path(), CHECKPOINT_KIND, payload)
        for old in self.out.glob("memory_*.npz"):
            if old.name != payload["memory_file"]:
                old.unlink()
        return path

    @staticmethod
    def _episode_tensors(episode: dict | None) -> dict:
        return {} if episode is None else {key: torch.as_tensor(np.stack(values)) for key, values in episode.items()}

    def load(self, path: str | Path) -> None:
        data = load_checkpoint(path, CHECKPOINT_KIND, map_location=self.device)
        self.iteration, self.pretrained = int(data["iteration"]), bool(data["pretrained"])
        self.vae.load_state_dict(data["vae"])
        self.mdn.load_state_dict(data["mdn"])
        self.ppo.load_state_dict(data["ppo"])
        self.dream_generator.set_state(data["dream_generator"].cpu())
        self.start_generator.set_state(data["start_generator"].cpu())
        if data["envs"]:
            for env, saved in zip(self.envs, json.loads(data["envs"])):
                restore_env_state(env, saved)
            self._latent = VMLatent(*data["latent"])
        self._episode_return = data["episode_return"].cpu().numpy().copy()
        # checkpoints written before M's iterative training existed have none of its state
        memory_file = data.get("memory_file", "")
        self.memory_data = SequenceBuffer.load(Path(path).parent / memory_file) if memory_file else None
        self._open_episodes = [{key: list(value.cpu().numpy()) for key, value in episode.items()} or None
                               for episode in data.get("open_episodes", [{}] * len(self.envs))]
        if data.get("memory_optimizer"):
            self.memory_optimizer = self._new_memory_optimizer()
            self.memory_optimizer.load_state_dict(data["memory_optimizer"])
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


class ControllerPolicy:
    """C acting in the real pixel environment through V and M, for
    :func:`~wmbook.evaluation.evaluate`: V encodes each frame, C acts on ``[z, h]``, and M's
    state moves on with the action, per episode."""

    def __init__(self, world: VisionMemoryModel, ppo: PPO, greedy: bool = True):
        self.world, self.ppo, self.greedy = world, ppo, greedy
        self.device = next(ppo.net.parameters()).device

    @torch.no_grad()
    def reset(self, first_frames: np.ndarray) -> None:
        fresh = self.world.initial_state(len(first_frames), self.device)
        self.latent = VMLatent(self.encode(first_frames), fresh.h, fresh.c)
        self.last: tuple[torch.Tensor, VMLatent, torch.Tensor] | None = None  # rows, their state, action

    def encode(self, frames: np.ndarray) -> torch.Tensor:
        return self.world.vae.encode(torch.as_tensor(frames, device=self.device))

    @torch.no_grad()
    def __call__(self, frames: np.ndarray, rows: np.ndarray) -> np.ndarray:
        index = torch.as_tensor(rows, device=self.device)
        if self.last is not None:  # M steps on the last action; V encodes the frame it led to
            acted, before, action = self.last
            _, (h, cell) = self.world.mdn.step(before.z, action, (before.h, before.c))
            z = self.latent.z.index_put((index,), self.encode(frames))
            self.latent = VMLatent(z, self.latent.h.index_put((acted,), h), self.latent.c.index_put((acted,), cell))
        now = VMLatent(*(x[index] for x in self.latent))
        action = self.ppo.net.act(self.world.features(now), self.ppo.generator, greedy=self.greedy)[0]
        self.last = (index, now, action)
        return action.cpu().numpy()


def evaluate_controller(world: VisionMemoryModel, ppo: PPO, config: Config, episodes: int,
                        seed: int | None = None, greedy: bool = True) -> np.ndarray:
    """Returns of ``episodes`` episodes of the controller in the real pixel environment (the
    book's protocol, :func:`~wmbook.evaluation.evaluate`), episode ``i`` from
    ``reset(seed=evaluation_seed(config.seed) + i)``."""
    seed = evaluation_seed(config.seed) if seed is None else seed
    return evaluate(ControllerPolicy(world, ppo, greedy), lambda: make_envs(config, 1)[0], episodes, seed)


# -- a controller trained wholly in the dream ------------------------------------------------------

@dataclass
class DreamResult:
    """A controller trained only in the dream: its dream returns and its real returns."""

    temperature: float
    dream_returns: list[float]
    real_returns: list[float]
    imagined_steps: int


def dream_starts(world: VisionMemoryModel, latents: SequenceBuffer) -> VMLatent:
    """The latent state ``(z, h, c)`` at every step of every episode of a buffer of latents,
    filtered through M as in the real environment (``h`` restarts at each episode)."""
    device = next(world.mdn.parameters()).device
    zs, hs, cs = [], [], []
    with torch.no_grad():
        for episode in latents.episodes():
            z = torch.as_tensor(episode.obs, device=device)
            state = world.mdn.initial_state(1, device)
            for t in range(len(z)):
                zs.append(z[t]), hs.append(state[0][0]), cs.append(state[1][0])
                if t < len(episode.action):
                    _, state = world.mdn.step(z[t:t + 1], torch.as_tensor(episode.action[t:t + 1], device=device),
                                              state)
    return VMLatent(torch.stack(zs), torch.stack(hs), torch.stack(cs))


def train_in_dream(trainer: WorldModelPPOTrainer, temperature: float, imagined_steps: int,
                   dream_episodes: int = 20, dream_max_steps: int = 250, real_episodes: int = 10) -> DreamResult:
    """Train ``trainer``'s controller only on M's dream at ``temperature`` (V and M pretrained,
    no real step), from the latent states of the random data; then score it in the dream
    (episodes from random-data start states, at most ``dream_max_steps`` decisions) and in the
    real environment."""
    c = trainer.config
    trainer.world.temperature = temperature
    starts = dream_starts(trainer.world, trainer.random_latents)
    first = torch.as_tensor(np.flatnonzero(_is_first(trainer.random_latents)))
    per_iteration = c.env.num_envs * c.ppo.n_steps
    done_steps = 0
    horizon = c.world_model.training.imagination_horizon
    ppo = trainer.ppo
    # anneal over the imagined budget, as a real run anneals over its real budget
    ppo.config = dataclasses.replace(ppo.config, total_timesteps=imagined_steps)
    while done_steps < imagined_steps:
        batch, dream = trainer.imagine(starts, per_iteration, horizon)
        done_steps += dream["imagined_steps"]
        trainer.method.ppo_update(ppo, Batch(*(x.to(trainer.device) for x in batch)), done_steps)
    dream_returns = dream_episode_returns(trainer, VMLatent(*(x[first] for x in starts)), dream_episodes,
                                          dream_max_steps)
    real = evaluate_controller(trainer.world, ppo, c, real_episodes)
    return DreamResult(temperature, dream_returns.tolist(), real.tolist(), done_steps)


def _is_first(latents: SequenceBuffer) -> np.ndarray:
    flags = []
    for episode in latents.episodes():
        flags += [True] + [False] * len(episode.action)
    return np.asarray(flags)


@torch.no_grad()
def dream_episode_returns(trainer: WorldModelPPOTrainer, starts: VMLatent, episodes: int, max_steps: int
                          ) -> np.ndarray:
    """Returns of greedy episodes played wholly in the dream from start latents drawn from
    ``starts``; an episode ends where M's done head (sampled) says so, or at ``max_steps``
    decisions. Rewards are M's, so a return counts real steps as M predicts them."""
    device = trainer.device
    pick = torch.randint(len(starts.z), (episodes,), generator=trainer.start_generator).to(device)
    latent = VMLatent(*(x[pick] for x in starts))
    returns = torch.zeros(episodes, device=device)
    alive = torch.ones(episodes, dtype=torch.bool, device=device)
    for _ in range(max_steps):
        action = trainer.ppo.net.act(trainer.world.features(latent), greedy=True)[0]
        step = trainer.world.imagine_step(latent, action)
        returns += step.reward * alive
        done = torch.rand(episodes, generator=trainer.dream_generator, device=device) < step.done_prob
        alive &= ~done
        latent = step.latent
        if not alive.any():
            break
    return returns.cpu().numpy()


# -- command line -------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m wmbook train-world-model-ppo",
        description="Train V + M + C (a VAE, an MDN-RNN and a PPO controller trained partly in the "
                    "dream) on an environment seen through its pixels.")
    parser.add_argument("--config", help="YAML configuration (default: the package's defaults, as in "
                                         "configs/world_model_ppo.yaml)")
    parser.add_argument("--env", help="Gymnasium environment id with rgb_array rendering (default CartPole-v1)")
    parser.add_argument("--total-timesteps", type=int, help="real environment steps of the controller")
    parser.add_argument("--device", help="auto, cpu, cuda or mps")
    parser.add_argument("--num-envs", type=int, help="environments stepped side by side")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--out", help="folder for metrics.jsonl, checkpoint.pt, result.json and tensorboard/")
    parser.add_argument("--imagination-ratio", type=float, help="fraction of the controller's experience imagined")
    parser.add_argument("--tensorboard", action="store_true", help="also log to TensorBoard (in OUT/tensorboard)")
    parser.add_argument("--resume", metavar="PATH", help="continue the run saved in this checkpoint")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    return parser


def _check_env(env_id: str) -> None:
    """A one-line error for an id that does not exist, has no pixels or no discrete actions."""
    import gymnasium as gym

    try:
        spec = gym.spec(env_id)
    except gym.error.Error as error:
        raise ConfigError(f"environment {env_id!r} does not exist: {error}") from None
    try:
        env = gym.make(spec.id, render_mode="rgb_array")
    except Exception as error:  # an env without rgb_array rendering, or missing dependencies
        raise ConfigError(f"environment {env_id!r} cannot render frames (render_mode='rgb_array'): {error}") from None
    try:
        if not isinstance(env.action_space, gym.spaces.Discrete):
            raise ConfigError(f"environment {env_id!r} has action space {env.action_space}; this trainer's "
                              f"controller needs Discrete actions")
    finally:
        env.close()


def run_from_args(argv: list[str] | None) -> RunResult:
    """Parse the command line, build the configuration and run (or resume)."""
    from wmbook.device import pick_device

    args = _parser().parse_args(argv)
    if args.resume:
        data = load_checkpoint(args.resume, CHECKPOINT_KIND)
        config = config_from_dict(data["config"])
        config = dataclasses.replace(config, out=str(Path(args.resume).parent))
    else:
        config = load_config(args.config) if args.config else Config()
    flag_keys = {"env": "env.id", "total_timesteps": "total_timesteps", "num_envs": "env.num_envs",
                 "seed": "seed", "out": "out", "device": "device",
                 "imagination_ratio": "world_model.training.imagination_ratio"}
    overrides = {key: getattr(args, flag) for flag, key in flag_keys.items() if getattr(args, flag) is not None}
    if args.tensorboard:
        overrides["tensorboard"] = True
    if overrides:
        config = with_overrides(config, **overrides)
    _check_env(config.env.id)
    device = pick_device(config.device)
    torch.set_num_threads(1)
    trainer = WorldModelPPOTrainer(config, device, progress=args.progress)
    if args.resume:
        trainer.load(args.resume)
    result = trainer.train()
    from wmbook.checkpoint import write_json

    write_json(Path(config.out) / "result.json", {**dataclasses.asdict(result), "final_return": result.final_return})
    print(f"real steps {result.collection_steps + result.real_steps:,} (random {result.collection_steps:,}, "
          f"controller {result.real_steps:,}), imagined {result.imagined_steps:,}; greedy return "
          f"{result.final_return:.1f} over {len(result.final_returns)} episodes; written to {config.out}")
    return result


def main(argv: list[str] | None = None) -> int:
    """The ``train-world-model-ppo`` command; bad input gives one line on stderr and exit code 2."""
    try:
        run_from_args(argv)
    except (ConfigError, FileNotFoundError, ValueError) as error:
        print(f"train-world-model-ppo: error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    except (RuntimeError, FloatingPointError) as error:  # a device that is missing, a loss that diverged
        print(f"train-world-model-ppo: error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("train-world-model-ppo: interrupted; continue with --resume OUT/checkpoint.pt", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
