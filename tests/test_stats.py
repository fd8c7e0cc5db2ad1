"""IQM, median and probability of improvement through rliable: values, intervals, seeds, errors."""

from __future__ import annotations

import re

import numpy as np
import pytest

pytest.importorskip("rliable")
from wmbook.stats import (  # noqa: E402
    Interval,
    Summary,
    aggregate,
    improvement_sentence,
    probability_of_improvement,
    resolved,
    steps_to_solve,
    summary_table,
)

REPS = 500  # enough for stable percentiles of a few runs, and fast
SPREAD = np.array([900.0, 100.0, 700.0, 300.0, 800.0, 200.0, 600.0, 400.0])  # 8 runs, shuffled


def test_iqm_is_the_mean_of_the_middle_half_and_median_is_pooled():
    summary = aggregate({"a": SPREAD}, reps=REPS)["a"]
    assert summary.iqm.estimate == pytest.approx(np.mean([300, 400, 600, 700]))  # 500
    assert summary.median.estimate == pytest.approx(500.0)
    assert (summary.runs, summary.tasks) == (8, 1)

    # (runs, tasks): IQM and median pool all runs of all tasks
    skewed = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 100.0]])
    summary = aggregate({"b": skewed}, reps=REPS)["b"]
    assert summary.iqm.estimate == pytest.approx(np.mean([3, 4, 5, 6]))
    assert summary.median.estimate == pytest.approx(4.5)
    assert (summary.runs, summary.tasks) == (4, 2)


def test_interval_contains_the_estimate_and_narrows_with_more_runs():
    few = aggregate({"a": SPREAD}, reps=REPS)["a"]
    # the same spread of scores from 8 times as many runs: same IQM, tighter interval
    many = aggregate({"a": np.tile(SPREAD, 8)}, reps=REPS)["a"]
    for summary in (few, many):
        for interval in (summary.iqm, summary.median):
            assert interval.low <= interval.estimate <= interval.high
    assert many.iqm.estimate == pytest.approx(few.iqm.estimate)
    assert few.iqm.low < few.iqm.high
    assert many.iqm.high - many.iqm.low < 0.6 * (few.iqm.high - few.iqm.low)


def test_same_seed_same_interval_different_seed_different_interval():
    first = aggregate({"a": SPREAD}, reps=REPS, seed=3)["a"]
    np.random.seed(12345)  # the caller's global state must not matter
    again = aggregate({"a": SPREAD}, reps=REPS, seed=3)["a"]
    other = aggregate({"a": SPREAD}, reps=REPS, seed=4)["a"]
    assert again == first
    assert (other.iqm.low, other.iqm.high) != (first.iqm.low, first.iqm.high)


def test_a_method_interval_does_not_depend_on_the_other_methods():
    alone = aggregate({"a": SPREAD}, reps=REPS, seed=0)["a"]
    together = aggregate({"z": SPREAD[::-1] * 3, "a": SPREAD}, reps=REPS, seed=0)
    assert list(together) == ["z", "a"]
    assert together["a"] == alone


def test_the_callers_random_stream_is_left_untouched():
    np.random.seed(7)
    expected = np.random.rand(3)
    np.random.seed(7)
    aggregate({"a": SPREAD}, reps=REPS)
    probability_of_improvement(SPREAD, SPREAD + 1, reps=50)
    assert np.array_equal(np.random.rand(3), expected)


def test_probability_of_improvement_dominance_ties_and_direction():
    low, high = np.array([1.0, 2.0, 3.0, 4.0]), np.array([10.0, 11.0, 12.0])  # runs may differ
    reps = 200
    assert probability_of_improvement(high, low, reps=reps) == Interval(1.0, 1.0, 1.0)
    assert probability_of_improvement(low, high, reps=reps) == Interval(0.0, 0.0, 0.0)
    # steps to solve: fewer is better, so the method with low counts wins every pair
    assert probability_of_improvement(low, high, lower_is_better=True, reps=reps).estimate == 1.0

    same = probability_of_improvement(SPREAD, SPREAD.copy(), reps=reps)
    assert same.estimate == 0.5
    assert same.low < 0.5 < same.high

    # by hand: of the 6 pairs, 4 > 2 and 4 > 3 win, 2 = 2 counts one half
    assert probability_of_improvement([1, 2, 4], [2, 3], reps=reps).estimate == pytest.approx(2.5 / 6)


def test_probability_of_improvement_is_reproducible_and_bounded():
    x, y = SPREAD, SPREAD + 150
    first = probability_of_improvement(x, y, reps=REPS, seed=1)
    assert probability_of_improvement(x, y, reps=REPS, seed=1) == first
    assert 0.0 <= first.low <= first.estimate <= first.high <= 1.0
    assert first.estimate < 0.5


def test_unsolved_runs_count_as_the_budget():
    steps = steps_to_solve([5000, None, 2000], budget=50_000)
    assert steps.dtype == np.float64 and steps.tolist() == [5000.0, 50_000.0, 2000.0]
    # an unsolved run of Y ties with an unsolved run of X, never loses to it
    x, y = steps_to_solve([None, 1000], 9000), steps_to_solve([None, None], 9000)
    assert probability_of_improvement(x, y, lower_is_better=True, reps=REPS).estimate == pytest.approx(0.75)
    with pytest.raises(ValueError, match="outside the budget"):
        steps_to_solve([60_000], budget=50_000)


def test_formatting_for_prose_and_tables():
    assert Interval(5000.0, 3500.0, 7000.0).format("IQM") == "IQM 5,000 [3,500, 7,000]"
    assert Interval(0.8234, 0.46, 1.0).format("P", digits=2) == "P 0.82 [0.46, 1.00]"
    assert str(Interval(12.4, 3.0, 20.6)) == "12 [3, 21]"
    summary = Summary(Interval(5333.3, 2833.3, 7500.0), Interval(5000.0, 2000.0, 8000.0), runs=5, tasks=1)
    assert str(summary) == "IQM 5,333 [2,833, 7,500], median 5,000 [2,000, 8,000]"
    table = [re.sub(" +", " ", line) for line in summary_table({"Dyna": summary}, metric="steps").splitlines()]
    assert table[0] == "| method | IQM steps [95% CI] | median steps [95% CI] | runs |"
    assert table[2] == "| Dyna | 5,333 [2,833, 7,500] | 5,000 [2,000, 8,000] | 5 |"


@pytest.mark.parametrize("scores, error, message", [
    ({}, ValueError, "non-empty mapping"),
    ({"a": np.array([])}, ValueError, "'a' are empty"),
    ({"a": np.zeros((0, 3))}, ValueError, "'a' are empty"),
    ({"a": [1.0, np.nan, 3.0]}, ValueError, r"NaN or infinite in runs \[1\].*counts as the budget"),
    ({"a": [1.0, np.inf]}, ValueError, "NaN or infinite"),
    ({"a": [4.0]}, ValueError, "at least 2 runs"),
    ({"a": np.zeros((3, 2, 2))}, ValueError, r"shape \(runs,\) or \(runs, tasks\)"),
    ({"a": ["1", "2"]}, TypeError, "must be numbers"),
    ({"a": np.zeros((3, 2)), "b": np.zeros((3, 1))}, ValueError, "same number of tasks"),
])
def test_aggregate_errors_name_the_problem(scores, error, message):
    with pytest.raises(error, match=message):
        aggregate(scores, reps=10)


def test_probability_of_improvement_errors():
    with pytest.raises(ValueError, match="same number of tasks"):
        probability_of_improvement(np.zeros((4, 2)), np.zeros((4, 3)), reps=10)
    with pytest.raises(ValueError, match="'y' have 1 run"):
        probability_of_improvement([1.0, 2.0], [3.0], reps=10)
    with pytest.raises(ValueError, match="NaN"):
        probability_of_improvement([1.0, np.nan], [3.0, 4.0], reps=10)
    with pytest.raises(ValueError, match="confidence"):
        probability_of_improvement([1.0, 2.0], [3.0, 4.0], confidence=95)
    with pytest.raises(ValueError, match="reps"):
        aggregate({"a": [1.0, 2.0]}, reps=0)


@pytest.mark.parametrize("p, expected", [
    (Interval(0.8, 0.6, 1.0), "the interval lies above one half, so A needs fewer real steps than B at 5 seeds"),
    (Interval(0.2, 0.0, 0.4), "the interval lies below one half, so B needs fewer real steps than A at 5 seeds"),
    (Interval(0.7, 0.5, 0.9), "the interval includes one half, so the difference is not resolved at 5 seeds"),
    (Interval(0.3, 0.1, 0.5), "the interval includes one half, so the difference is not resolved at 5 seeds"),
])
def test_improvement_sentence_says_no_more_than_the_interval(p, expected):
    sentence = improvement_sentence(p, "A", "B", "needs fewer real steps than", runs=5)
    assert sentence == (f"the probability that a run of A needs fewer real steps than a run of B is "
                        f"{p.format(digits=2)}: {expected}")
    assert resolved(p) == ("lies" in expected)


def test_a_real_difference_is_resolved_and_a_coin_flip_is_not():
    fast, slow = [1000.0, 1200, 900, 1100, 1000], [5000.0, 5200, 4800, 5100, 4900]
    p = probability_of_improvement(fast, slow, lower_is_better=True, reps=REPS)
    assert p.estimate == 1.0 and resolved(p)
    mixed = probability_of_improvement(fast, [900.0, 1300, 1000, 1050, 950], lower_is_better=True, reps=REPS)
    assert not resolved(mixed)
