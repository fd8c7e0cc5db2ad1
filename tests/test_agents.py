"""wmbook.agents: DQN (update rule, target network, evaluation, training loop) and Dyna-DQN."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wmbook.agents import (
    DQNAgent,
    DQNConfig,
    DynaConfig,
    DynaPlanner,
    evaluation_seed,
    imagined_transitions,
    train_dqn,
    train_dyna_dqn,
)
from wmbook.agents.dqn import epsilon_at
from wmbook.buffers import ReplayBuffer, Transitions
from wmbook.device import seed_everything
from wmbook.envs import collect_transitions, make_env
from wmbook.evaluation import evaluate, stateless
from wmbook.models import Prediction

from helpers import same_weights, weights_of

# tiny networks and few steps: every run takes a second or two on one thread
TINY = DQNConfig(total_steps=1500, learning_starts=200, eval_every=500, eval_episodes=2,
                 hidden_size=16, n_layers=1, batch_size=16, exploration_steps=1000)
TINY_DYNA = DynaConfig(imagined_updates=2, rollout_length=1, model_every=300, model_updates=10,
                       model_hidden_size=16, model_layers=1, model_batch_size=128)
DYNA_DQN = dataclasses.replace(TINY, total_steps=1200, learning_starts=300, eval_every=600)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks on busy cores


def _batch(n: int = 32, seed: int = 0, terminated=None, truncated=None) -> Transitions:
    g = torch.Generator().manual_seed(seed)
    return Transitions(
        obs=torch.randn(n, 4, generator=g),
        action=torch.randint(0, 2, (n,), generator=g),
        reward=torch.ones(n),
        next_obs=torch.randn(n, 4, generator=g),
        terminated=torch.zeros(n, dtype=torch.bool) if terminated is None else terminated,
        truncated=torch.zeros(n, dtype=torch.bool) if truncated is None else truncated,
    )


# -- epsilon schedule -------------------------------------------------------------------


def test_epsilon_schedule_endpoints():
    config = DQNConfig(epsilon_start=1.0, epsilon_end=0.05, exploration_steps=1000)
    assert epsilon_at(0, config) == pytest.approx(1.0)
    assert epsilon_at(500, config) == pytest.approx(0.525)
    assert epsilon_at(1000, config) == pytest.approx(0.05)
    assert epsilon_at(10_000, config) == pytest.approx(0.05)  # stays at the end value
    values = [epsilon_at(s, config) for s in range(0, 1200, 50)]
    assert all(a >= b for a, b in zip(values, values[1:]))


# -- DQNAgent.update --------------------------------------------------------------------


def test_update_fits_q_to_the_td_target_on_a_fixed_batch():
    seed_everything(0)
    config = DQNConfig(hidden_size=32, n_layers=2, learning_rate=3e-3, target_tau=0.005)
    agent = DQNAgent(4, 2, config)
    batch = _batch(32)
    losses = [agent.update(batch) for _ in range(50)]
    assert agent.updates == 50
    assert losses[-1] < 0.25 * losses[0]
    with torch.no_grad():
        target = batch.reward + config.gamma * agent.target(batch.next_obs).max(-1).values
        q_taken = agent.q(batch.obs).gather(1, batch.action[:, None]).squeeze(1)
    assert F.smooth_l1_loss(q_taken, target).item() < 0.25 * losses[0]


def _constant_agent(q_value: float, next_values: tuple[float, float]) -> DQNAgent:
    """An agent whose online net outputs ``q_value`` for both actions and whose target net
    outputs ``next_values`` for every state."""
    agent = DQNAgent(4, 2, DQNConfig(hidden_size=8, n_layers=1, gamma=0.9))
    with torch.no_grad():
        for net, out in ((agent.q, (q_value, q_value)), (agent.target, next_values)):
            for p in net.parameters():
                p.zero_()
            net[-1].bias.copy_(torch.tensor(out))
    return agent


@pytest.mark.parametrize("terminated, truncated, bootstraps", [
    (False, False, True),
    (True, False, False),    # the task ended: no future value
    (False, True, True),     # a time limit: the future still counts
    (True, True, False),
])
def test_terminal_transitions_do_not_bootstrap_but_truncated_ones_do(terminated, truncated, bootstraps):
    agent = _constant_agent(0.0, (1.0, 2.0))
    n = 4
    batch = _batch(n, terminated=torch.full((n,), terminated), truncated=torch.full((n,), truncated))
    loss = agent.update(batch)  # the loss is measured before the step
    # Q = 0; target = reward 1 + gamma 0.9 * max next Q 2.0 = 2.8 (Huber: 2.3), or 1 (Huber: 0.5)
    assert loss == pytest.approx(2.3 if bootstraps else 0.5)


def test_mixed_batch_targets_follow_each_flag():
    agent = _constant_agent(0.0, (0.0, 0.5))
    batch = _batch(3, terminated=torch.tensor([True, False, False]),
                   truncated=torch.tensor([False, True, False]))
    # targets 1, 1.45, 1.45 against Q = 0
    expected = F.smooth_l1_loss(torch.zeros(3), torch.tensor([1.0, 1.45, 1.45])).item()
    assert agent.update(batch) == pytest.approx(expected)


@pytest.mark.parametrize("p", [0.0, 0.25, 0.5, 1.0])
def test_a_fractional_termination_makes_the_expected_backup(p):
    """An imagined transition carries the model's termination probability p: the target is
    r + gamma (1 - p) max Q(s'), the mean of the two backups weighted by p."""
    agent = _constant_agent(0.0, (1.0, 2.0))
    n = 4
    batch = _batch(n, terminated=torch.full((n,), p))
    target = 1.0 + 0.9 * (1 - p) * 2.0
    expected = F.smooth_l1_loss(torch.zeros(n), torch.full((n,), target)).item()
    assert agent.update(batch) == pytest.approx(expected)


def test_target_network_follows_by_polyak_averaging():
    seed_everything(0)
    config = DQNConfig(hidden_size=16, n_layers=1, target_tau=0.1, learning_rate=1e-2)
    agent = DQNAgent(4, 2, config)
    assert same_weights(weights_of(agent.q), weights_of(agent.target))  # starts as a copy
    assert not any(p.requires_grad for p in agent.target.parameters())
    for _ in range(3):
        old_target = weights_of(agent.target)
        agent.update(_batch(16))
        online = weights_of(agent.q)
        for old, new, q in zip(old_target, agent.target.parameters(), online):
            assert torch.allclose(new, 0.9 * old + 0.1 * q, atol=1e-6)
    assert not same_weights(weights_of(agent.q), weights_of(agent.target))


# -- evaluation ------------------------------------------------------------------------


def test_evaluation_seed_rule_separates_runs_and_training():
    """Every run evaluates from its own fixed starts, far from any training seed: runs of
    different seeds never share an evaluation start, and no seed below 10,000 is used."""
    seeds = range(50)
    firsts = [evaluation_seed(s) for s in seeds]
    assert len(set(firsts)) == len(firsts)
    starts = [set(range(f, f + 10)) for f in firsts]  # ten evaluation episodes per run
    assert all(a.isdisjoint(b) for i, a in enumerate(starts) for b in starts[i + 1:])
    assert min(firsts) >= 10_000 and evaluation_seed(0) == 10_000


def test_every_evaluation_of_a_run_faces_the_same_starts(monkeypatch):
    """train_dqn evaluates with evaluation_seed(config.seed) every time."""
    seen = []
    from wmbook.agents import dqn as dqn_module

    def recording(policy, env_id, episodes, seed):
        seen.append((episodes, seed))
        return np.full(episodes, 10.0)

    monkeypatch.setattr(dqn_module, "evaluate", recording)
    config = dataclasses.replace(TINY, total_steps=600, eval_every=200, seed=7)
    train_dqn(config, progress=False)
    assert seen == [(config.eval_episodes, evaluation_seed(7))] * 3


def test_train_dqn_can_train_in_another_environment_and_evaluate_in_the_real_one(trained_model):
    """``env=``: the buffer fills from that environment; evaluations play config.env_id."""
    from wmbook.envs import WorldModelEnv

    model, _ = trained_model
    dream = WorldModelEnv(model, collect_transitions(make_env("CartPole-v1"), 200, seed=0).all().obs.numpy())
    config = dataclasses.replace(TINY, total_steps=400, learning_starts=100, eval_every=400)
    result = train_dqn(config, progress=False, env=dream)
    rewards = result.buffer.all().reward
    assert len(result.buffer) == 400 and not torch.all(rewards == 1.0)  # model rewards, not CartPole's
    real = evaluate(stateless(lambda o: result.agent.greedy(torch.as_tensor(o)).cpu().numpy()),
                    episodes=config.eval_episodes, seed=evaluation_seed(config.seed))
    assert result.eval_returns == [float(real.mean())]


# -- train_dqn --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dqn_runs():
    """Two runs of the same config from the same seeds, and one from another seed."""
    torch.set_num_threads(1)
    config = dataclasses.replace(TINY, updates_per_step=2)
    runs = []
    for seed in (0, 0, 1):
        seed_everything(seed)
        runs.append(train_dqn(dataclasses.replace(config, seed=seed), progress=False))
    return config, runs


def test_train_dqn_schedule_of_evaluations_and_updates(dqn_runs):
    config, (result, _, _) = dqn_runs
    assert result.eval_steps == [500, 1000, 1500]
    assert len(result.eval_returns) == 3
    assert all(1 <= r <= 500 for r in result.eval_returns)
    learning_steps = config.total_steps - config.learning_starts
    assert result.gradient_updates == learning_steps * config.updates_per_step
    assert len(result.buffer) == config.total_steps
    assert len(result.episode_returns) >= 10 and sum(result.episode_returns) <= config.total_steps
    assert result.seconds > 0


def test_train_dqn_is_reproducible_with_the_same_seed(dqn_runs):
    _, (first, second, other) = dqn_runs
    assert first.eval_returns == second.eval_returns
    assert first.episode_returns == second.episode_returns
    assert same_weights(weights_of(first.agent.q), weights_of(second.agent.q))
    assert same_weights(weights_of(first.agent.target), weights_of(second.agent.target))
    assert not same_weights(weights_of(first.agent.q), weights_of(other.agent.q))


def test_train_dqn_is_determined_by_config_seed_alone():
    config = dataclasses.replace(TINY, total_steps=300, learning_starts=100, eval_every=300)
    seed_everything(0)
    first = train_dqn(config, progress=False)
    torch.rand(1)  # anything else in the process that draws from torch's generator
    second = train_dqn(config, progress=False)
    assert same_weights(weights_of(first.agent.q), weights_of(second.agent.q))


def test_stop_when_solved_stops_at_the_first_evaluation():
    seed_everything(0)
    config = dataclasses.replace(TINY, total_steps=50_000, eval_every=300, solved_return=0.0,
                                 stop_when_solved=True)
    result = train_dqn(config, progress=False)
    assert result.eval_steps == [300] and result.solved_at == 300
    assert len(result.buffer) == 300
    assert result.gradient_updates == config.eval_every - config.learning_starts


def test_solved_at_stays_none_when_never_solved(dqn_runs):
    _, (result, _, _) = dqn_runs
    assert max(result.eval_returns) < 475 and result.solved_at is None


def test_continuous_action_env_raises_type_error():
    with pytest.raises(TypeError, match="discrete"):
        train_dqn(dataclasses.replace(TINY, env_id="Pendulum-v1"), progress=False)


# -- imagined_transitions ---------------------------------------------------------------


class CountingModel:
    """State ``[i, t, 0, 0]``: start ``i``, ``t`` steps taken. Each step adds ``action + 1`` to
    dimension 2 and 1 to dimension 1, rewards ``i``, and predicts termination (p = 0.9)
    at step ``i % 4`` (so starts with ``i % 4 == 3`` survive a 3-step rollout)."""

    def parameters(self):
        return iter([torch.zeros(1)])

    def predict(self, obs, action):
        step = torch.zeros_like(obs)
        step[:, 1] = 1.0
        step[:, 2] = action.float() + 1
        ends_now = obs[:, 1] == obs[:, 0] % 4
        return Prediction(obs + step, obs[:, 0].clone(), torch.where(ends_now, 0.9, 0.2))


def _counting_buffer(n: int = 40) -> ReplayBuffer:
    buffer = ReplayBuffer(n, (4,), seed=0)
    for i in range(n):
        obs = np.array([i, 0, 0, 0], dtype=np.float32)
        buffer.add(obs, 0, 1.0, obs + 1, False)
    return buffer


def test_imagined_transitions_keep_alive_steps_and_carry_termination_probabilities():
    buffer = _counting_buffer()
    policy = lambda states: (states[:, 0] % 2).long()  # noqa: E731
    data = imagined_transitions(CountingModel(), buffer, policy, n_branches=64, rollout_length=3)
    starts = data.obs[data.obs[:, 1] == 0][:, 0].long()
    assert len(starts) == 64  # every branch contributes its first step
    expected = sum(min(int(i) % 4 + 1, 3) for i in starts)
    assert len(data) == expected
    assert data.obs.shape == data.next_obs.shape == (expected, 4)
    assert data.action.shape == data.reward.shape == data.terminated.shape == (expected,)
    start_id, step = data.obs[:, 0].long(), data.obs[:, 1].long()
    assert (step <= start_id % 4).all() and (step < 3).all()  # nothing after a predicted end
    # terminated carries the predicted termination probability: 0.9 where the branch ends
    assert torch.allclose(data.terminated, torch.where(step == start_id % 4, 0.9, 0.2))
    assert not data.truncated.any()
    assert torch.equal(data.action, start_id % 2)
    assert torch.equal(data.next_obs[:, 2] - data.obs[:, 2], data.action.float() + 1)
    assert torch.equal(data.reward, data.obs[:, 0])


def test_imagined_transitions_from_a_trained_model(trained_model, cartpole_data):
    model, _ = trained_model
    train, _ = cartpole_data
    buffer = ReplayBuffer(len(train), (4,), seed=0)
    buffer.add_batch(train.obs, train.action, train.reward, train.next_obs, train.terminated, train.truncated)
    policy = lambda states: (states[:, 2] > 0).long()  # noqa: E731
    data = imagined_transitions(model, buffer, policy, n_branches=50, rollout_length=4)
    assert 50 <= len(data) <= 200
    with torch.no_grad():
        again = model.predict(data.obs, data.action)
    assert torch.allclose(again.next_obs, data.next_obs, atol=1e-5)
    assert torch.allclose(data.terminated, again.done_prob, atol=1e-6)
    assert torch.equal(data.action, policy(data.obs))


# -- DynaPlanner and train_dyna_dqn -----------------------------------------------------


def test_planner_step_makes_k_updates_on_imagined_data():
    seed_everything(0)
    env = make_env("CartPole-v1")
    buffer = collect_transitions(env, 400, seed=0)
    config = DQNConfig(hidden_size=16, n_layers=1, batch_size=16)
    agent = DQNAgent(4, 2, config)
    planner = DynaPlanner(dataclasses.replace(TINY_DYNA, imagined_updates=3, model_every=100), config, 4, 2)
    planner(50, agent, buffer)       # first call: fit the model, then 3 updates
    assert planner.refits == 1 and agent.updates == 3 and planner.imagined == 3 * 16
    planner(51, agent, buffer)       # not on the schedule: no refit
    assert planner.refits == 1 and agent.updates == 6
    planner(100, agent, buffer)      # on the schedule
    assert planner.refits == 2 and agent.updates == 9
    idle = DynaPlanner(dataclasses.replace(TINY_DYNA, imagined_updates=0), config, 4, 2)
    idle(7, agent, buffer)
    assert idle.refits == 1 and agent.updates == 9 and idle.imagined == 0


@pytest.fixture(scope="module")
def dyna_runs():
    torch.set_num_threads(1)
    runs, refit_steps = [], []
    original = DynaPlanner.refit

    def recording_refit(self, buffer, step):
        refit_steps.append(step)
        return original(self, buffer, step)

    DynaPlanner.refit = recording_refit
    try:
        for _ in range(2):
            seed_everything(0)
            runs.append(train_dyna_dqn(DYNA_DQN, TINY_DYNA, progress=False))
    finally:
        DynaPlanner.refit = original
    return runs, refit_steps


def test_dyna_makes_k_extra_updates_per_real_step(dyna_runs):
    runs, _ = dyna_runs
    result, planner = runs[0]
    real_updates = (DYNA_DQN.total_steps - DYNA_DQN.learning_starts) * DYNA_DQN.updates_per_step
    imagined_updates = (DYNA_DQN.total_steps - DYNA_DQN.learning_starts) * TINY_DYNA.imagined_updates
    assert result.gradient_updates == real_updates + imagined_updates
    # one-step branches never die before their first step: exactly K batches imagined per step
    assert planner.imagined == imagined_updates * DYNA_DQN.batch_size
    assert result.eval_steps == [600, 1200]


def test_dyna_refits_the_model_on_schedule(dyna_runs):
    runs, refit_steps = dyna_runs
    _, planner = runs[0]
    assert planner.refits == 3
    assert refit_steps[:3] == [300, 600, 900]  # at the first learning step, then every model_every
    assert refit_steps[3:] == [300, 600, 900]  # the second run
    assert planner.model.obs_norm.std.ne(1).all()  # the model was fitted to real data


def test_dyna_is_reproducible_with_the_same_seed(dyna_runs):
    runs, _ = dyna_runs
    (first, first_planner), (second, second_planner) = runs
    assert first.eval_returns == second.eval_returns
    assert first.episode_returns == second.episode_returns
    assert same_weights(weights_of(first.agent.q), weights_of(second.agent.q))
    assert same_weights(weights_of(first_planner.model), weights_of(second_planner.model))
    assert first_planner.imagined == second_planner.imagined
