"""Simulated surgeons, the simulated action recogniser, and the data set writer.

A :class:`Surgeon` sees the hidden state (a surgeon sees the anatomy, not an embedding) and acts
by habit and skill (:class:`SurgeonProfile`): each second it does the phase's work with
probability ``skill`` (else an instrument idles or does something useless), adds a grasper's
traction with probability ``traction``, coagulates once bleeding passes its ``coagulation``
threshold, starts clipping once the critical view reaches its ``caution`` level (below 1 is
hasty), places two or three clips (one, with probability ``sloppiness``) and prefers the hook or
the bipolar as ``hook_preference`` says (and the bipolar for haemostasis as
``bipolar_coagulation`` says). Good but not optimal: idle seconds, missing traction,
late coagulation and hasty clipping leave room for a better policy; :data:`ORACLE` is the
scripted best surgeon, an upper reference.

The recogniser (:func:`recognise`) stands for a triplet-recognition network run on video: it
reports the right triplet about ``action_accuracy`` (40 %) of the time and the right instrument
about ``tool_accuracy`` (90 %) of the time, as scores in [0, 1].

:func:`generate_dataset` writes a CholecT50-shaped data set: one ``.npz`` per procedure and a
manifest (see :mod:`wmbook.surgical.data`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from wmbook.surgical import simulator as S
from wmbook.surgical.env import ProcedureStart, SurgicalEnv
from wmbook.surgical.triplets import (INSTRUMENTS, MAX_ACTIVE, N_TRIPLETS, triplet_index,
                                      triplet_map)


@dataclass(frozen=True)
class SurgeonProfile:
    """The habits of one simulated surgeon (see the module docstring); ``seed`` seeds its choices."""

    name: str
    seed: int
    skill: float = 0.85
    traction: float = 0.7
    coagulation: float = 0.4
    caution: float = 0.95
    sloppiness: float = 0.05
    hook_preference: float = 0.8
    irrigation: float = 0.3
    bipolar_coagulation: float = 0.6

    @staticmethod
    def draw(name: str, seed: int) -> "SurgeonProfile":
        """A surgeon drawn from the simulator's population (good, never optimal)."""
        rng = np.random.default_rng([seed, 15485863])
        return SurgeonProfile(name=name, seed=int(seed), skill=float(rng.uniform(0.7, 0.92)),
                              traction=float(rng.uniform(0.45, 0.9)),
                              coagulation=float(rng.uniform(0.25, 0.6)),
                              caution=float(rng.uniform(0.75, 1.0)),
                              sloppiness=float(rng.uniform(0.0, 0.12)),
                              hook_preference=float(rng.uniform(0.5, 0.95)),
                              irrigation=float(rng.uniform(0.1, 0.5)),
                              bipolar_coagulation=float(rng.uniform(0.3, 0.9)))


# the scripted best surgeon: always busy, always with traction, coagulates early, waits for the
# critical view, two clips, the faster instruments
ORACLE = SurgeonProfile(name="oracle", seed=0, skill=1.0, traction=1.0, coagulation=0.15,
                        caution=1.0, sloppiness=0.0, hook_preference=1.0, irrigation=0.0,
                        bipolar_coagulation=1.0)

def _T(name: str) -> int:
    return triplet_index(*name.split(","))

_IDLE = (_T("grasper,grasp,gallbladder"), _T("grasper,retract,omentum"), *S.NULL_TRIPLETS)


class Surgeon:
    """A policy of :class:`~wmbook.surgical.env.SurgicalEnv` that reads the hidden state.

    ``act(observation, info)`` returns labels ``(100,)`` int8 (1 to 3 active, or none when the
    surgeon pauses); it uses only ``info["state"]``, ``info["t"]`` and ``info["patient"]``. Its
    choices at frame ``t`` come from a generator seeded by ``(profile.seed, patient.seed, t)``,
    so the same surgeon on the same patient repeats its procedure exactly.
    """

    def __init__(self, profile: SurgeonProfile):
        self.profile = profile
        self.target_clips = 2

    def reset(self, start: "ProcedureStart | None" = None) -> None:
        """Forget the last procedure (nothing is remembered across procedures)."""

    def act(self, observation: np.ndarray, info: dict) -> np.ndarray:
        p = self.profile
        s = S.State.from_array(info["state"])
        rng = np.random.default_rng([p.seed, info["patient"].seed, info["t"]])
        chosen: list[int] = []
        hook = rng.random() < p.hook_preference
        # haemostasis first when bleeding passes the surgeon's threshold
        if s.bleeding > p.coagulation and rng.random() < 0.8:
            if s.phase == 3 and rng.random() < 0.5:
                chosen.append(_T("hook,coagulate,liver") if hook else _T("bipolar,coagulate,liver"))
            elif rng.random() < p.bipolar_coagulation:
                chosen.append(_T("bipolar,coagulate,blood_vessel"))
            else:
                chosen.append(_T("hook,coagulate,blood_vessel"))
        if s.fluid > 0.4 and rng.random() < 0.5 and s.phase != 2:
            chosen.append(S.ASPIRATE)
        if rng.random() < p.skill:
            main = self._main(s, rng, hook)
            if main is not None:
                chosen.append(main)
            if s.phase in (0, 1, 3) and rng.random() < p.traction:
                chosen.append(S.RETRACT_GB)
        elif rng.random() < 0.7:
            chosen.append(int(rng.choice(_IDLE)))
        chosen = list(dict.fromkeys(chosen))[:MAX_ACTIVE]
        labels = np.zeros(N_TRIPLETS, dtype=np.int8)
        labels[chosen] = 1
        return labels

    def _main(self, s: "S.State", rng: np.random.Generator, hook: bool) -> int | None:
        """The phase's work this second."""
        p = self.profile
        if s.phase == 0:
            return int(rng.choice([_T("hook,dissect,omentum"), _T("scissors,cut,adhesion"),
                                   _T("grasper,retract,omentum")], p=[0.6, 0.25, 0.15]))
        if s.phase == 1:
            if s.progress[1] >= p.caution:  # ready, by this surgeon's standard: start clipping
                return S.CLIP_ARTERY
            target = "cystic_duct" if rng.random() < 0.5 else "cystic_artery"
            return _T(f"{'hook' if hook else 'bipolar'},dissect,{target}")
        if s.phase == 2:
            # clips this surgeon wants on each structure before cutting it
            want = 1 if rng.random() < p.sloppiness else (3 if p.caution > 0.97 and p.skill < 1 else 2)
            if s.clips_artery < 2 and not s.artery_cut:
                return S.CLIP_ARTERY
            if s.clips_duct < want and not s.duct_cut:
                return S.CLIP_DUCT
            if not s.artery_cut:
                return S.CUT_ARTERY
            return S.CUT_DUCT
        if s.phase == 3:
            if rng.random() < 0.25:
                return _T("hook,dissect,cystic_plate")
            return _T("hook,dissect,gallbladder") if hook else _T("bipolar,dissect,gallbladder")
        if s.phase == 4:
            return _T("grasper,pack,gallbladder") if rng.random() < 0.8 else _T("grasper,grasp,specimen_bag")
        if s.phase == 5:
            if s.bleeding > 0.1:
                return _T("bipolar,coagulate,liver")
            if s.fluid > 0.05 or rng.random() > p.irrigation:
                return S.ASPIRATE
            return S.IRRIGATE
        return _T("grasper,grasp,specimen_bag") if rng.random() < 0.85 else _T("bipolar,grasp,specimen_bag")


def recognise(labels: np.ndarray, rng: np.random.Generator, action_accuracy: float = 0.4,
              tool_accuracy: float = 0.9) -> np.ndarray:
    """What a recognition network would report for the true ``labels`` ``(T, 100)``: scores
    ``(T, 100)`` float32 in [0, 1].

    Each true triplet is reported as itself with probability ``action_accuracy``, as another
    triplet of the same instrument with probability ``tool_accuracy - action_accuracy``, and as
    a triplet of another instrument otherwise; reported triplets score in [0.55, 0.95], the
    missed true one in [0.2, 0.6], the rest low.
    """
    if not 0 <= action_accuracy <= tool_accuracy <= 1:
        raise ValueError(f"need 0 <= action_accuracy <= tool_accuracy <= 1, got {action_accuracy}, "
                         f"{tool_accuracy}")
    labels = np.asarray(labels)
    table = triplet_map()
    by_instrument = [np.flatnonzero(table[:, 1] == i) for i in range(len(INSTRUMENTS))]
    scores = rng.beta(1.0, 30.0, labels.shape).astype(np.float32)
    for t, k in zip(*np.nonzero(labels)):
        draw = rng.random()
        if draw < action_accuracy:
            reported = k
        else:
            instrument = table[k, 1]
            if draw >= tool_accuracy:
                instrument = rng.choice([i for i in range(len(INSTRUMENTS)) if i != instrument])
            options = [c for c in by_instrument[instrument] if c != k]
            reported = int(rng.choice(options))
            scores[t, k] = max(scores[t, k], rng.uniform(0.2, 0.6))
        scores[t, reported] = max(scores[t, reported], rng.uniform(0.55, 0.95))
    return scores


def run_procedure(env: SurgicalEnv, policy, patient: "S.Patient") -> dict[str, np.ndarray]:
    """Play ``policy`` (``reset(start)``, ``act(observation, info)``) on ``patient`` from the
    first frame until the procedure ends; returns the arrays of one procedure file."""
    obs, info = env.reset(seed=patient.seed)
    policy.reset(None)
    keys = ("embeddings", "triplets", "phases", "states", "events")
    out: dict[str, list] = {k: [] for k in keys}
    rewards: dict[str, list] = {name: [] for name in S.REWARD_NAMES}
    done = False
    while not done:
        state_before = info["state"]
        labels = policy.act(obs, info)
        obs, _, terminated, truncated, info = env.step(labels)
        done = terminated or truncated
        out["embeddings"].append(obs)
        out["triplets"].append(labels)
        out["phases"].append(info["phase"])
        out["states"].append(state_before)
        out["events"].append(len(info["events"]))
        for name in S.REWARD_NAMES:
            rewards[name].append(info["rewards"][name])
    arrays = {"embeddings": np.stack(out["embeddings"]).astype(np.float32),
              "triplets": np.stack(out["triplets"]).astype(np.uint8),
              "phases": np.asarray(out["phases"], dtype=np.int64),
              "states": np.stack(out["states"]).astype(np.float64),
              "adverse_events": np.asarray(out["events"], dtype=np.int64)}
    arrays.update({name: np.asarray(v, dtype=np.float32) for name, v in rewards.items()})
    return arrays


def surgeon_family(n: int, seed: int) -> list[SurgeonProfile]:
    """``n`` surgeons drawn with ``seed``."""
    return [SurgeonProfile.draw(f"surgeon_{i}", seed * 1000 + i) for i in range(n)]


def generate_dataset(out_dir: str | Path, n_procedures: int = 50, n_test: int = 10, seed: int = 0,
                     config: "S.SimulatorConfig | None" = None, n_surgeons: int = 8,
                     action_accuracy: float = 0.4, tool_accuracy: float = 0.9,
                     progress: bool = False) -> Path:
    """Simulate ``n_procedures`` procedures by a family of ``n_surgeons`` surgeons and write them
    to ``out_dir`` in the book's format (:mod:`wmbook.surgical.data`); ``n_test`` of them, drawn
    with ``seed``, form the test split. Returns the manifest's path."""
    from wmbook.surgical import data as D

    if not 1 <= n_test < n_procedures:
        raise ValueError(f"need 1 <= n_test < n_procedures, got n_test={n_test}, "
                         f"n_procedures={n_procedures}")
    config = config or S.SimulatorConfig()
    out_dir = Path(out_dir)
    env = SurgicalEnv(config)
    surgeons = surgeon_family(n_surgeons, seed)
    names = [f"procedure_{i:03d}" for i in range(n_procedures)]
    test = sorted(np.random.default_rng([seed, 31]).choice(n_procedures, n_test, replace=False).tolist())
    for i in tqdm(range(n_procedures), desc="simulate", disable=not progress, leave=False):
        patient = S.Patient.draw(seed * 100_003 + i)
        surgeon = surgeons[i % n_surgeons]
        arrays = run_procedure(env, Surgeon(surgeon), patient)
        arrays["recognised"] = recognise(arrays["triplets"], np.random.default_rng([seed, i, 99]),
                                         action_accuracy, tool_accuracy)
        meta = {"name": names[i], "patient": asdict(patient), "surgeon": asdict(surgeon),
                "completed": bool(env.sim.state.complete)}
        D.save_procedure(out_dir / f"{names[i]}.npz", arrays, meta)
    manifest = {"format": D.FORMAT_VERSION, "seed": seed,
                "train": [n for i, n in enumerate(names) if i not in test],
                "test": [names[i] for i in test],
                "simulator": asdict(config),
                "recogniser": {"action_accuracy": action_accuracy, "tool_accuracy": tool_accuracy}}
    return D.write_manifest(out_dir, manifest)
