"""Dyna-DQN's model refits: statistics the weights follow, a fixed held-out split by episode,
selection on unseen data, the model's measured error, and any world model (an ensemble)."""

import dataclasses

import numpy as np
import pytest
import torch

from wmbook.agents import DQNConfig, DynaConfig, DynaPlanner, imagined_transitions
from wmbook.agents.dyna import (
    episode_ids, fit_dynamics, held_out_episodes, multi_step_error, train_dyna_dqn, windows_within)
from wmbook.buffers import Transitions
from wmbook.envs import collect_transitions, make_env
from wmbook.models import DynamicsConfig, DynamicsModel, Prediction, TrainConfig, train_dynamics
from wmbook.models.ensemble import DynamicsEnsemble, SampledMember

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_DQN = DQNConfig(total_steps=700, learning_starts=200, eval_every=350, eval_episodes=2,
                     hidden_size=16, n_layers=1, batch_size=16, exploration_steps=400)
TINY_DYNA = DynaConfig(imagined_updates=2, model_every=200, model_updates=10, model_hidden_size=16,
                       model_layers=1, model_batch_size=64)


def _buffer(steps: int, seed: int = 0):
    return collect_transitions(make_env("CartPole-v1"), steps, seed=seed)


# -- statistics that the weights follow -------------------------------------------------


def test_update_normalizers_moves_the_statistics_and_keeps_every_prediction(trained_model, cartpole_data):
    model, _ = trained_model
    train, val = cartpole_data
    moved = DynamicsModel(model.config)
    moved.load_state_dict(model.state_dict())
    # data on another scale: shifted, stretched states and a varying reward
    other = Transitions(train.obs * 3 + 1, train.action, train.reward * 2 + torch.rand(len(train)),
                        train.next_obs * 3 + 1, train.terminated, train.truncated)
    with torch.no_grad():
        before = model.predict(val.obs, val.action)
        moved.update_normalizers(other)
        after = moved.predict(val.obs, val.action)
    assert not torch.allclose(moved.obs_norm.mean, model.obs_norm.mean)
    assert not torch.allclose(moved.delta_norm.std, model.delta_norm.std)
    assert not torch.allclose(moved.reward_norm.std, model.reward_norm.std)
    torch.testing.assert_close(after.next_obs, before.next_obs, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(after.reward, before.reward, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(after.done_prob, before.done_prob, rtol=1e-4, atol=1e-5)


def test_fit_normalizers_alone_would_change_the_predictions(trained_model, cartpole_data):
    """The failure update_normalizers prevents: new statistics under old weights."""
    model, _ = trained_model
    train, val = cartpole_data
    naive = DynamicsModel(model.config)
    naive.load_state_dict(model.state_dict())
    other = Transitions(train.obs * 3 + 1, train.action, train.reward, train.next_obs * 3 + 1,
                        train.terminated, train.truncated)
    with torch.no_grad():
        naive.fit_normalizers(other)
        drift = (naive.predict(val.obs, val.action).next_obs - model.predict(val.obs, val.action).next_obs)
    assert drift.abs().max() > 1e-2


def test_train_dynamics_keeps_the_statistics_when_asked(cartpole_data):
    train, val = cartpole_data
    model = DynamicsModel(DynamicsConfig(hidden_size=16, n_layers=1))
    model.obs_norm.mean.fill_(0.5)
    train_dynamics(model, train, val, TrainConfig(epochs=1, batch_size=256), progress=False,
                   fit_normalizers=False)
    assert torch.all(model.obs_norm.mean == 0.5)
    train_dynamics(model, train, val, TrainConfig(epochs=1, batch_size=256), progress=False)
    torch.testing.assert_close(model.obs_norm.mean, train.obs.mean(0))


# -- a held-out split by episode that stays fixed ---------------------------------------


def test_episode_ids_start_a_new_episode_after_every_end():
    terminated = torch.tensor([False, True, False, False, False, False])
    truncated = torch.tensor([False, False, False, True, False, False])
    data = Transitions(torch.zeros(6, 4), torch.zeros(6, dtype=torch.long), torch.ones(6),
                       torch.zeros(6, 4), terminated, truncated)
    assert episode_ids(data).tolist() == [0, 0, 1, 1, 2, 2]
    assert windows_within(episode_ids(data), np.ones(6, bool), 2).tolist() == [0, 2, 4]


def test_held_out_split_is_by_whole_episode_and_stays_fixed_as_the_buffer_grows():
    buffer = _buffer(3000)
    full = buffer.all()
    held_full = held_out_episodes(full, 0.1, seed=3)
    ids = episode_ids(full)
    for episode in np.unique(ids):  # never an episode on both sides
        assert len(set(held_full[ids == episode].tolist())) == 1
    assert 0.02 < held_full.mean() < 0.3
    for n in (500, 1200, 2000):  # earlier refits saw a prefix of the same buffer
        prefix = full.index(slice(0, n))
        held = held_out_episodes(prefix, 0.1, seed=3)
        complete = ids[:n] < ids[n - 1]  # episodes already finished at that refit
        assert np.array_equal(held[complete], held_full[:n][complete])
    assert not np.array_equal(held_out_episodes(full, 0.1, seed=4), held_full)  # the seed matters


def test_held_out_split_never_leaves_a_side_empty():
    data = _buffer(100).all()
    held = held_out_episodes(data, 0.01, seed=0)
    assert held.any() and not held.all()
    with pytest.raises(ValueError, match="fraction"):
        held_out_episodes(data, 1.0, seed=0)
    one_episode = data.index(slice(0, int(np.flatnonzero(data.terminated.numpy())[0]) + 1))
    with pytest.raises(ValueError, match="2 episodes"):
        held_out_episodes(one_episode, 0.1, seed=0)


def test_planner_never_validates_on_rows_it_trained_on():
    """Over every refit of a run, no transition used for training appears later in the
    held-out set, and the held-out set never shrinks except to hand rows back to training."""
    seen_train: set[tuple] = set()
    log = []

    def recording_fit(model, train, val, config, first):
        val_rows = {tuple(row) for row in torch.cat([val.obs, val.next_obs], 1).tolist()}
        train_rows = {tuple(row) for row in torch.cat([train.obs, train.next_obs], 1).tolist()}
        log.append(len(val_rows & seen_train))
        seen_train.update(train_rows)
        return fit_dynamics(model, train, val, config, first)

    result, planner = train_dyna_dqn(TINY_DQN, TINY_DYNA, progress=False, model=DynamicsModel(
        DynamicsConfig(hidden_size=16, n_layers=1)), fit=recording_fit)
    assert planner.refits == len(log) == 3 and log == [0, 0, 0]


def test_refit_checks_measure_the_model_on_held_out_episodes():
    _, planner = train_dyna_dqn(TINY_DQN, TINY_DYNA, progress=False)
    checks = planner.checks
    assert [c.step for c in checks] == [200, 400, 600]
    assert all(c.horizon == TINY_DYNA.error_horizon for c in checks)
    assert all(np.isfinite(c.one_step) and c.one_step > 0 for c in checks)
    assert all(c.val_size > 0 and c.train_size > c.val_size for c in checks)
    assert [c.train_size + c.val_size for c in checks] == [201, 401, 601]  # the whole buffer


def test_multi_step_error_of_a_perfect_model_is_zero_and_grows_with_a_biased_one():
    data = _buffer(600).all()

    class Replay:
        """Returns the real next state for the rows it is asked about (keyed by state)."""

        config = DynamicsConfig()

        def __init__(self, bias=0.0):
            self.lookup = {tuple(o): (n, r) for o, n, r in zip(data.obs.tolist(), data.next_obs.tolist(),
                                                              data.reward.tolist())}
            self.bias = bias

        def predict(self, obs, action):
            rows = [self.lookup.get(tuple(o), (o, 1.0)) for o in obs.tolist()]
            next_obs = torch.tensor([r[0] for r in rows]) + self.bias
            return Prediction(next_obs, torch.ones(len(obs)), torch.zeros(len(obs)))

    ids = episode_ids(data)
    starts = windows_within(ids, np.ones(len(data), bool), 3)
    scale = torch.ones(4)
    assert multi_step_error(Replay(), data, starts, 3, scale) == pytest.approx(0.0, abs=1e-10)
    one = multi_step_error(Replay(0.01), data, windows_within(ids, np.ones(len(data), bool), 1), 1, scale)
    assert one == pytest.approx(1e-4, rel=1e-3)
    assert np.isnan(multi_step_error(Replay(), data, np.zeros(0, dtype=np.int64), 3, scale))


# -- any world model: an ensemble, or your own ------------------------------------------


def test_sampled_member_answers_each_row_with_one_member(cartpole_data):
    train, _ = cartpole_data
    torch.manual_seed(0)
    ensemble = DynamicsEnsemble(DynamicsConfig(hidden_size=8, n_layers=1), n_members=3)
    for member in ensemble.members:
        member.fit_normalizers(train)
    obs, action = train.obs[:200], train.action[:200]
    with torch.no_grad():
        members = ensemble.predict_members(obs, action)
        sampled = SampledMember(ensemble, torch.Generator().manual_seed(0)).predict(obs, action)
    matches = (sampled.next_obs[None] == members.next_obs).all(-1)  # (M, B)
    assert torch.all(matches.sum(0) >= 1)  # each row is some member's prediction
    assert len(set(matches.float().argmax(0).tolist())) == 3  # and all members get drawn
    torch.testing.assert_close(sampled.disagreement, ensemble.predict(obs, action).disagreement)


def test_dyna_runs_with_an_ensemble_and_cuts_branches_where_members_disagree():
    dyna = dataclasses.replace(TINY_DYNA, ensemble_members=2, rollout_length=2)
    result, planner = train_dyna_dqn(TINY_DQN, dyna, progress=False)
    assert isinstance(planner.model, DynamicsEnsemble) and len(planner.model.members) == 2
    assert planner.imagined > 0 and len(planner.checks) == 3
    strict = dataclasses.replace(dyna, max_disagreement=0.0)  # members always disagree a little
    result, planner = train_dyna_dqn(TINY_DQN, strict, progress=False)
    assert planner.imagined == 0
    learning = TINY_DQN.total_steps - TINY_DQN.learning_starts
    assert result.gradient_updates == learning  # no imagined update without imagined data


def test_max_disagreement_needs_a_model_that_reports_it(trained_model):
    model, _ = trained_model
    buffer = _buffer(300)
    with pytest.raises(ValueError, match="disagreement"):
        imagined_transitions(model, buffer, lambda s: torch.zeros(len(s), dtype=torch.long), 8, 2,
                             max_disagreement=1.0)


def test_a_custom_world_model_needs_a_fit_function():
    class Custom:
        def predict(self, obs, action):
            raise AssertionError("not called")

    with pytest.raises(TypeError, match="fit"):
        DynaPlanner(TINY_DYNA, TINY_DQN, 4, 2, model=Custom())
