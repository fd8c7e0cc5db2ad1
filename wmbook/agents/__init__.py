"""The book's agents: DQN, and Dyna-DQN, which adds updates on imagined transitions."""

from wmbook.agents.dqn import (
    DQNAgent, DQNConfig, DQNResult, evaluate_greedy, evaluation_seed, train_dqn)
from wmbook.agents.dyna import DynaConfig, DynaPlanner, imagined_transitions, train_dyna_dqn

__all__ = [
    "DQNAgent",
    "DQNConfig",
    "DQNResult",
    "DynaConfig",
    "DynaPlanner",
    "evaluate_greedy",
    "evaluation_seed",
    "imagined_transitions",
    "train_dqn",
    "train_dyna_dqn",
]
