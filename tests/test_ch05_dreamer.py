"""Chapter 5's harness: presets, run specs, curves, the ablation table and open-loop prediction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wmbook.agents.dreamer import Dreamer
from wmbook.chapters import get_profile
from wmbook.chapters.ch05_dreamer_rssm import (
    ABLATIONS, PROFILES, DreamerRecord, DreamerSpec, ablation_statistics, ablation_table, chapter_specs, curve_matrix, open_loop,
    real_episode, spec_config)


def test_profiles_and_specs():
    full, ci = get_profile("05_dreamer_rssm", "full"), get_profile("05_dreamer_rssm", "ci")
    assert full.check_headline and not ci.check_headline
    assert full.min_solved == 2 and len(full.seeds) >= 3 and full.min_solved <= len(full.seeds)
    assert full.agent.total_steps <= 20_000 and set(full.ablations) == set(ABLATIONS)
    assert all(s < 100 for s in full.seeds)  # tuning used seeds from 100 on
    dreamer, baselines = chapter_specs(ci)
    assert [s.keep_weights for s in dreamer[:len(ci.seeds)]] == [True] + [False] * (len(ci.seeds) - 1)
    assert len(dreamer) == len(ci.seeds) * (1 + len(ci.ablations))
    assert len(baselines) == 2 * len(ci.seeds)
    config = spec_config(DreamerSpec("x", 7, ("free bits", "slow critic")), ci.agent)
    assert config.seed == 7 and config.free_bits == 0.0 and not config.slow_critic and config.discrete
    with pytest.raises(KeyError, match="unknown switch"):
        spec_config(DreamerSpec("x", 0, ("warp drive",)), ci.agent)


def test_curve_matrix_carries_the_last_return_forward():
    grid = np.array([100, 200, 300])
    matrix = curve_matrix([[100, 200], [200]], [[10.0, 480.0], [30.0]], grid)
    assert matrix[0].tolist() == [10.0, 480.0, 480.0]
    assert np.isnan(matrix[1, 0]) and matrix[1, 1:].tolist() == [30.0, 30.0]


def test_ablation_table_counts_unsolved_runs_as_the_budget():
    def record(label, solved, steps=(1000, 2000), returns=(100.0, 300.0)):
        return DreamerRecord(DreamerSpec(label, 0), list(steps), list(returns), solved, 0, 0, 0, 0.0)
    rows = ablation_table([record("a", 1000), record("a", None), record("a", 3000), record("b", 500)], 5000)
    assert rows[0]["median"] == 3000 and rows[0]["solved"] == 2
    assert rows[1]["label"] == "b" and rows[1]["median"] == 500
    # a run solved after the budget counts as unsolved; returns are read within the budget
    rows = ablation_table([record("a", 3000, (1000, 2000, 3000), (50.0, 200.0, 500.0))], 2000)
    assert rows[0]["solved_at"] == [None] and rows[0]["median"] == 2000 and rows[0]["mean_return"] == 200.0


def test_ablation_statistics_say_only_what_the_intervals_establish():
    def row(label, returns):
        return {"label": label, "returns": list(returns)}
    full = row("Dreamer", [400.0, 420.0, 450.0, 480.0])
    table = [full, row("no a", [10.0, 20.0, 30.0, 40.0]), row("no b", [900.0, 950.0, 990.0, 999.0]),
             row("no c", [380.0, 430.0, 445.0, 500.0])]
    groups = ablation_statistics(table, reps=500)
    assert groups == {"hurt": ["no a"], "helped": ["no b"], "unresolved": ["no c"]}
    assert table[1]["p_full_better"].estimate == 1.0 and table[2]["p_full_better"].estimate == 0.0
    assert "p_full_better" not in table[0] and table[0]["iqm"].low <= table[0]["iqm"].estimate <= table[0]["iqm"].high
    with pytest.raises(ValueError, match="at least one switch"):
        ablation_statistics([full], reps=500)


def test_open_loop_shapes_on_an_untrained_agent():
    torch.manual_seed(0)
    agent = Dreamer(4, 2, PROFILES["ci"].agent)
    observations, actions, ended = real_episode(agent, seed=3, steps=30, random_fraction=1.0)
    assert len(observations) == len(actions) + 1 and ended in (0, 1)
    loop = open_loop(agent, observations, actions, context=2, horizon=50)
    horizon = min(50, len(actions) - 2)
    assert loop.imagined.shape == (horizon + 1, 4) and loop.continuation.shape == (horizon,)
    assert np.isfinite(loop.imagined).all()
    with pytest.raises(ValueError, match="context"):
        open_loop(agent, observations, actions, context=len(actions), horizon=5)
