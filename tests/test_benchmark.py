"""The Dyna-DQN benchmark script runs end to end and writes its tables with statistics and provenance."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("stable_baselines3")
pytest.importorskip("rliable")
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
    assert script.main(["--seeds", "0", "1", "--budget", "500", "--eval-every", "500", "--workers", "1",
                        "--k", "2", "--reps", "100", "--out", str(out)]) == 0
    text = out.read_text()
    for method in ("DQN (wmbook)", "Dyna-DQN, K=2 (wmbook)", "DQN (stable-baselines3, rl-zoo settings)"):
        assert f"| {method} | > 500, > 500 |" in text  # per seed
        # every run censored at the budget: IQM and median are the budget, 2 runs unsolved
        assert f"| {method} | 500 [500, 500] | 500 [500, 500] | 2 | 2 |" in text
    assert "(ties count half): 0.50 [" in text  # identical censored runs: a tie
    assert "do not establish which of the two needs fewer steps" in text
    assert "- command: `python benchmarks/dyna_vs_sb3.py --seeds 0 1" in text
    assert "stable-baselines3 2." in text and "rliable 1." in text and "- date: " in text and "cores" in text
    assert "Dyna-DQN's median run did not solve within 500 steps (target: at most 10,000) - not met." in text


def outcomes_of(script, steps: dict[str, list[int | None]]):
    return [script.Outcome(method, seed, solved_at, 1.0)
            for method, runs in steps.items() for seed, solved_at in enumerate(runs)]


def test_statistics_rank_by_iqm_and_judge_the_probability_of_improvement():
    script = load_script()
    methods = ["DQN", "Dyna", "SB3"]
    outcomes = outcomes_of(script, {"DQN": [9000, 9500, 8000, 8500, None],
                                    "Dyna": [2000, 2500, 3000, 1500, 2000],
                                    "SB3": [2500, 1500, 3500, 2000, 2000]})
    text, summaries = script.statistics(outcomes, methods, budget=10_000, reps=200)
    # Dyna and SB3 share their middle three runs: the same IQM, stated as a tie
    assert "Fewest real steps to solve by IQM: Dyna and SB3 with 2,167, then DQN with 9,000." in text
    assert summaries["DQN"].median.estimate == 9000
    assert "| DQN | 9,000 [" in text and text.split("| DQN |")[1].split("\n")[0].endswith("| 5 | 1 |")
    # every Dyna run beats every DQN run: established; against SB3 it is close to a coin flip
    assert "than a DQN run (ties count half): 1.00 [1.00, 1.00]; Dyna needs fewer steps than DQN" in text
    assert "than a SB3 run (ties count half): 0.52 [" in text
    assert "these seeds do not establish which of the two needs fewer steps" in text

    lines = script.verdict(outcomes, methods, 10_000, summaries)
    assert lines[0].startswith("Dyna-DQN's median steps to solve: 2,000, 95 % CI [")
    assert lines[0].endswith("(target: at most 10,000) - met.")
    assert lines[1] == "Ratio to stable-baselines3's median: 1.00 (target: at most 1/3) - not met."


def test_compare_reads_the_interval():
    script = load_script()
    Interval = script.Interval
    assert script.compare(Interval(0.9, 0.6, 1.0), "A", "B") == "A needs fewer steps than B on these seeds"
    assert script.compare(Interval(0.1, 0.0, 0.4), "A", "B") == "A needs more steps than B on these seeds"
    assert "do not establish" in script.compare(Interval(0.6, 0.3, 0.9), "A", "B")
