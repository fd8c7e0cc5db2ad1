"""PPO: advantages, the heads (categorical and multi-label Bernoulli), and learning to solve
small tasks, CartPole from vectors included."""

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch

from wmbook.agents.ppo import (PPO, BernoulliHead, CategoricalHead, GymSteps, PPOConfig, compute_gae, head_for,
                               rollout, train_ppo)


def test_gae_by_hand_termination_and_truncation():
    gamma, lam = 0.9, 0.5
    rewards = torch.tensor([[1.0], [1.0], [1.0]])
    values = torch.tensor([[0.5], [0.4], [0.3]])
    next_values = torch.tensor([[0.4], [0.3], [2.0]])
    none = torch.zeros(3, 1, dtype=torch.bool)
    adv, ret = compute_gae(rewards, values, next_values, none, none, gamma, lam)
    d = [1 + 0.9 * 0.4 - 0.5, 1 + 0.9 * 0.3 - 0.4, 1 + 0.9 * 2.0 - 0.3]
    expected = [d[0] + 0.45 * (d[1] + 0.45 * d[2]), d[1] + 0.45 * d[2], d[2]]
    assert adv[:, 0].tolist() == pytest.approx(expected)
    assert torch.allclose(ret, adv + values)
    # a termination at step 1: no value after it, and nothing flows back across it
    terminated = torch.tensor([[False], [True], [False]])
    adv_t, _ = compute_gae(rewards, values, next_values, terminated, terminated, gamma, lam)
    assert adv_t[1, 0].item() == pytest.approx(1 - 0.4)
    assert adv_t[0, 0].item() == pytest.approx(d[0] + 0.45 * (1 - 0.4))
    # a truncation at step 1 ends the flow but bootstraps from the value of the cut state
    adv_c, _ = compute_gae(rewards, values, next_values, none, terminated, gamma, lam)
    assert adv_c[1, 0].item() == pytest.approx(d[1])


class CountEnv(gym.Env):
    """Observation: the step count; reward 1 per step; truncated after 3 steps."""

    observation_space = gym.spaces.Box(0, 10, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        return np.array([float(self.t)], np.float32), 1.0, False, self.t == 3, {}


def test_the_rollout_bootstraps_a_truncated_step_from_where_it_was_cut():
    ppo = PPO(1, CategoricalHead(2), PPOConfig(hidden_sizes=(4,), seed=0))
    real = GymSteps([CountEnv(), CountEnv()], seed=0)
    data = rollout(ppo, real.observations(), real, 5)
    assert data.obs.shape == (5, 2, 1) and data.actions.shape == (5, 2)
    assert data.obs[:, 0, 0].tolist() == [0, 1, 2, 0, 1]  # reset after the third step
    assert data.ended[:, 0].tolist() == [False, False, True, False, False] and not data.terminated.any()
    # the cut step's value is the value of the state it reached (3), not of the reset state (0)
    assert data.next_values[2, 0].item() == pytest.approx(ppo.net.value(torch.tensor([[3.0]])).item())
    assert real.episode_returns == [3.0, 3.0]
    # stop ends it sooner; keep drops steps from the batch
    short = rollout(ppo, real.observations(), real, 5, stop=lambda: True)
    assert len(short.obs) == 1
    keep = torch.tensor([[True, False]] * 5)
    assert len(data.batch(0.9, 0.9, keep=keep).obs) == 5 and len(data.batch(0.9, 0.9).obs) == 10


def test_categorical_head():
    head = CategoricalHead(3)
    dist = head.distribution(torch.tensor([[0.0, 0.0, 10.0], [0.0, 0.0, 0.0]]))
    assert dist.mode().tolist() == [2, 2] or dist.mode()[0] == 2
    assert dist.entropy()[1].item() == pytest.approx(np.log(3))
    draws = dist.sample(torch.Generator().manual_seed(0))
    assert draws.shape == (2,) and draws.dtype == torch.int64
    with pytest.raises(ValueError):
        CategoricalHead(1)


def test_bernoulli_head_keeps_one_to_three_labels():
    head = BernoulliHead(100, min_active=1, max_active=3)
    g = torch.Generator().manual_seed(0)
    for logits in (torch.full((64, 100), -8.0), torch.full((64, 100), 8.0), torch.randn(64, 100, generator=g)):
        dist = head.distribution(logits)
        for action in (dist.sample(g), dist.mode()):
            counts = action.sum(1)
            assert action.shape == (64, 100) and ((counts >= 1) & (counts <= 3)).all()
            assert set(action.unique().tolist()) <= {0.0, 1.0}
    # the likeliest labels are the ones kept or added
    logits = torch.full((1, 100), -8.0)
    logits[0, 42] = -1.0
    assert head.distribution(logits).mode()[0].nonzero().flatten().tolist() == [42]
    logits = torch.full((1, 100), 8.0)
    logits[0, [3, 7, 9]] = 9.0
    assert head.distribution(logits).mode()[0].nonzero().flatten().tolist() == [3, 7, 9]
    # log_prob is the sum of independent labels' log-probabilities
    logits = torch.randn(2, 100, generator=g)
    action = head.distribution(logits).sample(g)
    manual = (action * torch.nn.functional.logsigmoid(logits)
              + (1 - action) * torch.nn.functional.logsigmoid(-logits)).sum(1)
    assert torch.allclose(head.distribution(logits).log_prob(action), manual, atol=1e-5)
    assert isinstance(head_for(gym.spaces.MultiBinary(100)), BernoulliHead)


class MatchEnv(gym.Env):
    """10-step episodes: the observation one-hot names the rewarded action (reward 1 if taken)."""

    def __init__(self, n: int = 3):
        self.n = n
        self.observation_space = gym.spaces.Box(0, 1, (n,), np.float32)
        self.action_space = gym.spaces.Discrete(n)

    def _obs(self):
        self.target = int(self.np_random.integers(self.n))
        return np.eye(self.n, dtype=np.float32)[self.target]

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        reward = float(int(action) == self.target)
        self.t += 1
        return self._obs(), reward, False, self.t >= 10, {}


def test_ppo_solves_a_tiny_task_and_is_seeded():
    config = PPOConfig(total_timesteps=2048, num_envs=4, n_steps=64, batch_size=64, n_epochs=10,
                       gamma=0.9, learning_rate=1e-2, anneal=False, hidden_sizes=(16,), seed=1)

    def run():
        return train_ppo(config, progress=False, make_env=MatchEnv)

    first, second = run(), run()
    assert np.mean(first.episode_returns[:20]) < 6  # near chance (3.3) at first
    assert np.mean(first.episode_returns[-20:]) > 9.5
    assert first.episode_returns == second.episode_returns


class LabelEnv(gym.Env):
    """One-step episodes with 8 labels: observation i rewards the label set {i, i + 4} (Jaccard)."""

    observation_space = gym.spaces.Box(0, 1, (4,), np.float32)
    action_space = gym.spaces.MultiBinary(8)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.i = int(self.np_random.integers(4))
        return np.eye(4, dtype=np.float32)[self.i], {}

    def step(self, action):
        target = {self.i, self.i + 4}
        chosen = set(np.flatnonzero(action).tolist())
        return np.eye(4, dtype=np.float32)[self.i], len(target & chosen) / len(target | chosen), True, False, {}


def test_ppo_learns_multi_label_actions_with_the_bernoulli_head():
    config = PPOConfig(total_timesteps=3072, num_envs=8, n_steps=32, batch_size=64, n_epochs=10,
                       learning_rate=1e-2, anneal=False, hidden_sizes=(32,), seed=0)
    result = train_ppo(config, progress=False, make_env=LabelEnv)
    assert np.mean(result.episode_returns[:100]) < 0.5
    assert np.mean(result.episode_returns[-100:]) > 0.85


def test_ppo_solves_cartpole_from_vectors():
    """rl-zoo's settings solve CartPole (mean greedy return >= 475 over 10 episodes) within 24k steps."""
    torch.set_num_threads(1)
    result = train_ppo(PPOConfig(total_timesteps=24_000, eval_every=2_000, stop_when_solved=True, seed=0),
                       progress=False)
    assert result.solved_at is not None and result.solved_at <= 16_000
    assert result.eval_returns[0] < 300  # it was not solved from the start


def test_state_dict_round_trip_continues_identically():
    config = PPOConfig(total_timesteps=1000, num_envs=2, n_steps=8, batch_size=8, n_epochs=2, seed=3)
    a = PPO(4, CategoricalHead(2), config)
    b = PPO(4, CategoricalHead(2), config)
    obs = torch.randn(16, 4)
    actions, log_probs, _ = a.net.act(obs, a.generator)
    from wmbook.agents.ppo import Batch
    batch = Batch(obs, actions, log_probs, torch.randn(16), torch.randn(16))
    a.update(batch, 0)
    b.load_state_dict(copy.deepcopy(a.state_dict()))  # as if saved and loaded
    a.update(batch, 16)
    b.update(batch, 16)
    for p, q in zip(a.net.parameters(), b.net.parameters()):
        assert torch.equal(p, q)
