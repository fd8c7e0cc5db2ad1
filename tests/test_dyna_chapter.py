"""Chapter 3's harness: parallel runs equal serial ones, K is chosen on tuning seeds only,
and the reported comparison holds the methods it names."""

import dataclasses

import numpy as np
import pytest

from wmbook.agents import DQNConfig, DynaConfig
from wmbook.chapters.ch03_dyna_dqn import (
    PROFILES, RunRecord, RunSpec, choose_k, reported_specs, run_all, tuning_specs)

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_DQN = DQNConfig(total_steps=500, learning_starts=200, eval_every=250, eval_episodes=2,
                     hidden_size=16, n_layers=1, batch_size=16, exploration_steps=300)
TINY_DYNA = DynaConfig(model_every=250, model_updates=5, model_hidden_size=16, model_layers=1,
                       model_batch_size=64)


def test_parallel_runs_give_the_same_results_as_serial_ones():
    specs = [RunSpec("DQN", 0), RunSpec("Dyna K=1", 1, imagined_updates=1),
             RunSpec("DQN, 2 updates/step", 0, updates_per_step=2)]
    serial = run_all(specs, TINY_DQN, TINY_DYNA, workers=1, progress=False)
    parallel = run_all(specs, TINY_DQN, TINY_DYNA, workers=2, progress=False)
    assert [r.spec for r in parallel] == specs  # in the order asked for
    for a, b in zip(serial, parallel):
        assert a.eval_returns == b.eval_returns and a.solved_at == b.solved_at
        assert a.gradient_updates == b.gradient_updates
        assert a.imagined_transitions == b.imagined_transitions
        assert a.model_checks == b.model_checks
    assert serial[1].model_checks and not serial[0].model_checks


def _record(k: int, solved_at, seed: int = 0) -> RunRecord:
    return RunRecord(RunSpec(f"Dyna K={k}", seed, imagined_updates=k), [1000], [500.0], solved_at, 0, 0, 0.0)


def test_choose_k_takes_the_lowest_iqm_counting_unsolved_runs_as_the_budget():
    records = [_record(1, 6000), _record(1, 5000, 1),
               _record(5, 3000), _record(5, None, 1),  # the unsolved run counts as 7,000
               _record(10, 4000), _record(10, 4500, 1)]
    best, iqms = choose_k(records, budget=7000)
    assert iqms == {1: 5500.0, 5: 5000.0, 10: 4250.0} and best == 10
    best, iqms = choose_k(records[:4], budget=7000)
    assert best == 5
    tied = [_record(5, 3000), _record(2, 3000)]
    assert choose_k(tied, budget=7000)[0] == 2  # a tie goes to the smaller K
    with pytest.raises(ValueError, match="model-free"):
        choose_k([RunRecord(RunSpec("DQN", 0), [], [], None, 0, 0, 0.0)], budget=7000)


def test_tuning_and_reported_seeds_never_meet():
    for name, config in PROFILES.items():
        for shift in (0, 3):
            tuning = {s.seed for s in tuning_specs(config, shift)}
            reported = {s.seed for s in reported_specs(config, 2, shift)}
            assert tuning and reported and tuning.isdisjoint(reported), name
        assert {s.imagined_updates for s in tuning_specs(config)} == set(config.imagined_updates)


def test_reported_specs_hold_the_five_methods_at_the_chosen_k():
    config = PROFILES["ci"]
    specs = reported_specs(config, 4)
    labels = list(dict.fromkeys(s.label for s in specs))
    assert labels == ["DQN", "Dyna K=4", "DQN, 5 updates/step", f"Dyna K=4, h={config.branch_length}",
                      f"Dyna K=4, ensemble of {config.ensemble_members}"]
    by_label = {s.label: s for s in specs}
    assert by_label["DQN, 5 updates/step"].updates_per_step == 5
    assert by_label["DQN, 5 updates/step"].imagined_updates == 0
    assert by_label[labels[3]].rollout_length == config.branch_length
    assert by_label[labels[4]].ensemble_members == config.ensemble_members
    assert len(specs) == 5 * len(config.seeds)


def test_run_record_final_return_and_kept_solved():
    record = RunRecord(RunSpec("x", 0), [500, 1000, 1500, 2000], [100.0, 480.0, 300.0, 500.0],
                       1000, 0, 0, 0.0)
    assert record.final_return == 500.0
    assert record.kept_solved(475) == 0.5
    assert np.isnan(dataclasses.replace(record, solved_at=None).kept_solved(475))
    assert np.isnan(dataclasses.replace(record, solved_at=2000).kept_solved(475))
