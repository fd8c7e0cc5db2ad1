"""wmbook.envs: making environments, collecting transitions, policies, setting CartPole's state."""

import gymnasium as gym
import numpy as np
import pytest

from wmbook.buffers import ReplayBuffer
from wmbook.envs import (
    RandomPolicy,
    buffer_for,
    collect_transitions,
    episode_lengths,
    make_env,
    set_cartpole_state,
)


class CountResets(gym.Wrapper):
    def __init__(self, env):
        super().__init__(env)
        self.resets = 0

    def reset(self, **kwargs):
        self.resets += 1
        return self.env.reset(**kwargs)


def _short_cartpole(max_steps: int = 5):
    return gym.make("CartPole-v1", max_episode_steps=max_steps)


def _arrays(buffer: ReplayBuffer):
    data = buffer.all()
    return {key: getattr(data, key).numpy() for key in
            ("obs", "action", "reward", "next_obs", "terminated", "truncated")}


# -- make_env ---------------------------------------------------------------------------


def test_make_env_unknown_id_raises_value_error():
    with pytest.raises(ValueError, match="NoSuchEnv"):
        make_env("NoSuchEnv-v0")


def test_make_env_seeds_the_action_space_and_passes_kwargs():
    a, b = make_env("CartPole-v1", seed=3), make_env("CartPole-v1", seed=3, max_episode_steps=7)
    assert [a.action_space.sample() for _ in range(20)] == [b.action_space.sample() for _ in range(20)]
    assert b.spec.max_episode_steps == 7


# -- collect_transitions ----------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 37, 200])
def test_collect_gives_the_requested_count(n):
    buffer = collect_transitions(_short_cartpole(), n, seed=0)
    assert len(buffer) == n and buffer.capacity == n and buffer.full


def test_collect_rejects_non_positive_steps():
    with pytest.raises(ValueError, match="n_steps"):
        collect_transitions(_short_cartpole(), 0)


def test_collect_into_a_given_buffer_appends():
    env = _short_cartpole()
    buffer = ReplayBuffer(100, (4,))
    returned = collect_transitions(env, 10, seed=0, buffer=buffer)
    assert returned is buffer and len(buffer) == 10
    collect_transitions(env, 15, seed=1, buffer=buffer)
    assert len(buffer) == 25


def test_truncations_are_not_terminations_and_the_env_is_reset_after_each():
    env = CountResets(_short_cartpole(5))
    data = _arrays(collect_transitions(env, 23, seed=0))
    # a random policy cannot topple the pole within 5 steps: every end is a time limit
    assert data["truncated"].tolist() == [(t % 5) == 4 for t in range(23)]
    assert not data["terminated"].any()
    assert env.resets == 1 + 4  # the initial reset plus one per episode end
    assert episode_lengths(collect_transitions(_short_cartpole(5), 23, seed=0)).tolist() == [5, 5, 5, 5]
    for t in range(22):
        if data["truncated"][t]:  # the next transition starts from a fresh reset state
            assert not np.allclose(data["obs"][t + 1], data["next_obs"][t])
            assert np.all(np.abs(data["obs"][t + 1]) <= 0.05)
        else:  # within an episode, the chain of states is continuous
            np.testing.assert_array_equal(data["obs"][t + 1], data["next_obs"][t])


def test_terminated_and_truncated_kept_apart_with_both_kinds_of_end():
    limit = 30
    env = _short_cartpole(limit)
    unwrapped = env.unwrapped
    data = _arrays(collect_transitions(env, 1500, seed=4))
    term, trunc = data["terminated"], data["truncated"]
    assert term.any() and trunc.any()
    x, theta = data["next_obs"][:, 0], data["next_obs"][:, 2]
    fallen = (np.abs(x) > unwrapped.x_threshold) | (np.abs(theta) > unwrapped.theta_threshold_radians)
    np.testing.assert_array_equal(term, fallen)  # terminated exactly when the pole fell
    buffer = collect_transitions(_short_cartpole(limit), 1500, seed=4)
    lengths = episode_lengths(buffer)
    ends = np.flatnonzero(term | trunc)
    assert lengths.sum() == ends[-1] + 1
    assert np.all(lengths[trunc[ends]] == limit)  # truncation only at the time limit
    assert np.all(lengths[~trunc[ends]] < limit)  # shorter episodes ended by a fall
    assert np.all(term[ends][lengths < limit])


def test_collect_matches_a_manual_loop():
    env = _short_cartpole(20)
    policy = RandomPolicy(env.action_space, seed=5)
    data = _arrays(collect_transitions(_short_cartpole(20), 60, seed=5))
    obs, _ = env.reset(seed=5)
    for t in range(60):
        action = policy(obs)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        np.testing.assert_array_equal(data["obs"][t], obs)
        assert data["action"][t] == action and data["reward"][t] == reward
        np.testing.assert_array_equal(data["next_obs"][t], next_obs)
        assert (data["terminated"][t], data["truncated"][t]) == (terminated, truncated)
        obs = next_obs
        if terminated or truncated:
            obs, _ = env.reset()


def test_last_unfinished_episode_carries_no_flag():
    data = _arrays(collect_transitions(_short_cartpole(5), 7, seed=0))
    assert not data["terminated"][-1] and not data["truncated"][-1]


def test_same_seed_same_data_and_different_seed_different_data():
    a = _arrays(collect_transitions(make_env("CartPole-v1"), 300, seed=11))
    b = _arrays(collect_transitions(make_env("CartPole-v1"), 300, seed=11))
    c = _arrays(collect_transitions(make_env("CartPole-v1"), 300, seed=12))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert not np.array_equal(a["obs"], c["obs"])


def test_reusing_an_env_with_the_same_seed_repeats_the_data():
    env = make_env("CartPole-v1")
    a = _arrays(collect_transitions(env, 100, seed=2))
    b = _arrays(collect_transitions(env, 100, seed=2))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_collect_with_a_continuous_action_space():
    env = gym.make("Pendulum-v1", max_episode_steps=10)
    buffer = collect_transitions(env, 25, seed=0)
    assert buffer.action_dtype == np.float32 and buffer.action_shape == (1,)
    assert buffer.all().action.shape == (25, 1)
    assert episode_lengths(buffer).tolist() == [10, 10]


def test_buffer_for_shapes():
    discrete = buffer_for(make_env("CartPole-v1"), 8)
    assert discrete.obs_shape == (4,) and discrete.action_shape == () and discrete.action_dtype == np.int64
    assert discrete.capacity == 8 and len(discrete) == 0


# -- episode_lengths --------------------------------------------------------------------


def test_episode_lengths_leaves_out_the_unfinished_episode():
    buffer = ReplayBuffer(20, (1,))
    for end in [False, False, True, False, True, True, False, False]:
        buffer.add(np.zeros(1), 0, 1.0, np.zeros(1), terminated=end)
    assert episode_lengths(buffer).tolist() == [3, 2, 1]
    assert episode_lengths(ReplayBuffer(3, (1,))).tolist() == []


# -- set_cartpole_state -----------------------------------------------------------------


def test_stepping_from_a_set_state_matches_the_original_env():
    source = make_env("CartPole-v1")
    source.reset(seed=0)
    for action in [0, 1, 1, 0, 1]:
        source.step(action)
    state = source.unwrapped.state.copy()

    target = make_env("CartPole-v1")
    target.reset(seed=123)
    set_cartpole_state(target, state)
    np.testing.assert_array_equal(target.unwrapped.state, state)
    for action in [1, 0, 0, 1, 1, 1]:
        expected = source.step(action)
        got = target.step(action)
        np.testing.assert_array_equal(got[0], expected[0])
        assert got[1:4] == expected[1:4]


def test_set_state_does_not_alias_the_input():
    env = make_env("CartPole-v1")
    env.reset(seed=0)
    state = np.array([0.1, 0.0, 0.02, 0.0])
    set_cartpole_state(env, state)
    state[0] = 5.0
    assert env.unwrapped.state[0] == pytest.approx(0.1)


def test_set_state_clears_a_previous_termination():
    env = make_env("CartPole-v1")
    env.reset(seed=0)
    set_cartpole_state(env, [0.0, 0.0, 0.25, 0.0])  # beyond the angle limit
    assert env.step(0)[2] is True
    set_cartpole_state(env, [0.0, 0.0, 0.0, 0.0])
    obs, reward, terminated, _, _ = env.step(0)
    assert not terminated and reward == 1.0
    assert env.unwrapped.steps_beyond_terminated is None


@pytest.mark.parametrize("state", [np.zeros(3), np.zeros((1, 4)), np.zeros(5)])
def test_set_state_wrong_shape_raises(state):
    env = make_env("CartPole-v1")
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        set_cartpole_state(env, state)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_set_state_non_finite_raises(bad):
    env = make_env("CartPole-v1")
    env.reset(seed=0)
    before = env.unwrapped.state.copy()
    with pytest.raises(ValueError, match="NaN or infinity"):
        set_cartpole_state(env, [0.0, bad, 0.0, 0.0])
    np.testing.assert_array_equal(env.unwrapped.state, before)


def test_set_state_on_another_env_raises():
    env = gym.make("MountainCar-v0")
    env.reset(seed=0)
    with pytest.raises(TypeError, match="CartPole"):
        set_cartpole_state(env, np.zeros(4))
