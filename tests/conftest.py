"""Shared fixtures: small, seeded CartPole data sets and one briefly trained world model."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from wmbook.device import seed_everything  # noqa: E402
from wmbook.envs import collect_transitions, make_env  # noqa: E402
from wmbook.models import DynamicsConfig, DynamicsModel, TrainConfig, train_dynamics  # noqa: E402


@pytest.fixture(scope="session")
def cartpole_data():
    """(train, val): 3,000 and 1,000 random-policy CartPole transitions from separate seeds."""
    train = collect_transitions(make_env("CartPole-v1"), 3000, seed=0).all()
    val = collect_transitions(make_env("CartPole-v1"), 1000, seed=1).all()
    return train, val


@pytest.fixture(scope="session")
def trained_model(cartpole_data):
    """A small DynamicsModel trained for a few epochs, and its history. Do not mutate it."""
    train, val = cartpole_data
    seed_everything(0)
    model = DynamicsModel(DynamicsConfig(hidden_size=64, n_layers=2))
    history = train_dynamics(model, train, val, TrainConfig(epochs=8, batch_size=128), progress=False)
    model.requires_grad_(False)
    return model, history


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Tests may change torch's thread count; put it back afterwards."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def one_thread():
    """One torch thread: tiny networks run faster without threading overhead on busy cores."""
    torch.set_num_threads(1)
