"""Chapter 6's surgical world: a procedure simulator with ground truth, its data format, and
evaluation against the expert's labels and against the truth.

Modules:

* :mod:`~wmbook.surgical.triplets`: the CholecT50 label structure (100 triplets over 6
  instruments, 10 verbs, 15 targets; mapping read from ``ivtmetrics``), the 7 phases and the
  five reward components.
* :mod:`~wmbook.surgical.simulator`: the seeded generative model of a cholecystectomy (hidden
  patient state, phases, unsafe actions, adverse events, frame embeddings) and
  :class:`~wmbook.surgical.env.SurgicalEnv`, the same as a ``gymnasium.Env`` with
  ``MultiBinary(100)`` actions.
* :mod:`~wmbook.surgical.surgeons`: simulated surgeons, the simulated recogniser, and the data
  set writer.
* :mod:`~wmbook.surgical.data`: one ``.npz`` per procedure, a manifest, a checking loader.
* :mod:`~wmbook.surgical.imitation`: the imitation baseline (anticipation and a policy).
* :mod:`~wmbook.surgical.evaluation`: ivtmetrics mAP at several horizons, the world model's
  errors, and true outcomes in the simulator.
* :mod:`~wmbook.surgical.config`, :mod:`~wmbook.surgical.experiment`,
  :mod:`~wmbook.surgical.cli`: settings, the experiment end to end, ``python -m wmbook surgical``.

The world model itself is :mod:`wmbook.surgical.model`.
"""

from wmbook.surgical.data import (Procedure, ProcedureFormatError, SurgicalDataset, load_dataset,
                                  load_procedure, save_procedure, write_manifest)
from wmbook.surgical.env import ProcedureStart, SurgicalEnv
from wmbook.surgical.simulator import Patient, SimulatorConfig, State, SurgicalSimulator, weighted_reward
from wmbook.surgical.surgeons import (ORACLE, Surgeon, SurgeonProfile, generate_dataset,
                                      recognise)
from wmbook.surgical.triplets import (COMPONENTS, DEFAULT_REWARD_WEIGHTS, INSTRUMENTS, PHASES,
                                      REWARD_NAMES, TARGETS, VERBS, triplet_map, triplet_name)

__all__ = [
    "COMPONENTS", "DEFAULT_REWARD_WEIGHTS", "INSTRUMENTS", "ORACLE", "PHASES", "REWARD_NAMES",
    "TARGETS", "VERBS", "Patient", "Procedure", "ProcedureFormatError", "ProcedureStart",
    "SimulatorConfig", "State", "SurgeonProfile", "Surgeon", "SurgicalDataset", "SurgicalEnv",
    "SurgicalSimulator", "generate_dataset", "load_dataset", "load_procedure", "recognise",
    "save_procedure", "triplet_map", "triplet_name", "weighted_reward", "write_manifest",
]
