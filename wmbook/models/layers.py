"""Small building blocks shared by the book's models."""

from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS = {"silu": nn.SiLU, "relu": nn.ReLU, "elu": nn.ELU, "tanh": nn.Tanh, "gelu": nn.GELU}


def mlp(in_dim: int, hidden_size: int, n_layers: int, out_dim: int | None = None,
        activation: str = "silu") -> nn.Sequential:
    """``n_layers`` hidden layers of width ``hidden_size``, then a linear output if ``out_dim``.

    Maps ``(..., in_dim)`` to ``(..., out_dim or hidden_size)``.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}: use one of {', '.join(ACTIVATIONS)}")
    if n_layers < 1 or hidden_size < 1:
        raise ValueError(f"need at least one hidden layer of positive width, got {n_layers} x {hidden_size}")
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(n_layers):
        layers += [nn.Linear(width, hidden_size), ACTIVATIONS[activation]()]
        width = hidden_size
    if out_dim is not None:
        layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


class Normalizer(nn.Module):
    """Per-feature standardisation ``(x - mean) / std`` with statistics kept in the state dict.

    Features with (near) zero spread, such as CartPole's constant reward, keep ``std = 1`` so
    that they pass through centred but unscaled.
    """

    def __init__(self, size: int, min_std: float = 1e-6):
        super().__init__()
        self.min_std = min_std
        self.register_buffer("mean", torch.zeros(size))
        self.register_buffer("std", torch.ones(size))

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> "Normalizer":
        """Set the statistics from ``x`` of shape ``(N, size)``."""
        x = x.reshape(-1, self.mean.numel()).to(self.mean)
        self.mean.copy_(x.mean(0))
        std = x.std(0, unbiased=False)
        self.std.copy_(torch.where(std < self.min_std, torch.ones_like(std), std))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.std + self.mean
