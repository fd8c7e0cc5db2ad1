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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

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
        out = {f.name: asdict(getattr(self, f.name)) for f in dataclasses.fields(self)}
        for key in ("embedding_dim", "n_actions", "n_phases"):
            out["model"].pop(key)
        out["evaluation"]["horizons"] = list(out["evaluation"]["horizons"])
        return out

    def model_config(self, embedding_dim: int) -> SurgicalWorldModelConfig:
        """The model's configuration for data of dimension ``embedding_dim``."""
        return dataclasses.replace(self.model, embedding_dim=embedding_dim)


def _section(cls, values: Any, name: str, source: str):
    if values is None:
        return cls()
    if not isinstance(values, Mapping):
        raise ValueError(f"{source}: section {name!r} must be a mapping, got {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    if name == "model":
        known -= {"embedding_dim", "n_actions", "n_phases"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {unknown} in section {name!r}; known: {sorted(known)}")
    values = dict(values)
    if "horizons" in values:
        values["horizons"] = tuple(int(k) for k in values["horizons"])
    try:
        return cls(**values)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{source}: section {name!r}: {error}") from error


def config_from_dict(values: Mapping[str, Any] | None, source: str = "config") -> SurgicalConfig:
    """A :class:`SurgicalConfig` from nested plain values; unknown sections or keys are errors."""
    values = dict(values or {})
    sections = {f.name: f.type for f in dataclasses.fields(SurgicalConfig)}
    unknown = sorted(set(values) - set(sections))
    if unknown:
        raise ValueError(f"{source}: unknown section(s) {unknown}; known: {sorted(sections)}")
    classes = {"data": DataConfig, "simulator": SimulatorConfig, "model": SurgicalWorldModelConfig,
               "training": SurgicalTrainConfig, "evaluation": EvaluationConfig, "output": OutputConfig}
    return SurgicalConfig(**{name: _section(cls, values.get(name), name, source)
                             for name, cls in classes.items()})


def load_config(path: str | Path | None) -> SurgicalConfig:
    """Read a YAML configuration (``None``: the defaults)."""
    if path is None:
        return SurgicalConfig()
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no configuration file at {path}")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from error
    if values is not None and not isinstance(values, Mapping):
        raise ValueError(f"{path}: a configuration is a mapping of sections")
    return config_from_dict(values, str(path))
