"""wmbook.models.ensemble: a bootstrapped ensemble of dynamics models and its disagreement."""

import numpy as np
import pytest
import torch

import wmbook.models.ensemble as ensemble_module
from wmbook.checkpoint import save_checkpoint
from wmbook.device import seed_everything
from wmbook.models import (
    DynamicsConfig,
    DynamicsEnsemble,
    DynamicsModel,
    Prediction,
    TrainConfig,
    TrainHistory,
    train_ensemble,
)
from wmbook.rollout import imagine

from helpers import same_weights, weights_of

SMALL = DynamicsConfig(hidden_size=32, n_layers=2)
QUICK = TrainConfig(epochs=6, batch_size=128, patience=6, seed=3)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks on busy cores


def _ensemble(data, n_members: int = 3, seed: int = 0) -> DynamicsEnsemble:
    seed_everything(seed)
    ensemble = DynamicsEnsemble(SMALL, n_members)
    for member in ensemble.members:
        member.fit_normalizers(data)
    return ensemble.eval()


# -- predictions ------------------------------------------------------------------------


def test_member_and_mean_prediction_shapes_and_values(cartpole_data):
    train, _ = cartpole_data
    ensemble = _ensemble(train, n_members=4)
    obs, action = train.obs[:7], train.action[:7]
    with torch.no_grad():
        members = ensemble.predict_members(obs, action)
        mean = ensemble.predict(obs, action)
    assert members.next_obs.shape == (4, 7, 4)
    assert members.reward.shape == members.done_prob.shape == (4, 7)
    assert members.disagreement is None
    for m, member in enumerate(ensemble.members):  # each row is that member's own prediction
        own = member.predict(obs, action)
        assert torch.allclose(members.next_obs[m], own.next_obs)
        assert torch.allclose(members.done_prob[m], own.done_prob)
    assert isinstance(mean, Prediction)
    assert mean.next_obs.shape == (7, 4) and mean.reward.shape == mean.done_prob.shape == (7,)
    assert torch.allclose(mean.next_obs, members.next_obs.mean(0))
    assert torch.allclose(mean.reward, members.reward.mean(0))
    assert torch.allclose(mean.done_prob, members.done_prob.mean(0))
    assert mean.disagreement.shape == (7,)
    # disagreement: std across members in units of the spread of the change, averaged over dims
    expected = (members.next_obs.std(0) / ensemble.members[0].delta_norm.std).mean(-1)
    assert torch.allclose(mean.disagreement, expected)
    assert (mean.disagreement > 0).all()


def test_identical_members_do_not_disagree(cartpole_data):
    train, _ = cartpole_data
    ensemble = _ensemble(train, n_members=3)
    for member in ensemble.members[1:]:
        member.load_state_dict(ensemble.members[0].state_dict())
    with torch.no_grad():
        prediction = ensemble.predict(train.obs[:50], train.action[:50])
        single = ensemble.members[0].predict(train.obs[:50], train.action[:50])
    assert torch.allclose(prediction.disagreement, torch.zeros(50), atol=1e-6)
    assert torch.allclose(prediction.next_obs, single.next_obs, atol=1e-6)
    # change one member a little: the members now disagree everywhere
    with torch.no_grad():
        ensemble.members[2].next_state_head.bias.add_(0.5)
        assert (ensemble.predict(train.obs[:50], train.action[:50]).disagreement > 1e-3).all()


@pytest.mark.parametrize("n_members", [0, 1])
def test_fewer_than_two_members_raise(n_members):
    with pytest.raises(ValueError, match="at least 2"):
        DynamicsEnsemble(SMALL, n_members)


def test_members_are_initialised_differently():
    seed_everything(0)
    ensemble = DynamicsEnsemble(SMALL, 2)
    a, b = (weights_of(member) for member in ensemble.members)
    assert not same_weights(a, b)


# -- checkpoints ------------------------------------------------------------------------


def test_save_load_round_trip(cartpole_data, tmp_path):
    train, _ = cartpole_data
    ensemble = _ensemble(train, n_members=3)
    path = ensemble.save(tmp_path / "ensemble.pt")
    loaded = DynamicsEnsemble.load(path)
    assert len(loaded.members) == 3 and loaded.config == SMALL
    with torch.no_grad():
        before = ensemble.predict(train.obs[:20], train.action[:20])
        after = loaded.predict(train.obs[:20], train.action[:20])
    for name in Prediction._fields:
        assert torch.equal(getattr(before, name), getattr(after, name)), name
    # the normalisers travel with the members
    assert torch.equal(loaded.members[1].delta_norm.std, ensemble.members[1].delta_norm.std)


def test_ensemble_and_single_model_checkpoints_are_not_interchangeable(tmp_path):
    seed_everything(0)
    ensemble_path = DynamicsEnsemble(SMALL, 2).save(tmp_path / "ensemble.pt")
    model_path = DynamicsModel(SMALL).save(tmp_path / "model.pt")
    with pytest.raises(ValueError, match="DynamicsEnsemble") as error:
        DynamicsModel.load(ensemble_path)
    assert "DynamicsModel" in str(error.value)
    with pytest.raises(ValueError, match="DynamicsModel") as error:
        DynamicsEnsemble.load(model_path)
    assert "DynamicsEnsemble" in str(error.value)


@pytest.mark.parametrize("problem", ["unknown config field", "wrong member count"])
def test_malformed_ensemble_checkpoint_raises_value_error(tmp_path, problem):
    ensemble = DynamicsEnsemble(SMALL, 2)
    config = {"obs_dim": 4, "hidden_size": 32, "n_layers": 2}
    n_members = 2
    if problem == "unknown config field":
        config["dropout"] = 0.1
    else:
        n_members = 3
    path = save_checkpoint(tmp_path / "bad.pt", "DynamicsEnsemble", {
        "config": config, "n_members": n_members, "state_dict": ensemble.state_dict()})
    with pytest.raises(ValueError):
        DynamicsEnsemble.load(path)


# -- training ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_ensembles(cartpole_data):
    """Two ensembles trained identically from the same seeds, and the starting weights."""
    train, val = cartpole_data
    torch.set_num_threads(1)
    results = []
    for _ in range(2):
        seed_everything(0)
        ensemble = DynamicsEnsemble(SMALL, 3)
        start = [weights_of(member) for member in ensemble.members]
        histories = train_ensemble(ensemble, train, val, QUICK, progress=False)
        results.append((ensemble, start, histories))
    return results


def test_train_ensemble_trains_every_member(trained_ensembles, cartpole_data):
    ensemble, start, histories = trained_ensembles[0]
    assert len(histories) == 3 and all(isinstance(h, TrainHistory) for h in histories)
    for member, initial, history in zip(ensemble.members, start, histories):
        assert not same_weights(weights_of(member), initial)
        assert history.best_val < history.initial_val
    assert not ensemble.training and not any(m.training for m in ensemble.members)
    # the members differ from each other, and their mean is a sensible model
    weights = [weights_of(member) for member in ensemble.members]
    assert not same_weights(weights[0], weights[1]) and not same_weights(weights[1], weights[2])
    _, val = cartpole_data
    with torch.no_grad():
        prediction = ensemble.predict(val.obs, val.action)
    assert (prediction.disagreement > 0).all()
    error = ((prediction.next_obs - val.next_obs) / ensemble.members[0].delta_norm.std).pow(2).mean()
    assert error < 0.1  # far better than predicting the average change (1.0)


def test_train_ensemble_is_reproducible(trained_ensembles):
    (first, _, first_histories), (second, _, second_histories) = trained_ensembles
    for a, b in zip(first.members, second.members):
        assert same_weights(weights_of(a), weights_of(b))
    assert [h.val["total"] for h in first_histories] == [h.val["total"] for h in second_histories]


def test_each_member_gets_its_own_bootstrap_resample(cartpole_data, monkeypatch):
    train, val = cartpole_data
    seen = []

    def fake_train(member, data, val_data, config, device="cpu", progress=True, fit_normalizers=True):
        seen.append((data, val_data, config.seed))
        assert fit_normalizers  # a fresh ensemble sets its statistics
        return TrainHistory()

    monkeypatch.setattr(ensemble_module, "train_dynamics", fake_train)
    seed_everything(0)
    train_ensemble(DynamicsEnsemble(SMALL, 3), train, val, QUICK, progress=False)
    assert len(seen) == 3
    assert len({seed for _, _, seed in seen}) == 3  # each member shuffles with its own seed
    rows = []
    for data, val_data, _ in seen:
        assert len(data) == len(train) and val_data is val  # validation is never resampled
        # every resampled transition is a training transition, some repeated, some left out
        index = {tuple(row): i for i, row in enumerate(train.obs.tolist())}
        picked = np.array([index[tuple(row)] for row in data.obs.tolist()])
        assert torch.equal(data.action, train.action[picked])
        n_unique = len(np.unique(picked))
        assert 0.55 * len(train) < n_unique < 0.7 * len(train)  # about 1 - 1/e = 63%
        rows.append(picked)
    assert not np.array_equal(rows[0], rows[1]) and not np.array_equal(rows[1], rows[2])


def test_identical_starts_still_differ_after_training_on_different_resamples(cartpole_data):
    train, val = cartpole_data
    seed_everything(0)
    ensemble = DynamicsEnsemble(SMALL, 2)
    ensemble.members[1].load_state_dict(ensemble.members[0].state_dict())
    train_ensemble(ensemble, train, val, TrainConfig(epochs=1, batch_size=256, seed=0), progress=False)
    assert not same_weights(weights_of(ensemble.members[0]), weights_of(ensemble.members[1]))


# -- imagination ------------------------------------------------------------------------


def test_imagine_records_disagreement_only_for_ensembles(cartpole_data, trained_model):
    train, _ = cartpole_data
    ensemble = _ensemble(train, n_members=3)
    starts, actions = train.obs[:5], torch.randint(0, 2, (5, 6), generator=torch.Generator().manual_seed(0))
    rollout = imagine(ensemble, starts, 6, actions=actions)
    assert rollout.disagreement is not None and rollout.disagreement.shape == (5, 6)
    assert rollout.states.shape == (5, 7, 4)
    assert (rollout.disagreement > 0).all()
    # step 0's disagreement is the ensemble's on the real start states
    with torch.no_grad():
        expected = ensemble.predict(starts, actions[:, 0]).disagreement
    assert torch.allclose(rollout.disagreement[:, 0], expected)
    model, _ = trained_model
    assert imagine(model, starts, 6, actions=actions).disagreement is None
