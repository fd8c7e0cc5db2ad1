"""A V + M + C run's configuration, one frozen dataclass per section of
``configs/world_model_ppo.yaml`` (read by :func:`wmbook.config.load_yaml`), and its real data:
the pixel environments and the random episodes that V and M pretrain on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wmbook.agents.ppo import PPOConfig
from wmbook.buffers import SequenceBuffer
from wmbook.config import ConfigError, from_dict, load_yaml, section_of, with_overrides as overrides
from wmbook.envs import set_cartpole_state
from wmbook.models.mdn_rnn import MDNRNNConfig
from wmbook.models.vae import VAEConfig

# half-widths of the box that diverse random starts are drawn from: x, x_dot, theta, theta_dot
DIVERSE_START = np.array([2.0, 1.0, 0.15, 1.0])
DEFAULT_CONFIG_PATH = Path(__file__).resolve().parents[3] / "configs" / "world_model_ppo.yaml"



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
