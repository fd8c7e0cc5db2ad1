"""A controller trained wholly in M's dream (:func:`train_in_dream`, Chapter 4's temperature
sweep), scored in the dream and in the real environment, and the latent states of recorded
episodes that dreams start from (:func:`dream_starts`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from wmbook.agents.ppo import Batch
from wmbook.agents.world_model_ppo.controller import evaluate_controller
from wmbook.agents.world_model_ppo.trainer import WorldModelPPOTrainer
from wmbook.buffers import SequenceBuffer
from wmbook.models.mdn_rnn import VisionMemoryModel, VMLatent


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


