"""The imitation baseline: autoregressive next-triplet prediction with the world model's
imitation head, rolled forward over its own predictions.

From a context of ``W`` frames (read from a zero state, as in training) the model gives the
latent ``h_t``; the imitation head gives the probabilities of the triplets at ``t + 1``; the
expected number (1 to 3) of the most likely of them
(:func:`~wmbook.surgical.model.sample_triplets`, deterministic) are taken as the next action,
the transition imagines the frame they lead to, and the head is asked again: the probabilities
at step ``k`` are the anticipation of ``t + k``. The "current" column comes from the
recognition head, which reads the frame ``z_t`` itself.

:class:`ImitationPolicy` acts with the same head in the simulator: it keeps the last ``W`` frames
and its own actions, and samples its next triplets (1 to 3) from the head.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from wmbook.surgical.model import SurgicalLatent, SurgicalWorldModel, sample_triplets


def context_windows(procedure, context: int, actions: str = "recognised") -> dict[str, torch.Tensor]:
    """The window of ``context`` frames ending at every frame ``t >= context - 1`` of
    ``procedure``: ``embeddings`` ``(N, W, D)``, ``actions`` ``(N, W, 100)`` (the true triplets,
    or the recogniser's scores when ``actions == "recognised"``), ``t`` ``(N,)``."""
    if actions not in ("true", "recognised"):
        raise ValueError(f"actions must be 'true' or 'recognised', got {actions!r}")
    source = procedure.triplets
    if actions == "recognised":
        if procedure.recognised is None:
            raise ValueError(f"procedure {procedure.name} has no recognised actions")
        source = procedure.recognised
    T = len(procedure)
    if T < context:
        raise ValueError(f"procedure {procedure.name} has {T} frames, fewer than the context {context}")
    ends = np.arange(context - 1, T)
    index = ends[:, None] - np.arange(context - 1, -1, -1)[None]
    return {"embeddings": torch.from_numpy(procedure.embeddings[index]),
            "actions": torch.from_numpy(np.asarray(source, dtype=np.float32)[index]),
            "t": torch.from_numpy(ends)}


@torch.no_grad()
def start_latents(model: SurgicalWorldModel, procedures: Sequence, stride: int = 10,
                  actions: str = "true") -> SurgicalLatent:
    """Latents ``(N, ...)`` at every ``stride``-th full-context frame of ``procedures``."""
    if stride < 1:
        raise ValueError(f"stride must be positive, got {stride}")
    hs, zs = [], []
    for procedure in procedures:
        windows = context_windows(procedure, model.config.context, actions)
        keep = slice(None, None, stride)
        conf = model.confidence(windows["actions"][keep].shape[:2], actions == "recognised")
        h = model.encode_sequence(windows["embeddings"][keep], windows["actions"][keep], conf)[:, -1]
        hs.append(h)
        zs.append(windows["embeddings"][keep][:, -1])
    if not hs:
        raise ValueError("no procedure to start from")
    return SurgicalLatent(torch.cat(hs), torch.cat(zs))


@torch.no_grad()
def filter_context(model: SurgicalWorldModel, windows: dict[str, torch.Tensor],
                   recognised: bool) -> tuple[SurgicalLatent, torch.Tensor]:
    """The latent at the end of each window ``(N, ...)`` and the GRU state one frame earlier
    ``(N, H)`` (for the recognition head)."""
    conf = model.confidence(windows["actions"].shape[:2], recognised)
    hs = model.encode_sequence(windows["embeddings"], windows["actions"], conf)
    return SurgicalLatent(hs[:, -1], windows["embeddings"][:, -1]), hs[:, -2]


@torch.no_grad()
def anticipate(model: SurgicalWorldModel, procedure, horizons: Sequence[int] = (0, 1, 5, 10),
               actions: str = "recognised") -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Scores and targets of the imitation baseline at each horizon (seconds ahead; 0 is the
    current frame): ``{k: (scores (N_k, 100), targets (N_k, 100))}`` over every frame ``t``
    with a full context and ``t + k`` inside the procedure."""
    if any(k < 0 for k in horizons):
        raise ValueError(f"horizons must be non-negative, got {list(horizons)}")
    W = model.config.context
    windows = context_windows(procedure, W, actions)
    latent, h_prev = filter_context(model, windows, actions == "recognised")
    t = windows["t"].numpy()
    T, out = len(procedure), {}
    if 0 in horizons:
        scores = torch.sigmoid(model.recognition_logits(h_prev, latent.z)).numpy()
        out[0] = (scores, procedure.triplets[t])
    for k in range(1, max(horizons, default=0) + 1):
        probs = torch.sigmoid(model.next_action_logits(latent.h))
        if k in horizons:
            valid = t + k < T
            out[k] = (probs.numpy()[valid], procedure.triplets[t[valid] + k])
        action = sample_triplets(probs, deterministic=True)
        latent = model.predict(latent, action).latent
    return {k: out[k] for k in horizons}


class ImitationPolicy:
    """The imitation head as a policy of :class:`~wmbook.surgical.env.SurgicalEnv`.

    ``reset(start)`` takes the history of a :class:`~wmbook.surgical.env.ProcedureStart`
    as context; ``act(observation, info)`` (``info`` is not read) appends the frame its last
    action produced and returns the next labels ``(100,)`` int8, 1 to 3 active, drawn from the
    head with a generator seeded by ``seed``, ignoring labels below ``floor`` (or, if
    ``deterministic``, its expected number of most likely ones; see
    :func:`~wmbook.surgical.model.sample_triplets`).
    """

    def __init__(self, model: SurgicalWorldModel, seed: int = 0, deterministic: bool = False,
                 floor: float = 0.05):
        self.model, self.deterministic, self.floor = model.eval(), deterministic, floor
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self._frames: list[np.ndarray] = []
        self._actions: list[np.ndarray] = []
        self._pending: np.ndarray | None = None

    def reset(self, start=None) -> None:
        W = self.model.config.context
        self.generator.manual_seed(self.seed)
        self._frames = [] if start is None else list(start.embeddings[-W:])
        self._actions = [] if start is None else list(np.asarray(start.triplets[-W:], np.float32))
        self._pending = None

    @torch.no_grad()
    def probabilities(self) -> torch.Tensor:
        """``(1, 100)`` the head's probabilities of the next triplets given the context."""
        model = self.model
        if not self._frames:
            h = model.initial_state(1).h
        else:
            z = torch.from_numpy(np.stack(self._frames)[None])
            a = torch.from_numpy(np.stack(self._actions)[None].astype(np.float32))
            h = model.filter_window(z, a).h
        return torch.sigmoid(model.next_action_logits(h))

    def act(self, observation: np.ndarray, info: dict | None = None) -> np.ndarray:
        W = self.model.config.context
        if self._pending is not None:
            self._frames.append(np.asarray(observation, np.float32))
            self._actions.append(self._pending.astype(np.float32))
            self._frames, self._actions = self._frames[-W:], self._actions[-W:]
        action = sample_triplets(self.probabilities(), self.generator, deterministic=self.deterministic,
                                 floor=self.floor)[0].numpy().astype(np.int8)
        self._pending = action
        return action
