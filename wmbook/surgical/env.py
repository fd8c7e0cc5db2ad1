"""The ground-truth environment: the simulator (:mod:`wmbook.surgical.simulator`) as a
``gymnasium.Env`` with ``MultiBinary(100)`` actions, in which a policy's true outcome is
measured, and the point of a stored procedure where a policy takes over."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import gymnasium as gym
import numpy as np

from wmbook.surgical.simulator import Patient, SimulatorConfig, SurgicalSimulator, weighted_reward
from wmbook.surgical.triplets import DEFAULT_REWARD_WEIGHTS, N_TRIPLETS, REWARD_NAMES


@dataclass(frozen=True)
class ProcedureStart:
    """Where a policy takes over a procedure: the patient, the hidden state before frame ``t``,
    and the history before it (``embeddings`` ``(t, D)``, ``triplets`` ``(t, 100)``), which a
    policy may use as its context. ``t = 0`` starts before the first frame."""

    patient: Patient
    state: np.ndarray
    t: int
    embeddings: np.ndarray
    triplets: np.ndarray
    name: str = ""


class SurgicalEnv(gym.Env):
    """The simulator as a ``gymnasium.Env`` with ``MultiBinary(100)`` actions.

    ``reset(seed=s)`` starts a fresh procedure of ``Patient.draw(s)`` (``options={"start":
    ProcedureStart}`` takes over a stored procedure instead). An observation is the latest frame
    embedding ``(D,)`` float32. ``step(labels)`` plays one second: the reward is the weighted sum
    of the five components (``reward_weights``, the seed's by default); ``terminated`` when the
    procedure is complete, ``truncated`` after ``config.max_frames`` frames. ``info`` holds the
    ``phase``, the ``rewards`` components, the adverse ``events``, ``t``, and ``state``, the hidden
    state as an array (for simulated surgeons and analysis; a learned policy must not read it).
    """

    metadata = {"render_modes": []}

    def __init__(self, config: SimulatorConfig | None = None,
                 reward_weights: Mapping[str, float] | None = None):
        self.sim = SurgicalSimulator(config)
        self.config = self.sim.config
        self.reward_weights = dict(DEFAULT_REWARD_WEIGHTS if reward_weights is None else reward_weights)
        weighted_reward(dict.fromkeys(REWARD_NAMES, 0.0), self.reward_weights)  # checks the names
        self.action_space = gym.spaces.MultiBinary(N_TRIPLETS)
        limit = np.float32(10.0)
        self.observation_space = gym.spaces.Box(-limit, limit, (self.config.embedding_dim,), np.float32)
        self._done = True
        self._steps = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = dict(options or {})
        start = options.pop("start", None)
        if options:
            raise ValueError(f"unknown reset options {sorted(options)}; only 'start' is supported")
        if start is None:
            patient = Patient.draw(int(self.np_random.integers(2**31)) if seed is None else seed)
            self.sim.reset(patient)
            obs = self.sim.observe_empty()
        else:
            if not isinstance(start, ProcedureStart):
                raise TypeError(f"options['start'] must be a ProcedureStart, got {type(start).__name__}")
            self.sim.restore(start.patient, start.state, start.t)
            obs = start.embeddings[-1] if start.t > 0 else self.sim.observe_empty()
        self._done, self._steps = False, 0
        return obs.astype(np.float32), self._info(self.sim.state.phase, {}, ())

    def _info(self, phase: int, rewards: dict, events: tuple) -> dict[str, Any]:
        return {"phase": phase, "rewards": rewards, "events": events, "t": self.sim.t,
                "state": self.sim.state.as_array(), "patient": self.sim.patient}

    def step(self, action):
        if self._done:
            raise gym.error.ResetNeeded("call reset() before stepping a finished procedure")
        labels = np.asarray(action)
        if labels.shape != (N_TRIPLETS,) or not np.all((labels == 0) | (labels == 1)):
            raise ValueError(f"an action is 0/1 labels of shape ({N_TRIPLETS},), got shape {labels.shape}")
        frame = self.sim.step(labels.astype(np.int8))
        self._steps += 1
        reward = weighted_reward(frame.rewards, self.reward_weights)
        terminated = frame.done
        truncated = not terminated and self.sim.t >= self.config.max_frames
        self._done = terminated or truncated
        return frame.embedding, reward, terminated, truncated, self._info(frame.phase, frame.rewards,
                                                                           frame.events)
