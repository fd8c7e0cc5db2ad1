"""wmbook.rollout: imagined rollouts, the same rollouts replayed in CartPole, and their error."""

import numpy as np
import pytest
import torch

from wmbook.envs import make_env, set_cartpole_state
from wmbook.models import Prediction
from wmbook.rollout import Rollout, imagine, replay_real, rollout_error


class StubModel:
    """Moves every state by ``action + 1`` per step; ``done_schedule[b][t]`` is row b's done prob at t."""

    def __init__(self, done_schedule):
        self.done_schedule = torch.tensor(done_schedule, dtype=torch.float32)
        self.step = 0
        self.calls = []

    def parameters(self):
        return iter([torch.zeros(1)])

    def predict(self, obs, action):
        self.calls.append((obs.clone(), action.clone()))
        done_prob = self.done_schedule[:, self.step]
        self.step += 1
        return Prediction(obs + (action.float() + 1).unsqueeze(-1), obs[:, 0] * 10, done_prob)


def _stub(batch: int, horizon: int):
    return StubModel(np.zeros((batch, horizon)).tolist())


# -- imagine ----------------------------------------------------------------------------


def test_open_loop_shapes_and_values():
    start = torch.zeros(3, 2)
    actions = torch.tensor([[0, 1, 0, 1], [1, 1, 1, 1], [0, 0, 0, 0]])
    rollout = imagine(_stub(3, 4), start, 4, actions=actions)
    assert isinstance(rollout, Rollout) and rollout.horizon == 4
    assert rollout.states.shape == (3, 5, 2)
    assert rollout.actions.shape == rollout.rewards.shape == rollout.done_probs.shape == (3, 4)
    assert rollout.alive.shape == (3, 4) and rollout.alive.dtype == torch.bool
    assert torch.equal(rollout.states[:, 0], start)
    assert torch.equal(rollout.actions, actions)
    # each step adds action + 1 to the state
    expected = torch.cumsum(actions.float() + 1, 1)
    assert torch.equal(rollout.states[:, 1:, 0], expected)
    assert torch.equal(rollout.rewards, rollout.states[:, :-1, 0] * 10)  # reward of the state it left
    assert rollout.alive.all()


def test_closed_loop_feeds_the_policy_the_current_state():
    seen = []

    def policy(state):
        seen.append(state.clone())
        return (state[:, 0] < 3).long()  # push by 2 while below 3, then by 1

    start = torch.tensor([[0.0, 0.0], [5.0, 1.0]])
    rollout = imagine(_stub(2, 4), start, 4, policy=policy)
    assert rollout.states.shape == (2, 5, 2) and rollout.actions.shape == (2, 4)
    assert rollout.states[0, :, 0].tolist() == [0, 2, 4, 5, 6]
    assert rollout.states[1, :, 0].tolist() == [5, 6, 7, 8, 9]
    assert rollout.actions.tolist() == [[1, 1, 0, 0], [0, 0, 0, 0]]
    assert len(seen) == 4
    for t, state in enumerate(seen):
        assert torch.equal(state, rollout.states[:, t])


def test_needs_exactly_one_of_actions_and_policy():
    start = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="exactly one"):
        imagine(_stub(2, 3), start, 3)
    with pytest.raises(ValueError, match="exactly one"):
        imagine(_stub(2, 3), start, 3, actions=torch.zeros(2, 3, dtype=torch.long),
                policy=lambda s: torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize("shape", [(2, 2), (3, 3), (2, 3, 1), (6,)])
def test_wrong_action_shape_raises(shape):
    with pytest.raises(ValueError, match=r"actions must have shape \(2, 3\)"):
        imagine(_stub(2, 3), torch.zeros(2, 2), 3, actions=torch.zeros(shape, dtype=torch.long))


def test_start_states_must_be_a_batch():
    with pytest.raises(ValueError, match="start_states"):
        imagine(_stub(1, 3), torch.zeros(2), 3, actions=torch.zeros(1, 3, dtype=torch.long))


def test_alive_mask_semantics():
    schedule = [
        [0.1, 0.2, 0.9, 0.1, 0.1, 0.1],   # predicted to end at step 2
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],   # never ends
        [0.8, 0.0, 0.0, 0.0, 0.0, 0.0],   # ends at the first step
        [0.1, 0.5, 0.1, 0.6, 0.1, 0.99],  # exactly the threshold is not an end; 0.6 at step 3 is
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.7],   # ends at the last step
    ]
    model = StubModel(schedule)
    rollout = imagine(model, torch.zeros(5, 2), 6, actions=torch.zeros(5, 6, dtype=torch.long))
    assert rollout.alive.tolist() == [
        [True, True, True, False, False, False],
        [True] * 6,
        [True, False, False, False, False, False],
        [True, True, True, True, False, False],
        [True] * 6,
    ]
    assert torch.equal(rollout.done_probs, torch.tensor(schedule))
    # masked steps are still computed
    assert torch.equal(rollout.states[:, -1, 0], torch.full((5,), 6.0))
    lenient = imagine(StubModel(schedule), torch.zeros(5, 2), 6,
                      actions=torch.zeros(5, 6, dtype=torch.long), done_threshold=0.95)
    assert lenient.alive[0].all() and lenient.alive[3].tolist() == [True] * 6


def test_zero_horizon_is_a_clear_error():
    with pytest.raises(ValueError, match="horizon must be at least 1"):
        imagine(_stub(2, 1), torch.zeros(2, 2), 0, actions=torch.zeros(2, 0, dtype=torch.long))


# -- replay_real ------------------------------------------------------------------------


def _manual(start, actions):
    env = make_env("CartPole-v1")
    env.reset(seed=0)
    set_cartpole_state(env, start)
    states, ended = [np.asarray(start, dtype=np.float32)], None
    for t, action in enumerate(actions):
        obs, _, terminated, _, _ = env.step(int(action))
        states.append(obs)
        if terminated:
            ended = t
            break
    return np.array(states), ended


def test_replay_real_matches_manual_stepping_and_stops_at_termination():
    starts = np.array([[0.0, 0.0, 0.0, 0.0],       # balanced: survives the horizon
                       [0.0, 0.0, 0.18, 2.0],      # falling: terminates within a few steps
                       [2.3, 3.0, 0.0, 0.0]])      # about to leave the track
    rng = np.random.default_rng(0)
    actions = rng.integers(0, 2, size=(3, 12))
    actions[0] = np.tile([0, 1], 6)
    real = replay_real(make_env("CartPole-v1"), starts, actions)
    assert real.states.shape == (3, 13, 4) and real.alive.shape == (3, 12)
    assert real.terminated_at[0] == 12 and real.alive[0].all()
    for i in range(3):
        expected, ended = _manual(starts[i], actions[i])
        steps = len(expected)
        np.testing.assert_array_equal(real.states[i, :steps], expected)
        if ended is None:
            assert real.terminated_at[i] == 12
        else:
            assert real.terminated_at[i] == ended < 12
            assert real.alive[i].tolist() == [t <= ended for t in range(12)]
            # after the end, the last real state repeats
            assert np.all(real.states[i, steps:] == expected[-1])
    assert real.terminated_at[1] < 12 and real.terminated_at[2] < 12


def test_replay_real_shape_checks():
    env = make_env("CartPole-v1")
    with pytest.raises(ValueError, match="start_states"):
        replay_real(env, np.zeros(4), np.zeros((1, 3), int))
    with pytest.raises(ValueError, match="start_states"):
        replay_real(env, np.zeros((2, 4)), np.zeros((3, 3), int))


# -- rollout_error ----------------------------------------------------------------------


def test_rollout_error_by_hand():
    imagined = np.zeros((2, 3, 2))
    real = np.zeros((2, 3, 2))
    imagined[0, 1] = [3.0, 4.0]      # step 0 of row 0
    imagined[0, 2] = [1.0, 1.0]      # step 1 of row 0
    imagined[1, 1] = [2.0, 0.0]
    imagined[1, 2] = [100.0, 100.0]  # masked
    real[0, 0] = [50.0, 50.0]        # start states are not part of the error
    scale = np.array([1.0, 2.0])
    alive = np.array([[True, True], [True, False]])
    error = rollout_error(imagined, real, scale, alive)
    assert error.shape == (2, 2)
    assert error[0, 0] == pytest.approx(np.sqrt((3.0 ** 2 + 2.0 ** 2) / 2))
    assert error[0, 1] == pytest.approx(np.sqrt((1.0 + 0.25) / 2))
    assert error[1, 0] == pytest.approx(np.sqrt(2.0))
    assert np.isnan(error[1, 1])
    assert np.nanmedian(error) == pytest.approx(np.sqrt(2.0))


# -- a trained model --------------------------------------------------------------------


def test_trained_model_one_step_imagination_is_close_to_reality(trained_model, cartpole_data):
    model, _ = trained_model
    _, val = cartpole_data
    keep = ~(val.terminated | val.truncated)
    starts, actions, true_next = val.obs[keep][:100], val.action[keep][:100], val.next_obs[keep][:100]
    imagined = imagine(model, starts, 1, actions=actions[:, None])
    real = replay_real(make_env("CartPole-v1"), starts.numpy(), actions[:, None].numpy())
    np.testing.assert_allclose(real.states[:, 1], true_next.numpy(), atol=1e-5)
    scale = model.obs_norm.std.numpy()
    error = rollout_error(imagined.states.numpy(), real.states, scale, real.alive)
    no_change = rollout_error(np.repeat(starts.numpy()[:, None], 2, 1), real.states, scale, real.alive)
    assert error.shape == (100, 1) and np.all(np.isfinite(error))
    assert np.median(error) < 0.05  # in units of the state's spread
    assert np.median(error) < 0.2 * np.median(no_change)
