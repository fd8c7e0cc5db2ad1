"""Predicted risk as a constraint rather than only a reward term.

A reward term ``-w * risk`` trades risk against progress at a fixed exchange rate: a large
enough gain buys any amount of risk. A constraint instead bounds the risk itself,

    maximise E[sum_t gamma^t r_t]   subject to   E[mean_t risk_t] <= budget,

and the two ways this module offers to enforce it are:

* :class:`LagrangeMultiplier`, for learners that follow a gradient (PPO in the world model):
  optimise ``r_t - lambda * risk_t`` and raise ``lambda`` by dual ascent while the measured
  risk exceeds the budget, lower it (down to 0) while it stays below. The exchange rate is
  learned: just high enough to meet the budget.
* :func:`constrained_scores`, for a sampling planner (TD-MPC): candidate action sequences
  whose predicted mean risk exceeds the budget rank below every feasible one, and among
  infeasible ones the least risky rank first, so the elites are the best *feasible* plans.

The budget is a per-step mean risk; the book sets it to the mean true risk of the expert's
logged procedures, so "safe" means "no riskier than the surgeons the data came from".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LagrangeMultiplier:
    """A Lagrange multiplier ``lambda >= 0`` for the constraint ``mean risk <= budget``,
    updated by projected dual ascent: ``lambda <- max(0, lambda + lr * (risk - budget))``."""

    budget: float
    lr: float = 1.0
    value: float = 0.0
    max_value: float = 100.0

    def __post_init__(self) -> None:
        if self.lr < 0 or self.value < 0 or self.max_value < 0:
            raise ValueError(f"lr, value and max_value must be non-negative, got {self.lr}, "
                             f"{self.value}, {self.max_value}")

    def penalise(self, reward: torch.Tensor, risk: torch.Tensor) -> torch.Tensor:
        """``reward - lambda * risk`` (any matching shapes)."""
        if reward.shape != risk.shape:
            raise ValueError(f"reward {tuple(reward.shape)} and risk {tuple(risk.shape)} must match")
        return reward - self.value * risk

    def update(self, mean_risk: float) -> float:
        """One dual-ascent step from the measured mean risk; returns the new ``lambda``."""
        if not torch.isfinite(torch.tensor(float(mean_risk))):
            raise FloatingPointError(f"the measured risk is {mean_risk}")
        self.value = min(self.max_value, max(0.0, self.value + self.lr * (float(mean_risk) - self.budget)))
        return self.value

    def state_dict(self) -> dict:
        return {"budget": self.budget, "lr": self.lr, "value": self.value, "max_value": self.max_value}

    def load_state_dict(self, state: dict) -> None:
        self.budget, self.lr = float(state["budget"]), float(state["lr"])
        self.value, self.max_value = float(state["value"]), float(state["max_value"])


def constrained_scores(returns: torch.Tensor, mean_risk: torch.Tensor, budget: float | None) -> torch.Tensor:
    """Scores ``(...)`` to rank candidate plans under ``mean_risk <= budget``.

    ``returns`` and ``mean_risk`` have the same shape. Without a budget the score is the
    return. With one, a feasible plan keeps its return and an infeasible one scores
    ``floor - excess``, where ``floor`` lies below every feasible return in the tensor: any
    feasible plan beats any infeasible one, and the least violating infeasible plans come first.
    """
    if returns.shape != mean_risk.shape:
        raise ValueError(f"returns {tuple(returns.shape)} and mean_risk {tuple(mean_risk.shape)} must match")
    if budget is None:
        return returns
    excess = (mean_risk - budget).clamp(min=0.0)
    floor = returns.min().detach() - 1.0 - returns.abs().max().detach()
    return torch.where(excess > 0, floor - excess, returns)
