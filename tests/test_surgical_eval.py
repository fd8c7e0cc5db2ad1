"""Evaluation both ways: ivtmetrics' video-wise mAP on a hand-computed case, the imitation
baseline's horizons, the world model's errors, and true outcomes in the simulator."""

import numpy as np
import pytest
import torch

from surgical_helpers import tiny_config
from wmbook.surgical.model import SurgicalWorldModel
from wmbook.surgical import evaluation as E
from wmbook.surgical.data import load_dataset
from wmbook.surgical.experiment import expert_for, generate
from wmbook.surgical.imitation import ImitationPolicy, anticipate
from wmbook.surgical.env import SurgicalEnv


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    config = tiny_config(tmp_path_factory.mktemp("surgical_eval"))
    generate(config)
    dataset = load_dataset(config.data.root)
    torch.manual_seed(0)
    model = SurgicalWorldModel(config.model_config(dataset.embedding_dim)).eval()
    return config, dataset, model


def hand_made_videos():
    # video 1: grasper,retract,gallbladder (class 17) in frames 0 and 2; ranked pos, neg, pos, neg:
    # AP = (1/1 + 2/3) / 2 = 5/6. Video 2: hook,dissect,gallbladder (class 60) ranked first: AP 1.
    t1, s1 = np.zeros((4, 100)), np.zeros((4, 100))
    t1[[0, 2], 17] = 1
    s1[:, 17] = [0.9, 0.8, 0.3, 0.1]
    t2, s2 = np.zeros((3, 100)), np.zeros((3, 100))
    t2[1, 60] = 1
    s2[:, 60] = [0.2, 0.7, 0.1]
    return [(s1, t1), (s2, t2)]


def test_ivt_map_matches_a_hand_computed_case():
    one = E.ivt_map(hand_made_videos()[:1])
    assert one == pytest.approx(dict.fromkeys(["i", "v", "t", "iv", "it", "ivt"], 5 / 6))
    # video-wise: each class averaged over the videos that hold it, then over classes; the
    # target gallbladder is in both videos: (5/6 + 1) / 2 as well
    both = E.ivt_map(hand_made_videos())
    assert both == pytest.approx(dict.fromkeys(["i", "v", "t", "iv", "it", "ivt"], 11 / 12))
    perfect = [(t, t) for _, t in hand_made_videos()]
    assert E.ivt_map(perfect)["ivt"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="must both be"):
        E.ivt_map([(np.zeros((3, 99)), np.zeros((3, 99)))])


def test_the_component_scores_use_the_cholect50_decomposition():
    # two different triplets of the same instrument: wrong at ivt level, right at i level
    targets, scores = np.zeros((4, 100)), np.zeros((4, 100))
    targets[[0, 1], 17] = 1          # grasper,retract,gallbladder
    scores[[0, 1], 7] = 0.9          # grasper,grasp,gallbladder: same instrument and target
    scores[[2, 3], 17] = 0.5
    result = E.ivt_map([(scores, targets)])
    assert result["i"] == pytest.approx(1.0) and result["t"] == pytest.approx(1.0)
    assert result["ivt"] == pytest.approx(0.5) and result["v"] == pytest.approx(0.5)


def test_anticipation_horizons_line_up(setup):
    _, dataset, model = setup
    procedure = dataset.test[0]
    out = anticipate(model, procedure, (0, 1, 2), "recognised")
    W, T = model.config.context, len(procedure)
    assert out[0][0].shape == (T - W + 1, 100)
    for k in (1, 2):
        scores, targets = out[k]
        assert scores.shape == (T - W + 1 - k, 100)
        np.testing.assert_array_equal(targets, procedure.triplets[W - 1 + k:])
        assert scores.min() >= 0 and scores.max() <= 1
    table = E.map_table(model, dataset.test, (0, 1, 2))
    assert set(table) == {0, 1, 2} and all(0 <= v <= 1 for row in table.values() for v in row.values())


def test_world_model_errors_are_finite_and_have_yardsticks(setup):
    _, dataset, model = setup
    errors = E.embedding_errors(model, dataset.test, 3)
    assert len(errors["mse"]) == 3 and np.all(np.isfinite(errors["mse"]))
    assert errors["copy_last"][2] > 0 and errors["variance"] > 0
    for actions in ("true", "recognised"):
        row = E.action_input_accuracy(model, dataset.test, actions)
        assert 0 <= row["phase_accuracy"] <= 1 and np.isfinite(row["reward_mse"])


def test_the_expert_replays_its_procedure_in_the_simulator(setup):
    config, dataset, model = setup
    procedure = dataset.test[0]
    start = procedure.start(8)
    outcomes = E.simulator_outcomes({"expert": expert_for(dataset)}, [start], config.simulator)
    run = outcomes["expert"]["runs"][0]
    assert run["completed"] == 1.0 and run["phases_completed"] == 7.0
    assert run["frames"] == len(procedure)
    assert run["true_risk"] == pytest.approx(float(procedure.rewards[8:, 2].sum()), rel=1e-5)
    assert run["adverse_events"] == procedure.adverse_events[8:].sum()


def test_the_imitation_policy_acts_with_one_to_three_triplets_and_is_seeded(setup):
    config, dataset, model = setup
    start = dataset.test[0].start(8)
    policy = ImitationPolicy(model, seed=3)
    policy.reset(start)
    first = [policy.act(start.embeddings[-1]) for _ in range(5)]
    assert all(1 <= a.sum() <= 3 for a in first)
    policy.reset(start)
    assert all(np.array_equal(a, policy.act(start.embeddings[-1])) for a in first)
    outcome = E.run_policy(SurgicalEnv(config.simulator), ImitationPolicy(model), start)
    assert outcome["frames"] > 8 and np.isfinite(outcome["true_return"])
