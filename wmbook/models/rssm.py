"""Dreamer's recurrent state-space model (RSSM) for vector observations.

The model state has two parts: a deterministic ``h_t`` carried by a GRU, which remembers the
past, and a stochastic ``z_t``, which holds what the past cannot predict. Named as in the
chapter:

* encoder ``e_t = enc(o_t)``;
* sequence model ``h_t = GRU(h_{t-1}, z_{t-1}, a_{t-1})``;
* transition model (prior) ``p(z_t | h_t)``;
* inference model (posterior) ``q(z_t | h_t, e_t)``;
* decoder ``dec(h_t, z_t) = o_hat_t``, reward predictor ``r_hat_t``, continuation predictor
  ``c_hat_t`` (probability that the episode goes on after ``o_t``).

DreamerV3's robustness pieces are switches of :class:`RSSMConfig`, all on by default:
categorical latents with straight-through gradients and a 1 % uniform mix, symlog
observations, a two-hot reward head, and KL balancing with free bits.

The model meets the recurrent world-model protocol of :mod:`wmbook.models.base`: its latent is
an :class:`RSSMState` ``(h, z)``, so :func:`wmbook.rollout.imagine` and
:class:`wmbook.envs.DreamEnv` work with it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from wmbook.models.base import Step, reset_first


# -- DreamerV3's transforms -----------------------------------------------------------------


def symlog(x: torch.Tensor) -> torch.Tensor:
    """``sign(x) log(1 + |x|)``: squashes large magnitudes, identity-like near zero."""
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`symlog`."""
    return torch.sign(x) * torch.expm1(x.abs())


class TwoHot(nn.Module):
    """A scalar as a distribution over fixed bins placed evenly in symlog space.

    ``encode`` spreads a value over its two nearest bins, so that the weighted mean of the
    bins gives the value back exactly (inside the bin range); ``decode`` turns logits
    ``(..., bins)`` into that mean, in the original (symexp) space. A head trained with the
    cross-entropy to the two-hot target learns a whole distribution, and its gradients do not
    grow with the size of the returns (DreamerV3).
    """

    def __init__(self, bins: int = 255, low: float = -20.0, high: float = 20.0):
        super().__init__()
        if bins < 2 or not low < high:
            raise ValueError(f"two-hot needs at least 2 bins over low < high, got {bins} over [{low}, {high}]")
        self.register_buffer("bins", torch.linspace(low, high, bins))

    def encode(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` ``(...)`` -> two-hot weights ``(..., bins)`` (summing to 1)."""
        x = symlog(value).clamp(self.bins[0], self.bins[-1])
        # index of the bin at or below x, kept below the last bin so k + 1 exists
        below = (torch.bucketize(x, self.bins, right=True) - 1).clamp(0, len(self.bins) - 2)
        left, right = self.bins[below], self.bins[below + 1]
        weight_right = ((x - left) / (right - left)).clamp(0, 1)
        target = torch.zeros(*x.shape, len(self.bins), device=x.device, dtype=x.dtype)
        target.scatter_(-1, below.unsqueeze(-1), (1 - weight_right).unsqueeze(-1))
        target.scatter_add_(-1, (below + 1).unsqueeze(-1), weight_right.unsqueeze(-1))
        return target

    def decode(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits ``(..., bins)`` -> the mean value ``(...)``."""
        return symexp((logits.softmax(-1) * self.bins).sum(-1))

    def loss(self, logits: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """Cross-entropy ``(...)`` of logits ``(..., bins)`` against the two-hot of ``value``."""
        return -(self.encode(value) * logits.log_softmax(-1)).sum(-1)


# -- configuration and state ----------------------------------------------------------------


@dataclass(frozen=True)
class RSSMConfig:
    """Sizes and switches of the RSSM.

    ``stoch`` categorical variables of ``classes`` classes each make ``z`` (flattened to
    ``stoch * classes`` one-hots); with ``discrete=False``, ``z`` is a diagonal Gaussian of
    ``stoch * classes`` dimensions instead.
    """

    obs_dim: int
    action_dim: int                 # number of discrete actions, or the size of a vector action
    discrete_actions: bool = True   # actions are indices (one-hot inside the model)
    deter: int = 64                 # size of h
    stoch: int = 8                  # categorical variables in z
    classes: int = 8                # classes per variable
    hidden: int = 64                # width of every MLP
    layers: int = 1                 # hidden layers of encoder, decoder and heads
    # robustness switches (DreamerV3), each on by default
    discrete: bool = True           # categorical z with straight-through gradients (else Gaussian)
    unimix: float = 0.01            # uniform mix in the categorical probabilities (0: off)
    symlog_obs: bool = True         # encode and reconstruct observations in symlog space
    twohot_reward: bool = True      # reward head: two-hot over symlog bins (else squared error)
    kl_balance: bool = True         # split KL into dynamics and representation terms
    free_bits: float = 1.0          # nats of KL per step left unpenalised (0: off)
    dyn_scale: float = 0.5          # weight of KL(sg(q) || p), trains the prior
    rep_scale: float = 0.1          # weight of KL(q || sg(p)), trains the posterior
    kl_scale: float = 1.0           # weight of the plain KL when kl_balance is off
    reward_bins: int = 255
    recon_scale: float = 1.0
    reward_scale: float = 1.0
    cont_scale: float = 1.0

    @property
    def z_size(self) -> int:
        return self.stoch * self.classes

    @property
    def feature_size(self) -> int:
        """Size of the features ``[h, z]`` the heads, actor and critic see."""
        return self.deter + self.z_size


class RSSMState(NamedTuple):
    """The latent of the RSSM: ``h`` ``(B, deter)`` and ``z`` ``(B, stoch * classes)``."""

    h: torch.Tensor
    z: torch.Tensor


@dataclass
class Posteriors:
    """What filtering a sequence of ``T`` steps produced, every tensor ``(B, T, ...)``.

    ``h`` ``(B, T, deter)``; ``z`` ``(B, T, z_size)`` sampled from the posterior;
    ``post`` and ``prior``: the distribution parameters (logits ``(B, T, stoch, classes)``,
    or Gaussian mean and std concatenated ``(B, T, 2 * z_size)``).
    """

    h: torch.Tensor
    z: torch.Tensor
    post: torch.Tensor
    prior: torch.Tensor

    @property
    def state(self) -> RSSMState:
        return RSSMState(self.h, self.z)

    def features(self) -> torch.Tensor:
        """``[h, z]`` ``(B, T, feature_size)``."""
        return torch.cat([self.h, self.z], -1)


@dataclass
class WorldModelLosses:
    """The world-model loss and its parts (scalars, averaged over batch and time)."""

    total: torch.Tensor
    recon: torch.Tensor
    reward: torch.Tensor
    cont: torch.Tensor
    kl: torch.Tensor        # the raw KL(q || p), before free bits and scales
    kl_loss: torch.Tensor   # the KL term as it enters the total

    def as_floats(self) -> dict[str, float]:
        return {name: float(getattr(self, name).detach()) for name in
                ("total", "recon", "reward", "cont", "kl", "kl_loss")}


def block(in_dim: int, hidden: int, layers: int) -> nn.Sequential:
    """``layers`` of Linear, LayerNorm and SiLU: ``(..., in_dim)`` -> ``(..., hidden)``.

    The normalisation keeps activations in range however large the inputs grow (DreamerV3).
    """
    parts: list[nn.Module] = []
    width = in_dim
    for _ in range(layers):
        parts += [nn.Linear(width, hidden), nn.LayerNorm(hidden), nn.SiLU()]
        width = hidden
    return nn.Sequential(*parts)


def zero_init(layer: nn.Linear) -> nn.Linear:
    """An output layer that starts at zero: a two-hot head then predicts 0 with an even spread
    over the middle bins instead of a random large value (DreamerV3)."""
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


# -- the model ------------------------------------------------------------------------------


class RSSM(nn.Module):
    """Encoder, sequence model, prior, posterior, decoder, reward and continuation predictors."""

    def __init__(self, config: RSSMConfig):
        super().__init__()
        c = self.config = config
        if c.obs_dim < 1 or c.action_dim < 1:
            raise ValueError(f"obs_dim and action_dim must be positive, got {c.obs_dim} and {c.action_dim}")
        if not 0 <= c.unimix < 1:
            raise ValueError(f"unimix must be in [0, 1), got {c.unimix}")
        if c.free_bits < 0:
            raise ValueError(f"free_bits must be non-negative, got {c.free_bits}")
        self.action_shape: tuple[int, ...] = () if c.discrete_actions else (c.action_dim,)
        params = c.z_size if c.discrete else 2 * c.z_size
        self.encoder = block(c.obs_dim, c.hidden, c.layers)
        self.img_in = block(c.z_size + c.action_dim, c.hidden, 1)
        self.gru = nn.GRUCell(c.hidden, c.deter)
        self.prior_net = nn.Sequential(block(c.deter, c.hidden, 1), nn.Linear(c.hidden, params))
        self.post_net = nn.Sequential(block(c.deter + c.hidden, c.hidden, 1), nn.Linear(c.hidden, params))
        self.decoder = nn.Sequential(block(c.feature_size, c.hidden, c.layers), nn.Linear(c.hidden, c.obs_dim))
        reward_out = c.reward_bins if c.twohot_reward else 1
        self.reward_head = nn.Sequential(block(c.feature_size, c.hidden, c.layers),
                                         zero_init(nn.Linear(c.hidden, reward_out)))
        self.cont_head = nn.Sequential(block(c.feature_size, c.hidden, c.layers), nn.Linear(c.hidden, 1))
        self.twohot = TwoHot(c.reward_bins)

    # -- distributions over z ---------------------------------------------------------------

    def _dist_params(self, raw: torch.Tensor) -> torch.Tensor:
        """Network output -> logits ``(..., stoch, classes)`` with the uniform mix, or Gaussian
        ``[mean, std]`` ``(..., 2 * z_size)``."""
        c = self.config
        if c.discrete:
            logits = raw.reshape(*raw.shape[:-1], c.stoch, c.classes)
            if c.unimix > 0:  # a floor under every class keeps the KL and log-probs finite
                probs = (1 - c.unimix) * logits.softmax(-1) + c.unimix / c.classes
                logits = probs.log()
            return logits
        mean, std = raw.chunk(2, -1)
        return torch.cat([mean, F.softplus(std) + 0.1], -1)

    def _sample(self, params: torch.Tensor, sample: bool = True) -> torch.Tensor:
        """A flat ``z`` ``(..., z_size)`` from distribution parameters; ``sample=False`` gives
        the mode. Categorical samples pass gradients straight through to the probabilities."""
        c = self.config
        if c.discrete:
            probs = params.softmax(-1)
            if sample:  # Gumbel-max: argmax(logits + Gumbel noise) is a categorical sample
                uniform = torch.rand_like(params).clamp_(1e-20, 1.0)
                index = (params - torch.log(-torch.log(uniform))).argmax(-1)
            else:
                index = probs.argmax(-1)
            one_hot = F.one_hot(index, c.classes).to(probs.dtype)
            z = one_hot + probs - probs.detach()  # straight-through estimator
            return z.reshape(*z.shape[:-2], c.z_size)
        mean, std = params.chunk(2, -1)
        return mean + std * torch.randn_like(std) if sample else mean

    def kl(self, post: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        """``KL(q || p)`` ``(...)``, summed over the latent variables."""
        if self.config.discrete:
            log_q, log_p = post.log_softmax(-1), prior.log_softmax(-1)
            return (log_q.exp() * (log_q - log_p)).sum((-2, -1))
        mq, sq = post.chunk(2, -1)
        mp, sp = prior.chunk(2, -1)
        return (torch.log(sp / sq) + (sq ** 2 + (mq - mp) ** 2) / (2 * sp ** 2) - 0.5).sum(-1)

    # -- one step -------------------------------------------------------------------------

    def _action_input(self, action: torch.Tensor | None, batch: int, device) -> torch.Tensor:
        """Actions as the float ``(B, action_dim)`` the sequence model reads."""
        c = self.config
        if action is None:
            return torch.zeros(batch, c.action_dim, device=device)
        if c.discrete_actions:
            if action.shape != (batch,):
                raise ValueError(f"discrete actions must have shape ({batch},), got {tuple(action.shape)}")
            return F.one_hot(action.long(), c.action_dim).float()
        if action.shape != (batch, c.action_dim):
            raise ValueError(f"actions must have shape ({batch}, {c.action_dim}), got {tuple(action.shape)}")
        return action.float()

    def sequence_step(self, latent: RSSMState, action: torch.Tensor) -> torch.Tensor:
        """``h_t = GRU(h_{t-1}, z_{t-1}, a_{t-1})``: ``(B, deter)`` for float actions ``(B, action_dim)``."""
        x = self.img_in(torch.cat([latent.z, action], -1))
        return self.gru(x, latent.h)

    def prior(self, h: torch.Tensor) -> torch.Tensor:
        """Transition model: parameters of ``p(z_t | h_t)``."""
        return self._dist_params(self.prior_net(h))

    def posterior(self, h: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
        """Inference model: parameters of ``q(z_t | h_t, e_t)``."""
        return self._dist_params(self.post_net(torch.cat([h, embed], -1)))

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        """``e_t = enc(o_t)``: ``(..., obs_dim)`` -> ``(..., hidden)``."""
        if obs.shape[-1] != self.config.obs_dim:
            raise ValueError(f"observations must end in obs_dim = {self.config.obs_dim}, got {tuple(obs.shape)}")
        obs = obs.float()
        return self.encoder(symlog(obs) if self.config.symlog_obs else obs)

    # -- the world-model protocol ---------------------------------------------------------

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> RSSMState:
        """Zeros: ``h`` ``(B, deter)`` and ``z`` ``(B, z_size)``."""
        c = self.config
        device = device if device is not None else self.gru.weight_hh.device
        return RSSMState(torch.zeros(batch_size, c.deter, device=device),
                         torch.zeros(batch_size, c.z_size, device=device))

    def observe(self, latent: RSSMState, action: torch.Tensor | None, obs: torch.Tensor,
                is_first: torch.Tensor, *, sample: bool = True) -> RSSMState:
        """One filtering step: the posterior latent after ``obs`` ``(B, obs_dim)``.

        Rows where ``is_first`` ``(B,)`` holds restart from the initial state and ignore their
        action. ``sample=False`` takes the posterior's mode (greedy evaluation).
        """
        if obs.ndim != 2:
            raise ValueError(f"obs must have shape (B, obs_dim), got {tuple(obs.shape)}")
        batch = obs.shape[0]
        if is_first.shape != (batch,):
            raise ValueError(f"is_first must have shape ({batch},), got {tuple(is_first.shape)}")
        latent = reset_first(self, latent, is_first)
        action_in = self._action_input(action, batch, obs.device)
        action_in = action_in * (~is_first).unsqueeze(-1).to(action_in.dtype)
        h = self.sequence_step(latent, action_in)
        post = self.posterior(h, self.encode(obs))
        return RSSMState(h, self._sample(post, sample))

    def imagine_step(self, latent: RSSMState, action: torch.Tensor, *, sample: bool = True) -> Step:
        """One step of the prior: the next latent, its predicted reward and continuation."""
        batch = latent.h.shape[0]
        h = self.sequence_step(latent, self._action_input(action, batch, latent.h.device))
        nxt = RSSMState(h, self._sample(self.prior(h), sample))
        feat = self.features(nxt)
        return Step(nxt, self.reward(feat), self.continuation(feat))

    def features(self, latent: RSSMState) -> torch.Tensor:
        """``[h, z]`` ``(B, feature_size)``."""
        return torch.cat([latent.h, latent.z], -1)

    def decode(self, latent: RSSMState) -> torch.Tensor:
        """The observation ``(B, obs_dim)`` the model expects for ``latent``."""
        return self.decode_features(self.features(latent))

    # -- heads on features ------------------------------------------------------------------

    def decode_features(self, feat: torch.Tensor) -> torch.Tensor:
        out = self.decoder(feat)
        return symexp(out) if self.config.symlog_obs else out

    def reward(self, feat: torch.Tensor) -> torch.Tensor:
        """Predicted reward ``(...)`` from features ``(..., feature_size)``."""
        out = self.reward_head(feat)
        return self.twohot.decode(out) if self.config.twohot_reward else out.squeeze(-1)

    def continuation(self, feat: torch.Tensor) -> torch.Tensor:
        """Probability ``(...)`` that the episode goes on."""
        return torch.sigmoid(self.cont_head(feat).squeeze(-1))

    # -- training ---------------------------------------------------------------------------

    def observe_sequence(self, obs: torch.Tensor, action: torch.Tensor, is_first: torch.Tensor,
                         latent: RSSMState | None = None) -> Posteriors:
        """Filter chunks of ``T`` steps: ``obs`` ``(B, T, obs_dim)``, ``action`` ``(B, T)``
        (``a_{t-1}`` beside ``o_t``, as in :class:`~wmbook.buffers.SequenceBatch`),
        ``is_first`` ``(B, T)`` bool. Returns the posteriors and priors of every step."""
        batch, length = obs.shape[:2]
        if is_first.shape != (batch, length):
            raise ValueError(f"is_first must have shape ({batch}, {length}), got {tuple(is_first.shape)}")
        embed = self.encode(obs)  # every step at once, outside the recurrence
        latent = self.initial_state(batch, obs.device) if latent is None else latent
        hs, zs, posts, priors = [], [], [], []
        for t in range(length):
            first = is_first[:, t]
            latent = reset_first(self, latent, first)
            action_in = self._action_input(action[:, t], batch, obs.device)
            action_in = action_in * (~first).unsqueeze(-1).to(action_in.dtype)
            h = self.sequence_step(latent, action_in)
            post = self.posterior(h, embed[:, t])
            latent = RSSMState(h, self._sample(post))
            hs.append(h)
            zs.append(latent.z)
            posts.append(post)
            priors.append(self.prior(h))
        return Posteriors(torch.stack(hs, 1), torch.stack(zs, 1), torch.stack(posts, 1), torch.stack(priors, 1))

    def kl_loss(self, post: torch.Tensor, prior: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The KL term ``(...)`` and the raw ``KL(q || p)`` ``(...)``.

        With balancing, the prior is pulled towards the posterior (``dyn_scale``) harder than
        the posterior towards the prior (``rep_scale``), each part through a stop-gradient; free
        bits leave each term unpenalised while it is below ``free_bits`` nats, so the
        posterior keeps some information about the observation instead of collapsing onto
        the prior.
        """
        c = self.config
        raw = self.kl(post, prior)
        if c.kl_balance:
            dyn = self.kl(post.detach(), prior).clamp(min=c.free_bits)
            rep = self.kl(post, prior.detach()).clamp(min=c.free_bits)
            return c.dyn_scale * dyn + c.rep_scale * rep, raw
        return c.kl_scale * raw.clamp(min=c.free_bits), raw

    def loss(self, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor,
             terminated: torch.Tensor, is_first: torch.Tensor) -> tuple[WorldModelLosses, Posteriors]:
        """The world-model loss on chunks ``(B, T, ...)``:
        ``L = b_recon L_recon + b_reward L_reward + b_cont L_cont + L_KL``, summed over the
        observation dimensions and averaged over batch and time."""
        c = self.config
        posteriors = self.observe_sequence(obs, action, is_first)
        feat = posteriors.features()
        target = symlog(obs.float()) if c.symlog_obs else obs.float()
        recon = 0.5 * ((self.decoder(feat) - target) ** 2).sum(-1)  # -log N(target; dec, 1) + const
        reward_out = self.reward_head(feat)
        if c.twohot_reward:
            reward_loss = self.twohot.loss(reward_out, reward)
        else:
            reward_loss = 0.5 * (reward_out.squeeze(-1) - reward) ** 2
        cont_target = 1.0 - terminated.float()
        cont_loss = F.binary_cross_entropy_with_logits(self.cont_head(feat).squeeze(-1), cont_target,
                                                       reduction="none")
        kl_term, raw_kl = self.kl_loss(posteriors.post, posteriors.prior)
        total = (c.recon_scale * recon + c.reward_scale * reward_loss + c.cont_scale * cont_loss
                 + kl_term).mean()
        losses = WorldModelLosses(total, recon.mean(), reward_loss.mean(), cont_loss.mean(),
                                  raw_kl.mean(), kl_term.mean())
        return losses, posteriors
