"""A seeded generative model of a laparoscopic cholecystectomy with known ground truth.

What it simulates, one frame per simulated second (as CholecT50 samples its videos):

* **Seven phases** in the usual order (:data:`~wmbook.surgical.triplets.PHASES`): preparation,
  Calot triangle dissection, clipping and cutting, gallbladder dissection, packaging, cleaning
  and coagulation, retraction. Each phase has a *goal* in the hidden state (exposure, critical
  view of safety, clips and cuts, detachment, packing, cleanliness, extraction); the phase
  advances when its goal reaches 1 (and Calot dissection also ends at the first clip, as an
  annotator would mark it). Mean phase durations follow Cholec80's (about 41 minutes in all),
  multiplied by ``duration_scale`` (0.2 by default, so a procedure is about 500 frames and 50
  of them fit a CPU budget; 1.0 gives realistic lengths). Two **returns to an earlier phase**
  happen: heavy bleeding while clipping sends the procedure back to Calot dissection (the
  critical view is lost and must be regained), and bleeding during retraction sends it back to
  cleaning and coagulation.
* **A hidden patient state** (:class:`State`): the seven goal progresses, clips on the cystic
  duct and artery, whether each is cut, bleeding and free fluid, and the adverse events so far.
  Every patient (:class:`Patient`) has a difficulty (inflammation: slower dissection, more
  bleeding) and a bleeding tendency.
* **Triplets act on the state** whatever the annotated phase: the phase's own triplets advance
  its goal (faster with a grasper retracting the gallbladder), coagulation stops bleeding,
  aspiration removes fluid, others waste the second. **Unsafe triplets raise the true risk** and
  can cause **adverse events**: clipping or cutting before the critical view is reached
  (bile duct injury), cutting a duct or artery with fewer than two clips (bile leak,
  haemorrhage), dissecting without traction (bleeding, gallbladder perforation), coagulating
  next to the cystic duct (thermal injury), and bleeding left uncoagulated (haemorrhage when it
  passes a threshold).
* **Frames** are embeddings: a fixed random two-layer ``tanh`` projection (seeded by
  ``projection_seed``, the same for every procedure) of a summary of the hidden state and of
  the instruments in view, plus a per-patient appearance offset and per-frame noise. Verbs and
  targets are not in the frame, bleeding and progress only through the projection: the state is
  only partly observable, as in a video.
* **Per-frame rewards**, the five components of the book's world model (:data:`REWARD_NAMES`):
  ``_r_phase_completion`` (1 when a phase's goal is completed), ``_r_phase_progression``
  (10 x the change of the current phase's goal), ``_r_risk`` (the true risk of the frame, in
  [0, 1]), ``_r_action_probability`` (how typical the frame's triplets are for its phase, as a
  score <= 0 like a log-probability: the mean over its triplets of the simulator's phase table
  minus 1, the table giving 1 to the phase's own and traction triplets, 0.6 to haemostasis,
  0.2 to an idle instrument and 0 otherwise; -1 for a frame without any) and
  ``_r_global_progression`` (10 x the change of the mean of the seven goals). Only progress
  earns reward: every per-frame term is <= 0 otherwise, so that no policy gains by prolonging
  the procedure.

Timing: at frame ``t`` a triplet set ``a_t`` is chosen in state ``s_t``; ``phase_t`` is the
phase of ``s_t``; the frame ``z_t`` shows the state after the action and the instruments of
``a_t``; rewards ``r_t`` score that second. All randomness of frame ``t`` comes from a generator
seeded by ``(patient.seed, t)``, so a procedure restarted from its state at frame ``k`` and fed
the same actions repeats itself exactly (:meth:`SurgicalSimulator.restore`).

:class:`~wmbook.surgical.env.SurgicalEnv` is the simulator as a ``gymnasium.Env`` with
``MultiBinary(100)`` actions: the ground-truth environment in which a policy's true outcome is
measured.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from wmbook.surgical.triplets import (DEFAULT_REWARD_WEIGHTS, INSTRUMENTS, MAX_ACTIVE, N_PHASES,
                                      N_TRIPLETS, REWARD_NAMES, instruments_of, triplet_index)

# Cholec80's mean phase durations in seconds (before duration_scale)
PHASE_SECONDS = (125.0, 954.0, 168.0, 857.0, 98.0, 178.0, 83.0)


def _t(name: str) -> int:
    return triplet_index(*name.split(","))


# -- the triplets the simulator knows (every other class wastes the second) -------------------

RETRACT_GB = _t("grasper,retract,gallbladder")
RETRACT_LIVER = _t("grasper,retract,liver")
# phase -> {triplet: how fast it advances the phase's goal}
PHASE_TRIPLETS: dict[int, dict[int, float]] = {
    0: {_t("hook,dissect,omentum"): 1.0, _t("scissors,cut,adhesion"): 0.8,
        _t("grasper,retract,omentum"): 0.5, _t("grasper,grasp,gallbladder"): 0.4},
    1: {_t("hook,dissect,cystic_duct"): 1.0, _t("hook,dissect,cystic_artery"): 1.0,
        _t("bipolar,dissect,cystic_duct"): 0.6, _t("bipolar,dissect,cystic_artery"): 0.6},
    2: {_t("clipper,clip,cystic_duct"): 1.0, _t("clipper,clip,cystic_artery"): 1.0,
        _t("scissors,cut,cystic_duct"): 1.0, _t("scissors,cut,cystic_artery"): 1.0},
    3: {_t("hook,dissect,gallbladder"): 1.0, _t("hook,dissect,cystic_plate"): 0.8,
        _t("bipolar,dissect,gallbladder"): 0.5},
    4: {_t("grasper,pack,gallbladder"): 1.0, _t("grasper,grasp,specimen_bag"): 0.5},
    5: {_t("irrigator,aspirate,fluid"): 1.0, _t("irrigator,irrigate,abdominal_wall_cavity"): 0.8,
        _t("bipolar,coagulate,liver"): 0.8, _t("hook,coagulate,liver"): 0.5},
    6: {_t("grasper,grasp,specimen_bag"): 1.0, _t("bipolar,grasp,specimen_bag"): 0.6},
}
SUPPORT = {RETRACT_GB, RETRACT_LIVER}  # traction: speeds dissection, makes it safer
COAGULATION = {_t("bipolar,coagulate,blood_vessel"): 0.30, _t("bipolar,coagulate,liver"): 0.22,
               _t("hook,coagulate,liver"): 0.12, _t("hook,coagulate,blood_vessel"): 0.15}
ASPIRATE = _t("irrigator,aspirate,fluid")
IRRIGATE = _t("irrigator,irrigate,abdominal_wall_cavity")
CLIP_DUCT, CLIP_ARTERY = _t("clipper,clip,cystic_duct"), _t("clipper,clip,cystic_artery")
CUT_DUCT, CUT_ARTERY = _t("scissors,cut,cystic_duct"), _t("scissors,cut,cystic_artery")
CALOT_DISSECTION = set(PHASE_TRIPLETS[1])
GB_DISSECTION = {_t("hook,dissect,gallbladder"), _t("bipolar,dissect,gallbladder")}
BLEEDING_WORK = CALOT_DISSECTION | GB_DISSECTION | {_t("hook,dissect,omentum")}  # may start a bleed
THERMAL = _t("hook,coagulate,cystic_duct")
OTHER_CLIPS = {_t("clipper,clip,blood_vessel"), _t("clipper,clip,cystic_pedicle"),
               _t("clipper,clip,cystic_plate")}
CUT_BLEEDERS = {_t("scissors,cut,liver"): 0.5, _t("scissors,cut,blood_vessel"): 0.8}
NULL_TRIPLETS = tuple(range(94, 100))  # an instrument in view, doing nothing


def action_typicality() -> np.ndarray:
    """``(7, 100)`` how typical each triplet is in each phase, in [0, 1] (the simulator's
    ``_r_action_probability`` of a frame is the mean over its active triplets, minus 1)."""
    table = np.zeros((N_PHASES, N_TRIPLETS), dtype=np.float32)
    for phase, triplets in PHASE_TRIPLETS.items():
        table[phase, list(SUPPORT)] = 1.0 if phase in (0, 1, 2, 3) else 0.0
        table[phase, list(COAGULATION)] = np.maximum(table[phase, list(COAGULATION)], 0.6)
        table[phase, [ASPIRATE, IRRIGATE]] = np.maximum(table[phase, [ASPIRATE, IRRIGATE]], 0.6)
        table[phase, list(NULL_TRIPLETS)] = 0.2
        table[phase, list(triplets)] = 1.0
    return table


# -- configuration, patient and state ---------------------------------------------------------


@dataclass(frozen=True)
class SimulatorConfig:
    """Settings of the simulator (every procedure of a data set shares them).

    Attributes:
        embedding_dim: ``D``, the size of a frame embedding.
        duration_scale: multiplies Cholec80's mean phase durations (1.0: about 41 minutes).
        embedding_noise: standard deviation of the per-frame noise on an embedding.
        appearance_scale: size of the per-patient offset of every embedding (videos differ).
        projection_seed: seeds the fixed projection from state to embedding.
        max_frames_factor: an episode of :class:`SurgicalEnv` is truncated after this many times
            the expected procedure length.
        bleeding_alarm: bleeding above which a haemorrhage is counted as an adverse event.
    """

    embedding_dim: int = 64
    duration_scale: float = 0.2
    embedding_noise: float = 0.1
    appearance_scale: float = 0.3
    projection_seed: int = 1234
    max_frames_factor: float = 3.0
    bleeding_alarm: float = 1.5

    def __post_init__(self):
        if self.embedding_dim < 8:
            raise ValueError(f"embedding_dim must be at least 8, got {self.embedding_dim}")
        if not 0.01 <= self.duration_scale <= 10:
            raise ValueError(f"duration_scale must lie in [0.01, 10], got {self.duration_scale}")
        if self.embedding_noise < 0 or self.appearance_scale < 0:
            raise ValueError("embedding_noise and appearance_scale must be non-negative")

    @property
    def expected_frames(self) -> int:
        """The mean length of a procedure in frames."""
        return int(round(sum(PHASE_SECONDS) * self.duration_scale))

    @property
    def max_frames(self) -> int:
        return int(self.max_frames_factor * self.expected_frames)


@dataclass(frozen=True)
class Patient:
    """A patient: ``difficulty`` in [0, 1] (inflammation), ``bleeding_tendency`` in [0, 1], and
    ``seed``, which seeds everything random about this patient's procedure."""

    seed: int
    difficulty: float
    bleeding_tendency: float

    @staticmethod
    def draw(seed: int) -> "Patient":
        """A patient drawn from the population (seeded by ``seed``)."""
        rng = np.random.default_rng([seed, 7919])
        return Patient(int(seed), float(rng.beta(2, 4)), float(rng.beta(2, 3)))


STATE_FIELDS = ("progress", "clips_duct", "clips_artery", "duct_cut", "artery_cut", "bleeding",
                "fluid", "phase", "adverse", "alarm")
STATE_SIZE = N_PHASES + 9


@dataclass
class State:
    """The hidden state of the patient and the procedure.

    ``progress`` ``(7,)``: each phase's goal in [0, 1]; ``clips_duct``/``clips_artery``: clips
    placed; ``duct_cut``/``artery_cut``: 0 or 1; ``bleeding``, ``fluid``: >= 0; ``phase``: the
    current phase; ``adverse``: adverse events so far; ``alarm``: 1 while bleeding is above the
    alarm (a haemorrhage is counted once per crossing).
    """

    progress: np.ndarray = field(default_factory=lambda: np.zeros(N_PHASES))
    clips_duct: float = 0.0
    clips_artery: float = 0.0
    duct_cut: float = 0.0
    artery_cut: float = 0.0
    bleeding: float = 0.0
    fluid: float = 0.0
    phase: int = 0
    adverse: float = 0.0
    alarm: float = 0.0

    def as_array(self) -> np.ndarray:
        """``(STATE_SIZE,)`` float64 (exact, so that a stored state resumes the same procedure):
        progress, then the scalars in :data:`STATE_FIELDS` order."""
        return np.concatenate([self.progress, [self.clips_duct, self.clips_artery, self.duct_cut,
                                               self.artery_cut, self.bleeding, self.fluid,
                                               self.phase, self.adverse, self.alarm]]).astype(np.float64)

    @staticmethod
    def from_array(array: np.ndarray) -> "State":
        array = np.asarray(array, dtype=np.float64)
        if array.shape != (STATE_SIZE,):
            raise ValueError(f"a state array has shape ({STATE_SIZE},), got {array.shape}")
        scalars = array[N_PHASES:]
        return State(array[:N_PHASES].copy(), *map(float, scalars[:6]), int(scalars[6]),
                     float(scalars[7]), float(scalars[8]))

    @property
    def complete(self) -> bool:
        return bool(self.progress[-1] >= 1.0)

    @property
    def phases_completed(self) -> int:
        return int(np.sum(self.progress >= 1.0))


@dataclass(frozen=True)
class Frame:
    """What one simulated second produced.

    Attributes:
        embedding: ``(D,)`` float32, the frame.
        phase: the phase the action was taken in.
        rewards: the five components (:data:`REWARD_NAMES`) of this second.
        events: names of the adverse events that happened in this second.
        done: the procedure is complete (the retraction's goal was reached).
    """

    embedding: np.ndarray
    phase: int
    rewards: dict[str, float]
    events: tuple[str, ...]
    done: bool


class SurgicalSimulator:
    """The generative model of a procedure (see the module docstring).

    ``reset(patient)`` starts a procedure, ``step(labels)`` plays one second with the triplet
    labels ``(100,)`` 0/1 (at most 3 active), ``restore(patient, state, t)`` resumes one from a
    stored state. ``embed`` renders a state as a frame.
    """

    def __init__(self, config: SimulatorConfig | None = None):
        self.config = config or SimulatorConfig()
        rng = np.random.default_rng(self.config.projection_seed)
        n_in, hidden, out = 27, 96, self.config.embedding_dim
        self._w1 = rng.normal(0, 1.5 / np.sqrt(n_in), (hidden, n_in))
        self._b1 = rng.normal(0, 0.3, hidden)
        self._w2 = rng.normal(0, 1.5 / np.sqrt(hidden), (out, hidden))
        self._typicality = action_typicality()
        self.rates = np.array([1.0 / (s * self.config.duration_scale) for s in PHASE_SECONDS])
        self.patient: Patient | None = None
        self.state = State()
        self.t = 0
        self._appearance = np.zeros(out)

    # -- starting ---------------------------------------------------------------------------

    def reset(self, patient: Patient) -> State:
        """Start ``patient``'s procedure at frame 0; returns the initial state."""
        return self.restore(patient, State(), 0)

    def restore(self, patient: Patient, state: State | np.ndarray, t: int) -> State:
        """Resume ``patient``'s procedure in ``state`` (a :class:`State` or its array) before
        frame ``t``: stepping on with the same actions repeats the stored procedure."""
        if t < 0:
            raise ValueError(f"t must be non-negative, got {t}")
        self.patient = patient
        self.state = State.from_array(state) if isinstance(state, np.ndarray) else dataclasses.replace(
            state, progress=np.array(state.progress, dtype=np.float64))
        self.t = int(t)
        rng = np.random.default_rng([patient.seed, 104729])
        self._appearance = self.config.appearance_scale * rng.normal(0, 1, self.config.embedding_dim)
        return self.state

    # -- the frame ----------------------------------------------------------------------------

    def _summary(self, state: State, instruments: np.ndarray) -> np.ndarray:
        phase = np.zeros(N_PHASES)
        phase[state.phase] = 1.0
        return np.concatenate([state.progress, [state.clips_duct / 3, state.clips_artery / 3,
                                                state.duct_cut, state.artery_cut,
                                                min(state.bleeding, 2.0), min(state.fluid, 2.0)],
                               phase, instruments, [1.0]])

    def embed(self, state: State, instruments: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        """The frame ``(D,)`` float32 of ``state`` with ``instruments`` ``(6,)`` 0/1 in view;
        noise is drawn from ``rng`` (none when ``rng`` is ``None``)."""
        hidden = np.tanh(self._w1 @ self._summary(state, instruments) + self._b1)
        z = np.tanh(self._w2 @ hidden) + self._appearance
        if rng is not None:
            z = z + rng.normal(0, self.config.embedding_noise, z.shape)
        return z.astype(np.float32)

    def observe_empty(self) -> np.ndarray:
        """The frame before any action (no instrument in view), noise seeded by the frame index."""
        rng = np.random.default_rng([self._patient().seed, self.t, 1])
        return self.embed(self.state, np.zeros(len(INSTRUMENTS)), rng)

    def _patient(self) -> Patient:
        if self.patient is None:
            raise RuntimeError("call reset(patient) or restore(...) before stepping the simulator")
        return self.patient

    # -- one second -----------------------------------------------------------------------

    def step(self, labels: np.ndarray) -> Frame:
        """Play one second with triplet ``labels`` ``(100,)`` (0/1, at most 3 active)."""
        patient = self._patient()
        labels = np.asarray(labels)
        if labels.shape != (N_TRIPLETS,):
            raise ValueError(f"labels must have shape ({N_TRIPLETS},), got {labels.shape}")
        if not np.all((labels == 0) | (labels == 1)):
            raise ValueError("labels must be 0/1")
        active = [int(i) for i in np.flatnonzero(labels)]
        if len(active) > MAX_ACTIVE:
            raise ValueError(f"at most {MAX_ACTIVE} triplets can be active in a frame, got {len(active)}")
        rng = np.random.default_rng([patient.seed, self.t])
        s, phase = self.state, self.state.phase
        before_phase_goal, before_global = s.progress[phase], s.progress.mean()
        risk, events = 0.0, []
        clips_before = s.clips_duct + s.clips_artery
        supported = any(a in SUPPORT for a in active)
        haemostasis = any(a in COAGULATION or a == ASPIRATE for a in active)
        visibility = 1.0 / (1.0 + 2.0 * max(s.bleeding - 0.3, 0.0))
        speed = rng.uniform(0.7, 1.3) * (1.0 - 0.45 * patient.difficulty)

        for a in active:
            # the phase's own triplets advance its goal (later phases' triplets are wasted)
            gain = PHASE_TRIPLETS[phase].get(a, 0.0)
            if gain and phase != 2:  # clipping and cutting progress through _clip_or_cut
                boost = 1.5 if supported and phase in (0, 1, 3) else 1.0
                # 1.2: a typical surgeon (busy about 80 % of the time) takes the mean duration
                s.progress[phase] = min(1.0, s.progress[phase] + gain * boost * speed * visibility
                                        * self.rates[phase] * 1.2)
            if a in BLEEDING_WORK:
                bleed_p = 0.02 * (1 + 2 * patient.bleeding_tendency) * (1 + patient.difficulty)
                if not supported:
                    bleed_p *= 2.0
                    risk += 0.15
                if rng.random() < bleed_p:
                    s.bleeding += rng.uniform(0.1, 0.5)
                if a in GB_DISSECTION and not supported and rng.random() < 0.004:
                    events.append("perforation")
                    s.fluid += 0.4
                if s.bleeding > 0.5:
                    risk += 0.2 * min(s.bleeding, 2.0)  # dissecting what one cannot see
            if a in COAGULATION:
                s.bleeding = max(0.0, s.bleeding - COAGULATION[a])
            if a == ASPIRATE:
                s.fluid = max(0.0, s.fluid - 0.15)
            if a == IRRIGATE:
                s.fluid += 0.03
            if a == THERMAL:
                risk += 0.4
                if rng.random() < 0.03:
                    events.append("thermal_injury")
            if a in OTHER_CLIPS:
                risk += 0.1
            if a in CUT_BLEEDERS:
                s.bleeding += CUT_BLEEDERS[a]
                risk += 0.5
            if a in (CLIP_DUCT, CLIP_ARTERY, CUT_DUCT, CUT_ARTERY) and phase >= 1:
                risk += self._clip_or_cut(a, rng, events)

        # bleeding and fluid evolve; uncoagulated bleeding is dangerous
        s.fluid = max(0.0, s.fluid + 0.02 * s.bleeding)
        if not haemostasis:
            s.bleeding *= 0.995
        risk += 0.35 * min(s.bleeding, 1.5) / 1.5 + 0.1 * min(s.fluid, 1.0)
        if s.bleeding > self.config.bleeding_alarm and not s.alarm:
            events.append("haemorrhage")
        s.alarm = float(s.bleeding > self.config.bleeding_alarm)
        s.adverse += len(events)
        risk += 0.5 * bool(events)
        # cleaning is only complete when the field is dry
        if s.bleeding > 0.3 or s.fluid > 0.3:
            s.progress[5] = min(s.progress[5], 0.95)
        completed = self._advance_phase(phase, clips_before)

        typical = float(np.mean(self._typicality[phase, active])) - 1.0 if active else -1.0
        rewards = {"_r_phase_completion": float(completed),
                   "_r_phase_progression": 10.0 * float(s.progress[phase] - before_phase_goal),
                   "_r_risk": float(min(risk, 1.0)),
                   "_r_action_probability": typical,
                   "_r_global_progression": 10.0 * float(s.progress.mean() - before_global)}
        embedding = self.embed(s, instruments_of(labels), rng)
        self.t += 1
        return Frame(embedding, phase, rewards, tuple(events), s.complete)

    def _clip_or_cut(self, a: int, rng: np.random.Generator, events: list[str]) -> float:
        """Clip or cut the cystic duct or artery: a clip lands or a cut is done with a chance
        per second; before the critical view (``progress[1] < 1``) the structure may be the
        wrong one. Returns the risk of the second."""
        s = self.state
        cvs = s.progress[1]
        risk = 0.5 * (1.0 - cvs) + (0.1 if cvs < 1.0 else 0.0)
        if rng.random() > min(1.0, 7.0 * self.rates[2]):
            return risk  # still placing the clip or positioning the scissors
        # the duct can be injured once: while it is still uncut and not yet fully clipped
        if (cvs < 1.0 and a in (CLIP_DUCT, CUT_DUCT) and not s.duct_cut and s.clips_duct < 3
                and rng.random() < 0.3 * (1.0 - cvs)):
            events.append("bile_duct_injury")
        if a == CLIP_DUCT and not s.duct_cut:
            s.clips_duct = min(s.clips_duct + 1, 4)
        elif a == CLIP_ARTERY and not s.artery_cut:
            s.clips_artery = min(s.clips_artery + 1, 4)
        elif a == CUT_DUCT and not s.duct_cut:
            s.duct_cut = 1.0
            if s.clips_duct < 2:
                events.append("bile_leak")
                s.fluid += 0.6
                risk += 0.8
        elif a == CUT_ARTERY and not s.artery_cut:
            s.artery_cut = 1.0
            if s.clips_artery < 2:
                events.append("haemorrhage")
                s.bleeding += 1.2
                risk += 0.8
        s.progress[2] = 0.25 * min(s.clips_duct, 2) / 2 + 0.25 * min(s.clips_artery, 2) / 2 \
            + 0.25 * s.duct_cut + 0.25 * s.artery_cut
        return risk

    def _advance_phase(self, phase: int, clips_before: float) -> int:
        """Move the phase on when its goal is reached (or back, see the module docstring);
        returns 1 when the phase was completed in this second."""
        s = self.state
        if phase == 1 and s.clips_duct + s.clips_artery > clips_before:
            s.phase = 2  # clipping started: the annotated phase moves on, ready or not
            return 1
        if phase == 2 and s.bleeding > 0.9 and not (s.duct_cut and s.artery_cut):
            s.phase = 1  # the view is lost: back to dissection
            s.progress[1] = min(s.progress[1], 0.7)
            return 0
        if phase == 6 and s.bleeding > 0.6:
            s.phase = 5
            s.progress[5] = 0.5
            return 0
        if s.progress[phase] >= 1.0:
            s.phase = min(phase + 1, N_PHASES - 1)
            return 1
        return 0


def weighted_reward(rewards: Mapping[str, float], weights: Mapping[str, float] | None = None) -> float:
    """``sum_k weights[k] * rewards[k]``; unknown names in ``weights`` are an error."""
    weights = DEFAULT_REWARD_WEIGHTS if weights is None else weights
    unknown = set(weights) - set(REWARD_NAMES)
    if unknown:
        raise KeyError(f"unknown reward components {sorted(unknown)}; known: {list(REWARD_NAMES)}")
    return float(sum(w * rewards[name] for name, w in weights.items()))
