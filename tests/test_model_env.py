"""wmbook.envs.WorldModelEnv: a learned model as a Gymnasium environment."""

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from wmbook.buffers import ReplayBuffer
from wmbook.envs import WorldModelEnv, collect_transitions, make_env
from wmbook.models import DynamicsConfig, Prediction

from helpers import assert_same_state, state_of


class StubModel(torch.nn.Module):
    """Moves every coordinate by ``(action - 0.5) * 0.1``; fixed reward and done probability.

    ``nan`` names a prediction field ("next_obs", "reward" or "done_prob") to fill with NaN.
    """

    def __init__(self, done_prob=0.0, reward=1.0, obs_dim=4, n_actions=2, nan=None):
        super().__init__()
        self.config = DynamicsConfig(obs_dim=obs_dim, n_actions=n_actions)
        self.step_size = torch.nn.Parameter(torch.tensor(0.1), requires_grad=False)
        self.done_prob, self.reward, self.nan = done_prob, reward, nan

    def predict(self, obs, action):
        batch = obs.shape[0]
        out = {"next_obs": obs + (action.to(obs.dtype)[:, None] - 0.5) * self.step_size,
               "reward": torch.full((batch,), float(self.reward)),
               "done_prob": torch.full((batch,), float(self.done_prob))}
        if self.nan:
            out[self.nan] = torch.full_like(out[self.nan], float("nan"))
        return Prediction(**out)


STARTS = np.random.default_rng(0).normal(0, 0.05, (50, 4)).astype(np.float32)


@pytest.fixture
def env(trained_model, cartpole_data):
    return WorldModelEnv(trained_model[0], cartpole_data[0].obs)


def _play(env, seed, actions):
    """Observations of one episode from ``reset(seed=seed)`` playing ``actions`` (stops at its end)."""
    obs, _ = env.reset(seed=seed)
    observations = [obs]
    for action in actions:
        obs, _, terminated, truncated, _ = env.step(action)
        observations.append(obs)
        if terminated or truncated:
            break
    return np.stack(observations)


# -- Gymnasium's API ----------------------------------------------------------------------


@pytest.mark.parametrize("sample_termination", [False, True])
def test_gymnasium_check_env_passes_without_warnings(trained_model, cartpole_data, sample_termination):
    env = WorldModelEnv(trained_model[0], cartpole_data[0].obs, sample_termination=sample_termination)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env)
    # Stricter than "no warning about spaces, seeding or determinism": every warning fails but
    # the one saying render modes can only be tried on an env made by gymnasium.make (we have none).
    unexpected = [str(w.message) for w in caught if "not having a spec" not in str(w.message)]
    assert not unexpected
    assert env.observation_space == gym.spaces.Box(-np.finfo(np.float32).max, np.finfo(np.float32).max,
                                                   (4,), np.float32)
    assert env.action_space == gym.spaces.Discrete(2) and env.metadata["render_modes"] == []


def test_observations_are_fresh_float32_copies(env):
    obs, info = env.reset(seed=0)
    assert obs.dtype == np.float32 and obs.shape == (4,)
    np.testing.assert_array_equal(obs, env.start_states[info["start_index"]])
    obs[:] = 99.0  # changing what reset returned changes neither the env nor its start states
    assert not np.any(env.start_states == 99.0)
    next_obs, reward, terminated, truncated, info = env.step(0)
    assert next_obs.dtype == np.float32 and next_obs.shape == (4,) and not np.any(next_obs == 99.0)
    assert type(reward) is float and type(terminated) is bool and type(truncated) is bool
    assert type(info["done_prob"]) is float


def test_same_seed_same_episode_and_different_seeds_different_starts(env, trained_model, cartpole_data):
    actions = np.random.default_rng(1).integers(0, 2, 40)
    other = WorldModelEnv(trained_model[0], cartpole_data[0].obs)
    for seed in (0, 7):
        np.testing.assert_array_equal(_play(env, seed, actions), _play(other, seed, actions))
    # unseeded resets continue the seeded generator in step
    env.reset(seed=3), other.reset(seed=3)
    np.testing.assert_array_equal(env.reset()[0], other.reset()[0])
    starts = {tuple(env.reset(seed=seed)[0]) for seed in range(20)}
    assert len(starts) == 20


def test_steps_are_the_models_own_predictions(env, trained_model):
    model = trained_model[0]
    actions = np.random.default_rng(2).integers(0, 2, 120)
    obs, _ = env.reset(seed=0)
    ends = 0
    for action in actions:
        next_obs, reward, terminated, truncated, info = env.step(int(action))
        with torch.no_grad():
            expected = model.predict(torch.from_numpy(obs[None]), torch.tensor([action]))
        np.testing.assert_array_equal(next_obs, expected.next_obs[0].numpy())
        assert reward == expected.reward.item() and info["done_prob"] == expected.done_prob.item()
        assert terminated == (expected.done_prob.item() > 0.5) and not truncated
        obs = next_obs
        if terminated:
            ends += 1
            obs, _ = env.reset()
    assert ends >= 1  # random play ends episodes in the model too, so both branches ran


def test_the_env_changes_neither_weights_nor_mode(trained_model, cartpole_data):
    model = trained_model[0]
    before = state_of(model)
    env = WorldModelEnv(model, cartpole_data[0].obs)
    env.reset(seed=0)
    for action in [0, 1] * 10:
        if env.step(action)[2]:
            env.reset()
    assert not model.training
    assert_same_state(before, model.state_dict())
    stub = StubModel().train()
    stub_env = WorldModelEnv(stub, STARTS)
    stub_env.reset(seed=0), stub_env.step(1)
    assert stub.training


def test_start_states_from_a_replay_buffer_and_from_an_option():
    buffer = collect_transitions(make_env("CartPole-v1"), 60, seed=0)
    env = WorldModelEnv(StubModel(), buffer)
    np.testing.assert_array_equal(env.start_states, buffer.all().obs.numpy())
    obs, info = env.reset(seed=0)
    np.testing.assert_array_equal(obs, buffer.all().obs[info["start_index"]].numpy())
    state = np.array([0.1, -0.2, 0.03, 0.4])
    obs, info = env.reset(options={"state": state})
    np.testing.assert_array_equal(obs, state.astype(np.float32))
    assert info["start_index"] == -1
    np.testing.assert_allclose(env.step(1)[0], state + 0.05, rtol=1e-6)


# -- episode ends ---------------------------------------------------------------------------


def test_truncation_at_max_episode_steps_is_not_termination():
    env = WorldModelEnv(StubModel(done_prob=0.0), STARTS, max_episode_steps=5)
    env.reset(seed=0)
    flags = [env.step(0)[2:4] for _ in range(5)]
    assert flags == [(False, False)] * 4 + [(False, True)]
    with pytest.raises(gym.error.ResetNeeded, match="truncated at step 5.*reset"):
        env.step(0)
    env.reset()
    assert env.step(0)[2:4] == (False, False)  # the step count starts again


def test_termination_takes_precedence_over_truncation():
    env = WorldModelEnv(StubModel(done_prob=0.9), STARTS, max_episode_steps=1)
    env.reset(seed=0)
    assert env.step(1)[2:4] == (True, False)
    with pytest.raises(gym.error.ResetNeeded, match="terminated at step 1"):
        env.step(1)


def _first_step_terminations(env, seed, n=200):
    env.reset(seed=seed)
    outcomes = []
    for _ in range(n):
        outcomes.append(env.step(0)[2])
        env.reset()
    return outcomes


def test_sampled_termination_is_seeded_and_gives_both_outcomes():
    make = lambda: WorldModelEnv(StubModel(done_prob=0.5), STARTS, sample_termination=True)  # noqa: E731
    outcomes = _first_step_terminations(make(), seed=0)
    assert outcomes == _first_step_terminations(make(), seed=0)
    assert outcomes != _first_step_terminations(make(), seed=1)
    assert 80 < sum(outcomes) < 120
    # with the threshold instead, done_prob 0.5 is not above 0.5: it never terminates
    assert not any(_first_step_terminations(WorldModelEnv(StubModel(done_prob=0.5), STARTS), seed=0))


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize("states, message", [
    (np.zeros(4), r"start_states must have shape \(N >= 1, obs_dim=4\), got \(4,\)"),
    (np.zeros((2, 3, 4)), r"got \(2, 3, 4\)"),
    (np.zeros((0, 4)), r"N >= 1.*got \(0, 4\)"),
    (np.zeros((10, 3)), r"obs_dim=4\), got \(10, 3\)"),
    (np.array([[0, 0, 0, 0], [0, np.nan, 0, 0]]), r"NaN or infinity in rows \[1\]"),
    (np.full((1, 4), 1e300), r"NaN or infinity in rows \[0\]"),  # overflows float32
])
def test_bad_start_states_raise(states, message):
    with pytest.raises(ValueError, match=message):
        WorldModelEnv(StubModel(), states)


def test_empty_buffer_and_bad_action_space_raise():
    with pytest.raises(ValueError, match=r"got \(0, 4\)"):
        WorldModelEnv(StubModel(), ReplayBuffer(5, (4,)))  # an empty buffer
    with pytest.raises(ValueError, match="action_space must be Discrete"):
        WorldModelEnv(StubModel(), STARTS, action_space=gym.spaces.Box(-1, 1, (1,)))
    with pytest.raises(ValueError, match="max_episode_steps must be positive"):
        WorldModelEnv(StubModel(), STARTS, max_episode_steps=0)


@pytest.mark.parametrize("action", [2, -1, 0.5, np.int64(2), np.array([1]), "1"])
def test_actions_outside_the_space_raise(action):
    env = WorldModelEnv(StubModel(), STARTS)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"is outside Discrete\(2\)"):
        env.step(action)


@pytest.mark.parametrize("action", [1, np.int64(1), np.int32(0), np.array(1)])
def test_integer_actions_of_any_kind_are_accepted(action):
    env = WorldModelEnv(StubModel(), STARTS)
    env.reset(seed=0)
    assert env.step(action)[0].shape == (4,)


def test_step_before_reset_raises():
    with pytest.raises(gym.error.ResetNeeded, match=r"call reset\(\) before the first step"):
        WorldModelEnv(StubModel(), STARTS).step(0)


@pytest.mark.parametrize("field", ["next_obs", "reward", "done_prob"])
def test_a_nan_prediction_raises_floating_point_error(field):
    env = WorldModelEnv(StubModel(nan=field), STARTS)
    obs, _ = env.reset(seed=0)
    with pytest.raises(FloatingPointError, match=r"NaN or infinity at step 0 from state \["):
        env.step(1)


def test_bad_reset_options_raise():
    env = WorldModelEnv(StubModel(), STARTS)
    with pytest.raises(ValueError, match=r"options\['state'\] must be a finite state of shape \(4,\), got \(3,\)"):
        env.reset(options={"state": np.zeros(3)})
    with pytest.raises(ValueError, match=r"got \(4,\)"):
        env.reset(options={"state": [0.0, np.inf, 0.0, 0.0]})
    with pytest.raises(ValueError, match="unknown reset options \\['start'\\]"):
        env.reset(options={"start": np.zeros(4)})


# -- agents -----------------------------------------------------------------------------------


def test_wrappers_run_random_episodes(trained_model, cartpole_data):
    env = gym.wrappers.RecordEpisodeStatistics(
        WorldModelEnv(trained_model[0], cartpole_data[0].obs, max_episode_steps=50))
    env.action_space.seed(0)
    env.reset(seed=0)
    lengths = []
    for _ in range(300):
        _, _, terminated, truncated, info = env.step(env.action_space.sample())
        if terminated or truncated:
            lengths.append(int(info["episode"]["l"]))
            env.reset()
    assert len(lengths) >= 6 and all(1 <= n <= 50 for n in lengths)


def test_stable_baselines3_trains_in_it(trained_model, cartpole_data):
    sb3 = pytest.importorskip("stable_baselines3")
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    model = trained_model[0]
    before = state_of(model)
    env = WorldModelEnv(model, cartpole_data[0].obs, max_episode_steps=100)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sb3_check_env(env)
    assert not [str(w.message) for w in caught]
    agent = sb3.DQN("MlpPolicy", env, learning_starts=50, buffer_size=1000, seed=0, device="cpu")
    agent.learn(300)
    assert agent.num_timesteps == 300
    assert_same_state(before, model.state_dict())
