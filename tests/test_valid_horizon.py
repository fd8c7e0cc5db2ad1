"""Closed-loop real replays, the balancing controller, and the valid horizon of imagination."""

import numpy as np
import pytest
import torch

from wmbook.envs import make_env
from wmbook.policies import CartPoleController
from wmbook.rollout import RealRollout, Rollout, replay_real, valid_horizon

# -- replay_real with a policy ----------------------------------------------------------

STARTS = np.array([[0.0, 0.0, 0.02, 0.0],      # nearly balanced
                   [0.0, 0.0, 0.18, 2.0],      # falling: ends within a few steps
                   [0.5, -0.3, -0.05, 0.1]], dtype=np.float32)


class RecordingPolicy:
    """A seeded controller that remembers every observation it saw and action it chose."""

    def __init__(self, epsilon=0.3, seed=0):
        self.controller = CartPoleController(epsilon=epsilon, seed=seed)
        self.seen, self.chosen = [], []

    def __call__(self, obs):
        action = self.controller(obs)
        self.seen.append(np.array(obs, dtype=np.float32))
        self.chosen.append(action)
        return action


def test_replay_real_with_a_policy_records_its_actions_and_feeds_it_the_real_state():
    policy = RecordingPolicy()
    real = replay_real(make_env("CartPole-v1"), STARTS, policy=policy, horizon=20)
    assert isinstance(real, RealRollout)
    assert real.states.shape == (3, 21, 4) and real.actions.shape == real.alive.shape == (3, 20)
    assert real.terminated_at[1] < 20  # the falling pole ends early
    steps = real.alive.sum(1)
    assert len(policy.chosen) == steps.sum()  # one decision per real step, none after an end
    offset = 0
    for i in range(3):
        n = steps[i]
        chosen = np.array(policy.chosen[offset:offset + n])
        np.testing.assert_array_equal(real.actions[i, :n], chosen)
        np.testing.assert_array_equal(real.actions[i, n:], 0)
        # the policy saw the start state, then each real state in turn
        np.testing.assert_allclose(np.array(policy.seen[offset:offset + n]), real.states[i, :n], atol=1e-6)
        offset += n
    assert set(policy.chosen) == {0, 1}
    # replaying the recorded actions open loop gives the same trajectories
    again = replay_real(make_env("CartPole-v1"), STARTS, actions=real.actions)
    np.testing.assert_array_equal(again.states, real.states)
    np.testing.assert_array_equal(again.terminated_at, real.terminated_at)
    np.testing.assert_array_equal(again.alive, real.alive)


def test_replay_real_with_a_policy_needs_a_horizon():
    env = make_env("CartPole-v1")
    with pytest.raises(ValueError, match="horizon"):
        replay_real(env, STARTS, policy=CartPoleController())
    with pytest.raises(ValueError, match="horizon"):
        replay_real(env, STARTS, policy=CartPoleController(), horizon=0)


def test_replay_real_needs_exactly_one_of_actions_and_policy():
    env = make_env("CartPole-v1")
    with pytest.raises(ValueError, match="exactly one"):
        replay_real(env, STARTS, horizon=5)
    with pytest.raises(ValueError, match="exactly one"):
        replay_real(env, STARTS, actions=np.zeros((3, 5), int), policy=CartPoleController(), horizon=5)


# -- CartPoleController -----------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_controller_balances_for_the_whole_episode(seed):
    env = make_env("CartPole-v1")
    controller = CartPoleController(epsilon=0.0)
    obs, _ = env.reset(seed=seed)
    for step in range(1, 501):
        obs, _, terminated, truncated, _ = env.step(controller(obs))
        assert not terminated, f"the pole fell at step {step}"
        if truncated:
            break
    assert step == 500 and truncated


def test_controller_decision_rule():
    controller = CartPoleController(gains=(0.0, 0.0, 1.0, 0.5), epsilon=0.0)
    assert controller(np.array([0.0, 0.0, 0.1, 0.0])) == 1    # pole leans right: push right
    assert controller(np.array([0.0, 0.0, -0.1, 0.0])) == 0
    assert controller(np.array([0.0, 0.0, 0.1, -0.3])) == 0   # 0.1 - 0.15 < 0
    assert controller(np.array([5.0, 5.0, -0.01, 0.0])) == 0  # the cart is ignored by default
    cart = CartPoleController(gains=(1.0, 0.0, 0.0, 0.0), epsilon=0.0)
    assert cart(np.array([0.3, 0.0, -0.1, 0.0])) == 1


def test_random_controller_uses_both_actions_regardless_of_the_state():
    controller = CartPoleController(epsilon=1.0, seed=0)
    obs = np.array([0.0, 0.0, 0.2, 0.0])  # the feedback rule would always push right
    actions = [controller(obs) for _ in range(200)]
    assert set(actions) == {0, 1}
    assert 80 < sum(actions) < 120


@pytest.mark.parametrize("epsilon", [-0.1, 1.5, float("nan")])
def test_controller_rejects_bad_epsilon(epsilon):
    with pytest.raises(ValueError, match="epsilon"):
        CartPoleController(epsilon=epsilon)


@pytest.mark.parametrize("gains", [(1.0, 0.5), (0.0, 0.0, 1.0, 0.5, 0.0), np.zeros((2, 2))])
def test_controller_rejects_bad_gains(gains):
    with pytest.raises(ValueError, match="gains"):
        CartPoleController(gains=gains)


def test_controller_is_reproducible_with_a_seed():
    rng = np.random.default_rng(0)
    states = rng.normal(scale=0.05, size=(300, 4))

    def actions(seed):
        controller = CartPoleController(epsilon=0.5, seed=seed)
        return [controller(s) for s in states]

    assert actions(7) == actions(7)
    assert actions(7) != actions(8)


# -- valid_horizon on hand-built rollouts -----------------------------------------------

H, DIM = 6, 2
SCALE = np.ones(DIM)


def _real(ends):
    """Real rollouts whose state is ``[t, -t]`` at step ``t``; row ``i`` terminates at step
    ``ends[i]`` (``None``: it lasts all ``H`` steps), after which the last state repeats."""
    batch = len(ends)
    states = np.zeros((batch, H + 1, DIM), dtype=np.float32)
    alive = np.zeros((batch, H), dtype=bool)
    terminated_at = np.full(batch, H)
    for i, end in enumerate(ends):
        last = H if end is None else end + 1  # index of the last real state
        for t in range(H + 1):
            s = min(t, last)
            states[i, t] = [s, -s]
        alive[i, :last] = True
        if end is not None:
            terminated_at[i] = end
    return RealRollout(states, np.zeros((batch, H), dtype=np.int64), alive, terminated_at)


def _imagined(real: RealRollout, done_steps=None, offsets=None) -> Rollout:
    """An imagined rollout that copies ``real``'s states (plus ``offsets[i][t]`` on both
    dimensions at step ``t``) and predicts termination (done_prob 0.9) at ``done_steps[i]``."""
    batch = real.states.shape[0]
    states = torch.tensor(real.states).clone()
    if offsets is not None:
        states[:, 1:] += torch.tensor(offsets, dtype=torch.float32)[..., None]
    done_probs = torch.full((batch, H), 0.1)
    for i, steps in enumerate(done_steps or [[]] * batch):
        for t in steps:
            done_probs[i, t] = 0.9
    ended = (done_probs > 0.5).long()
    alive = torch.cumsum(ended, 1) - ended == 0
    return Rollout(states, torch.zeros(batch, H, dtype=torch.long), torch.ones(batch, H), done_probs, alive)


def test_perfect_imagination_is_valid_for_the_whole_real_episode():
    real = _real([None, 3, 0, H - 1])
    imagined = _imagined(real, done_steps=[[], [3], [0], [H - 1]])
    horizon = valid_horizon(imagined, real, SCALE, tolerance=0.1)
    assert horizon.tolist() == [H, 4, 1, H]
    assert horizon.tolist() == real.alive.sum(1).tolist()


def test_an_error_beyond_the_tolerance_fails_at_the_step_it_appears():
    real = _real([None, None, None, 4])
    offsets = np.zeros((4, H))
    offsets[0, 2:] = 1.0                  # off by 1 from step 2 on
    offsets[1] = np.arange(H) * 0.2       # error 0, 0.2, 0.4, 0.6, ...: crosses 0.5 at step 3
    offsets[2, 4] = 0.5                   # exactly the tolerance is not a failure
    offsets[3, 3] = 0.3                   # fine, and later errors after the real end do not count
    offsets[3, 5:] = 100.0
    imagined = _imagined(real, done_steps=[[], [], [], [4]], offsets=offsets)
    horizon = valid_horizon(imagined, real, SCALE, tolerance=0.5)
    assert horizon.tolist() == [2, 3, H, 5]
    # the same errors measured in a larger unit stay within the tolerance
    assert valid_horizon(imagined, real, SCALE * 10, tolerance=0.5).tolist() == [H, H, H, 5]


def test_a_wrong_termination_call_fails_at_that_step():
    real = _real([3, 3, None, 2])
    imagined = _imagined(real, done_steps=[
        [2],      # predicted one step early
        [],       # misses the real termination at step 3
        [4],      # predicts an end the real episode never had
        [2, 3],   # right, and a later call after the real end does not matter
    ])
    assert valid_horizon(imagined, real, SCALE, tolerance=0.5).tolist() == [2, 3, 4, 3]


def test_a_correct_termination_counts_the_full_episode_length():
    real = _real([3, 5])
    imagined = _imagined(real, done_steps=[[3], [5]])
    assert valid_horizon(imagined, real, SCALE, tolerance=0.5).tolist() == [4, 6]
    # with a stricter threshold the 0.9 call no longer counts as a termination
    assert valid_horizon(imagined, real, SCALE, tolerance=0.5, done_threshold=0.95).tolist() == [3, 5]


def test_valid_horizon_is_the_first_of_several_failures():
    real = _real([4])
    offsets = np.zeros((1, H))
    offsets[0, 3:] = 2.0                                 # state failure at step 3
    imagined = _imagined(real, done_steps=[[1]], offsets=offsets)  # termination failure at step 1
    assert valid_horizon(imagined, real, SCALE, tolerance=0.5).tolist() == [1]
