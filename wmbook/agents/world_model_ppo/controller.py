"""C in the real pixel environment through V and M (:class:`ControllerPolicy`), judged by the
book's evaluation protocol (:func:`evaluate_controller`)."""

from __future__ import annotations

import numpy as np
import torch

from wmbook.agents.dqn import evaluation_seed
from wmbook.agents.ppo import PPO
from wmbook.agents.world_model_ppo.config import Config, make_envs
from wmbook.evaluation import evaluate
from wmbook.models.mdn_rnn import VisionMemoryModel, VMLatent


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
