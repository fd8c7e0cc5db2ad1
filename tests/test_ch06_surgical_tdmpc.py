"""Chapter 6's harness: profiles, recordings, rankings, sentences built from numbers, the
trajectory and explorer helpers, and the figures."""

import dataclasses
import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from surgical_helpers import tiny_world  # noqa: E402
from wmbook.chapters import ch06_surgical_tdmpc as C  # noqa: E402
from wmbook.surgical import analysis as A  # noqa: E402
from wmbook.chapters import get_profile  # noqa: E402
from wmbook.surgical import compare as PC  # noqa: E402
from wmbook.surgical import policies as P  # noqa: E402
from wmbook.surgical.imitation import ImitationPolicy  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    config, dataset, model = tiny_world(tmp_path_factory.mktemp("chapter6"))
    return config, dataset, model.eval()


def test_profiles_are_frozen_and_full_is_the_larger():
    full, ci = get_profile("06_surgical_tdmpc", "full"), get_profile("06_surgical_tdmpc", "ci")
    with pytest.raises(dataclasses.FrozenInstanceError):
        full.seeds = (0,)
    assert len(full.seeds) >= 3 and 2 <= len(ci.seeds) < len(full.seeds)
    assert full.check_headline and not ci.check_headline
    assert full.compare.ppo_steps > ci.compare.ppo_steps and full.compare.offline_steps > ci.compare.offline_steps
    assert set(full.compare.map_policies) == set(C.MAIN)


def test_chapter_config_puts_data_and_checkpoints_under_the_run_folder(tmp_path):
    config = C.chapter_config(C.PROFILES["ci"], tmp_path)
    assert config.data.root == str(tmp_path / "data")
    assert config.output.world_model == str(tmp_path / "world_model.pt")
    assert config.model == C.PROFILES["ci"].surgical.model  # nothing else changes


def _recording(phases, actions):
    rec = A.Recording()
    policy = A.RecordingPolicy(_Fixed(actions), rec)
    policy.reset(None)
    for phase in phases:
        policy.act(np.full(4, phase, np.float32), {"phase": phase})
    return rec


class _Fixed:
    """A policy that plays a fixed list of label sets in turn."""

    def __init__(self, actions):
        self.actions, self.i = actions, 0

    def reset(self, start=None):
        self.i = 0

    def act(self, observation, info=None):
        labels = np.zeros(100, np.int8)
        labels[self.actions[self.i % len(self.actions)]] = 1
        self.i += 1
        return labels


def test_recording_and_phase_action_distribution():
    rec = _recording([0, 0, 1], [[3], [3, 4], [9]])
    assert rec.phases == [0, 0, 1] and len(rec.actions) == 3 and rec.starts == [0]
    assert rec.procedure(0).shape == (3, 4)
    dist = A.phase_action_distribution(rec)
    assert dist[0, 3] == pytest.approx(2 / 3) and dist[0, 4] == pytest.approx(1 / 3)
    assert dist[1, 9] == 1.0 and np.isnan(dist[2]).all()
    np.testing.assert_allclose(np.nansum(dist, 1)[:2], 1.0)
    same = A.distribution_distance(dist, dist)
    other = A.distribution_distance(A.phase_action_distribution(_recording([0, 1], [[50], [51]])), dist)
    assert same == 0.0 and other == 1.0
    with pytest.raises(ValueError, match="share no phase"):
        A.distribution_distance(dist, A.phase_action_distribution(_recording([5], [[1]])))


def test_rankings_and_kendall_tau():
    scores = {"a": 3.0, "b": 1.0, "c": 2.0}
    assert C.ranking(scores) == ["a", "c", "b"]
    assert C.ranking(scores, higher_is_better=False) == ["b", "c", "a"]
    assert C.kendall_tau(["a", "b", "c"], ["a", "b", "c"]) == 1.0
    assert C.kendall_tau(["a", "b", "c"], ["c", "b", "a"]) == -1.0
    assert C.kendall_tau(["a", "b", "c"], ["b", "a", "c"]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="same distinct names"):
        C.kendall_tau(["a", "b"], ["a", "c"])


def test_sentences_follow_the_numbers():
    assert C.difference_text(-10.04, -20.0, "the return") == "the return rose from -20.0 to -10.0"
    assert C.difference_text(-20.0, -10.0, "the return") == "the return fell from -10.0 to -20.0"
    assert C.difference_text(1.01, 1.0, "x") == "x stayed at 1.0"
    text = C.change_text({"ppo": -0.5, "tdmpc": 0.0}, {"ppo": -3.0, "tdmpc": 2.0})
    assert "PPO in the WM had 0.50 fewer adverse events" in text and "TD-MPC had as many adverse events" in text
    reached = C.headline_text(True, "IQL", -10.0, -20.0, 0.1, 0.2, "TD-MPC + risk budget", -30.0, 0.1)
    assert "is reached" in reached
    missed = C.headline_text(False, "IQL", -30.0, -20.0, 0.1, 0.2, "TD-MPC + risk budget", -40.0, 0.1)
    assert "not reached" in missed and "no RL or planner policy beat imitation" in missed
    unsafe = C.headline_text(False, "IQL", -10.0, -20.0, 0.9, 0.2, "PPO + risk constraint", -40.0, 0.1)
    assert "more adverse events than the surgeons" in unsafe


def test_mean_table_and_formatted_tables():
    def run(ivt, ret):
        truth = {"true_return": ret, "completed": 1.0, "frames": 100.0, "adverse_events": 0.0, "true_risk": 1.0,
                 "promised_return": 5.0, "true_prefix_return": 4.0, "exploitation_gap": 1.0}
        row = {"i": 0.5, "v": 0.4, "t": 0.3, "ivt": ivt}
        return {"map": {"imitation": {"1": row, "5": row}}, "truth": {"imitation": truth, "ppo_safe": truth}}
    means = C.mean_table([run(0.2, -10.0), run(0.4, -20.0)], ["imitation", "ppo_safe"], [1, 5])
    assert means["imitation"]["map"]["1"]["ivt"] == pytest.approx(30.0)
    assert means["imitation"]["truth"]["true_return"] == -15.0 and means["ppo_safe"]["map"] == {}
    table = re.sub(" +", " ", C.format_map_table(means, ["imitation"], [1, 5], {"ivt": 0.1}))
    assert "| imitation | 10.0 | 30.0 | 30.0 | 50.0 | 40.0 | 30.0 |" in table
    truth = re.sub(" +", " ", C.format_truth_table(means, ["imitation"]))
    assert "| imitation | 100 % | 100 | 0.00 | 1.0 | -15.0 | 5.0 | 4.0 | 1.0 |" in truth
    assert C.format_rank_table(["iql", "imitation"], ["imitation", "iql"]).count("\n") == 3


def test_projection_is_centred_with_a_fixed_sign():
    rng = np.random.default_rng(0)
    frames = rng.normal(size=(200, 5)) * np.array([5.0, 2.0, 0.1, 0.1, 0.1])
    projection = A.Projection(frames)
    xy = projection(frames)
    assert xy.shape == (200, 2) and np.allclose(xy.mean(0), 0, atol=1e-9)
    assert xy[:, 0].var() > xy[:, 1].var() > 1.0  # the two widest directions, in order
    again = A.Projection(frames[::-1])
    np.testing.assert_allclose(again(frames), xy, atol=1e-9)
    with pytest.raises(ValueError, match="shape"):
        A.Projection(frames[:2])


def test_imagined_trajectory_and_outlook(tiny):
    config, dataset, model = tiny
    procedure, W = dataset.test[0], model.config.context
    frames = A.imagined_trajectory(model, procedure, W, 5)
    assert frames.shape == (5, procedure.embeddings.shape[1]) and np.isfinite(frames).all()
    with pytest.raises(ValueError, match="context"):
        A.imagined_trajectory(model, procedure, W - 1, 5)
    policies = {"imitation": lambda start: ImitationPolicy(model, 0),
                "greedy": lambda start: P.LatentPolicy(model, P.imitation_chooser(model))}
    views = A.outlook(model, policies, procedure, W + 2, config.simulator, model.config.reward_weights, 4)
    again = A.outlook(model, policies, procedure, W + 2, config.simulator, model.config.reward_weights, 4)
    for name, view in views.items():
        assert 1 <= len(view.labels) <= 3 and len(view.rewards) == len(view.risks) <= 4
        np.testing.assert_array_equal(view.rewards, again[name].rewards)  # the simulator is seeded
    fig = C.plot_outlook(views, "t")
    assert len(fig.axes) == 3
    plt.close(fig)


def test_figures_have_their_panels():
    rng = np.random.default_rng(1)
    curves = {n: {"episode_returns": list(rng.normal(size=60)), "lagrange": list(rng.random(5))}
              for n in ("ppo", "ppo_safe", "ppo_alt_weights")}
    fig = C.plot_reward_curves([{"curves": curves, "seed": 0}, {"curves": curves, "seed": 1}])
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 6 and len(fig.axes[1].lines) == 2
    plt.close(fig)
    dist = {n: A.phase_action_distribution(_recording([0, 1, 2], [[1], [2, 3], [4]])) for n in ("expert", "iql")}
    fig = C.plot_action_distributions(dist, top=4)
    assert len(fig.axes) == 3 and len(fig.axes[0].get_xticklabels()) == 4  # two panels and a colour bar
    plt.close(fig)
    frames = rng.normal(size=(50, 4))
    fig = C.plot_state_trajectories(A.Projection(frames), frames[:10], frames[10:20], {"iql": frames[20:30]}, frames,
                                    window=3)
    assert len(fig.axes[0].lines) == 2 + 2 + 1  # real, imagined, the policy and its end, the start
    plt.close(fig)
    fig = C.plot_rankings({"a": 30.0, "b": 20.0}, {"a": -5.0, "b": 1.0})
    assert len(fig.axes) == 2 and len(fig.axes[1].lines) == 2
    plt.close(fig)


def test_smooth_averages_windows():
    x, y = C.smooth([1, 2, 3, 4, 5], 2)
    np.testing.assert_allclose(y, [1.5, 3.5])
    np.testing.assert_allclose(x, [1.0, 3.0])


def test_compare_records_keeps_choosers_and_limits_the_map_table(tiny):
    config, dataset, model = tiny
    settings = PC.CompareSettings(ppo_steps=400, offline_steps=5, map_stride=4, gap_steps=3,
                                  planner=P.PlannerConfig(horizon=2, samples=8, iterations=1, elites=2),
                                  map_policies=("imitation", "iql"), map_components=("i", "ivt"))
    recordings: dict = {}
    out = PC.compare_policies(config, dataset, model, settings, keep_policies=True, wrap=A.recorder(recordings))
    assert set(out["map"]) == {"imitation_current", "imitation", "iql"}
    assert set(out["map"]["iql"]["1"]) == {"i", "ivt"}
    assert set(out["choosers"]) == set(out["truth"]) - {"expert"}
    assert set(recordings) == set(out["truth"])  # every policy's play, the surgeons' included
    for name, rec in recordings.items():
        assert len(rec.starts) == len(dataset.test) and len(rec.actions) == len(rec.phases) == len(rec.frames)
        steps = out["truth"][name]["frames"] - config.evaluation.start_frame
        assert len(rec.actions) == pytest.approx(steps * len(dataset.test))
    text = re.sub(" +", " ", PC.format_comparison(out))
    assert "| iql |" in text and "| ppo |" not in text.split("\n\n")[0]


def test_running_mean():
    frames = np.arange(10.0).reshape(5, 2)
    np.testing.assert_allclose(A.running_mean(frames, 2), [[1, 2], [3, 4], [5, 6], [7, 8]])
    np.testing.assert_allclose(A.running_mean(frames, 9), [[4, 5]])  # fewer frames than the window
    np.testing.assert_allclose(A.running_mean(frames, 1), frames)
