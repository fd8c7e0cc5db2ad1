"""The CholecT50 label structure: 100 triplet classes over 6 instruments, 10 verbs and 15 targets,
and the 7 phases of a laparoscopic cholecystectomy.

The triplet -> (instrument, verb, target, instrument-verb, instrument-target) mapping is read from
the ``maps.txt`` file that ships with ``ivtmetrics``, the scorer the field uses, so that the
component scores computed here and by ``ivtmetrics.Recognition`` use the same decomposition. The
component names are those of the CholecT50 release (Nwoye et al., 2022); ``ivtmetrics`` ships
the indices only.
"""

from __future__ import annotations

import importlib.resources
from functools import lru_cache

import numpy as np

N_TRIPLETS = 100
N_PHASES = 7
MAX_ACTIVE = 3  # CholecT50 frames carry 0 to 3 triplets

INSTRUMENTS = ("grasper", "bipolar", "hook", "scissors", "clipper", "irrigator")
VERBS = ("grasp", "retract", "dissect", "coagulate", "clip", "cut", "aspirate", "irrigate", "pack",
         "null_verb")
TARGETS = ("gallbladder", "cystic_plate", "cystic_duct", "cystic_artery", "cystic_pedicle",
           "blood_vessel", "fluid", "abdominal_wall_cavity", "liver", "adhesion", "omentum",
           "peritoneum", "gut", "specimen_bag", "null_target")
PHASES = ("preparation", "calot_triangle_dissection", "clipping_and_cutting",
          "gallbladder_dissection", "gallbladder_packaging", "cleaning_and_coagulation",
          "gallbladder_retraction")
COMPONENTS = ("i", "v", "t", "iv", "it", "ivt")
# the five per-frame reward components of the book's surgical world model, and their default
# weights (risk counts against)
REWARD_NAMES = ("_r_phase_completion", "_r_phase_progression", "_r_risk",
                "_r_action_probability", "_r_global_progression")
DEFAULT_REWARD_WEIGHTS = {"_r_phase_completion": 1.0, "_r_phase_progression": 0.5, "_r_risk": -0.7,
                          "_r_action_probability": 0.2, "_r_global_progression": 0.3}


@lru_cache(maxsize=1)
def triplet_map() -> np.ndarray:
    """``(100, 6)`` int array, one row per triplet class: ``ivt, i, v, t, iv, it`` indices.

    Read from ``ivtmetrics/maps.txt``; an error names the file if the installed ivtmetrics
    does not ship it or ships another structure.
    """
    try:
        text = importlib.resources.files("ivtmetrics").joinpath("maps.txt").read_text()
    except (ModuleNotFoundError, FileNotFoundError) as error:
        raise RuntimeError("the CholecT50 class mapping is read from ivtmetrics/maps.txt; "
                           f"install ivtmetrics>=0.1.5 ({error})") from error
    rows = [line.split(",") for line in text.splitlines() if line.strip() and not line.startswith("#")]
    table = np.array(rows, dtype=np.int64)
    if table.shape != (N_TRIPLETS, 6) or not np.array_equal(table[:, 0], np.arange(N_TRIPLETS)):
        raise RuntimeError(f"ivtmetrics/maps.txt holds a table of shape {table.shape}, "
                           f"expected ({N_TRIPLETS}, 6) rows ivt,i,v,t,iv,it in order")
    return table


def triplet_components(index: int) -> tuple[int, int, int]:
    """``(instrument, verb, target)`` indices of triplet class ``index``."""
    row = triplet_map()[index]
    return int(row[1]), int(row[2]), int(row[3])


def triplet_name(index: int) -> str:
    """``"instrument,verb,target"`` of triplet class ``index``, e.g. ``"hook,dissect,gallbladder"``."""
    i, v, t = triplet_components(index)
    return f"{INSTRUMENTS[i]},{VERBS[v]},{TARGETS[t]}"


def triplet_index(instrument: str, verb: str, target: str) -> int:
    """The class index of a named triplet; a ``KeyError`` if CholecT50 has no such class."""
    key = (INSTRUMENTS.index(instrument), VERBS.index(verb), TARGETS.index(target))
    table = triplet_map()
    hits = np.flatnonzero((table[:, 1] == key[0]) & (table[:, 2] == key[1]) & (table[:, 3] == key[2]))
    if len(hits) != 1:
        raise KeyError(f"CholecT50 has no triplet class {instrument},{verb},{target}")
    return int(hits[0])


def instrument_matrix() -> np.ndarray:
    """``(100, 6)`` 0/1 matrix: triplet -> its instrument (``labels @ M`` counts instruments)."""
    matrix = np.zeros((N_TRIPLETS, len(INSTRUMENTS)), dtype=np.float32)
    matrix[np.arange(N_TRIPLETS), triplet_map()[:, 1]] = 1.0
    return matrix


def instruments_of(labels: np.ndarray) -> np.ndarray:
    """Which instruments are visible, ``(..., 6)`` 0/1, from triplet labels ``(..., 100)``."""
    return (np.asarray(labels, dtype=np.float32) @ instrument_matrix() > 0).astype(np.float32)
