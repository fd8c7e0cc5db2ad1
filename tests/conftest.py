"""Shared fixtures: small, seeded CartPole data sets, one briefly trained world model, and the
whole book run through the pipeline on the ci profile."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

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


@pytest.fixture(scope="session", autouse=True)
def _third_party_logs(tmp_path_factory):
    """stable-baselines3 makes a log folder in the system's temporary folder for every run it is
    not given one for; the suite's go to its own temporary folder."""
    saved = os.environ.get("SB3_LOGDIR")
    os.environ["SB3_LOGDIR"] = str(tmp_path_factory.mktemp("sb3_logs"))
    yield
    if saved is None:
        os.environ.pop("SB3_LOGDIR", None)
    else:
        os.environ["SB3_LOGDIR"] = saved


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


ROOT = Path(__file__).resolve().parents[1]


def run_book(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m bookbuild ARGS`` in ``cwd``, output captured."""
    return subprocess.run([sys.executable, "-m", "bookbuild", *args], cwd=cwd, capture_output=True, text=True)


def copy_book(target: Path) -> Path:
    """The book's sources (configuration, pages, chapters, images, lock) copied into ``target``."""
    for name in ("_config.yml", "_toc.yml", "constraints.txt"):
        shutil.copy2(ROOT / name, target / name)
    for folder in ("book", "imgs"):
        shutil.copytree(ROOT / folder, target / folder, ignore=shutil.ignore_patterns("checkpoints", "*.results.json"))
    if (ROOT / "node_modules").is_dir():  # assets the book serves itself (MathJax)
        (target / "node_modules").symlink_to(ROOT / "node_modules")
    return target


def commit_all(root: Path) -> str:
    """Make ``root`` a git repository with one commit of everything in it; return the commit."""
    git = ["git", "-C", str(root), "-c", "user.name=wmbook tests", "-c", "user.email=tests@wmbook.invalid"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "book under test"], check=True)
    return subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="session")
def built_book(tmp_path_factory) -> Path:
    """A committed copy of the real book, run with ``all --profile ci`` (executed, validated,
    built into ``<root>/_build/html``) once for the whole test session. Do not modify it."""
    root = copy_book(tmp_path_factory.mktemp("book"))
    commit_all(root)
    result = run_book(root, "all", "--profile", "ci")
    assert result.returncode == 0, f"pipeline failed:\n{result.stdout}\n{result.stderr}"
    return root
