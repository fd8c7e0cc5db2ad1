"""The book's agents: DQN, and Dyna-DQN, which adds updates on imagined transitions."""

from wmbook.agents.dqn import (
    DQNAgent, DQNConfig, DQNResult, evaluation_seed, train_dqn)
from wmbook.agents.dyna import DynaConfig, DynaPlanner, imagined_transitions, train_dyna_dqn
from wmbook.agents.dreamer import Dreamer, DreamerConfig, lambda_returns
from wmbook.agents.dreamer_trainer import DreamerResult, train_dreamer
from wmbook.agents.ppo import PPO, BernoulliHead, CategoricalHead, PPOConfig, train_ppo

__all__ = [
    "BernoulliHead",
    "CategoricalHead",
    "PPO",
    "PPOConfig",
    "train_ppo",
    "DQNAgent",
    "DQNConfig",
    "DQNResult",
    "Dreamer",
    "DreamerConfig",
    "DreamerResult",
    "DynaConfig",
    "DynaPlanner",
    "evaluation_seed",
    "imagined_transitions",
    "lambda_returns",
    "train_dqn",
    "train_dreamer",
    "train_dyna_dqn",
]
