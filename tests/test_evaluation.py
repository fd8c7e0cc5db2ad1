"""wmbook.evaluation: the one evaluation protocol, and the one rule for "solved"."""

import numpy as np
import pytest

from wmbook.envs import make_env
from wmbook.evaluation import evaluate, kept_solved, record, solved_return, stateless

BALANCE = np.array([0.0, 0.0, 1.0, 0.5])


def left(obs):
    return np.zeros(len(obs), dtype=int)


def test_one_return_per_episode():
    always_left = evaluate(stateless(left), episodes=4, seed=3)
    assert always_left.shape == (4,)
    assert np.all((always_left >= 1) & (always_left < 500))
    balanced = evaluate(stateless(lambda obs: (obs @ BALANCE > 0).astype(int)), episodes=3, seed=3)
    assert balanced.tolist() == [500.0] * 3  # the time limit ends each episode


def test_episode_i_starts_from_reset_seed_plus_i():
    returns = evaluate(stateless(left), episodes=3, seed=20)
    for i in range(3):
        env = make_env("CartPole-v1")
        env.reset(seed=20 + i)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(0)
            total += reward
            done = terminated or truncated
        assert returns[i] == total
    np.testing.assert_array_equal(returns, evaluate(stateless(left), episodes=3, seed=20))


def test_equal_seeds_give_equal_returns():
    def policy(obs):  # depends on the observations only, so equal seeds give equal returns
        return (np.sin(1000 * obs[:, 0]) > 0).astype(int)

    first = evaluate(stateless(policy), episodes=5, seed=1)
    np.testing.assert_array_equal(first, evaluate(stateless(policy), episodes=5, seed=1))
    assert np.all((first >= 1) & (first <= 500))


class Counting:
    """A policy with a memory: it counts its own steps per episode and pushes right after 3."""

    def reset(self, first_obs):
        self.steps = np.zeros(len(first_obs), dtype=int)
        self.firsts = first_obs.copy()

    def __call__(self, obs, rows):
        self.steps[rows] += 1
        return (self.steps[rows] > 3).astype(int)


def test_a_policy_with_a_memory_is_reset_and_told_its_rows():
    policy = Counting()
    returns = evaluate(policy, episodes=4, seed=5)
    starts = np.stack([make_env("CartPole-v1").reset(seed=5 + i)[0] for i in range(4)])
    np.testing.assert_array_equal(policy.firsts, starts)
    assert policy.steps.tolist() == returns.astype(int).tolist()  # each row called once per step


def test_a_task_is_solved_at_its_own_threshold():
    assert solved_return("CartPole-v1") == 475.0
    assert solved_return("Acrobot-v1") == -100.0
    assert solved_return("Pendulum-v1") is None  # no threshold: never judged solved
    assert solved_return("CartPole-v1", 200) == 200.0


class Curve:
    def __init__(self):
        self.eval_steps, self.eval_returns, self.solved_at = [], [], None


def test_record_keeps_the_curve_and_the_first_solve():
    curve = Curve()
    assert not record(curve, 100, [400, 450], 475.0)
    assert record(curve, 200, [480, 490], 475.0) and curve.solved_at == 200
    assert not record(curve, 300, [300, 300], 475.0)
    assert record(curve, 400, [500, 500], 475.0) and curve.solved_at == 200
    assert curve.eval_steps == [100, 200, 300, 400] and curve.eval_returns == [425.0, 485.0, 300.0, 500.0]
    assert kept_solved(curve.eval_steps, curve.eval_returns, curve.solved_at, 475.0) == 0.5
    never = Curve()
    assert not record(never, 100, [1e9], None) and never.solved_at is None
    assert np.isnan(kept_solved([100], [1.0], None, 475.0))


@pytest.mark.parametrize("episodes", [1, 3])
def test_environments_are_closed_even_when_the_policy_fails(episodes):
    closed = []

    def make():
        env = make_env("CartPole-v1")
        original = env.close
        env.close = lambda: closed.append(1) or original()
        return env

    def broken(obs, rows):
        raise RuntimeError("policy failed")

    with pytest.raises(RuntimeError, match="policy failed"):
        evaluate(broken, make, episodes=episodes)
    assert len(closed) == episodes
