"""Implicit Q-learning with multi-label actions: its losses by hand, and what it learns."""

import copy
import math

import pytest
import torch

from wmbook.agents.iql import IQL, IQLConfig, expectile_loss, iql_losses, train_iql


def test_expectile_loss_by_hand():
    diff = torch.tensor([1.0, -2.0])
    assert expectile_loss(diff, 0.7).item() == pytest.approx((0.7 * 1 + 0.3 * 4) / 2)
    assert expectile_loss(diff, 0.5).item() == pytest.approx(0.5 * (1 + 4) / 2)


def test_iql_losses_on_a_hand_computed_example():
    agent = IQL(1, 2, IQLConfig(gamma=0.9, expectile=0.8, beta=2.0, max_weight=5.0))
    q_values = {False: (torch.tensor([1.0, 2.0]), torch.tensor([1.5, 1.0])),
                True: (torch.tensor([2.0, 0.5]), torch.tensor([3.0, 1.0]))}
    agent.q = lambda s, a, target=False: q_values[target]
    agent.value = lambda s: s[:, 0]
    agent.logits = lambda s: torch.zeros(len(s), 2)
    s = torch.tensor([[1.0], [1.0]])
    s_next = torch.tensor([[2.0], [4.0]])
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    losses = iql_losses(agent, s, a, torch.tensor([0.5, -1.0]), s_next, torch.tensor([0.0, 1.0]))
    # min target Q = [2, 0.5]; V = [1, 1]; u = [1, -0.5]: expectile 0.8 -> (0.8 * 1 + 0.2 * 0.25) / 2
    assert losses["value"].item() == pytest.approx((0.8 + 0.2 * 0.25) / 2)
    # backups 0.5 + 0.9 * 2 = 2.3 and -1 (terminal)
    q1 = ((1 - 2.3) ** 2 + (2 + 1) ** 2) / 2
    q2 = ((1.5 - 2.3) ** 2 + (1 + 1) ** 2) / 2
    assert losses["q"].item() == pytest.approx(q1 + q2)
    # weights exp(2 * [1, -0.5]) = [e^2, e^-1], capped at 5; two labels at p = 0.5
    weights = [min(math.exp(2.0), 5.0), math.exp(-1.0)]
    assert losses["policy"].item() == pytest.approx(sum(w * 2 * math.log(2) for w in weights) / 2, rel=1e-5)


def bandit(n=256):
    """One state; the logged actions are label 0 (reward 1) or label 1 (reward 0), half each."""
    s = torch.ones(n, 1)
    a = torch.zeros(n, 3)
    a[: n // 2, 0] = 1
    a[n // 2:, 1] = 1
    r = a[:, 0].clone()
    return s, a, r, s.clone(), torch.ones(n)


@pytest.mark.parametrize("beta", [0.0, 5.0])
def test_advantage_weighting_prefers_the_rewarded_label(beta):
    agent = IQL(1, 3, IQLConfig(hidden=16, steps=300, batch_size=64, lr=3e-3, beta=beta, seed=0))
    train_iql(agent, *bandit())
    p = torch.sigmoid(agent.logits(torch.ones(1, 1)))[0]
    if beta == 0:   # plain imitation: both logged labels about equally likely
        assert abs(p[0] - p[1]) < 0.1
    else:
        assert p[0] > p[1] + 0.3
    q = torch.min(*agent.q(torch.ones(2, 1), torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])))
    assert q[0] > q[1] + 0.5


def test_training_is_seeded_and_resumes_to_the_same_result():
    data = bandit(64)
    one = IQL(1, 3, IQLConfig(hidden=8, steps=20, batch_size=16, seed=1))
    train_iql(one, *data)
    saved = {}
    two = IQL(1, 3, IQLConfig(hidden=8, steps=20, batch_size=16, seed=1))
    train_iql(two, *data, on_checkpoint=lambda step, opt: saved.setdefault(step, (
        {k: v.clone() for k, v in two.state_dict().items()}, copy.deepcopy(opt))), checkpoint_every=10)
    three = IQL(1, 3, IQLConfig(hidden=8, steps=20, batch_size=16, seed=1))
    state, opt = saved[10]
    three.load_state_dict(state)
    train_iql(three, *data, start_step=10, optimiser_state=copy.deepcopy(opt))
    for key, value in one.state_dict().items():
        assert torch.allclose(value, two.state_dict()[key])
        assert torch.allclose(value, three.state_dict()[key], atol=1e-6)


def test_mismatched_rows_are_an_error():
    s, a, r, s2, d = bandit(8)
    with pytest.raises(ValueError, match="rows"):
        train_iql(IQL(1, 3, IQLConfig(steps=1)), s, a[:4], r, s2, d)
