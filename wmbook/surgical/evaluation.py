"""Evaluation both ways: against the expert's labels (the field's mAP), and by the truth.

1. **mAP against the expert**, with ``ivtmetrics.Recognition`` (Nwoye et al.): per test video,
   the average precision of every triplet class present, then the mean over videos and classes
   (``compute_video_AP``), for the components ``i, v, t, iv, it, ivt`` and at each horizon (the
   current frame, +1, +5, +10 s: DARIL's table). :func:`map_table`.
2. **The world model's own accuracy**: the error of its imagined embeddings 1 to 10 steps ahead
   (:func:`embedding_errors`) and its next-phase accuracy and one-step error when the actions it
   is given are true or recognised (:func:`action_input_accuracy`).
3. **The truth**: a policy acts in the simulator from the test procedures' start states, and the
   simulator reports what happened to the patient: whether and how fast the procedure was
   completed, the phases completed, adverse events, accumulated true risk and the true return
   (:func:`simulator_outcomes`).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Mapping, Sequence

import ivtmetrics
import ivtmetrics.recognition
import numpy as np
import torch
from tqdm.auto import tqdm

from wmbook.surgical.model import SurgicalWorldModel
from wmbook.surgical.imitation import anticipate, context_windows, filter_context
from wmbook.surgical.env import ProcedureStart, SurgicalEnv
from wmbook.surgical.simulator import SimulatorConfig, State
from wmbook.surgical.triplets import COMPONENTS, N_TRIPLETS, REWARD_NAMES

HORIZONS = (0, 1, 5, 10)


@contextlib.contextmanager
def absent_classes_as_nan() -> Iterator[None]:
    """Within the block, ivtmetrics scores a class with no positive frame as NaN (left out of
    the means), as its documentation says and as it did with the scikit-learn of its time.

    ivtmetrics maps the ``-0.0`` that older scikit-learn returned for such a class to NaN;
    scikit-learn >= 1.1 returns ``0.0`` instead, which ivtmetrics would count as a class
    scored 0 and so lower every mAP by the share of classes absent from a video.
    """
    original = ivtmetrics.recognition.average_precision_score

    def average_precision(targets, scores, average=None, **kwargs):
        result = np.asarray(original(targets, scores, average=average, **kwargs), dtype=float)
        if average is None and np.ndim(targets) == 2:
            result = np.where(np.asarray(targets).sum(0) > 0, result, np.nan)
        return result

    ivtmetrics.recognition.average_precision_score = average_precision
    try:
        yield
    finally:
        ivtmetrics.recognition.average_precision_score = original


def ivt_map(videos: Sequence[tuple[np.ndarray, np.ndarray]],
            components: Sequence[str] = COMPONENTS) -> dict[str, float]:
    """Video-wise mAP of ``ivtmetrics.Recognition`` (``compute_video_AP``) for each component,
    from a list of per-video ``(scores (T, 100), targets (T, 100))``; classes absent from a
    video are left out of its mean (:func:`absent_classes_as_nan`)."""
    recognition = ivtmetrics.Recognition(num_class=N_TRIPLETS)
    for scores, targets in videos:
        scores, targets = np.asarray(scores, float), np.asarray(targets)
        if scores.shape != targets.shape or scores.ndim != 2 or scores.shape[1] != N_TRIPLETS:
            raise ValueError(f"scores {scores.shape} and targets {targets.shape} must both be (T, "
                             f"{N_TRIPLETS})")
        recognition.update(targets.astype(int), scores)
        recognition.video_end()
    with absent_classes_as_nan():
        return {c: float(recognition.compute_video_AP(c)["mAP"]) for c in components}


def map_table(model: SurgicalWorldModel, procedures: Sequence, horizons: Sequence[int] = HORIZONS,
              actions: str = "recognised") -> dict[int, dict[str, float]]:
    """The imitation baseline's ``{horizon: {component: mAP}}`` over ``procedures`` (the context
    actions are the recogniser's by default, as on real video)."""
    per_video = [anticipate(model, p, horizons, actions) for p in procedures]
    return {k: ivt_map([video[k] for video in per_video]) for k in horizons}


@torch.no_grad()
def embedding_errors(model: SurgicalWorldModel, procedures: Sequence, max_horizon: int = 10,
                     actions: str = "true") -> dict[str, list[float]]:
    """Mean squared error of the imagined embedding ``k = 1..max_horizon`` steps ahead, given
    the actions that really followed (true or recognised), from every full context; with the
    error of copying the last frame (``"copy_last"``) and the variance of the frames
    (``"variance"``) as yardsticks."""
    W = model.config.context
    recognised = actions == "recognised"
    sq = np.zeros(max_horizon)
    copy = np.zeros(max_horizon)
    counts = np.zeros(max_horizon)
    variance = float(np.concatenate([p.embeddings for p in procedures]).var(0).mean())
    for procedure in procedures:
        windows = context_windows(procedure, W, actions)
        latent, _ = filter_context(model, windows, recognised)
        t, T = windows["t"].numpy(), len(procedure)
        source = procedure.recognised if recognised else procedure.triplets
        z_now = procedure.embeddings[t]
        for k in range(1, max_horizon + 1):
            index = np.minimum(t + k, T - 1)
            action = torch.from_numpy(np.asarray(source[index], np.float32))
            conf = model.confidence(action.shape[:1], recognised)
            latent = model.predict(latent, action, conf).latent
            valid = t + k < T
            truth = procedure.embeddings[index[valid]]
            sq[k - 1] += ((latent.z.numpy()[valid] - truth) ** 2).mean(1).sum()
            copy[k - 1] += ((z_now[valid] - truth) ** 2).mean(1).sum()
            counts[k - 1] += valid.sum()
    return {"mse": (sq / counts).tolist(), "copy_last": (copy / counts).tolist(), "variance": variance}


@torch.no_grad()
def action_input_accuracy(model: SurgicalWorldModel, procedures: Sequence, actions: str) -> dict[str, float]:
    """One-step accuracy when the context and next actions are ``"true"`` or ``"recognised"``:
    next-phase accuracy, next-embedding MSE, next-reward MSE (when the data has rewards)."""
    W = model.config.context
    recognised = actions == "recognised"
    hits = n = 0
    sq_z = sq_r = 0.0
    n_r = 0
    for procedure in procedures:
        windows = context_windows(procedure, W, actions)
        latent, _ = filter_context(model, windows, recognised)
        t = windows["t"].numpy()
        valid = t + 1 < len(procedure)
        t = t[valid]
        latent = type(latent)(latent.h[valid], latent.z[valid])
        source = procedure.recognised if recognised else procedure.triplets
        action = torch.from_numpy(np.asarray(source[t + 1], np.float32))
        prediction = model.predict(latent, action, model.confidence(action.shape[:1], recognised))
        hits += int((prediction.phase_logits.argmax(1).numpy() == procedure.phases[t + 1]).sum())
        sq_z += float(((prediction.embedding.numpy() - procedure.embeddings[t + 1]) ** 2).mean(1).sum())
        n += len(t)
        if procedure.rewards is not None:
            sq_r += float(((prediction.rewards.numpy() - procedure.rewards[t + 1]) ** 2).mean(1).sum())
            n_r += len(t)
    out = {"phase_accuracy": hits / n, "embedding_mse": sq_z / n}
    if n_r:
        out["reward_mse"] = sq_r / n_r
    return out


# -- the truth: policies in the simulator ---------------------------------------------------------


def run_policy(env: SurgicalEnv, policy, start: ProcedureStart) -> dict[str, float]:
    """Let ``policy`` (``reset(start)``, ``act(observation, info) -> labels (100,)``) finish the
    procedure from ``start``; returns its true outcome."""
    obs, info = env.reset(options={"start": start})
    policy.reset(start)
    totals = dict.fromkeys(REWARD_NAMES, 0.0)
    ret = adverse = 0.0
    steps, done, terminated = 0, False, False
    while not done:
        obs, reward, terminated, truncated, info = env.step(policy.act(obs, info))
        done = terminated or truncated
        ret += reward
        adverse += len(info["events"])
        steps += 1
        for name in REWARD_NAMES:
            totals[name] += info["rewards"][name]
    state = State.from_array(info["state"])
    return {"completed": float(terminated), "phases_completed": float(state.phase + terminated),
            "frames": float(start.t + steps), "adverse_events": adverse,
            "true_risk": totals["_r_risk"], "true_return": ret,
            "mean_risk": totals["_r_risk"] / steps}


def simulator_outcomes(policies: Mapping[str, Callable[[object], object]], starts: Sequence[ProcedureStart],
                       config: SimulatorConfig | None = None,
                       reward_weights: Mapping[str, float] | None = None,
                       progress: bool = False) -> dict[str, dict[str, object]]:
    """True outcomes of each policy from every start: ``{name: {"runs": [outcome, ...],
    "mean": {metric: value}}}``. ``policies`` maps a name to a factory ``f(start) -> policy``
    (the expert differs per procedure)."""
    env = SurgicalEnv(config, reward_weights)
    results: dict[str, dict[str, object]] = {}
    for name, make in policies.items():
        runs = [run_policy(env, make(start), start)
                for start in tqdm(starts, desc=name, disable=not progress, leave=False)]
        results[name] = {"runs": runs,
                         "mean": {key: float(np.mean([r[key] for r in runs])) for key in runs[0]}}
    return results
