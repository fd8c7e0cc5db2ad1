"""The settings of the surgical experiments, read from a YAML file whose sections mirror the
dataclasses of the code (``configs/surgical_world_model.yaml`` holds the defaults).

Sections: ``data`` (:class:`DataConfig`), ``simulator``
(:class:`~wmbook.surgical.simulator.SimulatorConfig`), ``model``
(:class:`~wmbook.surgical.model.SurgicalWorldModelConfig`, without ``embedding_dim``, which
comes from the data), ``training`` (:class:`~wmbook.surgical.model.SurgicalTrainConfig`),
``evaluation`` (:class:`EvaluationConfig`) and ``output`` (:class:`OutputConfig`). A missing
key keeps its default; an unknown key is an error that names it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from wmbook.config import ConfigError, from_dict, read_yaml, to_dict
from wmbook.surgical.model import SurgicalTrainConfig, SurgicalWorldModelConfig
from wmbook.surgical.simulator import SimulatorConfig


@dataclass(frozen=True)
class DataConfig:
    """Where the data set lives and, when it is simulated, how it is made."""

    root: str = "_build/surgical/data"
    procedures: int = 50
    test: int = 10
    seed: int = 0
    surgeons: int = 8
    action_accuracy: float = 0.4
    tool_accuracy: float = 0.9


@dataclass(frozen=True)
class EvaluationConfig:
    """``horizons`` in seconds (0: the current frame); ``embedding_horizon``: steps of the
    open-loop error; ``start_frame``: where policies take over the test procedures in the
    simulator (the frames before it are their context); ``context_actions``: what the
    imitation baseline reads as past actions (``recognised`` as on real video, or ``true``)."""

    horizons: tuple = (0, 1, 5, 10)
    embedding_horizon: int = 10
    start_frame: int = 20
    context_actions: str = "recognised"
    policy_seed: int = 0


@dataclass(frozen=True)
class OutputConfig:
    """Where the trained world models and the results go."""

    world_model: str = "_build/surgical/world_model.pt"
    results: str = "_build/surgical/results.json"


@dataclass(frozen=True)
class SurgicalConfig:
    data: DataConfig = field(default_factory=DataConfig)
    simulator: SimulatorConfig = field(default_factory=SimulatorConfig)
    model: SurgicalWorldModelConfig = field(default_factory=SurgicalWorldModelConfig)
    training: SurgicalTrainConfig = field(default_factory=SurgicalTrainConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain values, as the YAML file writes them (``model`` without ``embedding_dim``)."""
        out = to_dict(self)
        for key in FROM_DATA:
            out["model"].pop(key)
        return out

    def model_config(self, embedding_dim: int) -> SurgicalWorldModelConfig:
        """The model's configuration for data of dimension ``embedding_dim``."""
        return dataclasses.replace(self.model, embedding_dim=embedding_dim)


FROM_DATA = ("embedding_dim", "n_actions", "n_phases")  # the model's sizes: set by the data, never by a file


def config_from_dict(values: Mapping[str, Any] | None, source: str = "config") -> SurgicalConfig:
    """A :class:`SurgicalConfig` from nested plain values; unknown sections or keys are errors."""
    model = (values or {}).get("model")
    fixed = sorted(set(model) & set(FROM_DATA)) if isinstance(model, Mapping) else []
    if fixed:
        raise ConfigError(f"{source}: model.{fixed[0]} comes from the data and cannot be set")
    return from_dict(SurgicalConfig, values, source=source)


def load_config(path: str | Path | None) -> SurgicalConfig:
    """Read a YAML configuration (``None``: the defaults)."""
    return SurgicalConfig() if path is None else config_from_dict(read_yaml(path), str(path))
