"""The surgical world model: from past frame embeddings and triplets, the next frame, phase,
reward components and actions; trained so that it stays accurate on recognised actions.

**Core: a GRU over a context of about 20 frames.** Each step reads one frame ``z_t`` ``(D,)``
and the encoding of its triplets ``a_t`` ``(100,)`` and updates ``h_t`` ``(H,)``. A GRU rather
than a causal transformer because (1) the book's world-model protocol
(:mod:`wmbook.models.base`) is recurrent: ``observe`` and ``imagine_step`` advance one step from
a fixed-size latent, which a GRU does in O(1) while a transformer must re-read its window;
(2) on 2 CPU cores a 128-unit GRU over 20 steps trains in minutes, where attention over the
same window costs more for no gain at this context length; (3) planning in Part 2 calls
``imagine_step`` thousands of times. Training and evaluation both read windows of ``context``
frames from a zero state, so the model never meets a history longer than it was trained on.

**Heads.** With ``h_t`` and the *next* triplets ``a_{t+1}`` (what the surgeon or a policy does
next), the transition predicts the next embedding ``z_{t+1}`` (as a residual on ``z_t``), the
next phase (7 logits), the five reward components of the next frame (``REWARD_NAMES``, the
seed's ``_r_...`` names) and whether it ends the procedure. From ``h_t`` alone the imitation
head predicts ``a_{t+1}`` (100 logits: independent sigmoids trained with binary cross-entropy,
as several triplets are active at once). From ``h_{t-1}`` and the frame ``z_t`` the recognition
head predicts ``a_t`` (the "current" column of the field's anticipation tables).
:func:`sample_triplets` turns probabilities into actions with 1 to 3 active.

**Confidence-weighted action encoding.** Actions enter as ``(100,)`` values in [0, 1] with a
confidence pair ``(c_action, c_tool)``: the encoder reads ``[c_action * a, c_tool *
instruments(a), c_action, c_tool]``. True actions come with ``(1, 1)``; a recogniser's output
with its accuracy, about ``(0.4, 0.9)`` (triplets are recognised far less reliably than
instruments), so the model learns how far to trust each part.

**Dual-path training with a progressive noise schedule.** Every batch passes through the model
twice: once with the true actions (the clean path) and once with actions in which each frame's
triplets are replaced by the recogniser's scores with probability ``rho`` (the noisy path); the
targets are the same true frames, phases, rewards and actions. ``rho`` rises linearly from
``noise_start`` to ``noise_end`` over the first ``noise_warmup`` fraction of training, so the
model first learns the dynamics from clean actions and then learns to live with recognised
ones, which is all it gets on real video.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Mapping, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from wmbook.device import to_device
from wmbook.models.base import Step, reset_first
from wmbook.models.layers import mlp
from wmbook.surgical.triplets import DEFAULT_REWARD_WEIGHTS, REWARD_NAMES, instrument_matrix



# -- multi-label actions ------------------------------------------------------------------------


def sample_triplets(probs: torch.Tensor, generator: torch.Generator | None = None,
                    min_active: int = 1, max_active: int = 3, deterministic: bool = False,
                    floor: float = 0.0) -> torch.Tensor:
    """Actions ``(B, n)`` float 0/1 from independent probabilities ``probs`` ``(B, n)``, with
    between ``min_active`` and ``max_active`` labels active per row.

    Sampling: each label is drawn as a Bernoulli (labels below ``floor`` are never drawn: with
    100 labels, many small probabilities add up to a spurious label in most rows); if more than
    ``max_active`` come up, the most probable of them are kept; if fewer than ``min_active``,
    the most probable of the others are added. ``deterministic``: the ``round(sum(probs))``
    most probable labels (the expected number of active labels, clamped to the bounds), where a
    0.5 threshold would drop every action whose probability is shared among alternatives.
    """
    if probs.ndim != 2:
        raise ValueError(f"probs must have shape (B, n), got {tuple(probs.shape)}")
    if not 0 <= min_active <= max_active <= probs.shape[1]:
        raise ValueError(f"need 0 <= min_active <= max_active <= {probs.shape[1]}, "
                         f"got {min_active}, {max_active}")
    if torch.isnan(probs).any() or probs.min() < 0 or probs.max() > 1:
        raise ValueError("probs must lie in [0, 1] without NaN")
    if deterministic:
        order = torch.argsort(probs, dim=1, descending=True)
        count = probs.sum(1).round().long().clamp(min_active, max_active)
    else:
        drawn = torch.bernoulli(probs, generator=generator).bool() & (probs >= floor)
        # drawn labels first (by probability), then the others (by probability)
        order = torch.argsort(drawn.float() * 2 + probs, dim=1, descending=True)
        count = drawn.sum(1).clamp(min_active, max_active)
    keep = torch.arange(probs.shape[1], device=probs.device)[None] < count[:, None]
    actions = torch.zeros_like(probs)
    actions.scatter_(1, order, keep.to(probs.dtype))
    return actions


# -- the model ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SurgicalWorldModelConfig:
    """Sizes of the surgical world model.

    ``reward_weights`` combine the five predicted components into the reward of
    ``imagine_step`` (the seed's defaults); ``action_confidence``/``tool_confidence`` are the
    confidences given to recognised actions.
    """

    embedding_dim: int = 64
    n_actions: int = 100
    n_phases: int = 7
    hidden_dim: int = 128
    action_embed_dim: int = 32
    head_hidden: int = 128
    context: int = 20
    action_confidence: float = 0.4
    tool_confidence: float = 0.9
    reward_weights: dict = field(default_factory=lambda: dict(DEFAULT_REWARD_WEIGHTS))

    def __post_init__(self):
        for name in ("embedding_dim", "hidden_dim", "action_embed_dim", "head_hidden", "context"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        unknown = set(self.reward_weights) - set(REWARD_NAMES)
        if unknown:
            raise ValueError(f"unknown reward components {sorted(unknown)}; known: {list(REWARD_NAMES)}")


class SurgicalLatent(NamedTuple):
    """The latent: GRU state ``h`` ``(B, H)`` and the latest frame ``z`` ``(B, D)`` (observed
    or imagined)."""

    h: torch.Tensor
    z: torch.Tensor


class SurgicalPrediction(NamedTuple):
    """One transition: next ``embedding`` ``(B, D)``, ``phase_logits`` ``(B, 7)``, ``rewards``
    ``(B, 5)`` in ``REWARD_NAMES`` order, ``done_logit`` ``(B,)`` and the next ``latent``."""

    embedding: torch.Tensor
    phase_logits: torch.Tensor
    rewards: torch.Tensor
    done_logit: torch.Tensor
    latent: SurgicalLatent


class ConfidenceActionEncoder(nn.Module):
    """``(B, 100)`` actions in [0, 1] and ``(B, 2)`` confidences ``(c_action, c_tool)`` ->
    ``(B, E)``: a linear map of ``[c_action * a, c_tool * instruments(a), c_action, c_tool]``."""

    def __init__(self, n_actions: int, out_dim: int, instrument_matrix: torch.Tensor):
        super().__init__()
        self.register_buffer("instrument_matrix", instrument_matrix)  # (100, 6)
        self.linear = nn.Linear(n_actions + instrument_matrix.shape[1] + 2, out_dim)

    def forward(self, actions: torch.Tensor, confidence: torch.Tensor) -> torch.Tensor:
        instruments = (actions @ self.instrument_matrix).clamp(max=1.0)
        c_action, c_tool = confidence[..., :1], confidence[..., 1:]
        return torch.tanh(self.linear(torch.cat([c_action * actions, c_tool * instruments, confidence], -1)))


class SurgicalWorldModel(nn.Module):
    """The surgical world model (see the module docstring); meets the
    :class:`~wmbook.models.base.WorldModel` protocol with ``MultiBinary(100)`` actions.

    Protocol conventions here: ``observe(latent, action, obs, is_first)`` reads the frame ``obs``
    ``(B, D)`` with the triplets ``action`` ``(B, 100)`` it shows (``None``: none known);
    ``imagine_step(latent, action)`` takes the next triplets, imagines the next frame and returns
    the weighted sum of the five predicted reward components as its reward and the predicted
    end of the procedure as its termination. ``features`` is ``[h, z]`` ``(B, H + D)``.
    """

    def __init__(self, config: SurgicalWorldModelConfig | None = None):
        super().__init__()
        self.config = config = config or SurgicalWorldModelConfig()
        self.action_shape = (config.n_actions,)
        D, H, E = config.embedding_dim, config.hidden_dim, config.action_embed_dim
        self.encoder = ConfidenceActionEncoder(config.n_actions, E, torch.from_numpy(instrument_matrix()))
        self.core = nn.GRU(D + E, H, batch_first=True)
        self.transition = mlp(H + E, config.head_hidden, 1, activation="silu")
        self.embedding_head = nn.Linear(config.head_hidden, D)
        self.phase_head = nn.Linear(config.head_hidden, config.n_phases)
        self.reward_head = nn.Linear(config.head_hidden, len(REWARD_NAMES))
        self.done_head = nn.Linear(config.head_hidden, 1)
        self.action_head = mlp(H, config.head_hidden, 1, config.n_actions)
        self.recognition_head = mlp(H + D, config.head_hidden, 1, config.n_actions)
        weights = torch.tensor([config.reward_weights.get(n, 0.0) for n in REWARD_NAMES])
        self.register_buffer("reward_weights", weights)

    # -- helpers ------------------------------------------------------------------------------

    def confidence(self, batch_shape: Sequence[int], recognised: bool | torch.Tensor,
                   device=None) -> torch.Tensor:
        """Confidences ``(*batch_shape, 2)``: ``(1, 1)`` for true actions, the configured
        ``(action_confidence, tool_confidence)`` where ``recognised`` (a bool or a bool mask of
        ``batch_shape``) holds."""
        c = self.config
        mask = torch.as_tensor(recognised, device=device).float()
        if mask.ndim == 0:
            mask = mask.expand(*batch_shape)
        true = torch.ones(*batch_shape, 2, device=device)
        noisy = torch.tensor([c.action_confidence, c.tool_confidence], device=device).expand_as(true)
        return torch.lerp(true, noisy, mask[..., None])

    def _check(self, name: str, x: torch.Tensor, size: int) -> None:
        if x.ndim != 2 or x.shape[1] != size:
            raise ValueError(f"{name} must have shape (B, {size}), got {tuple(x.shape)}")

    # -- sequences (training and evaluation) ---------------------------------------------------

    def encode_sequence(self, embeddings: torch.Tensor, actions: torch.Tensor,
                        confidence: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
        """GRU states ``(B, W, H)`` after each of ``W`` frames ``(B, W, D)`` with their actions
        ``(B, W, 100)`` and confidences ``(B, W, 2)``, starting from ``h0`` ``(B, H)`` (zeros)."""
        x = torch.cat([embeddings, self.encoder(actions, confidence)], -1)
        hs, _ = self.core(x, None if h0 is None else h0[None].contiguous())
        return hs

    def transition_heads(self, h: torch.Tensor, z: torch.Tensor, next_actions: torch.Tensor,
                         next_confidence: torch.Tensor):
        """Heads of the transition for any leading shape: ``h`` ``(..., H)``, ``z`` ``(..., D)``,
        next actions ``(..., 100)`` -> next embedding, phase logits, rewards ``(..., 5)``,
        done logit ``(...)``."""
        x = self.transition(torch.cat([h, self.encoder(next_actions, next_confidence)], -1))
        return (z + self.embedding_head(x), self.phase_head(x), self.reward_head(x),
                self.done_head(x).squeeze(-1))

    def next_action_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Imitation: logits ``(..., 100)`` of the next triplets from ``h`` ``(..., H)``."""
        return self.action_head(h)

    def recognition_logits(self, h_prev: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Logits ``(..., 100)`` of the triplets shown in frame ``z`` given the state before it."""
        return self.recognition_head(torch.cat([h_prev, z], -1))

    # -- the world-model protocol -----------------------------------------------------------

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> SurgicalLatent:
        c = self.config
        return SurgicalLatent(torch.zeros(batch_size, c.hidden_dim, device=device),
                              torch.zeros(batch_size, c.embedding_dim, device=device))

    def observe(self, latent: SurgicalLatent, action: torch.Tensor | None, obs: torch.Tensor,
                is_first: torch.Tensor, confidence: torch.Tensor | None = None) -> SurgicalLatent:
        """Read frame ``obs`` ``(B, D)`` showing triplets ``action`` ``(B, 100)`` (true unless
        ``confidence`` ``(B, 2)`` says otherwise); rows where ``is_first`` start over."""
        self._check("obs", obs, self.config.embedding_dim)
        if is_first.shape != obs.shape[:1]:
            raise ValueError(f"is_first must have shape ({obs.shape[0]},), got {tuple(is_first.shape)}")
        latent = reset_first(self, latent, is_first)
        if action is None:
            action = torch.zeros(obs.shape[0], self.config.n_actions, device=obs.device)
        self._check("action", action, self.config.n_actions)
        if confidence is None:
            confidence = self.confidence(obs.shape[:1], False, obs.device)
        h = self.encode_sequence(obs[:, None], action[:, None], confidence[:, None], latent.h)[:, 0]
        return SurgicalLatent(h, obs)

    def predict(self, latent: SurgicalLatent, action: torch.Tensor,
                confidence: torch.Tensor | None = None) -> SurgicalPrediction:
        """Imagine the frame the next triplets ``action`` ``(B, 100)`` lead to, all heads."""
        self._check("action", action, self.config.n_actions)
        if confidence is None:
            confidence = self.confidence(action.shape[:1], False, action.device)
        z, phase, rewards, done = self.transition_heads(latent.h, latent.z, action, confidence)
        h = self.encode_sequence(z[:, None], action[:, None], confidence[:, None], latent.h)[:, 0]
        return SurgicalPrediction(z, phase, rewards, done, SurgicalLatent(h, z))

    def imagine_step(self, latent: SurgicalLatent, action: torch.Tensor) -> Step:
        prediction = self.predict(latent, action.float())
        reward = prediction.rewards @ self.reward_weights
        return Step(prediction.latent, reward, done_prob=torch.sigmoid(prediction.done_logit))

    def features(self, latent: SurgicalLatent) -> torch.Tensor:
        return torch.cat([latent.h, latent.z], -1)

    def decode(self, latent: SurgicalLatent) -> torch.Tensor:
        """The frame embedding ``(B, D)`` of the latent."""
        return latent.z

    def filter_window(self, embeddings: torch.Tensor, actions: torch.Tensor,
                      confidence: torch.Tensor | None = None) -> SurgicalLatent:
        """The latent after reading a window ``(B, W, D)`` of frames with actions ``(B, W, 100)``
        from a zero state (as in training); ``confidence`` ``(B, W, 2)`` defaults to true actions."""
        if confidence is None:
            confidence = self.confidence(actions.shape[:2], False, actions.device)
        hs = self.encode_sequence(embeddings, actions, confidence)
        return SurgicalLatent(hs[:, -1], embeddings[:, -1])


# -- training -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SurgicalTrainConfig:
    """How the world model is trained.

    ``dual_path`` turns the noisy second path on; ``noise_start``/``noise_end`` bound the
    fraction ``rho`` of frames whose actions are replaced by the recogniser's scores, reached
    linearly over the first ``noise_warmup`` fraction of ``steps``.
    """

    steps: int = 1500
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-5
    grad_clip: float = 1.0
    dual_path: bool = True
    noise_start: float = 0.1
    noise_end: float = 1.0
    noise_warmup: float = 0.5
    loss_weights: dict = field(default_factory=lambda: {
        "embedding": 1.0, "phase": 0.5, "rewards": 1.0, "done": 0.1, "action": 1.0, "recognition": 1.0})
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("steps, batch_size and lr must be positive")
        if not 0 <= self.noise_start <= self.noise_end <= 1:
            raise ValueError(f"need 0 <= noise_start <= noise_end <= 1, got {self.noise_start}, "
                             f"{self.noise_end}")
        if not 0 < self.noise_warmup <= 1:
            raise ValueError(f"noise_warmup must lie in (0, 1], got {self.noise_warmup}")
        unknown = set(self.loss_weights) - {"embedding", "phase", "rewards", "done", "action", "recognition"}
        if unknown:
            raise ValueError(f"unknown loss weights {sorted(unknown)}")

    def noise_level(self, step: int) -> float:
        """``rho`` at ``step``: the progressive noise schedule."""
        ramp = min(1.0, step / max(1.0, self.noise_warmup * self.steps))
        return self.noise_start + (self.noise_end - self.noise_start) * ramp


class WindowSampler:
    """Uniform windows of ``length`` consecutive frames from a list of procedures (anything with
    ``embeddings`` ``(T, D)``, ``triplets`` ``(T, 100)``, ``phases`` ``(T,)``, and optionally
    ``recognised`` ``(T, 100)`` and ``rewards`` ``(T, 5)``), as tensors ``(B, length, ...)``.

    The last frame of each procedure is marked ``done``. Procedures shorter than ``length`` are
    skipped; an error if none is long enough.
    """

    def __init__(self, procedures: Sequence, length: int, seed: int = 0):
        usable = [p for p in procedures if len(p.phases) >= length]
        if not usable:
            raise ValueError(f"no procedure has the {length} frames a window needs")
        self.length = length
        cat = lambda name: torch.from_numpy(np.concatenate([getattr(p, name) for p in usable]))  # noqa: E731
        self.embeddings, self.triplets, self.phases = cat("embeddings"), cat("triplets"), cat("phases")
        self.recognised = (cat("recognised") if all(p.recognised is not None for p in usable)
                           else self.triplets.clone())
        n = len(self.phases)
        self.rewards = (cat("rewards") if all(p.rewards is not None for p in usable)
                        else torch.full((n, len(REWARD_NAMES)), float("nan")))
        lengths = np.array([len(p.phases) for p in usable])
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        self.done = torch.zeros(n)
        self.done[torch.from_numpy(offsets + lengths - 1)] = 1.0
        # every valid window start, over all procedures
        self.starts = np.concatenate([o + np.arange(L - length + 1) for o, L in zip(offsets, lengths)])
        self.rng = np.random.default_rng(seed)

    def sample(self, batch_size: int) -> dict[str, torch.Tensor]:
        starts = self.rng.choice(self.starts, batch_size)
        index = torch.from_numpy(starts[:, None] + np.arange(self.length)[None])
        return {"embeddings": self.embeddings[index], "triplets": self.triplets[index],
                "recognised": self.recognised[index], "phases": self.phases[index],
                "rewards": self.rewards[index], "done": self.done[index]}


def window_losses(model: SurgicalWorldModel, batch: Mapping[str, torch.Tensor],
                  noisy_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The losses of one path on windows ``(B, W + 1, ...)``: the first ``W`` frames are read,
    each predicting the next. ``noisy_mask`` ``(B, W + 1)`` bool marks frames whose actions are
    the recogniser's (the noisy path); ``None`` is the clean path."""
    z, a = batch["embeddings"], batch["triplets"]
    if noisy_mask is None:
        noisy_mask = torch.zeros(a.shape[:2], dtype=torch.bool, device=a.device)
    a_in = torch.where(noisy_mask[..., None], batch["recognised"], a)
    conf = model.confidence(a.shape[:2], noisy_mask, a.device)
    hs = model.encode_sequence(z[:, :-1], a_in[:, :-1], conf[:, :-1])            # (B, W, H)
    z_next, phase_logits, rewards, done_logit = model.transition_heads(
        hs, z[:, :-1], a_in[:, 1:], conf[:, 1:])
    losses = {
        "embedding": F.mse_loss(z_next, z[:, 1:]),
        "phase": F.cross_entropy(phase_logits.flatten(0, 1), batch["phases"][:, 1:].flatten()),
        "done": F.binary_cross_entropy_with_logits(done_logit, batch["done"][:, 1:]),
        "action": F.binary_cross_entropy_with_logits(model.next_action_logits(hs), a[:, 1:]),
        "recognition": F.binary_cross_entropy_with_logits(model.recognition_logits(hs, z[:, 1:]), a[:, 1:]),
    }
    target = batch["rewards"][:, 1:]
    if not torch.isnan(target).any():
        losses["rewards"] = F.mse_loss(rewards, target)
    return losses


@dataclass
class TrainHistory:
    """Per-step training losses (``total``, and each term of the clean and noisy paths) and the
    wall time in seconds."""

    losses: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            self.losses.setdefault(key, []).append(float(value))


def train_world_model(model: SurgicalWorldModel, procedures: Sequence, config: SurgicalTrainConfig,
                      progress: bool = False, loss_fn: Callable = window_losses) -> TrainHistory:
    """Train ``model`` on windows of ``context + 1`` frames of ``procedures`` (see
    :class:`WindowSampler`), minimising ``loss_fn`` (:func:`window_losses`) with the dual path
    when ``config.dual_path``, on the device of the model's parameters (batches are drawn on the
    CPU and moved there). Seeded by ``config.seed``; a non-finite loss raises ``FloatingPointError``."""
    torch.manual_seed(config.seed)
    sampler = WindowSampler(procedures, model.config.context + 1, config.seed)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, s / config.steps))))
    mask_rng = torch.Generator().manual_seed(config.seed + 1)
    weights, history, started = config.loss_weights, TrainHistory(), time.perf_counter()
    model.train()
    device = next(model.parameters()).device
    for step in tqdm(range(config.steps), desc="world model", disable=not progress, leave=False):
        batch = to_device(sampler.sample(config.batch_size), device)
        clean = loss_fn(model, batch)
        terms = {f"clean/{k}": v for k, v in clean.items()}
        total = sum(weights.get(k, 1.0) * v for k, v in clean.items())
        if config.dual_path:
            rho = config.noise_level(step)
            mask = (torch.rand(batch["triplets"].shape[:2], generator=mask_rng) < rho).to(device)
            noisy = loss_fn(model, batch, mask)
            terms.update({f"noisy/{k}": v for k, v in noisy.items()})
            total = 0.5 * (total + sum(weights.get(k, 1.0) * v for k, v in noisy.items()))
        if not torch.isfinite(total):
            raise FloatingPointError(f"the world-model loss became {total.item()} at step {step}: "
                                     f"{ {k: round(v.item(), 4) for k, v in terms.items()} }")
        optimiser.zero_grad(set_to_none=True)
        total.backward()
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimiser.step()
        schedule.step()
        history.add({"total": total.item(), **{k: v.item() for k, v in terms.items()}})
    model.eval()
    history.seconds = time.perf_counter() - started
    return history


def world_model_payload(model: SurgicalWorldModel, train_config: SurgicalTrainConfig | None = None) -> dict:
    """What a checkpoint of the model holds (for :func:`wmbook.checkpoint.save_checkpoint`)."""
    return {"config": asdict(model.config), "state_dict": model.state_dict(),
            "train_config": asdict(train_config) if train_config is not None else None}


def load_world_model(path, map_location="cpu") -> SurgicalWorldModel:
    """A :class:`SurgicalWorldModel` from a checkpoint written with :func:`world_model_payload`."""
    from wmbook.checkpoint import load_checkpoint

    data = load_checkpoint(path, "SurgicalWorldModel", map_location)
    model = SurgicalWorldModel(SurgicalWorldModelConfig(**data["config"]))
    model.load_state_dict(data["state_dict"])
    return model.eval()
