"""An MLP world model of a vector-state environment: (state, action) -> (next state, reward, done).

The model sees the state standardised and the action one-hot, passes both through a shared
trunk, and reads three heads off it:

* next state: the *change* ``s' - s``, standardised per dimension (the change is small and
  smooth, so it is far easier to fit than ``s'`` itself);
* reward: standardised reward (regression);
* done: the logit of ``P(terminated | s, a)`` (binary classification).

All normalisation statistics are buffers of the module, so a checkpoint carries them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import brier_score_loss, f1_score, precision_score, recall_score
from torch import nn

from wmbook.buffers import Transitions
from wmbook.checkpoint import load_checkpoint, save_checkpoint
from wmbook.device import to_device
from wmbook.models.base import MarkovWorldModel
from wmbook.models.layers import Normalizer, mlp

LOSS_COMPONENTS = ("next_state", "reward", "done")


@dataclass
class DynamicsConfig:
    """Architecture and loss weights of :class:`DynamicsModel`."""

    obs_dim: int = 4
    n_actions: int = 2
    hidden_size: int = 200
    n_layers: int = 3
    activation: str = "silu"
    reward_weight: float = 1.0
    done_weight: float = 1.0


class Prediction(NamedTuple):
    """A model prediction in environment units. Shapes: ``(B, obs_dim)``, ``(B,)``, ``(B,)``;
    ensembles add ``disagreement`` ``(B,)``, the spread of their members' next states."""

    next_obs: torch.Tensor
    reward: torch.Tensor
    done_prob: torch.Tensor
    disagreement: torch.Tensor | None = None


class DynamicsModel(MarkovWorldModel, nn.Module):
    """MLP world model with next-state, reward and done heads on a shared trunk.

    It meets the :class:`~wmbook.models.base.WorldModel` interface through
    :class:`~wmbook.models.base.MarkovWorldModel`: its latent is the state, and
    ``imagine_step`` is one :meth:`predict`.
    """

    def __init__(self, config: DynamicsConfig | None = None):
        super().__init__()
        self.config = config = config or DynamicsConfig()
        self.obs_norm = Normalizer(config.obs_dim)
        self.delta_norm = Normalizer(config.obs_dim)
        self.reward_norm = Normalizer(1)
        self.trunk = mlp(config.obs_dim + config.n_actions, config.hidden_size, config.n_layers,
                         activation=config.activation)
        self.next_state_head = nn.Linear(config.hidden_size, config.obs_dim)
        self.reward_head = nn.Linear(config.hidden_size, 1)
        self.done_head = nn.Linear(config.hidden_size, 1)

    @torch.no_grad()
    def fit_normalizers(self, data: Transitions) -> None:
        """Set the input, change and reward statistics from training transitions.

        The weights are left as they are, so a trained model's predictions change: use
        :meth:`update_normalizers` to move the statistics of a trained model.
        """
        self.obs_norm.fit(data.obs)
        self.delta_norm.fit(data.next_obs - data.obs)
        self.reward_norm.fit(data.reward.unsqueeze(-1))

    @torch.no_grad()
    def update_normalizers(self, data: Transitions) -> None:
        """Set the statistics from ``data`` *and* rescale the weights they feed or are read by,
        so that every prediction in environment units stays what it was.

        A warm-started model refitted on a grown buffer needs this: new statistics alone would
        show its weights inputs and targets on another scale. With old statistics
        ``(m0, s0)`` and new ``(m1, s1)``, the first layer sees ``z0 = (s1 z1 + m1 - m0) / s0``,
        so its weights over the state columns are multiplied by ``s1 / s0`` and its bias takes
        the shift; an output head read as ``m0 + s0 y0`` is rescaled so that
        ``m1 + s1 y1`` is the same number (as PopArt does for value targets, van Hasselt
        et al., 2016). The done head reads no statistics and is left alone.
        """
        obs_dim = self.config.obs_dim
        first = self.trunk[0]
        old_mean, old_std = self.obs_norm.mean.clone(), self.obs_norm.std.clone()
        self.obs_norm.fit(data.obs)
        new_mean, new_std = self.obs_norm.mean, self.obs_norm.std
        state_columns = first.weight[:, :obs_dim]
        first.bias.add_(state_columns @ ((new_mean - old_mean) / old_std))
        state_columns.mul_((new_std / old_std)[None, :])

        for norm, head, values in ((self.delta_norm, self.next_state_head, data.next_obs - data.obs),
                                   (self.reward_norm, self.reward_head, data.reward.unsqueeze(-1))):
            old_mean, old_std = norm.mean.clone(), norm.std.clone()
            norm.fit(values)
            head.weight.mul_((old_std / norm.std)[:, None])
            head.bias.copy_((old_std * head.bias + old_mean - norm.mean) / norm.std)

    def _check(self, obs: torch.Tensor, action: torch.Tensor) -> None:
        obs_dim = self.config.obs_dim
        if obs.ndim != 2 or obs.shape[1] != obs_dim:
            raise ValueError(f"obs must have shape (B, {obs_dim}), got {tuple(obs.shape)}")
        if action.shape != obs.shape[:1]:
            raise ValueError(f"action must have shape ({obs.shape[0]},) to match obs, got {tuple(action.shape)}")
        if action.dtype.is_floating_point or action.dtype == torch.bool:
            raise TypeError(f"action must be integer indices, got dtype {action.dtype}")

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw head outputs in the model's normalised space.

        Args:
            obs: ``(B, obs_dim)`` float states.
            action: ``(B,)`` integer actions in ``[0, n_actions)``.

        Returns:
            ``(delta_z, reward_z, done_logit)`` of shapes ``(B, obs_dim)``, ``(B,)``, ``(B,)``.
        """
        self._check(obs, action)
        one_hot = F.one_hot(action.long(), self.config.n_actions).to(obs.dtype)
        h = self.trunk(torch.cat([self.obs_norm(obs), one_hot], dim=-1))
        delta_z = self.next_state_head(h)
        reward_z = self.reward_head(h).squeeze(-1)
        done_logit = self.done_head(h).squeeze(-1)
        return delta_z, reward_z, done_logit

    def predict(self, obs: torch.Tensor, action: torch.Tensor) -> Prediction:
        """Next state, reward and termination probability in environment units."""
        self._check(obs, action)
        if not torch.isfinite(obs).all():
            raise ValueError("obs contains NaN or infinity")
        if action.numel() and (action.min() < 0 or action.max() >= self.config.n_actions):
            raise ValueError(f"actions must lie in [0, {self.config.n_actions}), got values "
                             f"{action.min().item()}..{action.max().item()}")
        delta_z, reward_z, done_logit = self(obs, action)
        next_obs = obs + self.delta_norm.inverse(delta_z)
        reward = self.reward_norm.inverse(reward_z.unsqueeze(-1)).squeeze(-1)
        return Prediction(next_obs, reward, torch.sigmoid(done_logit))

    def loss(self, batch: Transitions, outputs: tuple | None = None
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """:func:`dynamics_loss` of this model on ``batch`` (a subclass may change it)."""
        return dynamics_loss(self, batch, outputs)

    # -- checkpoints --------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write config, weights and normalisation statistics to ``path``, atomically."""
        return save_checkpoint(path, "DynamicsModel", {
            "config": dataclasses.asdict(self.config),
            "state_dict": {key: value.detach().cpu() for key, value in self.state_dict().items()},
        })

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> "DynamicsModel":
        """Rebuild a model saved with :meth:`save`."""
        data = load_checkpoint(path, "DynamicsModel", map_location)
        known = {f.name for f in dataclasses.fields(DynamicsConfig)}
        unknown = set(data["config"]) - known
        if unknown:
            raise ValueError(f"{path}: unknown DynamicsConfig fields {sorted(unknown)}")
        model = cls(DynamicsConfig(**data["config"]))
        try:
            model.load_state_dict(data["state_dict"])
        except RuntimeError as error:
            raise ValueError(f"{path}: weights do not fit the stored config: {error}") from error
        return model.to(map_location)


def dynamics_loss(model: DynamicsModel, batch: Transitions, outputs: tuple | None = None
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The one-step loss of ``model`` on ``batch`` ``(B, ...)``: the weighted sum of the three
    head losses, and each component by name.

    ``next_state`` and ``reward`` are mean squared errors in normalised units, ``done`` is
    binary cross-entropy against ``terminated`` (a time-limit truncation is not an end).
    ``outputs``: the head outputs for ``batch`` if already computed.
    """
    delta_z, reward_z, done_logit = outputs or model(batch.obs, batch.action)
    delta_target = model.delta_norm(batch.next_obs - batch.obs)
    reward_target = model.reward_norm(batch.reward.unsqueeze(-1)).squeeze(-1)
    done_target = batch.terminated.to(done_logit.dtype)
    parts = {
        "next_state": F.mse_loss(delta_z, delta_target),
        "reward": F.mse_loss(reward_z, reward_target),
        "done": F.binary_cross_entropy_with_logits(done_logit, done_target),
    }
    weights = {"next_state": 1.0, "reward": model.config.reward_weight, "done": model.config.done_weight}
    total = sum(weights[key] * parts[key] for key in parts)
    return total, parts


def multistep_loss(model: DynamicsModel, windows: Transitions
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean one-step loss along an imagined rollout of real windows ``(B, k, ...)``.

    Only the first state is real: from then on the model's input is its own previous
    prediction, while every target is the real next state. Gradients flow back through the
    whole rollout, so training penalises exactly the errors that compound in imagination.
    """
    k = windows.obs.shape[1]
    obs = windows.obs[:, 0]
    total, parts = 0.0, dict.fromkeys(LOSS_COMPONENTS, 0.0)
    for t in range(k):
        real = windows.step(t)
        step = Transitions(obs, real.action, real.reward, real.next_obs, real.terminated,
                           real.truncated)
        outputs = model(step.obs, step.action)
        step_total, step_parts = model.loss(step, outputs)
        total = total + step_total / k
        parts = {key: parts[key] + step_parts[key] / k for key in parts}
        obs = obs + model.delta_norm.inverse(outputs[0])  # feed the prediction back in
    return total, parts


# loss_fn(model, batch) -> (total, parts by name): what train_dynamics minimises
LossFn = Callable[[DynamicsModel, Transitions], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def batch_loss(model: DynamicsModel, batch: Transitions):
    """The model's own loss for transitions ``(B, ...)``, the multi-step loss for windows
    ``(B, k, ...)``: :func:`train_dynamics`'s default ``loss_fn``."""
    return multistep_loss(model, batch) if batch.reward.ndim == 2 else model.loss(batch)


def check_transitions(data: Transitions, config: DynamicsConfig, name: str) -> None:
    """Fail early, naming the problem, if ``data`` cannot train or test a model of ``config``."""
    data = data.flatten()
    if len(data) == 0:
        raise ValueError(f"{name} holds no transitions")
    for key in ("obs", "next_obs"):
        value = getattr(data, key)
        if value.ndim != 2 or value.shape[1] != config.obs_dim:
            raise ValueError(f"{name}.{key} has shape {tuple(value.shape)}, expected (N, {config.obs_dim})")
        if not torch.isfinite(value).all():
            raise ValueError(f"{name}.{key} contains NaN or infinity")
    if not torch.isfinite(data.reward).all():
        raise ValueError(f"{name}.reward contains NaN or infinity")
    if data.action.min() < 0 or data.action.max() >= config.n_actions:
        raise ValueError(f"{name}.action has values outside [0, {config.n_actions})")



# -- evaluation -------------------------------------------------------------------------


@dataclass
class DynamicsEvaluation:
    """One-step accuracy of a model on held-out transitions.

    ``next_state_mse`` is the mean squared error of the predicted next state measured in units
    of the per-dimension standard deviation of the one-step *change* (the model's normalised
    target): 1.0 is no better than always predicting the average change. ``state_mse`` measures
    the same error in units of the state's own spread, a far more lenient scale.
    """

    next_state_mse: float
    next_state_mse_per_dim: np.ndarray
    state_mse: float
    reward_mse: float
    done_f1: float
    done_precision: float
    done_recall: float
    done_brier: float
    n: int
    n_terminal: int
    obs: np.ndarray
    action: np.ndarray
    true_next_obs: np.ndarray
    predicted_next_obs: np.ndarray
    done_true: np.ndarray
    done_prob: np.ndarray

    def summary(self) -> dict[str, float | int]:
        """The scalar metrics, for tables and results files."""
        metrics = {key: float(getattr(self, key)) for key in (
            "next_state_mse", "state_mse", "reward_mse", "done_f1", "done_precision",
            "done_recall", "done_brier")}
        return {**metrics, "n": int(self.n), "n_terminal": int(self.n_terminal)}


@torch.no_grad()
def evaluate_dynamics(model: DynamicsModel, data: Transitions, state_std: torch.Tensor | None = None,
                      batch_size: int = 8192, threshold: float = 0.5) -> DynamicsEvaluation:
    """Score one-step predictions on ``data``; ``done`` counts as predicted when ``p > threshold``.

    ``state_std`` (``(obs_dim,)``) sets the scale of ``state_mse``; by default the model's input
    normalisation statistics. Runs on the model's device, in float32 (the reported accuracy is
    that of the model as used in imagination, which never runs under autocast).
    """
    check_transitions(data, model.config, "data")
    model.eval()
    device = next(model.parameters()).device
    data = data.to(device)
    predictions = [model.predict(data.obs[i:i + batch_size], data.action[i:i + batch_size])
                   for i in range(0, len(data), batch_size)]
    next_obs = torch.cat([p.next_obs for p in predictions])
    reward = torch.cat([p.reward for p in predictions])
    done_prob = torch.cat([p.done_prob for p in predictions])

    error = next_obs - data.next_obs
    per_dim = ((error / model.delta_norm.std) ** 2).mean(0)
    scale = model.obs_norm.std if state_std is None else to_device(state_std, device)
    done_true = data.terminated.cpu().numpy().astype(int)
    done_hat = (done_prob > threshold).cpu().numpy().astype(int)
    prob = done_prob.cpu().numpy()
    return DynamicsEvaluation(
        next_state_mse=per_dim.mean().item(),
        next_state_mse_per_dim=per_dim.cpu().numpy(),
        state_mse=((error / scale) ** 2).mean().item(),
        reward_mse=F.mse_loss(reward, data.reward).item(),
        done_f1=float(f1_score(done_true, done_hat, zero_division=0)),
        done_precision=float(precision_score(done_true, done_hat, zero_division=0)),
        done_recall=float(recall_score(done_true, done_hat, zero_division=0)),
        done_brier=float(brier_score_loss(done_true, prob)),
        n=len(data),
        n_terminal=int(done_true.sum()),
        obs=data.obs.cpu().numpy(),
        action=data.action.cpu().numpy(),
        true_next_obs=data.next_obs.cpu().numpy(),
        predicted_next_obs=next_obs.cpu().numpy(),
        done_true=done_true,
        done_prob=prob,
    )
