"""V, the vision model of World Models: a convolutional beta-VAE that compresses a frame to z.

An encoder of strided convolutions maps a frame ``(3, H, W)`` (uint8 or floats in [0, 1]) to the
mean and log-variance of a diagonal Gaussian over ``z`` ``(latent_dim,)``; a decoder of transposed
convolutions maps ``z`` back to pixel intensities in [0, 1]. Between the convolutions and the
latent sit the fully connected ``hidden_dims`` layers, each followed by layer normalisation (it
keeps the scale of the features steady while the convolutions are still learning, which lets one
learning rate serve both parts).

The loss is the negative evidence lower bound with a weight ``beta`` on the KL term::

    reconstruction = sum over pixels of BCE(x_hat, x)          (mean over the batch)
    kl             = sum over latent dims of KL(q(z|x) || N(0, I))
    loss           = reconstruction + beta * kl

Summing over the pixels (rather than averaging) keeps the reconstruction term on the scale of
the image, so that ``beta = 1`` does not drown a small object such as CartPole's thin pole in
the KL term. The pixel likelihood is a Bernoulli on the intensity (binary cross-entropy on the
decoder's logits) by default: on frames that are mostly white background, squared error through
a sigmoid gives almost no gradient to a pixel the decoder has painted white where the cart now
stands, and the VAE settles on the mean frame with ``z`` unused (posterior collapse); the
cross-entropy's gradient ``x_hat - x`` does not vanish there. ``likelihood="gaussian"`` gives
the summed squared error.

CartPole's pole is the hard part: it is about one pixel wide, and its lean moves its tip by at
most three pixels, so a VAE can reconstruct all but a few pixels of a frame while ignoring the
angle altogether (measured: a linear read-out of the angle from ``z`` explained none of its
variance). ``contrast_weight`` > 1 multiplies the loss of each pixel by ``1 + (w - 1) * c``,
where ``c`` in [0, 1] is how far the frame's pixel lies from the training set's mean frame, so
the few pixels that tell one lean from another weigh as much as the background.

Posterior collapse in part. On some seeds, and on some CPUs' rounding of the same seed, the KL
term wins early in training: the code's means shrink to a few ten-thousandths while the
posterior's spread stays near 1, and the KL falls below a nat. The means still vary with the
frame (a linear read-out of the pole's angle from them can still reach R^2 0.99, whatever their
scale), but anything that reads them as numbers of ordinary size sees constants. Two guards:

- ``free_bits`` (Kingma et al., 2016, as in DreamerV3): the KL of each dimension, averaged over
  the batch, is charged no less than ``free_bits`` nats, so pushing a dimension below that gains
  nothing and the reconstruction is free to use it;
- :meth:`ConvVAE.encode` returns the mean of q(z|x) *standardised* per dimension with the
  statistics of the frames V was trained on (:func:`train_vae` sets them; :meth:`ConvVAE.decode`
  takes such codes), so M and C see unit-scale inputs whatever scale V settled on. The same
  frame always gives the same ``z``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LIKELIHOODS = ("bernoulli", "gaussian")


@dataclass(frozen=True)
class VAEConfig:
    """Shape and training settings of :class:`ConvVAE`.

    ``channels`` are the output channels of the encoder's convolutions (each halves the height
    and width; the decoder mirrors them); ``hidden_dims`` the fully connected layers between
    the flattened convolution features and the latent.
    """

    latent_dim: int = 32
    hidden_dims: tuple[int, ...] = (256, 128)
    beta: float = 1.0
    learning_rate: float = 1e-3
    image_size: int = 64                 # frame height (and width, unless image_width is set)
    image_width: int | None = None       # for frames wider than tall
    in_channels: int = 3
    channels: tuple[int, ...] = (32, 64, 128, 256)
    layer_norm: bool = True
    likelihood: str = "bernoulli"  # or "gaussian": summed squared error
    # weight of a pixel that differs fully from the training set's mean frame (1: all equal)
    contrast_weight: float = 1.0
    # nats per latent dimension (batch mean) that the KL term does not penalise (0: none)
    free_bits: float = 0.0


    def __post_init__(self) -> None:
        if self.latent_dim < 1:
            raise ValueError(f"latent_dim must be positive, got {self.latent_dim}")
        if self.beta < 0 or not math.isfinite(self.beta):
            raise ValueError(f"beta must be a finite number >= 0, got {self.beta}")
        if not self.channels or any(c < 1 for c in self.channels):
            raise ValueError(f"channels must be a non-empty list of positive integers, got {self.channels}")
        if any(h < 1 for h in self.hidden_dims):
            raise ValueError(f"hidden_dims must be positive integers, got {self.hidden_dims}")
        if not (self.free_bits >= 0 and math.isfinite(self.free_bits)):
            raise ValueError(f"free_bits must be a finite number >= 0, got {self.free_bits}")
        if not self.contrast_weight >= 1.0:
            raise ValueError(f"contrast_weight must be >= 1, got {self.contrast_weight}")
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")
        for side in (self.image_size, self.width):
            if side % (2 ** len(self.channels)):
                raise ValueError(f"image_size {side} must be divisible by 2^{len(self.channels)} "
                                 f"(one halving per convolution)")

    @property
    def width(self) -> int:
        return self.image_width or self.image_size


class VAEOutput(NamedTuple):
    """One pass of :class:`ConvVAE`: the reconstruction's ``logits`` ``(B, C, H, W)`` (its
    intensities are their sigmoid), ``mu`` and ``logvar`` ``(B, latent_dim)``, the sampled ``z``."""

    logits: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor
    z: torch.Tensor


class VAELoss(NamedTuple):
    """Scalars: ``loss = reconstruction + beta * kl``; reconstruction and KL reported apart."""

    loss: torch.Tensor
    reconstruction: torch.Tensor
    kl: torch.Tensor


def _hidden(sizes: list[int], layer_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(n_in, n_out), *( [nn.LayerNorm(n_out)] if layer_norm else []), nn.ReLU()]
    return nn.Sequential(*layers)


class ConvVAE(nn.Module):
    """A convolutional beta-VAE of square frames (see the module's docstring)."""

    def __init__(self, config: VAEConfig = VAEConfig()):
        super().__init__()
        self.config = c = config
        convs: list[nn.Module] = []
        n_in = c.in_channels
        for n_out in c.channels:
            convs += [nn.Conv2d(n_in, n_out, 4, stride=2, padding=1), nn.ReLU()]
            n_in = n_out
        self.conv_shape = (c.image_size // 2 ** len(c.channels), c.width // 2 ** len(c.channels))
        flat = c.channels[-1] * self.conv_shape[0] * self.conv_shape[1]
        self.encoder = nn.Sequential(*convs, nn.Flatten(), _hidden([flat, *c.hidden_dims], c.layer_norm))
        last = c.hidden_dims[-1] if c.hidden_dims else flat
        self.to_mu = nn.Linear(last, c.latent_dim)
        self.to_logvar = nn.Linear(last, c.latent_dim)
        back = list(reversed(c.hidden_dims))
        self.from_z = _hidden([c.latent_dim, *back, flat], c.layer_norm)
        deconvs: list[nn.Module] = []
        reversed_channels = list(reversed(c.channels))
        for n_in, n_out in zip(reversed_channels, reversed_channels[1:] + [c.in_channels]):
            deconvs += [nn.ConvTranspose2d(n_in, n_out, 4, stride=2, padding=1), nn.ReLU()]
        self.decoder = nn.Sequential(*deconvs[:-1])  # logits of the pixel intensities
        # the training set's mean frame (C, H, W) in [0, 1], for contrast weighting
        self.register_buffer("mean_frame", torch.zeros(c.in_channels, c.image_size, c.width))
        # mean and standard deviation (latent_dim,) of the training frames' codes, set by train_vae:
        # encode() returns codes standardised with them and decode() takes such codes
        self.register_buffer("latent_mean", torch.zeros(c.latent_dim))
        self.register_buffer("latent_std", torch.ones(c.latent_dim))

    # -- shapes and scaling ---------------------------------------------------------------

    def _frames(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, C, H, W)`` as floats in [0, 1] (uint8 frames are divided by 255)."""
        c = self.config
        expected = (c.in_channels, c.image_size, c.width)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"ConvVAE expects frames of shape (B, {', '.join(map(str, expected))}), "
                             f"got {tuple(x.shape)}")
        if x.dtype == torch.uint8:
            return x.float() / 255.0
        return x.float()

    # -- the model ------------------------------------------------------------------------

    def encode_dist(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z|x), each ``(B, latent_dim)``, for frames ``(B, C, H, W)``."""
        features = self.encoder(self._frames(x))
        return self.to_mu(features), self.to_logvar(features).clamp(-10.0, 5.0)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic encoding for inference, ``(B, latent_dim)``: the mean of q(z|x),
        standardised per dimension with the training frames' statistics (see :func:`train_vae`),
        so that what reads the code (M, C) sees unit-scale numbers whatever scale V settled on."""
        return (self.encode_dist(x)[0] - self.latent_mean) / self.latent_std

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, C, H, W)`` of the pixel intensities for latents ``(B, latent_dim)``."""
        if z.ndim != 2 or z.shape[1] != self.config.latent_dim:
            raise ValueError(f"decode expects z of shape (B, {self.config.latent_dim}), got {tuple(z.shape)}")
        return self.decoder(self.from_z(z).view(-1, self.config.channels[-1], *self.conv_shape))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Frames ``(B, C, H, W)`` with intensities in [0, 1] for standardised codes ``(B, latent_dim)``,
        as :meth:`encode` gives them."""
        return torch.sigmoid(self.decode_logits(z * self.latent_std + self.latent_mean))

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> VAEOutput:
        """Encode, sample ``z = mu + sigma * eps`` (reparameterised), decode."""
        mu, logvar = self.encode_dist(x)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + torch.exp(0.5 * logvar) * eps
        return VAEOutput(self.decode_logits(z), mu, logvar, z)

    def loss(self, x: torch.Tensor, output: VAEOutput) -> VAELoss:
        """:func:`vae_loss` of frames ``x`` and their pass ``output``."""
        return vae_loss(self, x, output)


def vae_loss(vae: ConvVAE, x: torch.Tensor, output: VAEOutput) -> VAELoss:
    """The beta-VAE loss of frames ``x`` ``(B, C, H, W)`` and their pass ``output`` through
    ``vae``: summed pixel cross-entropy (pixels far from the mean frame weighted up by
    ``contrast_weight``), plus ``beta`` times the KL, charged at least ``free_bits`` nats per
    latent dimension."""
    target = vae._frames(x)
    if vae.config.likelihood == "bernoulli":
        per_pixel = F.binary_cross_entropy_with_logits(output.logits, target, reduction="none")
    else:
        per_pixel = (torch.sigmoid(output.logits) - target).pow(2)
    if vae.config.contrast_weight != 1.0:
        # pixels where this frame differs from the mean frame (the pole where it leans, and
        # where it would be if it leaned the other way) count more
        contrast = (target - vae.mean_frame).abs().amax(dim=1, keepdim=True)
        per_pixel = per_pixel * (1.0 + (vae.config.contrast_weight - 1.0) * contrast)
    reconstruction = per_pixel.flatten(1).sum(1).mean()
    per_dim = -0.5 * (1 + output.logvar - output.mu.pow(2) - output.logvar.exp())  # (B, latent_dim)
    kl = per_dim.sum(1).mean()
    if vae.config.free_bits == 0.0:
        return VAELoss(reconstruction + vae.config.beta * kl, reconstruction, kl)
    # free bits: a dimension whose mean KL is below free_bits is not pushed further down
    penalised = per_dim.mean(0).clamp_min(vae.config.free_bits).sum()
    return VAELoss(reconstruction + vae.config.beta * penalised, reconstruction, kl)


@dataclass
class VAEHistory:
    """Per-epoch means of the training losses (reconstruction and KL, as in the loss)."""

    reconstruction: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)


def train_vae(vae: ConvVAE, frames: np.ndarray | torch.Tensor, epochs: int, batch_size: int = 64,
              seed: int = 0, optimizer: torch.optim.Optimizer | None = None, progress: bool = False,
              loss_fn: Callable[[ConvVAE, torch.Tensor, VAEOutput], VAELoss] | None = None) -> VAEHistory:
    """Fit ``vae`` to uint8 frames ``(N, C, H, W)`` for ``epochs`` passes in shuffled minibatches.

    Shuffling draws from a generator seeded with ``seed``, as does the reparameterisation noise,
    so the same call gives the same weights. A non-finite loss stops training with an error that
    names the epoch and batch. ``loss_fn(vae, x, output)``: the loss minimised (default the
    model's own, :func:`vae_loss`).
    """
    from tqdm.auto import tqdm

    device = next(vae.parameters()).device
    frames = torch.as_tensor(frames)
    if len(frames) < 1:
        raise ValueError("train_vae needs at least one frame")
    optimizer = optimizer or torch.optim.Adam(vae.parameters(), lr=vae.config.learning_rate)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.Generator(device=device).manual_seed(seed + 1)
    history = VAEHistory()
    if vae.config.contrast_weight != 1.0:
        with torch.no_grad():
            mean = sum(frames[i:i + 1024].float().sum(0) for i in range(0, len(frames), 1024)) / len(frames)
            vae.mean_frame.copy_((mean / 255.0 if frames.dtype == torch.uint8 else mean).to(device))
    vae.train()
    for epoch in tqdm(range(epochs), desc="V", disable=not progress, leave=False):
        order = torch.randperm(len(frames), generator=generator)
        sums, count = np.zeros(2), 0
        for batch, start in enumerate(range(0, len(frames), batch_size)):
            x = frames[order[start:start + batch_size]].to(device)
            output = vae(x, generator=noise)
            losses = vae.loss(x, output) if loss_fn is None else loss_fn(vae, x, output)
            if not torch.isfinite(losses.loss):
                raise FloatingPointError(f"VAE loss became {losses.loss.item()} at epoch {epoch}, batch {batch}")
            optimizer.zero_grad(set_to_none=True)
            losses.loss.backward()
            optimizer.step()
            sums += [losses.reconstruction.item() * len(x), losses.kl.item() * len(x)]
            count += len(x)
        history.reconstruction.append(sums[0] / count)
        history.kl.append(sums[1] / count)
    vae.eval()
    with torch.no_grad():  # the codes' scale, for encode() and decode()
        mu = torch.cat([vae.encode_dist(frames[i:i + 512].to(device))[0] for i in range(0, len(frames), 512)])
        vae.latent_mean.copy_(mu.mean(0))
        vae.latent_std.copy_(mu.std(0).clamp_min(1e-6) if len(mu) > 1 else torch.ones_like(mu[0]))
    return history


@torch.no_grad()
def encode_frames(vae: ConvVAE, frames: np.ndarray | torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Deterministic latents ``(N, latent_dim)`` of frames ``(N, C, H, W)``, on the VAE's device."""
    device = next(vae.parameters()).device
    frames = torch.as_tensor(frames)
    chunks = [vae.encode(frames[i:i + batch_size].to(device)) for i in range(0, len(frames), batch_size)]
    return torch.cat(chunks) if chunks else torch.zeros(0, vae.config.latent_dim, device=device)
