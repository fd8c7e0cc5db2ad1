"""The surgical TD-MPC planner over multi-label actions, its value components and TD losses,
and the risk constraint (:mod:`wmbook.agents.safety`)."""

import pytest
import torch

from wmbook.agents.safety import LagrangeMultiplier, constrained_scores
from wmbook.surgical.tdmpc import (OfflineBatch, PlannerConfig, SurgicalTDMPC, TDMPCConfig, plan,
                                 tdmpc_losses)

N_LABELS, HORIZON = 8, 3
# a known reward per step and label: the best plan takes labels {0, 1} at step 0, {2, 3, 4} at
# step 1 (three of four positive ones: the cap) and {5} at step 2
W = -torch.ones(HORIZON, N_LABELS)
W[0, [0, 1]] = torch.tensor([2.0, 1.0])
W[1, [2, 3, 4, 7]] = torch.tensor([3.0, 2.0, 1.5, 0.5])
W[2, 5] = 4.0
BEST_FIRST = torch.tensor([1, 1, 0, 0, 0, 0, 0, 0.0])
BEST_RETURN = 3.0 + 6.5 + 4.0


def toy_dynamics(risky_label=None):
    """latent (M, 1) = the step index; reward = actions . W[step]; risk = the risky label."""
    def step(latent, actions):
        t = latent[:, 0].long()
        reward = (actions * W[t]).sum(1)
        risk = actions[:, risky_label] if risky_label is not None else torch.zeros(len(actions))
        return latent + 1, reward, risk, torch.ones(len(actions))
    return step


def uniform_prior(latent):
    return torch.full((len(latent), N_LABELS), 0.2)


def toy_plan(config, dynamics=None):
    return plan(dynamics or toy_dynamics(), lambda s: torch.zeros(len(s)), torch.zeros(2, 1),
                uniform_prior, config, torch.Generator().manual_seed(0))


def test_planner_finds_the_best_sequence_of_a_known_reward():
    config = PlannerConfig(horizon=HORIZON, samples=256, iterations=6, elites=16, gamma=1.0, explore=0.05)
    result = toy_plan(config)
    assert torch.equal(result.action, BEST_FIRST.expand(2, -1))
    assert torch.allclose(result.score, torch.full((2,), BEST_RETURN))
    # the refitted distribution concentrates on the best plan's labels, 1 to 3 per step
    assert (result.probs[0, 1, [2, 3, 4]] > 0.9).all() and (result.probs[0, 2, 5] > 0.9)
    assert (result.probs < 0.1).sum() >= N_LABELS * HORIZON - 6 - 1


def test_a_single_random_guess_does_not_find_it():
    # the test above could fail: one iteration of four samples scores far below the optimum
    config = PlannerConfig(horizon=HORIZON, samples=4, iterations=1, elites=2, gamma=1.0)
    assert (toy_plan(config).score < BEST_RETURN - 1).all()


def test_planner_actions_have_one_to_three_labels():
    config = PlannerConfig(horizon=2, samples=32, iterations=2, elites=4)
    high = lambda s: torch.full((len(s), N_LABELS), 0.9)  # noqa: E731 - would draw about 7 labels
    result = plan(toy_dynamics(), lambda s: torch.zeros(len(s)), torch.zeros(5, 1), high, config,
                  torch.Generator().manual_seed(1))
    active = result.action.sum(1)
    assert ((active >= 1) & (active <= 3)).all()


def test_risk_budget_keeps_the_planner_off_a_risky_rewarding_label():
    config = PlannerConfig(horizon=HORIZON, samples=256, iterations=6, elites=16, gamma=1.0, explore=0.05)
    free = toy_plan(config, toy_dynamics(risky_label=0))
    assert (free.action[:, 0] == 1).all()                  # label 0 pays 2 at step 0
    safe = toy_plan(PlannerConfig(**{**config.__dict__, "risk_budget": 0.0}), toy_dynamics(risky_label=0))
    assert (safe.action[:, 0] == 0).all() and (safe.risk == 0).all()
    assert (safe.score < free.score).all()


def test_constrained_scores_rank_feasible_first_then_least_violating():
    returns = torch.tensor([10.0, 1.0, 5.0, -3.0])
    risk = torch.tensor([0.9, 0.1, 0.5, 0.2])
    order = constrained_scores(returns, risk, 0.3).argsort(descending=True).tolist()
    assert order == [1, 3, 2, 0]
    assert torch.equal(constrained_scores(returns, risk, None), returns)
    with pytest.raises(ValueError, match="must match"):
        constrained_scores(returns, risk[:2], 0.3)


def test_lagrange_multiplier_dual_ascent():
    lam = LagrangeMultiplier(budget=0.2, lr=10.0)
    assert lam.update(0.5) == pytest.approx(3.0)           # 0 + 10 * (0.5 - 0.2)
    assert lam.update(0.1) == pytest.approx(2.0)           # 3 + 10 * (0.1 - 0.2)
    assert lam.update(0.0) == pytest.approx(0.0)           # projected back to 0
    lam.value = 2.0
    assert torch.allclose(lam.penalise(torch.tensor([1.0, 1.0]), torch.tensor([0.0, 0.5])),
                          torch.tensor([1.0, 0.0]))
    with pytest.raises(FloatingPointError):
        lam.update(float("nan"))


def test_td_loss_and_advantage_weights_by_hand():
    torch.manual_seed(0)
    agent = SurgicalTDMPC(4, 2, TDMPCConfig(component_weights={}, gamma=0.5, beta=1.0), n_actions=3)
    agent.v = lambda f, target=False: f[:, 0] * (2.0 if target else 1.0)   # V(s) = s0, target 2 s0
    object.__setattr__(agent, "prior", lambda f: torch.zeros(len(f), 3))   # p = 0.5 everywhere
    batch = OfflineBatch(s=torch.tensor([[1.0, 0, 0, 0], [0.0, 0, 0, 0]]),
                         actions=torch.tensor([[1.0, 0, 0], [0, 1, 1]]), reward=torch.tensor([1.0, -1.0]),
                         s_next=torch.tensor([[2.0, 0, 0, 0], [3.0, 0, 0, 0]]), done=torch.tensor([0.0, 1.0]),
                         z=torch.zeros(2, 2), z_next=torch.zeros(2, 2), phase=torch.tensor([0, 1]))
    losses = tdmpc_losses(agent, batch)
    # targets: 1 + 0.5 * 2 * 2 = 3 and -1 (terminal); V = 1 and 0: errors 2 and -1
    assert losses["value"].item() == pytest.approx((4 + 1) / 2)
    nll = 3 * torch.log(torch.tensor(2.0))                  # three labels at p = 0.5
    weights = torch.exp(torch.tensor([2.0, -1.0]))          # exp(beta * (target - V))
    assert losses["prior"].item() == pytest.approx((weights * nll).mean().item() / 3, rel=1e-5)


def test_planner_config_rejects_more_elites_than_samples():
    with pytest.raises(ValueError, match="elites"):
        PlannerConfig(samples=4, elites=8)
    with pytest.raises(ValueError, match="unknown value components"):
        TDMPCConfig(component_weights={"curiosity": 1.0})
