"""The book's data format for surgical procedures, and its loader.

One procedure is one NumPy ``.npz`` file; ``T`` is its number of frames (1 per second), ``D``
the embedding size.

Required arrays:

========================= =============== ==========================================================
``embeddings``            ``(T, D)`` float  one feature vector per frame (finite)
``triplets``              ``(T, 100)`` 0/1  the CholecT50 triplet labels, at most 3 active per frame
``phases``                ``(T,)`` int      the phase of each frame, 0..6 (Cholec80 order)
========================= =============== ==========================================================

Optional arrays (read when present, checked the same way):

========================= =============== ==========================================================
``recognised``            ``(T, 100)``     a recogniser's scores in [0, 1] for the triplets
``_r_phase_completion``   ``(T,)`` float   the five reward components of each frame
``_r_phase_progression``, ``_r_risk``, ``_r_action_probability``, ``_r_global_progression``
``states``                ``(T, S)``       the simulator's hidden state before each frame
``adverse_events``        ``(T,)`` int     adverse events in each frame (simulator only)
``meta``                  0-d str          JSON: name, patient, surgeon (simulator only)
========================= =============== ==========================================================

A data set is a folder of such files and a ``manifest.json`` with the lists ``"train"`` and
``"test"`` of procedure names (file names without ``.npz``). Real CholecT50 features fit the
same format: write each video's frame features, its triplet labels and phases (and, if a
recognition model's scores exist, ``recognised``) with :func:`save_procedure`, list the split
in a manifest with :func:`write_manifest`, and everything here loads them. Every problem found
on loading (a missing or unknown array, a wrong shape, NaN, more than 3 active triplets, a
phase out of range) raises :class:`ProcedureFormatError` naming the file and the problem.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from wmbook.checkpoint import atomic_write, write_json
from wmbook.surgical.env import ProcedureStart
from wmbook.surgical.simulator import REWARD_NAMES, STATE_SIZE, Patient
from wmbook.surgical.triplets import MAX_ACTIVE, N_PHASES, N_TRIPLETS

FORMAT_VERSION = 1
REQUIRED = ("embeddings", "triplets", "phases")
OPTIONAL = ("recognised", *REWARD_NAMES, "states", "adverse_events", "meta")


class ProcedureFormatError(ValueError):
    """A procedure file or data set that does not follow the format; the message names the file."""


@dataclass
class Procedure:
    """One procedure, as loaded (see the module docstring for the arrays).

    ``rewards`` is ``(T, 5)`` in :data:`REWARD_NAMES` order, or ``None`` when the file has none;
    ``meta`` is the decoded JSON (empty for real data).
    """

    name: str
    embeddings: np.ndarray
    triplets: np.ndarray
    phases: np.ndarray
    recognised: np.ndarray | None = None
    rewards: np.ndarray | None = None
    states: np.ndarray | None = None
    adverse_events: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.phases)

    @property
    def embedding_dim(self) -> int:
        return self.embeddings.shape[1]

    def start(self, t: int) -> ProcedureStart:
        """Where a policy takes over this procedure before frame ``t`` (needs the simulator's
        ``states`` and ``meta``: only simulated procedures can be continued)."""
        if self.states is None or "patient" not in self.meta:
            raise ValueError(f"procedure {self.name} has no simulator state: only simulated "
                             f"procedures can be continued in the simulator")
        if not 0 <= t < len(self):
            raise ValueError(f"t must lie in [0, {len(self)}) for procedure {self.name}, got {t}")
        return ProcedureStart(Patient(**self.meta["patient"]), self.states[t].copy(), t,
                              self.embeddings[:t].copy(), self.triplets[:t].astype(np.int8),
                              self.name)


def save_procedure(path: str | Path, arrays: Mapping[str, np.ndarray],
                   meta: Mapping[str, Any] | None = None) -> Path:
    """Write one procedure (atomically) after checking it as :func:`load_procedure` would."""
    path = Path(path)
    arrays = dict(arrays)
    if meta is not None:
        arrays["meta"] = np.array(json.dumps(dict(meta), sort_keys=True))
    _check_arrays(path, arrays)
    with atomic_write(path, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    return path


def load_procedure(path: str | Path, embedding_dim: int | None = None) -> Procedure:
    """Load and check one procedure file; ``embedding_dim``, when given, must match ``D``."""
    path = Path(path)
    if not path.is_file():
        raise ProcedureFormatError(f"{path}: no such procedure file")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise ProcedureFormatError(f"{path}: not a readable .npz file ({error})") from error
    _check_arrays(path, arrays)
    if embedding_dim is not None and arrays["embeddings"].shape[1] != embedding_dim:
        raise ProcedureFormatError(f"{path}: embeddings have dimension "
                                   f"{arrays['embeddings'].shape[1]}, expected {embedding_dim}")
    rewards = None
    if all(name in arrays for name in REWARD_NAMES):
        rewards = np.stack([arrays[name] for name in REWARD_NAMES], 1).astype(np.float32)
    meta = json.loads(str(arrays["meta"])) if "meta" in arrays else {}
    return Procedure(name=path.stem, embeddings=arrays["embeddings"].astype(np.float32),
                     triplets=arrays["triplets"].astype(np.float32),
                     phases=arrays["phases"].astype(np.int64),
                     recognised=(arrays["recognised"].astype(np.float32)
                                 if "recognised" in arrays else None),
                     rewards=rewards,
                     states=arrays["states"].astype(np.float64) if "states" in arrays else None,
                     adverse_events=(arrays["adverse_events"].astype(np.int64)
                                     if "adverse_events" in arrays else None),
                     meta=meta)


def _check_arrays(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    def fail(problem: str):
        raise ProcedureFormatError(f"{path}: {problem}")

    missing = [k for k in REQUIRED if k not in arrays]
    if missing:
        fail(f"missing array(s) {missing}; a procedure needs {list(REQUIRED)}")
    unknown = sorted(set(arrays) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        fail(f"unknown array(s) {unknown}; known: {list(REQUIRED + OPTIONAL)}")
    emb, trip, phases = (np.asarray(arrays[k]) for k in REQUIRED)
    if emb.ndim != 2 or emb.shape[0] < 2:
        fail(f"embeddings must have shape (T >= 2, D), got {emb.shape}")
    if emb.dtype.kind != "f":
        fail(f"embeddings must be floating point, got {emb.dtype}")
    if not np.all(np.isfinite(emb)):
        rows = np.flatnonzero(~np.isfinite(emb).all(1))
        fail(f"embeddings contain NaN or infinity in frames {rows[:10].tolist()}")
    T = emb.shape[0]
    if trip.shape != (T, N_TRIPLETS):
        fail(f"triplets must have shape (T={T}, {N_TRIPLETS}), got {trip.shape}")
    if not np.all((trip == 0) | (trip == 1)):
        fail("triplets must be 0/1 labels")
    active = trip.sum(1)
    if np.any(active > MAX_ACTIVE):
        rows = np.flatnonzero(active > MAX_ACTIVE)
        fail(f"more than {MAX_ACTIVE} active triplets in frames {rows[:10].tolist()} "
             f"(up to {int(active.max())})")
    if phases.shape != (T,):
        fail(f"phases must have shape (T={T},), got {phases.shape}")
    if phases.dtype.kind not in "iu":
        fail(f"phases must be integers, got {phases.dtype}")
    if phases.min() < 0 or phases.max() >= N_PHASES:
        rows = np.flatnonzero((phases < 0) | (phases >= N_PHASES))
        fail(f"phases must lie in 0..{N_PHASES - 1}; frames {rows[:10].tolist()} hold "
             f"{np.unique(phases[rows]).tolist()}")
    if "recognised" in arrays:
        rec = np.asarray(arrays["recognised"])
        if rec.shape != (T, N_TRIPLETS):
            fail(f"recognised must have shape (T={T}, {N_TRIPLETS}), got {rec.shape}")
        if not np.all(np.isfinite(rec)) or rec.min() < 0 or rec.max() > 1:
            fail("recognised scores must be finite and lie in [0, 1]")
    present = [name for name in REWARD_NAMES if name in arrays]
    if present and len(present) != len(REWARD_NAMES):
        fail(f"reward components come all five or none; missing "
             f"{[n for n in REWARD_NAMES if n not in arrays]}")
    for name in present + ["adverse_events"]:
        if name in arrays:
            value = np.asarray(arrays[name])
            if value.shape != (T,) or not np.all(np.isfinite(value)):
                fail(f"{name} must be finite with shape (T={T},), got shape {value.shape}")
    if "states" in arrays:
        states = np.asarray(arrays["states"])
        if states.shape != (T, STATE_SIZE) or not np.all(np.isfinite(states)):
            fail(f"states must be finite with shape (T={T}, {STATE_SIZE}), got {states.shape}")
    if "meta" in arrays:
        try:
            meta = json.loads(str(np.asarray(arrays["meta"])))
        except json.JSONDecodeError as error:
            fail(f"meta is not JSON ({error})")
        if not isinstance(meta, dict):
            fail("meta must be a JSON object")


# -- data sets ----------------------------------------------------------------------------------


@dataclass
class SurgicalDataset:
    """The procedures of a data set, split into ``train`` and ``test`` lists."""

    root: Path
    train: list[Procedure]
    test: list[Procedure]
    manifest: dict[str, Any]

    @property
    def embedding_dim(self) -> int:
        return self.train[0].embedding_dim


def write_manifest(root: str | Path, manifest: Mapping[str, Any]) -> Path:
    """Write ``root/manifest.json`` (``"train"`` and ``"test"`` name lists, and anything else)."""
    path = Path(root) / "manifest.json"
    write_json(path, dict(manifest))
    return path


def load_dataset(root: str | Path, splits: Sequence[str] = ("train", "test")) -> SurgicalDataset:
    """Load the procedures listed in ``root/manifest.json``; every file is checked, and the
    embedding dimension must agree across them."""
    root = Path(root)
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        raise ProcedureFormatError(f"{manifest_path}: no manifest; a data set is a folder of "
                                   f"procedure .npz files and a manifest.json with 'train' and "
                                   f"'test' name lists (python -m wmbook surgical generate writes one)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as error:
        raise ProcedureFormatError(f"{manifest_path}: not JSON ({error})") from error
    loaded: dict[str, list[Procedure]] = {"train": [], "test": []}
    dim = None
    for split in splits:
        names = manifest.get(split)
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise ProcedureFormatError(f"{manifest_path}: {split!r} must be a non-empty list of "
                                       f"procedure names")
        for name in names:
            procedure = load_procedure(root / f"{name}.npz", dim)
            dim = procedure.embedding_dim
            loaded[split].append(procedure)
    overlap = set(manifest.get("train", [])) & set(manifest.get("test", []))
    if overlap:
        raise ProcedureFormatError(f"{manifest_path}: procedures in both train and test: {sorted(overlap)}")
    return SurgicalDataset(root, loaded["train"], loaded["test"], manifest)
