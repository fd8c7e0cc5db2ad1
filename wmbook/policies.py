"""Hand-written policies used to collect data and to drive rollouts."""

from __future__ import annotations

import numpy as np


class CartPoleController:
    """A linear feedback controller that keeps CartPole's pole up: push right when
    ``gains . state > 0``, with an ``epsilon`` chance of a random push.

    The default gains look only at the pole (angle plus half its angular velocity), so the
    pole stays up for the full 500 steps while the cart is left to drift: exactly the states
    a random policy never reaches. Actions are drawn from the controller's own generator.
    """

    def __init__(self, gains=(0.0, 0.0, 1.0, 0.5), epsilon: float = 0.1, seed: int = 0):
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must lie in [0, 1], got {epsilon}")
        self.gains = np.asarray(gains, dtype=np.float64)
        if self.gains.shape != (4,):
            raise ValueError(f"gains must have 4 entries (x, x_dot, theta, theta_dot), got {gains}")
        self.epsilon = epsilon
        self.rng = np.random.default_rng(seed)

    def __call__(self, obs: np.ndarray) -> int:
        if self.epsilon and self.rng.random() < self.epsilon:
            return int(self.rng.integers(2))
        return int(np.dot(self.gains, obs) > 0)
