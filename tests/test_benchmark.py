"""The Dyna-DQN benchmark script runs end to end and writes its table with provenance."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("stable_baselines3")
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "dyna_vs_sb3.py"


def load_script():
    spec = importlib.util.spec_from_file_location("dyna_vs_sb3", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_benchmark_writes_a_table_with_provenance(tmp_path):
    script = load_script()
    out = tmp_path / "results.md"
    # a budget below learning_starts: no learning, so nothing solves, but every path runs
    assert script.main(["--seeds", "0", "--budget", "1000", "--eval-every", "500", "--workers", "1",
                        "--k", "2", "--out", str(out)]) == 0
    text = out.read_text()
    for method in ("DQN (wmbook)", "Dyna-DQN, K=2 (wmbook)", "DQN (stable-baselines3, rl-zoo settings)"):
        assert f"| {method} | > 1,000 | > 1,000 |" in text
    assert "- command: `python benchmarks/dyna_vs_sb3.py --seeds 0" in text
    assert "stable-baselines3 2." in text and "- date: " in text and "cores" in text
    assert "not met" in text or "undecided" in text

