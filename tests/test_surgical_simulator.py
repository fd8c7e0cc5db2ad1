"""The surgical simulator: seeded, phases in order, at most 3 triplets, unsafe actions raise the
risk, adverse events happen, procedures can be resumed, and the surgeons leave room to improve."""

import numpy as np
import pytest

from wmbook.surgical import simulator as S
from wmbook.surgical.env import SurgicalEnv
from wmbook.surgical.surgeons import ORACLE, Surgeon, SurgeonProfile, recognise, run_procedure
from wmbook.surgical.triplets import (INSTRUMENTS, N_TRIPLETS, instruments_of, triplet_index,
                                      triplet_map, triplet_name)

SHORT = S.SimulatorConfig(embedding_dim=16, duration_scale=0.05)


def labels(*names):
    out = np.zeros(N_TRIPLETS, dtype=np.int8)
    for name in names:
        out[triplet_index(*name.split(","))] = 1
    return out


def test_the_class_mapping_is_ivtmetrics_cholect50_structure():
    table = triplet_map()
    assert table.shape == (100, 6)
    assert len(np.unique(table[:, 1])) == 6 and len(np.unique(table[:, 2])) == 10
    assert len(np.unique(table[:, 3])) == 15
    assert triplet_name(79) == "clipper,clip,cystic_duct"
    assert all(triplet_name(k).endswith("null_verb,null_target") for k in range(94, 100))
    assert instruments_of(labels("hook,dissect,gallbladder", "grasper,retract,gallbladder")).tolist() == \
        [1, 0, 1, 0, 0, 0]


def procedure(profile=None, seed=5, config=SHORT):
    env = SurgicalEnv(config)
    return run_procedure(env, Surgeon(profile or SurgeonProfile.draw("s", 1)), S.Patient.draw(seed)), env


def test_same_seed_same_procedure_other_seed_another():
    a, _ = procedure(seed=5)
    b, _ = procedure(seed=5)
    c, _ = procedure(seed=6)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert len(a["phases"]) != len(c["phases"]) or not np.array_equal(a["embeddings"], c["embeddings"])


def test_phases_come_in_order_with_only_the_documented_returns():
    for seed in range(4):
        arrays, env = procedure(seed=seed)
        phases = arrays["phases"]
        assert env.sim.state.complete
        first_seen = [int(np.argmax(phases == p)) for p in range(7)]
        assert all(p in phases for p in range(7)) and first_seen == sorted(first_seen)
        steps = np.diff(phases)
        backwards = {(int(a), int(b)) for a, b, d in zip(phases[:-1], phases[1:], steps) if d < 0}
        assert backwards <= {(2, 1), (6, 5)}
        assert np.all(steps <= 1)  # never skips a phase


def test_at_most_three_triplets_per_frame():
    arrays, _ = procedure()
    active = arrays["triplets"].sum(1)
    assert active.max() <= 3 and active.mean() > 1.0
    env = SurgicalEnv(SHORT)
    env.reset(seed=0)
    four = labels("hook,dissect,gallbladder", "grasper,retract,gallbladder",
                  "irrigator,aspirate,fluid", "bipolar,coagulate,liver")
    with pytest.raises(ValueError, match="at most 3"):
        env.step(four)


def risk_of(action, state: S.State, seed=0):
    sim = S.SurgicalSimulator(SHORT)
    sim.restore(S.Patient(seed, 0.3, 0.3), state, 10)
    return sim.step(action).rewards["_r_risk"]


def test_risk_rises_for_unsafe_actions():
    calot = S.State(progress=np.array([1, 0.3, 0, 0, 0, 0, 0.0]), phase=1)
    safe = risk_of(labels("hook,dissect,cystic_duct", "grasper,retract,gallbladder"), calot)
    early_clip = risk_of(labels("clipper,clip,cystic_duct", "grasper,retract,gallbladder"), calot)
    no_traction = risk_of(labels("hook,dissect,cystic_duct"), calot)
    assert early_clip > safe + 0.2
    assert no_traction > safe
    bleeding = S.State(progress=np.array([1, 1, 1, 0.5, 0, 0, 0.0]), phase=3, bleeding=1.0)
    dry = S.State(progress=np.array([1, 1, 1, 0.5, 0, 0, 0.0]), phase=3)
    work = labels("hook,dissect,gallbladder", "grasper,retract,gallbladder")
    assert risk_of(work, bleeding) > risk_of(work, dry) + 0.2


def test_cutting_an_unclipped_artery_causes_a_haemorrhage():
    sim = S.SurgicalSimulator(SHORT)
    sim.restore(S.Patient(3, 0.3, 0.3), S.State(progress=np.array([1, 1, 0, 0, 0, 0, 0.0]), phase=2), 0)
    events = []
    for _ in range(60):
        frame = sim.step(labels("scissors,cut,cystic_artery"))
        events += frame.events
        if sim.state.artery_cut:
            break
    assert "haemorrhage" in events and sim.state.bleeding > 1.0 and sim.state.adverse >= 1
    # with two clips first, the same cut is safe
    sim.restore(S.Patient(3, 0.3, 0.3), S.State(progress=np.array([1, 1, 0, 0, 0, 0, 0.0]), phase=2,
                                                 clips_artery=2), 0)
    events = []
    for _ in range(60):
        events += sim.step(labels("scissors,cut,cystic_artery")).events
        if sim.state.artery_cut:
            break
    assert sim.state.artery_cut and not events


def test_a_procedure_resumed_from_a_stored_state_repeats_itself():
    arrays, env = procedure(seed=7)
    k = 15
    sim = S.SurgicalSimulator(SHORT)
    sim.restore(S.Patient.draw(7), arrays["states"][k], k)
    for t in range(k, k + 10):
        frame = sim.step(arrays["triplets"][t])
        np.testing.assert_array_equal(frame.embedding, arrays["embeddings"][t])
        assert frame.rewards["_r_risk"] == pytest.approx(float(arrays["_r_risk"][t]))
        assert frame.phase == arrays["phases"][t]


def test_env_reward_is_the_weighted_sum_and_an_idle_policy_is_truncated():
    env = SurgicalEnv(SHORT, reward_weights={"_r_risk": -1.0})
    obs, info = env.reset(seed=1)
    assert obs.shape == (16,) and env.action_space.n == 100
    steps, done = 0, False
    while not done:
        obs, reward, terminated, truncated, info = env.step(np.zeros(100, dtype=np.int8))
        assert reward == pytest.approx(-info["rewards"]["_r_risk"])
        done, steps = terminated or truncated, steps + 1
    assert truncated and not terminated and steps == SHORT.max_frames
    with pytest.raises(KeyError, match="unknown reward components"):
        SurgicalEnv(SHORT, reward_weights={"risk": 1.0})


def test_the_recogniser_has_the_configured_accuracy():
    rng = np.random.default_rng(0)
    truth = np.zeros((4000, 100), dtype=np.int8)
    truth[np.arange(4000), rng.integers(0, 100, 4000)] = 1
    scores = recognise(truth, np.random.default_rng(1), 0.4, 0.9)
    top = scores.argmax(1)
    correct = truth[np.arange(4000), top] == 1
    same_tool = triplet_map()[top, 1] == triplet_map()[truth.argmax(1), 1]
    assert abs(correct.mean() - 0.4) < 0.03 and abs(same_tool.mean() - 0.9) < 0.03
    assert scores.min() >= 0 and scores.max() <= 1 and len(INSTRUMENTS) == 6


def test_surgeons_are_good_but_the_oracle_is_better():
    returns = {"oracle": [], "surgeons": []}
    config = S.SimulatorConfig(embedding_dim=16, duration_scale=0.1)
    for seed in range(3):
        for key, profile in (("oracle", ORACLE), ("surgeons", SurgeonProfile.draw("s", seed))):
            arrays, env = procedure(profile, seed, config)
            assert env.sim.state.complete
            total = sum(S.weighted_reward({n: float(arrays[n][t]) for n in S.REWARD_NAMES})
                        for t in range(len(arrays["phases"])))
            returns[key].append((total, len(arrays["phases"]), arrays["adverse_events"].sum()))
    oracle, surgeons = np.array(returns["oracle"]), np.array(returns["surgeons"])
    assert oracle[:, 0].mean() > surgeons[:, 0].mean()   # better true return
    assert oracle[:, 1].mean() < surgeons[:, 1].mean()   # faster
    assert oracle[:, 2].sum() == 0


def test_no_reward_for_prolonging_the_procedure():
    """Every per-frame term is <= 0 unless the procedure progresses: idling cannot pay."""
    env = SurgicalEnv(SHORT)
    env.reset(seed=2)
    idle = labels("grasper,null_verb,null_target")
    for _ in range(20):
        _, reward, _, _, info = env.step(idle)
        assert reward < 0 and info["rewards"]["_r_action_probability"] == pytest.approx(-0.8)
    _, _, _, _, info = env.step(labels("hook,dissect,omentum", "grasper,retract,gallbladder"))
    assert info["rewards"]["_r_action_probability"] == 0.0
