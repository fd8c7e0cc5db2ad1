"""Chapter 6's policies on the surgical world model: the 1-to-3 Bernoulli sampler, logged
transitions, PPO in the world model with and without the risk constraint, policies in the
simulator, their mAP, and the ``tdmpc``/``iql``/``ppo`` commands."""

import dataclasses
import json
import re

import numpy as np
import pytest
import torch
import yaml

from surgical_helpers import TINY, tiny_world
from wmbook.agents.ppo import BernoulliHead
from wmbook.surgical.tdmpc import PlannerConfig, SurgicalTDMPC, TDMPCConfig
from wmbook.surgical import cli
from wmbook.surgical import compare as PC
from wmbook.surgical.env import SurgicalEnv
from wmbook.surgical import policies as P

SMALL_PLANNER = PlannerConfig(horizon=2, samples=8, iterations=1, elites=2)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("surgical_policies")
    return (*tiny_world(root), root)


def test_bernoulli_head_samples_one_to_three_labels():
    head = BernoulliHead(100, 1, 3)
    logits = torch.cat([torch.full((4, 100), -8.0), torch.full((4, 100), 3.0)])  # ~0 and ~7 labels
    dist = head.distribution(logits)
    for action in (dist.sample(torch.Generator().manual_seed(0)), dist.mode()):
        active = action.sum(1)
        assert ((active >= 1) & (active <= 3)).all()
        assert (active[4:] == 3).all() and (active[:4] == 1).all()


def test_offline_transitions_follow_the_logged_procedures(tiny):
    config, dataset, model, _ = tiny
    data = P.offline_transitions(model, dataset.train)
    W = model.config.context
    assert len(data.s) == sum(len(p) - W for p in dataset.train)
    assert data.s.shape[1] == model.config.hidden_dim + model.config.embedding_dim
    assert data.done.sum() == len(dataset.train)               # one last step per procedure
    first = dataset.train[0]
    weights = P.reward_vector(model.config.reward_weights).numpy()
    assert data.reward[0].item() == pytest.approx(float(first.rewards[W] @ weights), abs=1e-5)
    assert torch.equal(data.actions[0], torch.from_numpy(first.triplets[W].astype(np.float32)))
    assert torch.allclose(data.s[1], data.s_next[0])
    with pytest.raises(KeyError, match="unknown reward"):
        P.reward_vector({"_r_bogus": 1.0})


def test_ppo_in_the_world_model_is_seeded_and_the_constraint_raises_lambda(tiny):
    _, dataset, model, _ = tiny
    config = P.PPOWorldModelConfig(total_timesteps=160, num_envs=4, n_steps=20, episode_steps=10,
                                   hidden_sizes=(16, 16), batch_size=40)
    one = P.train_ppo_in_world_model(model, dataset.train, config)
    two = P.train_ppo_in_world_model(model, dataset.train, config)
    assert len(one.episode_returns) == 16 and one.episode_returns == two.episode_returns
    assert one.lagrange == []
    # a budget below any risk makes the multiplier climb at every update
    safe = P.train_ppo_in_world_model(model, dataset.train, P.PPOWorldModelConfig(
        **{**config.__dict__, "safety": True, "risk_budget": -1.0}))
    assert len(safe.lagrange) == 2 and 0 < safe.lagrange[0] < safe.lagrange[1]


def test_policies_act_in_the_simulator_and_are_scored(tiny):
    config, dataset, model, _ = tiny
    agent = SurgicalTDMPC(model.config.hidden_dim + model.config.embedding_dim, model.config.embedding_dim,
                          TDMPCConfig(hidden=16))
    agent.components.fit(dataset.train, model.config.reward_weights)
    choose = P.tdmpc_chooser(model, agent, SMALL_PLANNER)
    policy = P.LatentPolicy(model, choose)
    start = dataset.test[0].start(config.evaluation.start_frame)
    policy.reset(start)
    env = SurgicalEnv(config.simulator)
    obs, info = env.reset(options={"start": start})
    for _ in range(3):
        action = policy.act(obs, info)
        assert action.shape == (100,) and 1 <= action.sum() <= 3
        obs, *_ , info = env.step(action)
    table = PC.policy_map_table(model, dataset.test, P.imitation_chooser(model), (1, 2), stride=3)
    assert set(table) == {1, 2} and 0 <= table[1]["ivt"] <= 1
    with pytest.raises(ValueError, match="k >= 1"):
        PC.policy_anticipation(model, dataset.test[0], choose, (0, 1))
    assert np.isfinite(PC.promised_return(model, [start], choose, 4))


def test_value_components_track_progress(tiny):
    _, dataset, model, _ = tiny
    agent = SurgicalTDMPC(1, model.config.embedding_dim)
    agent.components.fit(dataset.train, model.config.reward_weights)
    p = dataset.train[0]
    position = agent.components.progress(torch.from_numpy(p.embeddings))
    assert np.corrcoef(position.numpy(), np.arange(len(p)))[0, 1] > 0.5
    terms = agent.components(torch.from_numpy(p.embeddings[:-1]), torch.from_numpy(p.embeddings[1:]),
                             torch.nn.functional.one_hot(torch.from_numpy(p.phases[1:]).long(), 7).float(),
                             torch.from_numpy(p.triplets[1:].astype(np.float32)))
    assert set(terms) == {"progress", "action", "explore"}
    assert (terms["explore"] >= 0).all() and (terms["explore"] <= 1).all()


@pytest.fixture
def tiny_yaml(tiny):
    _, _, _, root = tiny
    values = {key: dict(value) for key, value in TINY.items()}
    values["data"]["root"] = str(root / "data")
    values["output"] = {"world_model": str(root / "wm.pt"), "results": str(root / "results.json")}
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_policy_commands_train_resume_evaluate_and_fail_clearly(tiny, tiny_yaml, tmp_path, capsys):
    _, _, _, root = tiny
    wm = str(root / "wm.pt")
    policy = tmp_path / "iql.pt"
    base = ["--config", str(tiny_yaml), "--world_model", wm]
    assert cli.main(["iql", *base, "--mode", "train", "--policy", str(policy), "--steps", "6"]) == 0
    assert policy.is_file()
    # the same command again reuses the finished checkpoint; other settings are refused
    assert cli.main(["iql", *base, "--mode", "train", "--policy", str(policy), "--steps", "6"]) == 0
    assert cli.main(["iql", *base, "--mode", "train", "--policy", str(policy), "--steps", "7"]) == 1
    assert "other settings" in capsys.readouterr().err
    results = tmp_path / "eval.json"
    assert cli.main(["iql", *base, "--mode", "eval", "--policy", str(policy), "--results", str(results)]) == 0
    out = json.loads(results.read_text())
    assert set(out["map"]) == {"1", "2"} and "true_return" in out["truth"]
    for method, steps in (("tdmpc", "4"), ("ppo", "40")):
        path = tmp_path / f"{method}.pt"
        assert cli.main([method, *base, "--mode", "train", "--policy", str(path), "--steps", steps]) == 0
        assert cli.main([method, *base, "--mode", "eval", "--policy", str(path), "--no-truth"]) == 0
    capsys.readouterr()
    # a missing checkpoint, a checkpoint of another method, one trained against another model
    assert cli.main(["tdmpc", *base, "--mode", "eval", "--policy", str(tmp_path / "none.pt")]) == 1
    assert "no checkpoint at" in capsys.readouterr().err
    assert cli.main(["tdmpc", *base, "--mode", "eval", "--policy", str(policy)]) == 1
    assert "not a SurgicalTDMPC" in capsys.readouterr().err
    from wmbook.checkpoint import load_checkpoint, save_checkpoint
    data = load_checkpoint(policy, "SurgicalIQL")
    data["world_model"] = {**data["world_model"], "hidden_dim": 999}
    payload = {k: v for k, v in data.items() if k not in ("kind", "format")}
    save_checkpoint(tmp_path / "other.pt", "SurgicalIQL", payload)
    assert cli.main(["iql", *base, "--mode", "eval", "--policy", str(tmp_path / "other.pt")]) == 1
    err = capsys.readouterr().err
    assert "trained against a world model" in err and err.count("\n") == 1


def test_an_interrupted_offline_run_resumes_to_the_same_policy(tiny, tmp_path):
    _, dataset, model, _ = tiny
    whole, part = tmp_path / "whole.pt", tmp_path / "part.pt"
    P.train_policy("iql", model, dataset.train, whole, {"steps": 8, "hidden": 8, "batch_size": 16})
    # an interruption after step 4: the checkpoint written then holds step 4
    P.train_policy("iql", model, dataset.train, part, {"steps": 8, "hidden": 8, "batch_size": 16},
                   checkpoint_every=4)
    saved = torch.load(part, weights_only=True)
    from wmbook.agents.iql import IQL, IQLConfig, train_iql
    agent = IQL(model.config.hidden_dim + model.config.embedding_dim, 100,
                IQLConfig(steps=4, hidden=8, batch_size=16))
    data = P.offline_transitions(model, dataset.train)
    opt = {}
    train_iql(agent, data.s, data.actions, data.reward, data.s_next, data.done,
              on_checkpoint=lambda step, o: opt.setdefault("o", o), checkpoint_every=4)
    P.save_policy(part, "iql", model, agent, IQLConfig(steps=8, hidden=8, batch_size=16), 4, opt["o"])
    info = P.train_policy("iql", model, dataset.train, part, {"steps": 8, "hidden": 8, "batch_size": 16})
    assert info["resumed"]
    a = torch.load(whole, weights_only=True)["states"]["agent"]
    b = torch.load(part, weights_only=True)["states"]["agent"]
    assert saved["step"] == 8
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key


def test_the_comparison_harness_gives_both_tables_and_rankings(tiny):
    config, dataset, model, _ = tiny
    # policies that never finish are cut at 1.2x the mean length (3x in the book), for speed
    config = dataclasses.replace(config, simulator=dataclasses.replace(config.simulator, max_frames_factor=1.2))
    settings = PC.CompareSettings(ppo_steps=400, offline_steps=5, planner=SMALL_PLANNER, map_stride=8,
                                  gap_steps=3)
    results = PC.compare_policies(config, dataset, model, settings)
    policies = {"imitation", "ppo", "ppo_safe", "ppo_alt_weights", "iql", "tdmpc", "tdmpc_safe"}
    assert set(results["truth"]) == policies | {"expert"}
    assert set(results["map"]) == policies | {"imitation_current"}
    for name in policies:
        row = results["truth"][name]
        assert row["exploitation_gap"] == pytest.approx(row["promised_return"] - row["true_prefix_return"])
        assert 0 <= results["map"][name]["1"]["ivt"] <= 1
    text = re.sub(" +", " ", PC.format_comparison(results))
    assert "Ranking by ivt mAP (+1 s):" in text and "Ranking by true return:" in text
    assert text.count("| tdmpc_safe |") == 2


def test_compare_needs_an_existing_world_model(tiny_yaml, tmp_path, capsys):
    assert cli.main(["compare", "--config", str(tiny_yaml), "--world_model", str(tmp_path / "none.pt")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no checkpoint at") and err.count("\n") == 1
