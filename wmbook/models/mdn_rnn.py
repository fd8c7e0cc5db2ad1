"""M, the memory model of World Models: an LSTM over ``(z_t, a_t)`` whose output is a mixture of
Gaussians over the next latent ``z_{t+1}``, plus heads for the reward and the episode's end.

One step of :class:`MDNRNN`::

    h_{t+1}, c_{t+1} = LSTM([z_t, onehot(a_t)], (h_t, c_t))
    pi, mu, sigma    = heads(h_{t+1})                  # K components, each a diagonal Gaussian
    p(z_{t+1})       = sum_k pi_k N(z_{t+1}; mu_k, diag(sigma_k^2))
    r_{t+1}, d_{t+1} = heads(h_{t+1})                  # reward, and logit of "the episode ends"

The mixture is shared across the latent's dimensions (one categorical per step, a diagonal
Gaussian per component), so a sample moves all of ``z`` coherently. On CartPole the reward is
always 1 and the done head carries the whole learning signal of the task.

Temperature ``tau`` as in Ha & Schmidhuber (2018): the mixture logits are divided by ``tau`` and
every sigma multiplied by ``sqrt(tau)``; a cold dream (``tau`` < 1) is nearly deterministic, a hot
one (``tau`` > 1) noisier than the data.

The known failure modes are guarded: log-sigma is clamped to ``[log_sigma_min, log_sigma_max]``
(a collapsing sigma makes the likelihood, and its gradients, explode), gradients are clipped to
``grad_clip``, and a loss that turns NaN or infinite stops training with an error naming the
update.

:class:`VisionMemoryModel` puts V and M together behind the book's world-model protocol
(:mod:`wmbook.models.base`): its latent is ``(z, h, c)``, ``observe`` encodes a real frame,
``imagine_step`` samples the dream, ``features`` is the controller's input ``[z, h]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wmbook.buffers import SequenceBuffer
from wmbook.models.base import Step
from wmbook.models.vae import ConvVAE

ACTION_KINDS = ("discrete", "multibinary", "continuous")


@dataclass(frozen=True)
class MDNRNNConfig:
    """Sizes and training settings of :class:`MDNRNN`.

    ``action_dim`` is the number of discrete actions (one-hot encoded) or the length of a
    multi-label or continuous action vector, per ``action_kind``.
    """

    latent_dim: int = 32
    action_dim: int = 2
    action_kind: str = "discrete"
    hidden_dim: int = 256
    num_mixtures: int = 5
    temperature: float = 1.0
    learning_rate: float = 1e-3
    log_sigma_min: float = -5.0
    log_sigma_max: float = 2.0
    grad_clip: float = 1.0
    done_weight: float = 1.0
    reward_weight: float = 1.0

    def __post_init__(self) -> None:
        for name in ("latent_dim", "action_dim", "hidden_dim", "num_mixtures"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.action_kind not in ACTION_KINDS:
            raise ValueError(f"action_kind must be one of {ACTION_KINDS}, got {self.action_kind!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if not self.log_sigma_min < self.log_sigma_max:
            raise ValueError(f"log_sigma_min ({self.log_sigma_min}) must be below log_sigma_max "
                             f"({self.log_sigma_max})")


class MDNOutput(NamedTuple):
    """M's prediction for the next step of ``B`` rows: mixture ``logit_pi`` ``(B, K)``, means
    ``mu`` and clamped ``log_sigma`` ``(B, K, Z)``, ``reward`` ``(B,)`` and ``done_logit`` ``(B,)``."""

    logit_pi: torch.Tensor
    mu: torch.Tensor
    log_sigma: torch.Tensor
    reward: torch.Tensor
    done_logit: torch.Tensor


LSTMState = tuple[torch.Tensor, torch.Tensor]  # (h, c), each (B, hidden_dim)


def mdn_nll(output: MDNOutput, target: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood ``(B,)`` of ``target`` ``(B, Z)`` under the mixture (in nats, summed
    over the latent's dimensions)."""
    z = target.unsqueeze(1)  # (B, 1, Z) against (B, K, Z)
    log_normal = -0.5 * ((z - output.mu) * torch.exp(-output.log_sigma)).pow(2) - output.log_sigma \
        - 0.5 * math.log(2 * math.pi)
    log_weights = F.log_softmax(output.logit_pi, dim=-1)
    return -torch.logsumexp(log_weights + log_normal.sum(-1), dim=-1)


def sample_mdn(output: MDNOutput, temperature: float = 1.0, generator: torch.Generator | None = None
               ) -> torch.Tensor:
    """Draw ``z`` ``(B, Z)`` from the mixture at ``temperature``: logits / tau, sigma * sqrt(tau)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    probs = F.softmax(output.logit_pi / temperature, dim=-1)
    component = torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (B,)
    rows = torch.arange(len(component), device=component.device)
    mu, log_sigma = output.mu[rows, component], output.log_sigma[rows, component]
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(log_sigma) * math.sqrt(temperature) * eps


class MDNRNN(nn.Module):
    """The MDN-RNN (see the module's docstring), stepped one time step at a time."""

    def __init__(self, config: MDNRNNConfig = MDNRNNConfig()):
        super().__init__()
        self.config = c = config
        self.cell = nn.LSTMCell(c.latent_dim + c.action_dim, c.hidden_dim)
        k, z = c.num_mixtures, c.latent_dim
        self.head = nn.Linear(c.hidden_dim, k + 2 * k * z + 2)

    def initial_state(self, batch_size: int, device: torch.device | str = "cpu") -> LSTMState:
        zeros = torch.zeros(batch_size, self.config.hidden_dim, device=device)
        return zeros, zeros.clone()

    def encode_action(self, action: torch.Tensor) -> torch.Tensor:
        """Actions as the LSTM's float input ``(B, action_dim)``: one-hot for discrete indices ``(B,)``."""
        c = self.config
        if c.action_kind == "discrete":
            if action.ndim != 1:
                raise ValueError(f"discrete actions must have shape (B,), got {tuple(action.shape)}")
            return F.one_hot(action.long(), c.action_dim).float()
        if action.ndim != 2 or action.shape[1] != c.action_dim:
            raise ValueError(f"{c.action_kind} actions must have shape (B, {c.action_dim}), got {tuple(action.shape)}")
        return action.float()

    def heads(self, h: torch.Tensor) -> MDNOutput:
        """The mixture, reward and done predictions read from hidden states ``(B, hidden_dim)``."""
        c = self.config
        k, z = c.num_mixtures, c.latent_dim
        out = self.head(h)
        logit_pi = out[:, :k]
        mu = out[:, k:k + k * z].view(-1, k, z)
        log_sigma = out[:, k + k * z:k + 2 * k * z].view(-1, k, z).clamp(c.log_sigma_min, c.log_sigma_max)
        return MDNOutput(logit_pi, mu, log_sigma, out[:, -2], out[:, -1])

    def step(self, z: torch.Tensor, action: torch.Tensor, state: LSTMState) -> tuple[MDNOutput, LSTMState]:
        """Consume ``(z_t (B, Z), a_t)`` and predict step ``t + 1``; returns the prediction and
        the new state ``(h_{t+1}, c_{t+1})``."""
        h, c = self.cell(torch.cat([z, self.encode_action(action)], dim=-1), state)
        return self.heads(h), (h, c)

    def sequence_loss(self, z: torch.Tensor, action: torch.Tensor, reward: torch.Tensor,
                      terminated: torch.Tensor, is_first: torch.Tensor) -> dict[str, torch.Tensor]:
        """:func:`mdn_loss` of this model on chunks ``(B, T, ...)``."""
        return mdn_loss(self, z, action, reward, terminated, is_first)


def mdn_loss(mdn: MDNRNN, z: torch.Tensor, action: torch.Tensor, reward: torch.Tensor,
             terminated: torch.Tensor, is_first: torch.Tensor) -> dict[str, torch.Tensor]:
    """Losses over chunks in :class:`~wmbook.buffers.SequenceBuffer`'s layout.

    Args:
        z: ``(B, T, Z)`` latents of the observations ``o_t``.
        action: ``(B, T)`` (or ``(B, T, A)``): ``action[:, t]`` is the action that led to ``o_t``.
        reward, terminated, is_first: ``(B, T)``, of arriving at ``o_t``.

    Step ``t`` consumes ``(z_t, a_t = action[:, t + 1])`` and is scored on ``z_{t+1}``,
    ``reward[:, t + 1]`` and ``terminated[:, t + 1]``; predictions across an episode boundary
    (``is_first[:, t + 1]``) are masked out, and the state restarts where ``is_first`` is set.
    Returns the scalars ``loss``, ``nll`` (per step, summed over z's dimensions),
    ``reward_mse`` and ``done_bce``.
    """
    batch, length = z.shape[:2]
    if length < 2:
        raise ValueError(f"the MDN-RNN's loss needs chunks of at least 2 steps, got {length}")
    h, cell = mdn.initial_state(batch, z.device)
    keep = (~is_first[:, :-1]).float().unsqueeze(-1)  # restart the rows where an episode begins
    hidden = []
    for t in range(length - 1):  # only the recurrence is stepped; the heads read all steps at once
        inputs = torch.cat([z[:, t], mdn.encode_action(action[:, t + 1])], dim=-1)
        h, cell = mdn.cell(inputs, (h * keep[:, t], cell * keep[:, t]))
        hidden.append(h)
    out = mdn.heads(torch.stack(hidden, 1).flatten(0, 1))  # (B * (T - 1), ...)
    nll = mdn_nll(out, z[:, 1:].flatten(0, 1)).view(batch, -1)
    reward_err = (out.reward.view(batch, -1) - reward[:, 1:]).pow(2)
    done_err = F.binary_cross_entropy_with_logits(out.done_logit.view(batch, -1), terminated[:, 1:].float(),
                                                  reduction="none")
    valid = (~is_first[:, 1:]).float()
    count = valid.sum().clamp_min(1.0)

    def masked(values: torch.Tensor) -> torch.Tensor:
        return (values * valid).sum() / count

    losses = {"nll": masked(nll), "reward_mse": masked(reward_err), "done_bce": masked(done_err)}
    c = mdn.config
    # the NLL is summed over Z dimensions; divide it so that the heads are not drowned out
    losses["loss"] = losses["nll"] / c.latent_dim + c.reward_weight * losses["reward_mse"] \
        + c.done_weight * losses["done_bce"]
    return losses


@dataclass
class MDNHistory:
    """Per-update training losses of :func:`train_mdn_rnn`."""

    nll: list[float] = field(default_factory=list)
    done_bce: list[float] = field(default_factory=list)
    reward_mse: list[float] = field(default_factory=list)


def latent_buffer(frames: SequenceBuffer, vae: ConvVAE, seed: int = 0) -> SequenceBuffer:
    """The episodes of a buffer of frames with every frame replaced by its latent (V's mean)."""
    from wmbook.models.vae import encode_frames

    out = SequenceBuffer(frames.capacity, (vae.config.latent_dim,), np.float32, frames.action_kind,
                         frames.action_shape, frames.n_actions, seed=seed)
    for episode in frames.episodes():
        z = encode_frames(vae, episode.obs).cpu().numpy()
        out.add_episode(z, episode.action, episode.reward, episode.terminated, episode.truncated)
    return out


def train_mdn_rnn(model: MDNRNN, latents: SequenceBuffer, updates: int, batch_size: int = 32,
                  chunk_length: int = 32, optimizer: torch.optim.Optimizer | None = None,
                  progress: bool = False, start_update: int = 0, loss_fn: Callable | None = None) -> MDNHistory:
    """``updates`` Adam steps on chunks of latent episodes (a :class:`SequenceBuffer` of z).

    Chunks are drawn by the buffer's own seeded generator. Gradients are clipped to
    ``config.grad_clip``. A non-finite loss raises ``FloatingPointError`` naming the update
    (numbered from ``start_update``) and its loss terms, before the weights are touched.
    ``loss_fn``: the loss minimised, called as :func:`mdn_loss` (default the model's own).
    """
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=model.config.learning_rate)
    length = min(chunk_length, len(latents))
    history = MDNHistory()
    model.train()
    for update in tqdm(range(start_update, start_update + updates), desc="M", disable=not progress, leave=False):
        batch = latents.sample(batch_size, length, device)
        chunks = (batch.obs, batch.action, batch.reward, batch.terminated, batch.is_first)
        losses = model.sequence_loss(*chunks) if loss_fn is None else loss_fn(model, *chunks)
        if not torch.isfinite(losses["loss"]):
            terms = ", ".join(f"{k} {v.item():.4g}" for k, v in losses.items())
            raise FloatingPointError(f"MDN-RNN loss is not finite at update {update} ({terms}): lower the "
                                     f"learning rate, the number of mixtures or log_sigma_max")
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        nn.utils.clip_grad_norm_(model.parameters(), model.config.grad_clip)
        optimizer.step()
        history.nll.append(losses["nll"].item())
        history.done_bce.append(losses["done_bce"].item())
        history.reward_mse.append(losses["reward_mse"].item())
    model.eval()
    return history


class VMLatent(NamedTuple):
    """The latent of :class:`VisionMemoryModel`: ``z`` ``(B, Z)``, LSTM ``h`` and ``c`` ``(B, H)``."""

    z: torch.Tensor
    h: torch.Tensor
    c: torch.Tensor


class VisionMemoryModel:
    """V and M behind the world-model protocol of :mod:`wmbook.models.base`.

    ``observe(latent, a_{t-1}, o_t, is_first)`` advances the LSTM with ``(z_{t-1}, a_{t-1})`` and
    encodes the frame ``o_t`` to ``z_t``; ``imagine_step(latent, a_t)`` advances the LSTM with
    ``(z_t, a_t)`` and samples ``z_{t+1}`` from the mixture at ``temperature``. The reward is M's
    reward head, ``done_prob`` the sigmoid of its done head. ``features`` is ``[z, h]``.
    Sampling draws from ``generator`` (torch's global generator when ``None``).
    """

    def __init__(self, vae: ConvVAE, mdn: MDNRNN, temperature: float | None = None,
                 generator: torch.Generator | None = None):
        if vae.config.latent_dim != mdn.config.latent_dim:
            raise ValueError(f"V's latent_dim {vae.config.latent_dim} differs from M's {mdn.config.latent_dim}")
        self.vae, self.mdn = vae, mdn
        self.temperature = mdn.config.temperature if temperature is None else float(temperature)
        self.generator = generator
        c = mdn.config
        self.action_shape: tuple[int, ...] = () if c.action_kind == "discrete" else (c.action_dim,)

    @property
    def feature_dim(self) -> int:
        return self.mdn.config.latent_dim + self.mdn.config.hidden_dim

    def parameters(self):
        yield from self.vae.parameters()
        yield from self.mdn.parameters()

    def initial_state(self, batch_size: int, device: torch.device | str = "cpu") -> VMLatent:
        h, c = self.mdn.initial_state(batch_size, device)
        return VMLatent(torch.zeros(batch_size, self.mdn.config.latent_dim, device=device), h, c)

    @torch.no_grad()
    def observe(self, latent: VMLatent, action: torch.Tensor | None, obs: torch.Tensor,
                is_first: torch.Tensor) -> VMLatent:
        z = self.vae.encode(obs)
        fresh = self.initial_state(len(z), z.device)
        if action is None:
            return VMLatent(z, fresh.h, fresh.c)
        _, (h, c) = self.mdn.step(latent.z, action, (latent.h, latent.c))
        first = is_first.bool().unsqueeze(1)
        return VMLatent(z, torch.where(first, fresh.h, h), torch.where(first, fresh.c, c))

    @torch.no_grad()
    def imagine_step(self, latent: VMLatent, action: torch.Tensor) -> Step:
        out, (h, c) = self.mdn.step(latent.z, action, (latent.h, latent.c))
        z = sample_mdn(out, self.temperature, self.generator)
        return Step(VMLatent(z, h, c), out.reward, done_prob=torch.sigmoid(out.done_logit))

    def features(self, latent: VMLatent) -> torch.Tensor:
        """The controller's input ``[z, h]``, ``(B, Z + H)``."""
        return torch.cat([latent.z, latent.h], dim=-1)

    @torch.no_grad()
    def decode(self, latent: VMLatent) -> torch.Tensor:
        """V's picture of the latent: frames ``(B, C, H, W)`` as uint8."""
        return (self.vae.decode(latent.z) * 255).round().to(torch.uint8)
