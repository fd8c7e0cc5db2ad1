"""wmbook.models.dynamics: the MLP world model, its training loop, checkpoints and evaluation."""

import dataclasses
import math

import numpy as np
import pytest
import torch

import wmbook.models.training as training
from wmbook.buffers import Transitions
from wmbook.checkpoint import save_checkpoint
from wmbook.device import seed_everything
from wmbook.models import (
    DynamicsConfig,
    DynamicsModel,
    Normalizer,
    Prediction,
    TrainConfig,
    TrainHistory,
    evaluate_dynamics,
    mlp,
    train_dynamics,
)
from wmbook.models.training import _mean_losses

from helpers import assert_same_state, state_of

SMALL = DynamicsConfig(hidden_size=32, n_layers=2)


def _model(seed: int = 0, config: DynamicsConfig = SMALL) -> DynamicsModel:
    seed_everything(seed)
    return DynamicsModel(config)


def _fitted(data: Transitions, seed: int = 0, config: DynamicsConfig = SMALL) -> DynamicsModel:
    model = _model(seed, config)
    model.fit_normalizers(data)
    model.eval()
    return model


def _replace(data: Transitions, **changes) -> Transitions:
    return dataclasses.replace(data, **changes)


# -- layers -----------------------------------------------------------------------------


def test_mlp_shapes_and_checks():
    net = mlp(6, 16, 3, out_dim=2, activation="relu")
    assert net(torch.zeros(5, 7, 6)).shape == (5, 7, 2)
    assert sum(isinstance(m, torch.nn.Linear) for m in net) == 4
    assert mlp(6, 16, 2)(torch.zeros(3, 6)).shape == (3, 16)
    with pytest.raises(ValueError, match="silu"):
        mlp(6, 16, 2, activation="sigmoidish")
    with pytest.raises(ValueError):
        mlp(6, 16, 0)


def test_normalizer_fit_forward_inverse_and_constant_features():
    x = torch.tensor([[1.0, 5.0], [3.0, 5.0], [5.0, 5.0]])
    norm = Normalizer(2).fit(x)
    assert norm.mean.tolist() == pytest.approx([3.0, 5.0])
    assert norm.std.tolist() == pytest.approx([math.sqrt(8 / 3), 1.0])  # constant column keeps std 1
    z = norm(x)
    assert z.mean(0).tolist() == pytest.approx([0.0, 0.0], abs=1e-6)
    assert torch.allclose(norm.inverse(z), x)
    assert set(norm.state_dict()) == {"mean", "std"}


# -- forward / predict ------------------------------------------------------------------


def test_forward_and_predict_shapes(cartpole_data):
    train, _ = cartpole_data
    model = _fitted(train)
    obs, action = train.obs[:9], train.action[:9]
    delta_z, reward_z, done_logit = model(obs, action)
    assert delta_z.shape == (9, 4) and reward_z.shape == (9,) and done_logit.shape == (9,)
    prediction = model.predict(obs, action)
    assert isinstance(prediction, Prediction)
    assert prediction.next_obs.shape == (9, 4)
    assert prediction.reward.shape == (9,) and prediction.done_prob.shape == (9,)
    assert torch.all((prediction.done_prob > 0) & (prediction.done_prob < 1))


def test_predict_is_obs_plus_the_unnormalised_change(cartpole_data):
    train, _ = cartpole_data
    model = _fitted(train)
    obs, action = train.obs[:16], train.action[:16]
    with torch.no_grad():
        delta_z, reward_z, done_logit = model(obs, action)
        prediction = model.predict(obs, action)
    change = delta_z * model.delta_norm.std + model.delta_norm.mean
    assert torch.allclose(prediction.next_obs, obs + change, atol=1e-6)
    assert torch.allclose(prediction.reward, reward_z * model.reward_norm.std + model.reward_norm.mean)
    assert torch.allclose(prediction.done_prob, torch.sigmoid(done_logit))


def test_action_changes_the_prediction(cartpole_data):
    train, _ = cartpole_data
    model = _fitted(train)
    obs = train.obs[:4]
    left = model.predict(obs, torch.zeros(4, dtype=torch.long)).next_obs
    right = model.predict(obs, torch.ones(4, dtype=torch.long)).next_obs
    assert not torch.allclose(left, right)


def test_normalizer_stats_are_carried_in_the_state_dict(cartpole_data):
    train, _ = cartpole_data
    model = _fitted(train)
    state = model.state_dict()
    for key in ("obs_norm.mean", "obs_norm.std", "delta_norm.mean", "delta_norm.std",
                "reward_norm.mean", "reward_norm.std"):
        assert key in state
    assert torch.allclose(state["obs_norm.mean"], train.obs.mean(0))
    assert torch.allclose(state["delta_norm.std"], (train.next_obs - train.obs).std(0, unbiased=False))
    assert state["reward_norm.std"].tolist() == [1.0]  # CartPole's reward is constant
    fresh = _model(seed=1)
    fresh.load_state_dict(state)
    fresh.eval()
    a = model.predict(train.obs[:8], train.action[:8])
    b = fresh.predict(train.obs[:8], train.action[:8])
    for x, y in zip(a[:3], b[:3]):  # next_obs, reward, done_prob
        assert torch.equal(x, y)


@pytest.mark.parametrize("method", ["forward", "predict"])
def test_wrong_obs_shape_raises(method):
    model = _model()
    with pytest.raises(ValueError, match=r"obs must have shape \(B, 4\), got \(3, 5\)"):
        getattr(model, method)(torch.zeros(3, 5), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="obs must have shape"):
        getattr(model, method)(torch.zeros(4), torch.zeros(1, dtype=torch.long))


def test_mismatched_action_shape_raises():
    with pytest.raises(ValueError, match=r"action must have shape \(3,\)"):
        _model().predict(torch.zeros(3, 4), torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bool])
def test_non_integer_actions_raise(dtype):
    with pytest.raises(TypeError, match="integer"):
        _model().predict(torch.zeros(3, 4), torch.zeros(3, dtype=dtype))


@pytest.mark.parametrize("bad", [-1, 2, 5])
def test_out_of_range_actions_raise(bad):
    action = torch.tensor([0, bad, 1])
    with pytest.raises(ValueError, match=r"actions must lie in \[0, 2\)"):
        _model().predict(torch.zeros(3, 4), action)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_obs_raise(bad):
    obs = torch.zeros(3, 4)
    obs[1, 2] = bad
    with pytest.raises(ValueError, match="NaN or infinity"):
        _model().predict(obs, torch.zeros(3, dtype=torch.long))


# -- loss -------------------------------------------------------------------------------


def test_loss_components_and_weighted_total(cartpole_data):
    train, _ = cartpole_data
    config = dataclasses.replace(SMALL, reward_weight=0.5, done_weight=2.5)
    model = _fitted(train, config=config)
    batch = train.index(slice(0, 256))
    total, parts = model.loss(batch)
    assert set(parts) == {"next_state", "reward", "done"}
    assert total.ndim == 0 and all(p.ndim == 0 for p in parts.values())
    expected = parts["next_state"] + 0.5 * parts["reward"] + 2.5 * parts["done"]
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    # each component by hand
    delta_z, reward_z, done_logit = model(batch.obs, batch.action)
    target_z = (batch.next_obs - batch.obs - model.delta_norm.mean) / model.delta_norm.std
    assert parts["next_state"].item() == pytest.approx(((delta_z - target_z) ** 2).mean().item(), rel=1e-5)
    p = torch.sigmoid(done_logit)
    y = batch.terminated.float()
    bce = -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()
    assert parts["done"].item() == pytest.approx(bce.item(), rel=1e-4)


def test_done_loss_ignores_truncation(cartpole_data):
    train, _ = cartpole_data
    model = _fitted(train)
    batch = train.index(slice(0, 64))
    _, plain = model.loss(_replace(batch, truncated=torch.zeros(64, dtype=torch.bool)))
    _, cut = model.loss(_replace(batch, truncated=torch.ones(64, dtype=torch.bool)))
    assert plain["done"].item() == cut["done"].item()


def test_loss_has_gradients_for_every_parameter(cartpole_data):
    train, _ = cartpole_data
    model = _fitted(train)
    model.train()
    total, _ = model.loss(train.index(slice(0, 128)))
    total.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name


# -- training ---------------------------------------------------------------------------


def test_training_reduces_validation_loss(trained_model, cartpole_data):
    model, history = trained_model
    _, val = cartpole_data
    assert isinstance(history, TrainHistory)
    assert history.epochs == 8 and len(history.lr) == 8
    for split in (history.train, history.val):
        assert set(split) == {"total", "next_state", "reward", "done"}
        assert all(len(v) == 8 for v in split.values())
    assert math.isfinite(history.initial_val)
    assert history.best_val < 0.5 * history.initial_val
    assert history.val["total"][-1] < history.val["total"][0]
    assert history.best_val == min(history.val["total"])
    assert history.val["total"][history.best_epoch] == history.best_val
    assert _mean_losses(model, val)["total"] == pytest.approx(history.best_val, rel=1e-5)
    assert not model.training
    assert history.seconds > 0


def test_training_is_reproducible(cartpole_data):
    train, val = cartpole_data
    small_train, small_val = train.index(slice(0, 1000)), val.index(slice(0, 300))
    config = TrainConfig(epochs=2, batch_size=128)
    a, b = _model(3), _model(3)
    ha = train_dynamics(a, small_train, small_val, config, progress=False)
    hb = train_dynamics(b, small_train, small_val, config, progress=False)
    assert ha.val == hb.val and ha.train == hb.train
    assert_same_state(a.state_dict(), b.state_dict())


def _flipped(data: Transitions) -> Transitions:
    """Validation data whose state changes run backwards: the better the fit, the worse its loss."""
    return _replace(data, next_obs=data.obs - (data.next_obs - data.obs))


@pytest.mark.parametrize("patience", [1, 2])
def test_early_stopping_restores_the_best_weights(cartpole_data, patience):
    train, val = cartpole_data
    model = _model()
    bad_val = _flipped(val.index(slice(0, 500)))
    history = train_dynamics(model, train.index(slice(0, 2000)), bad_val,
                             TrainConfig(epochs=10, batch_size=128, patience=patience), progress=False)
    assert history.stopped_early
    assert history.best_epoch == -1  # no epoch beat the starting weights
    assert history.best_val == history.initial_val
    assert history.epochs == patience  # stopped after `patience` epochs without improvement
    assert all(v > history.best_val for v in history.val["total"])
    restored = _mean_losses(model, bad_val)["total"]
    assert restored == pytest.approx(history.best_val, rel=1e-5)
    assert restored != pytest.approx(history.val["total"][-1], rel=1e-3)


def test_no_early_stop_when_validation_keeps_improving(cartpole_data):
    train, val = cartpole_data
    model = _model()
    history = train_dynamics(model, train.index(slice(0, 2000)), val.index(slice(0, 500)),
                             TrainConfig(epochs=3, batch_size=128, patience=1), progress=False)
    assert not history.stopped_early and history.epochs == 3


def test_nan_training_data_raises_before_training(cartpole_data):
    train, val = cartpole_data
    obs = train.obs[:500].clone()
    obs[10, 1] = float("nan")
    bad = _replace(train.index(slice(0, 500)), obs=obs)
    model = _model()
    before = state_of(model)
    with pytest.raises(ValueError, match=r"train\.obs contains NaN"):
        train_dynamics(model, bad, val, TrainConfig(epochs=1), progress=False)
    with pytest.raises(ValueError, match=r"val\.next_obs contains NaN"):
        train_dynamics(model, train, _replace(val, next_obs=val.next_obs * float("nan")),
                       TrainConfig(epochs=1), progress=False)
    assert_same_state(model.state_dict(), before)  # not even the normalisers were fitted


def test_bad_training_data_shapes_and_actions_raise(cartpole_data):
    train, val = cartpole_data
    small = train.index(slice(0, 100))
    with pytest.raises(ValueError, match=r"train\.action has values outside \[0, 2\)"):
        train_dynamics(_model(), _replace(small, action=small.action + 1), val, progress=False)
    with pytest.raises(ValueError, match=r"expected \(N, 4\)"):
        train_dynamics(_model(), _replace(small, obs=small.obs[:, :3]), val, progress=False)
    with pytest.raises(ValueError, match="no transitions"):
        train_dynamics(_model(), train.index(slice(0, 0)), val, progress=False)


def test_divergence_raises_floating_point_error(cartpole_data):
    train, val = cartpole_data
    with pytest.raises(FloatingPointError, match="diverged"):
        train_dynamics(_model(), train.index(slice(0, 1000)), val.index(slice(0, 200)),
                       TrainConfig(epochs=2, batch_size=128, lr=1e30), progress=False)


# -- resuming from a training checkpoint ------------------------------------------------


def _history_without_time(history: TrainHistory) -> dict:
    data = dataclasses.asdict(history)
    data.pop("seconds")
    return data


def test_resume_after_interruption_matches_an_uninterrupted_run(cartpole_data, tmp_path, monkeypatch):
    train, val = cartpole_data
    train, val = train.index(slice(0, 1500)), val.index(slice(0, 400))
    config = TrainConfig(epochs=4, batch_size=128, patience=10)

    whole = _model(7)
    whole_history = train_dynamics(whole, train, val, config, progress=False)

    path = tmp_path / "ckpt" / "training.pt"
    saves = []
    real_save = training.save_state

    def save_then_interrupt(*args, **kwargs):
        result = real_save(*args, **kwargs)
        saves.append(args[0])
        if len(saves) == 2:
            raise KeyboardInterrupt("simulated interruption after epoch 2")
        return result

    monkeypatch.setattr(training, "save_state", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        train_dynamics(_model(7), train, val, config, progress=False, checkpoint_path=path)
    monkeypatch.setattr(training, "save_state", real_save)
    assert path.is_file() and len(saves) == 2

    resumed = _model(7)
    resumed_history = train_dynamics(resumed, train, val, config, progress=False, checkpoint_path=path)
    assert resumed_history.epochs == 4
    assert _history_without_time(resumed_history) == _history_without_time(whole_history)
    assert_same_state(whole.state_dict(), resumed.state_dict())

    # a finished checkpoint only restores the best weights: calling again changes nothing
    again = _model(99)
    again_history = train_dynamics(again, train, val, config, progress=False, checkpoint_path=path)
    assert _history_without_time(again_history) == _history_without_time(whole_history)
    assert_same_state(whole.state_dict(), again.state_dict())


def test_training_checkpoint_is_written_every_epoch(cartpole_data, tmp_path, monkeypatch):
    train, val = cartpole_data
    epochs_saved = []
    real_save = training.save_state

    def spy(path, kind, objects, **values):
        epochs_saved.append((kind, values["epoch"], values["done"]))
        return real_save(path, kind, objects, **values)

    monkeypatch.setattr(training, "save_state", spy)
    train_dynamics(_model(), train.index(slice(0, 500)), val.index(slice(0, 100)),
                   TrainConfig(epochs=3, batch_size=128, patience=10), progress=False,
                   checkpoint_path=tmp_path / "t.pt")
    assert epochs_saved == [("DynamicsTraining", 0, False), ("DynamicsTraining", 1, False),
                            ("DynamicsTraining", 2, True)]
    assert [p.name for p in tmp_path.iterdir()] == ["t.pt"]  # no temporary files left


# -- model checkpoints ------------------------------------------------------------------


def test_save_load_round_trip_gives_identical_predictions(trained_model, cartpole_data, tmp_path):
    model, _ = trained_model
    _, val = cartpole_data
    path = model.save(tmp_path / "model.pt")
    loaded = DynamicsModel.load(path)
    assert loaded.config == model.config
    loaded.eval()
    obs, action = val.obs[:50], val.action[:50]
    for a, b in zip(model.predict(obs, action)[:3], loaded.predict(obs, action)[:3]):
        assert torch.equal(a, b)


def test_load_checkpoint_of_another_kind_names_both(tmp_path):
    path = save_checkpoint(tmp_path / "vae.pt", "VAE", {"state_dict": {"w": torch.zeros(2)}})
    with pytest.raises(ValueError, match="holds a VAE checkpoint, not a DynamicsModel"):
        DynamicsModel.load(path)


def test_load_non_checkpoint_files(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"definitely not a torch file")
    with pytest.raises(ValueError, match="not a readable wmbook checkpoint"):
        DynamicsModel.load(junk)
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(3)}, plain)
    with pytest.raises(ValueError, match="no 'kind' entry"):
        DynamicsModel.load(plain)
    with pytest.raises(FileNotFoundError):
        DynamicsModel.load(tmp_path / "absent.pt")


def test_load_rejects_foreign_config_and_mismatched_weights(tmp_path):
    model = _model()
    config = dataclasses.asdict(model.config)
    state = model.state_dict()
    path = save_checkpoint(tmp_path / "a.pt", "DynamicsModel",
                           {"config": {**config, "dropout": 0.1}, "state_dict": state})
    with pytest.raises(ValueError, match="unknown DynamicsConfig fields"):
        DynamicsModel.load(path)
    path = save_checkpoint(tmp_path / "b.pt", "DynamicsModel",
                           {"config": {**config, "hidden_size": 16}, "state_dict": state})
    with pytest.raises(ValueError, match="weights do not fit"):
        DynamicsModel.load(path)


def test_load_rejects_other_checkpoint_format(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"kind": "DynamicsModel", "format": 0}, path)
    with pytest.raises(ValueError, match="format 0"):
        DynamicsModel.load(path)


# -- evaluation -------------------------------------------------------------------------


def test_evaluate_trained_model_is_sane(trained_model, cartpole_data):
    model, _ = trained_model
    _, val = cartpole_data
    result = evaluate_dynamics(model, val)
    assert result.n == len(val) and result.n_terminal == int(val.terminated.sum()) > 0
    for name in ("done_f1", "done_precision", "done_recall", "done_brier"):
        assert 0.0 <= getattr(result, name) <= 1.0, name
    assert math.isfinite(result.next_state_mse) and result.next_state_mse < 0.1  # far below 1.0
    assert result.state_mse < result.next_state_mse  # the state's spread is far larger than the change's
    assert result.next_state_mse_per_dim.shape == (4,)
    assert result.next_state_mse == pytest.approx(result.next_state_mse_per_dim.mean(), rel=1e-5)
    assert result.predicted_next_obs.shape == result.true_next_obs.shape == (len(val), 4)
    assert result.done_prob.shape == result.done_true.shape == (len(val),)
    summary = result.summary()
    assert set(summary) >= {"next_state_mse", "done_f1", "n"}
    assert summary["n"] == len(val) and isinstance(summary["n"], int)
    assert all(isinstance(v, float) for k, v in summary.items() if k not in ("n", "n_terminal"))


def _oracle(obs_std, delta_mean, delta_std, head_bias, reward_bias, done_bias) -> DynamicsModel:
    """A model whose heads ignore their input: it predicts a fixed change, reward and done."""
    model = _model(config=DynamicsConfig(obs_dim=3, n_actions=2, hidden_size=8, n_layers=1))
    with torch.no_grad():
        model.obs_norm.std.copy_(torch.tensor(obs_std))
        model.delta_norm.mean.copy_(torch.tensor(delta_mean))
        model.delta_norm.std.copy_(torch.tensor(delta_std))
        for head, bias in ((model.next_state_head, head_bias), (model.reward_head, [reward_bias]),
                           (model.done_head, [done_bias])):
            head.weight.zero_()
            head.bias.copy_(torch.tensor(bias))
    return model


def _constant_change_data(n: int = 40) -> Transitions:
    generator = torch.Generator().manual_seed(0)
    obs = torch.randn(n, 3, generator=generator)
    terminated = torch.zeros(n, dtype=torch.bool)
    terminated[:10] = True
    return Transitions(obs, torch.arange(n) % 2, torch.ones(n), obs + torch.tensor([0.1, -0.2, 0.3]),
                       terminated, torch.zeros(n, dtype=torch.bool))


def test_evaluate_a_perfect_oracle():
    data = _constant_change_data()
    model = _oracle([1.0, 2.0, 3.0], [0.1, -0.2, 0.3], [0.5, 0.5, 2.0], [0.0, 0.0, 0.0], 1.0, 30.0)
    result = evaluate_dynamics(model, data)
    assert result.next_state_mse == pytest.approx(0.0, abs=1e-10)
    assert result.state_mse == pytest.approx(0.0, abs=1e-10)
    assert result.reward_mse == pytest.approx(0.0, abs=1e-12)
    # every transition is called terminal: precision 10/40, recall 1
    assert result.done_recall == 1.0 and result.done_precision == pytest.approx(0.25)
    assert result.done_f1 == pytest.approx(2 * 0.25 / 1.25)
    assert result.done_brier == pytest.approx(30 / 40, rel=1e-6)
    assert result.n == 40 and result.n_terminal == 10


def test_evaluate_metrics_by_hand():
    data = _constant_change_data()
    bias = np.array([0.5, -1.0, 2.0])
    delta_std = np.array([0.5, 0.25, 2.0])
    obs_std = np.array([1.0, 2.0, 4.0])
    model = _oracle(obs_std.tolist(), [0.1, -0.2, 0.3], delta_std.tolist(), bias.tolist(), 1.5, 0.0)
    result = evaluate_dynamics(model, data)
    # the error of each dimension is bias * delta_std: bias^2 in units of the change's spread
    np.testing.assert_allclose(result.next_state_mse_per_dim, bias ** 2, rtol=1e-5)
    assert result.next_state_mse == pytest.approx(np.mean(bias ** 2), rel=1e-5)
    assert result.state_mse == pytest.approx(np.mean((bias * delta_std / obs_std) ** 2), rel=1e-5)
    assert result.reward_mse == pytest.approx(0.25, rel=1e-5)  # predicted 1.5, true 1.0
    # done probability 0.5 is not above the 0.5 threshold: nothing predicted terminal
    assert result.done_f1 == 0.0 and result.done_recall == 0.0
    assert result.done_brier == pytest.approx(0.25)
    lenient = evaluate_dynamics(model, data, threshold=0.4)
    assert lenient.done_recall == 1.0
    custom = evaluate_dynamics(model, data, state_std=torch.ones(3))
    assert custom.state_mse == pytest.approx(np.mean((bias * delta_std) ** 2), rel=1e-5)
