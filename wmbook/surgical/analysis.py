"""Looking at what surgical policies do: a recording of a policy's play in the simulator (the
phase it acted in, its labels, the frames it saw), the share of each triplet per phase, a 2-D
projection of frame trajectories, the world model's open-loop trajectory under logged actions,
and the outlook of several policies from one moment of a procedure."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np
import torch
from sklearn.decomposition import PCA

from wmbook.rollout import imagine
from wmbook.surgical.model import SurgicalWorldModel
from wmbook.surgical.env import SurgicalEnv
from wmbook.surgical.triplets import PHASES, triplet_name


@dataclass
class Recording:
    """What one policy did over every test procedure it played: per step the phase it acted
    in, its labels ``(100,)`` and the frame it saw ``(D,)``, and where each procedure began."""

    phases: list[int] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)
    frames: list[np.ndarray] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)     # index into the steps of each procedure
    names: list[str] = field(default_factory=list)

    def procedure(self, index: int) -> np.ndarray:
        """The frames ``(n, D)`` of the ``index``-th procedure played."""
        ends = self.starts[1:] + [len(self.frames)]
        return np.asarray(self.frames[self.starts[index]:ends[index]])


class RecordingPolicy:
    """A simulator policy (``reset(start)``, ``act(obs, info)``) that records into a
    :class:`Recording` and otherwise does what the wrapped policy does."""

    def __init__(self, policy, recording: Recording):
        self.policy, self.recording = policy, recording

    def reset(self, start=None) -> None:
        self.recording.starts.append(len(self.recording.frames))
        self.recording.names.append("" if start is None else start.name)
        self.policy.reset(start)

    def act(self, observation: np.ndarray, info: dict | None = None) -> np.ndarray:
        action = self.policy.act(observation, info)
        self.recording.phases.append(int((info or {}).get("phase", 0)))
        self.recording.actions.append(np.asarray(action, np.int8))
        self.recording.frames.append(np.asarray(observation, np.float32))
        return action


def recorder(recordings: dict[str, Recording]) -> Callable[[str, object], object]:
    """A ``wrap`` for :func:`~wmbook.surgical.compare.compare_policies` that records every
    policy's play into ``recordings[name]``."""
    def wrap(name: str, policy):
        return RecordingPolicy(policy, recordings.setdefault(name, Recording()))
    return wrap


def phase_action_distribution(recording: Recording, n_phases: int = len(PHASES),
                              n_actions: int = 100) -> np.ndarray:
    """``(n_phases, n_actions)``: per phase, the share of each triplet among the labels the
    policy chose in that phase (rows sum to 1; a phase never reached is a row of NaN)."""
    out = np.full((n_phases, n_actions), np.nan)
    phases = np.asarray(recording.phases)
    actions = np.asarray(recording.actions, dtype=np.float64).reshape(len(phases), n_actions)
    for k in range(n_phases):
        counts = actions[phases == k].sum(0)
        if counts.sum() > 0:
            out[k] = counts / counts.sum()
    return out


def distribution_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over the phases both reach of the total-variation distance between two
    :func:`phase_action_distribution` rows (0: the same choices, 1: disjoint ones)."""
    both = ~np.isnan(a).any(1) & ~np.isnan(b).any(1)
    if not both.any():
        raise ValueError("the two distributions share no phase")
    return float(0.5 * np.abs(a[both] - b[both]).sum(1).mean())


class Projection:
    """A 2-D principal-component projection of frame embeddings, fitted on ``frames`` ``(N, D)``."""

    def __init__(self, frames: np.ndarray):
        frames = np.asarray(frames, np.float64)
        if frames.ndim != 2 or len(frames) < 3:
            raise ValueError(f"fit the projection on frames of shape (N >= 3, D), got {frames.shape}")
        self.pca = PCA(n_components=2).fit(frames)
        self.pca.components_ *= np.where(self.pca.components_.sum(1, keepdims=True) < 0, -1.0, 1.0)  # a fixed sign

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """``(n, 2)`` coordinates of ``frames`` ``(n, D)``."""
        return self.pca.transform(np.asarray(frames, np.float64))


@torch.no_grad()
def imagined_trajectory(model: SurgicalWorldModel, procedure, start: int, steps: int) -> np.ndarray:
    """The world model's open-loop frames ``(n, D)`` after frame ``start - 1`` of ``procedure``
    under the expert's logged triplets, from its last ``context`` frames."""
    W = model.config.context
    if start < W:
        raise ValueError(f"start {start} must leave a context of {W} frames")
    z = torch.from_numpy(procedure.embeddings[None, start - W:start].astype(np.float32))
    a = torch.from_numpy(procedure.triplets[None, start - W:start].astype(np.float32))
    actions = torch.from_numpy(procedure.triplets[None, start:start + steps].astype(np.float32))
    imagined = imagine(model, None, actions.shape[1], actions=actions, start_latent=model.filter_window(z, a))
    return imagined.latents.z[0, 1:].numpy()


@dataclass
class Outlook:
    """What one policy does from a moment of a test procedure: its first labels and, played
    in the simulator for ``horizon`` seconds, the true reward per second ``(n,)``, the true
    risk per second ``(n,)`` and the adverse events."""

    labels: list[str]
    rewards: np.ndarray
    risks: np.ndarray
    events: int


def outlook(model: SurgicalWorldModel, policies: Mapping[str, Callable[[object], object]], procedure,
            t: int, simulator, reward_weights: Mapping[str, float], horizon: int) -> dict[str, Outlook]:
    """From frame ``t`` of ``procedure`` (its history as context), each policy's next labels
    and what the simulator says happens over the next ``horizon`` seconds. ``policies`` maps a
    name to a factory ``start -> policy``."""
    start = procedure.start(t)
    env = SurgicalEnv(simulator, reward_weights)
    out: dict[str, Outlook] = {}
    for name, make in policies.items():
        policy = make(start)
        obs, info = env.reset(options={"start": start})
        policy.reset(start)
        rewards, risks, events, first = [], [], 0, None
        for _ in range(horizon):
            action = policy.act(obs, info)
            if first is None:
                first = [triplet_name(int(i)) for i in np.flatnonzero(action)]
            obs, reward, terminated, truncated, info = env.step(action)
            rewards.append(reward)
            risks.append(info["rewards"]["_r_risk"])
            events += len(info["events"])
            if terminated or truncated:
                break
        out[name] = Outlook(first or [], np.asarray(rewards), np.asarray(risks), events)
    return out


def running_mean(frames: np.ndarray, window: int) -> np.ndarray:
    """``(n - window + 1, D)``: the mean of every ``window`` consecutive frames ``(n, D)`` (all
    of them, as one row, when there are fewer)."""
    frames = np.asarray(frames, np.float64)
    window = max(1, min(window, len(frames)))
    sums = np.cumsum(np.concatenate([np.zeros((1, frames.shape[1])), frames]), 0)
    return (sums[window:] - sums[:-window]) / window
