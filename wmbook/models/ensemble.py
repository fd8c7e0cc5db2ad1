"""A bootstrapped ensemble of :class:`~wmbook.models.dynamics.DynamicsModel` members.

Each member is an ordinary single model, trained by the same ``train_dynamics`` on its own
bootstrap resample of the data and from its own random initialisation. The ensemble predicts
the members' mean, and their disagreement tells where the data leaves the model unsure
(Chua et al., 2018; Janner et al., 2019).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from wmbook.buffers import Transitions
from wmbook.checkpoint import load_checkpoint, save_checkpoint
from wmbook.device import to_device
from wmbook.models.base import MarkovWorldModel
from wmbook.models.dynamics import DynamicsConfig, DynamicsModel, Prediction
from wmbook.models.training import TrainConfig, TrainHistory, train_dynamics


class DynamicsEnsemble(MarkovWorldModel, nn.Module):
    """``n_members`` independent dynamics models with a mean prediction and a disagreement.

    A :class:`~wmbook.models.base.WorldModel` like its members, whose ``imagine_step`` also
    reports the disagreement.
    """

    def __init__(self, config: DynamicsConfig | None = None, n_members: int = 5):
        super().__init__()
        if n_members < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {n_members}")
        self.config = config or DynamicsConfig()
        self.members = nn.ModuleList(DynamicsModel(self.config) for _ in range(n_members))

    def predict_members(self, obs: torch.Tensor, action: torch.Tensor) -> Prediction:
        """Every member's prediction, stacked: shapes ``(M, B, obs_dim)``, ``(M, B)``, ``(M, B)``."""
        predictions = [member.predict(obs, action) for member in self.members]
        return Prediction(*(torch.stack(parts) for parts in zip(*[p[:3] for p in predictions])))

    def predict(self, obs: torch.Tensor, action: torch.Tensor) -> Prediction:
        """The members' mean prediction, and their disagreement ``(B,)``: the standard
        deviation across members of the predicted next state, in units of the spread of the
        one-step change, averaged over state dimensions."""
        members = self.predict_members(obs, action)
        change_std = torch.stack([member.delta_norm.std for member in self.members]).mean(0)
        disagreement = (members.next_obs.std(0) / change_std).mean(-1)
        return Prediction(members.next_obs.mean(0), members.reward.mean(0),
                          members.done_prob.mean(0), disagreement)

    def sampled(self, generator: torch.Generator) -> "SampledMember":
        """This ensemble seen as a world model that draws one member per row at every step."""
        return SampledMember(self, generator)

    def save(self, path: str | Path) -> Path:
        """Write config, member count and every member's weights to ``path``, atomically."""
        return save_checkpoint(path, "DynamicsEnsemble", {
            "config": dataclasses.asdict(self.config),
            "n_members": len(self.members),
            "state_dict": {key: value.detach().cpu() for key, value in self.state_dict().items()},
        })

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> "DynamicsEnsemble":
        data = load_checkpoint(path, "DynamicsEnsemble", map_location)
        try:
            ensemble = cls(DynamicsConfig(**data["config"]), data["n_members"])
            ensemble.load_state_dict(data["state_dict"])
        except (TypeError, RuntimeError) as error:
            raise ValueError(f"{path}: config or weights do not fit a DynamicsEnsemble: {error}") from error
        return ensemble.to(map_location)


class SampledMember(MarkovWorldModel):
    """An ensemble that answers each query with one member, drawn at random per row and per
    call, as MBPO's rollouts do (Janner et al., 2019): a trajectory then mixes the members'
    errors instead of following their smoothed mean. ``predict`` still reports the members'
    disagreement ``(B,)``, so a rollout can stop where they disagree.
    """

    def __init__(self, ensemble: DynamicsEnsemble, generator: torch.Generator):
        self.ensemble, self.config, self.generator = ensemble, ensemble.config, generator

    def parameters(self):
        return self.ensemble.parameters()

    def predict(self, obs: torch.Tensor, action: torch.Tensor) -> Prediction:
        """One member's prediction per row; shapes as :meth:`DynamicsEnsemble.predict`."""
        members = self.ensemble.predict_members(obs, action)
        n_members, batch = members.reward.shape
        pick = to_device(torch.randint(n_members, (batch,), generator=self.generator,
                                       device=self.generator.device), obs.device)
        rows = torch.arange(batch, device=obs.device)
        change_std = torch.stack([m.delta_norm.std for m in self.ensemble.members]).mean(0)
        disagreement = (members.next_obs.std(0) / change_std).mean(-1)
        return Prediction(members.next_obs[pick, rows], members.reward[pick, rows],
                          members.done_prob[pick, rows], disagreement)


def train_ensemble(ensemble: DynamicsEnsemble, train: Transitions, val: Transitions,
                   config: TrainConfig | None = None, device: torch.device | str = "cpu",
                   progress: bool = True, fit_normalizers: bool = True) -> list[TrainHistory]:
    """Train each member with :func:`train_dynamics` on a bootstrap resample of ``train``
    (drawn with replacement, seeded by ``config.seed`` and the member's index).

    The data go to ``device`` once, not once per member: each resample is gathered there.
    ``fit_normalizers`` is passed on to :func:`train_dynamics`: ``False`` keeps each member's
    statistics (warm starts, see :meth:`DynamicsModel.update_normalizers`).
    """
    config = config or TrainConfig()
    device = torch.device(device)
    train, val = (data if data.obs.device == device else data.to(device) for data in (train, val))
    histories = []
    for index, member in enumerate(ensemble.members):
        resample = torch.Generator().manual_seed(config.seed * 1000 + index)
        rows = to_device(torch.randint(len(train), (len(train),), generator=resample), device)
        member_config = dataclasses.replace(config, seed=config.seed * 1000 + index)
        # the switch is passed only when it is off, so a stand-in for train_dynamics with the
        # older signature (as tests use) still works for fresh ensembles
        keep = {} if fit_normalizers else {"fit_normalizers": False}
        histories.append(train_dynamics(member, train.index(rows), val, member_config,
                                        device=device, progress=progress, **keep))
    ensemble.eval()
    return histories
