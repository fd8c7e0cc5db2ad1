"""wmbook.envs.DreamEnv: any world model as a Gymnasium environment, with Discrete, MultiBinary
and Box actions; the same stepping as WorldModelEnv for the MLP model."""

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from wmbook.envs import DreamEnv, WorldModelEnv
from wmbook.models import Prediction

from helpers import assert_same_state, state_of
from test_world_model_protocol import OBS_DIM, CounterModel, CounterState

STARTS = np.random.default_rng(0).normal(0, 1, (30, OBS_DIM)).astype(np.float32)

SPACES = {
    "discrete": (gym.spaces.Discrete(3), ()),
    "multibinary": (gym.spaces.MultiBinary(4), (4,)),
    "box": (gym.spaces.Box(-1.0, 1.0, (2,), np.float32), (2,)),
}


def _env(kind="discrete", **kwargs):
    space, shape = SPACES[kind]
    model = kwargs.pop("model", None) or CounterModel(action_shape=shape, **kwargs.pop("model_kwargs", {}))
    return DreamEnv(model, kwargs.pop("starts", STARTS), action_space=space, **kwargs)


def _quiet_check_env(env):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env)
    # every warning fails but the one saying render modes need an env made by gymnasium.make
    return [str(w.message) for w in caught if "not having a spec" not in str(w.message)]


# -- Gymnasium's API ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", SPACES)
@pytest.mark.parametrize("sample_termination", [False, True])
def test_check_env_passes_for_every_action_space(kind, sample_termination):
    env = _env(kind, sample_termination=sample_termination, model_kwargs={"p_continue": 0.9})
    assert not _quiet_check_env(env)
    assert env.action_space == SPACES[kind][0]
    limit = np.finfo(np.float32).max
    assert env.observation_space == gym.spaces.Box(-limit, limit, (OBS_DIM + 1,), np.float32)


def test_check_env_passes_with_start_latents_and_decoded_observations():
    latents = CounterState(torch.arange(5, dtype=torch.float32), torch.ones(5, OBS_DIM))
    env = DreamEnv(CounterModel(), start_latents=latents, action_space=gym.spaces.Discrete(2),
                   observation="decode")
    assert not _quiet_check_env(env)
    assert env.observation_space.shape == (OBS_DIM,) and env.n_starts == 5
    latents.count[:] = 99.0  # the env keeps its own copy
    _, info = env.reset(seed=0)
    assert env.step(1)[1] == info["start_index"] + 1.0


@pytest.mark.parametrize("kind, action, count", [
    ("discrete", 2, 3.0), ("discrete", np.int64(1), 2.0), ("discrete", np.array(0), 1.0),
    ("multibinary", np.array([1, 0, 1, 1]), 4.0), ("multibinary", [0, 1, 0, 0], 2.0),
    ("multibinary", np.array([1.0, 1.0, 0.0, 0.0], np.float32), 3.0),
    ("box", np.array([0.5, -0.25], np.float32), 1.25), ("box", [1.0, 1.0], 3.0),
])
def test_actions_reach_the_model_in_its_format(kind, action, count):
    # the toy model refuses anything but int64 (B,) indices or float (B, n) vectors
    env = _env(kind)
    obs, _ = env.reset(seed=0)
    assert obs[-1] == 1.0  # one observation filtered
    obs, reward, terminated, truncated, info = env.step(action)
    assert obs[-1] == count and reward == count and (terminated, truncated) == (False, False)
    assert info == {"done_prob": 0.0}


@pytest.mark.parametrize("kind, action, message", [
    ("discrete", 3, r"is outside Discrete\(3\): expected an integer in \[0, 3\)"),
    ("discrete", 0.5, r"outside Discrete\(3\)"),
    ("discrete", np.array([1]), r"outside Discrete\(3\)"),
    ("multibinary", np.array([1, 0, 2, 0]), r"outside MultiBinary\(4\): expected 0/1 values of shape \(4,\)"),
    ("multibinary", [1, 0], r"outside MultiBinary\(4\)"),
    ("multibinary", 1, r"outside MultiBinary\(4\)"),
    ("box", np.array([1.5, 0.0]),
     r"outside Box\(-1.0, 1.0, \(2,\), float32\): expected finite values of shape \(2,\)"),
    ("box", np.array([np.nan, 0.0]), r"outside Box"),
    ("box", np.zeros(3), r"outside Box"),
    ("box", "up", r"outside Box"),
])
def test_wrong_actions_raise_naming_the_space(kind, action, message):
    env = _env(kind)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=message):
        env.step(action)


@pytest.mark.parametrize("space, message", [
    (gym.spaces.MultiDiscrete([2, 2]), "must be Discrete, MultiBinary or Box, got MultiDiscrete"),
    (gym.spaces.Discrete(3, start=1), "Discrete action space must start at 0"),
    (gym.spaces.MultiBinary([2, 2]), r"must be MultiBinary\(n\)"),
    (gym.spaces.Box(-np.inf, np.inf, (2,)), "Box action space must be bounded"),
    (gym.spaces.Box(0, 3, (2,), np.int64), "Box action space must have a floating dtype"),
    (gym.spaces.MultiBinary(3), r"gives actions of shape \(3,\), but the model expects action_shape \(\)"),
])
def test_unsupported_or_mismatched_action_spaces_raise(space, message):
    with pytest.raises(ValueError, match=message):
        DreamEnv(CounterModel(), STARTS, action_space=space)


def test_constructor_errors_name_the_problem():
    discrete = gym.spaces.Discrete(2)
    with pytest.raises(ValueError, match="exactly one of start_observations and start_latents"):
        DreamEnv(CounterModel(), action_space=discrete)
    with pytest.raises(ValueError, match=r"start_observations must have shape \(N >= 1, ...\), got \(0, 2\)"):
        DreamEnv(CounterModel(), np.zeros((0, OBS_DIM)), action_space=discrete)
    with pytest.raises(ValueError,
                       match=r"start_observations \(2, 2\) contain NaN or infinity in rows \[1\]"):
        DreamEnv(CounterModel(), np.array([[0.0, 0.0], [np.inf, 0.0]]), action_space=discrete)
    with pytest.raises(ValueError, match="observation must be 'features' or 'decode'"):
        DreamEnv(CounterModel(), STARTS, action_space=discrete, observation="pixels")
    class NoDecode(CounterModel):
        decode = None

    with pytest.raises(ValueError, match="observation='decode' needs a model with decode"):
        DreamEnv(NoDecode(), STARTS, action_space=discrete, observation="decode")


# -- episodes -----------------------------------------------------------------------------------


def test_recurrent_state_is_carried_from_step_to_step():
    env = _env("multibinary", model_kwargs={"limit": 6.0})
    obs, info = env.reset(seed=0)
    np.testing.assert_array_equal(obs, np.append(STARTS[info["start_index"]], 1.0))
    rewards, flags = [], []
    for _ in range(3):
        obs, reward, terminated, truncated, info = env.step(np.array([1, 1, 0, 0]))
        rewards.append(reward), flags.append(terminated)
    # the count lives only in the latent: each step builds on the last
    assert rewards == [3.0, 5.0, 7.0] and flags == [False, False, True]
    assert info["done_prob"] == 1.0
    with pytest.raises(gym.error.ResetNeeded, match="terminated at step 3"):
        env.step(np.zeros(4))
    obs, _ = env.reset()
    assert obs[-1] == 1.0  # a new episode starts from a freshly filtered observation


def test_truncation_at_max_episode_steps():
    env = _env("box", max_episode_steps=3)
    env.reset(seed=0)
    flags = [env.step(np.zeros(2, np.float32))[2:4] for _ in range(3)]
    assert flags == [(False, False), (False, False), (False, True)]
    with pytest.raises(gym.error.ResetNeeded, match="truncated at step 3"):
        env.step(np.zeros(2, np.float32))


def test_reset_options_start_from_an_observation_or_a_latent():
    env = _env()
    obs, info = env.reset(seed=0, options={"observation": [0.5, -0.5]})
    assert obs.tolist() == [0.5, -0.5, 1.0] and info["start_index"] == -1
    latent = CounterState(torch.tensor([7.0]), torch.tensor([[1.0, 2.0]]))
    obs, info = env.reset(options={"latent": latent})
    assert obs.tolist() == [1.0, 2.0, 7.0] and env.step(2)[1] == 9.0
    with pytest.raises(ValueError,
                       match=r"options\['observation'\] must be a finite observation of shape \(2,\), got \(3,\)"):
        env.reset(options={"observation": np.zeros(3)})
    with pytest.raises(ValueError, match="options\\['latent'\\] must have batch size 1, got 2"):
        env.reset(options={"latent": CounterState(torch.zeros(2), torch.zeros(2, OBS_DIM))})
    with pytest.raises(ValueError, match="unknown reset options \\['state'\\]"):
        env.reset(options={"state": np.zeros(2)})
    with pytest.raises(ValueError, match="at most one of"):
        env.reset(options={"observation": np.zeros(2), "latent": latent})


def test_sampled_termination_is_seeded():
    def first_step_ends(seed):
        env = _env(sample_termination=True, model_kwargs={"p_continue": 0.5})
        env.reset(seed=seed)
        outcomes = []
        for _ in range(200):
            outcomes.append(env.step(0)[2])
            env.reset()
        return outcomes

    outcomes = first_step_ends(0)
    assert outcomes == first_step_ends(0) and outcomes != first_step_ends(1)
    assert 80 < sum(outcomes) < 120


def test_same_seed_same_episode():
    def play(seed):
        env = _env("multibinary", model_kwargs={"limit": 12.0})
        env.action_space.seed(seed)
        obs, _ = env.reset(seed=seed)
        observations = [obs]
        for _ in range(40):
            obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
            observations.append(obs)
            if terminated or truncated:
                obs, _ = env.reset()
                observations.append(obs)
        return np.stack(observations)

    np.testing.assert_array_equal(play(3), play(3))
    assert not np.array_equal(play(3), play(4))


def test_a_non_finite_prediction_raises():
    env = _env(model_kwargs={"nan": True})
    env.reset(seed=0)
    with pytest.raises(FloatingPointError, match=r"NaN or infinity at step 0 from state \["):
        env.step(1)


def test_disagreement_is_reported_and_the_env_changes_no_weights():
    class Spread(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor(0.1))

        def predict(self, obs, action):
            batch = obs.shape[0]
            return Prediction(obs + self.scale, torch.ones(batch), torch.zeros(batch),
                              torch.full((batch,), 0.3))

    model = Spread().train()
    before = state_of(model)
    env = DreamEnv(model, STARTS, action_space=gym.spaces.Discrete(2))
    env.reset(seed=0)
    info = env.step(1)[4]
    assert info["done_prob"] == 0.0 and info["disagreement"] == pytest.approx(0.3)
    assert model.training
    assert_same_state(before, model.state_dict())


# -- the MLP model: DreamEnv and WorldModelEnv step alike -----------------------------------------


@pytest.mark.parametrize("make", [
    lambda model, starts: DreamEnv(model, starts, action_space=gym.spaces.Discrete(2)),
    lambda model, starts: WorldModelEnv(model, starts),
], ids=["DreamEnv", "WorldModelEnv"])
def test_mlp_model_steps_are_its_own_predictions(trained_model, cartpole_data, make):
    model = trained_model[0]
    env = make(model, cartpole_data[0].obs)
    obs, info = env.reset(seed=11)
    np.testing.assert_array_equal(obs, cartpole_data[0].obs[info["start_index"]].numpy())
    ends = 0
    for action in np.random.default_rng(5).integers(0, 2, 150):
        next_obs, reward, terminated, truncated, info = env.step(int(action))
        with torch.no_grad():
            expected = model.predict(torch.from_numpy(obs[None]), torch.tensor([int(action)]))
        np.testing.assert_array_equal(next_obs, expected.next_obs[0].numpy())
        assert reward == expected.reward.item() and info["done_prob"] == expected.done_prob.item()
        assert terminated == (expected.done_prob.item() > 0.5) and not truncated
        obs = next_obs
        if terminated:
            ends += 1
            obs, _ = env.reset()
    assert ends >= 1  # both branches ran


# -- agents -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["discrete", "multibinary"])
def test_stable_baselines3_ppo_trains_in_a_dream(kind, one_thread):
    sb3 = pytest.importorskip("stable_baselines3")
    model = CounterModel(action_shape=SPACES[kind][1], limit=20.0)
    before = state_of(model)
    env = _env(kind, model=model, max_episode_steps=30)
    agent = sb3.PPO("MlpPolicy", env, n_steps=64, batch_size=32, n_epochs=2, seed=0, device="cpu",
                    policy_kwargs={"net_arch": [16]})
    agent.learn(256)
    assert agent.num_timesteps == 256
    assert_same_state(before, model.state_dict())
