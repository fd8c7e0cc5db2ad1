"""Results across seeds, reported honestly: interquartile mean, median and probability of improvement.

Every chapter and benchmark of the book summarises a method's runs the way Agarwal et al. (2021,
"Deep Reinforcement Learning at the Edge of the Statistical Precipice") recommend, through
their library ``rliable``:

- the **interquartile mean** (IQM): the mean of the middle 50 % of all scores (runs x tasks
  pooled), robust to one lucky or unlucky seed and less noisy than the median;
- the **median** of all scores, pooled in the same way;
- a **95 % stratified-bootstrap confidence interval** for each: runs are resampled with
  replacement within each task (percentile method);
- the **probability of improvement** ``P(X > Y)``: the chance that a run of method X, drawn at
  random, scores better than a run of method Y on the same task (ties count one half;
  the Mann-Whitney U statistic over the number of pairs), averaged over tasks, with its own
  bootstrap interval.

Scores are arrays of shape ``(runs,)`` (one task) or ``(runs, tasks)``. Methods may have
different numbers of runs but must share their number of tasks.

**Lower is better.** IQM and median do not care about the direction of a metric, but the
probability of improvement does. For a metric such as real steps to solve, pass
``lower_is_better=True``: the result is then ``P(X < Y)``, the chance that a run of X needs
fewer steps than a run of Y (ties count one half).

**Unsolved runs.** A run that never solved within its budget of ``B`` steps has no number of
steps to solve; NaN or infinity would break the IQM and the bootstrap, so they are refused.
Count such a run as ``B`` (:func:`steps_to_solve` does this). That value is *censored*: the
true number is above ``B``. Counting it as ``B`` is conservative in favour of the unsolved
method: its IQM and median are lower bounds of the true ones (it seems to need fewer steps
than it does); in a probability of improvement, a run solved at any step below ``B`` still
beats an unsolved one, a run solved at exactly ``B`` only ties with it, and two unsolved runs
tie, their order being unknown.

**Reproducibility.** rliable draws its resamples from NumPy's global generator
(``np.random.choice``) and ignores the ``random_state`` it accepts. Each call here seeds that
generator from its ``seed`` argument alone and restores the caller's state afterwards, so the
same scores and seed give the same interval whatever ran before, and nothing else's random
stream is disturbed. Each method is resampled on its own, so its interval does not depend on
which other methods are summarised with it.

Example::

    scores = {"Dyna-DQN": steps_to_solve([5000, 4500, None, 6500, 8000], budget=50_000),
              "DQN": steps_to_solve([23000, 8000, 18500, 17000, 5000], budget=50_000)}
    summaries = aggregate(scores, seed=0)
    print(summaries["Dyna-DQN"].iqm.format("IQM"))   # IQM 6,500 [4,667, 36,000]
    p = probability_of_improvement(scores["Dyna-DQN"], scores["DQN"], lower_is_better=True)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

REPS = 10_000
"""Bootstrap resamples per interval. rliable's default is 50,000; at 10,000 the Monte Carlo
error of a 2.5 % or 97.5 % bound is far below the width of the interval for the handful of
seeds a chapter runs, and an interval costs a fifth of the time."""

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap confidence interval ``[low, high]``."""

    estimate: float
    low: float
    high: float
    confidence: float = CONFIDENCE

    def format(self, name: str = "", digits: int = 0) -> str:
        """For prose and tables: ``Interval(5000, 3500, 7000).format("IQM")`` is
        ``"IQM 5,000 [3,500, 7,000]"``; ``digits`` decimals, thousands separated by commas."""
        text = f"{self.estimate:,.{digits}f} [{self.low:,.{digits}f}, {self.high:,.{digits}f}]"
        return f"{name} {text}" if name else text

    def __str__(self) -> str:
        return self.format()


@dataclass(frozen=True)
class Summary:
    """IQM and median of one method's scores, with their confidence intervals.

    ``runs`` and ``tasks`` give the shape of the scores that were summarised.
    """

    iqm: Interval
    median: Interval
    runs: int
    tasks: int

    def format(self, digits: int = 0) -> str:
        """``"IQM 5,333 [2,833, 7,500], median 5,000 [2,000, 8,000]"``."""
        return f"{self.iqm.format('IQM', digits)}, {self.median.format('median', digits)}"

    def __str__(self) -> str:
        return self.format()


def steps_to_solve(solved_at: Sequence[int | None], budget: int) -> np.ndarray:
    """Steps to solve per run, shape ``(runs,)`` float64, with an unsolved run (``None``) counted
    as ``budget``: a censored value, conservative in favour of the unsolved method (see the
    module's docstring)."""
    if budget <= 0:
        raise ValueError(f"budget must be positive, got {budget}")
    steps = []
    for run, value in enumerate(solved_at):
        if value is not None and not 0 <= value <= budget:
            raise ValueError(f"run {run} solved at step {value}, outside the budget [0, {budget}]")
        steps.append(budget if value is None else value)
    return np.asarray(steps, dtype=np.float64)


def aggregate(
    scores: Mapping[str, np.ndarray | Sequence[float]],
    reps: int = REPS,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> dict[str, Summary]:
    """IQM and median of each method's scores, with stratified-bootstrap confidence intervals.

    Args:
        scores: method name to scores of shape ``(runs,)`` or ``(runs, tasks)``; at least 2
            runs each, finite (an unsolved run counts as its budget, see
            :func:`steps_to_solve`), the same number of tasks for every method.
        reps: bootstrap resamples per method.
        seed: the seed of the resampling; the intervals depend on it and on ``scores`` only.
        confidence: coverage of the intervals.

    Returns:
        method name to :class:`Summary`, in the order of ``scores``.

    The median is taken over all scores pooled, like the IQM; rliable's ``aggregate_median``
    is instead the median over tasks of each task's mean, which for one task is the mean.
    """
    _check_resampling(reps, confidence)
    if not isinstance(scores, Mapping) or not scores:
        raise ValueError("scores must be a non-empty mapping from method name to an array of scores")
    arrays = {name: _as_scores(values, name) for name, values in scores.items()}
    tasks = {name: array.shape[1] for name, array in arrays.items()}
    if len(set(tasks.values())) > 1:
        raise ValueError(f"methods must be scored on the same number of tasks, got {tasks}")

    library, metrics = _rliable()

    def iqm_and_median(x: np.ndarray) -> np.ndarray:
        return np.array([metrics.aggregate_iqm(x), np.median(x)])

    summaries = {}
    for name, array in arrays.items():
        with _seeded_global_generator(seed):
            points, intervals = library.get_interval_estimates(
                {name: array}, iqm_and_median, reps=reps, confidence_interval_size=confidence)
        (iqm, median), (lows, highs) = points[name], intervals[name]
        summaries[name] = Summary(
            iqm=Interval(float(iqm), float(lows[0]), float(highs[0]), confidence),
            median=Interval(float(median), float(lows[1]), float(highs[1]), confidence),
            runs=array.shape[0], tasks=array.shape[1])
    return summaries


def probability_of_improvement(
    x: np.ndarray | Sequence[float],
    y: np.ndarray | Sequence[float],
    lower_is_better: bool = False,
    reps: int = REPS,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> Interval:
    """Probability that a run of method X beats a run of method Y, with its confidence interval.

    Args:
        x, y: scores of shape ``(runs,)`` or ``(runs, tasks)``; the numbers of runs may differ,
            the numbers of tasks may not. At least 2 runs each, all finite.
        lower_is_better: ``True`` for a cost such as steps to solve: then "beats" means "is
            lower", and the result is ``P(X < Y)``.
        reps: bootstrap resamples; X's and Y's runs are resampled independently.
        seed: the seed of the resampling.
        confidence: coverage of the interval.

    Returns:
        an :class:`Interval` in ``[0, 1]``: 1 when every run of X beats every run of Y, 0.5 for
        identical scores. An interval that contains 0.5 does not establish which is better.
    """
    _check_resampling(reps, confidence)
    x, y = _as_scores(x, "x"), _as_scores(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must be scored on the same number of tasks, got scores of "
                         f"shape {x.shape} and {y.shape} (runs, tasks)")
    if lower_is_better:
        x, y = -x, -y  # rliable counts X as better when its score is higher

    library, metrics = _rliable()

    def improvement(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.array([metrics.probability_of_improvement(a, b)])

    with _seeded_global_generator(seed):
        points, intervals = library.get_interval_estimates(
            {"x over y": [x, y]}, improvement, reps=reps, confidence_interval_size=confidence)
    (low,), (high,) = intervals["x over y"]
    return Interval(float(points["x over y"][0]), float(low), float(high), confidence)


def resolved(p: Interval) -> bool:
    """Whether an interval of a probability of improvement excludes one half: only then do the
    runs establish which method is better."""
    return p.low > 0.5 or p.high < 0.5


def improvement_sentence(p: Interval, x: str, y: str, relation: str = "needs fewer real steps than",
                         runs: int | None = None) -> str:
    """Prose for ``p = P(X beats Y)`` that says no more than its interval supports.

    ``"the probability that a run of Dyna needs fewer real steps than a run of DQN is
    0.83 [0.50, 1.00]: the interval includes one half, so the difference is not resolved at
    5 seeds"``. ``relation`` reads between the two names; ``runs`` names the seeds per method.
    """
    head = f"the probability that a run of {x} {relation} a run of {y} is {p.format(digits=2)}"
    at = f" at {runs} seeds" if runs else ""
    if p.low > 0.5:
        return f"{head}: the interval lies above one half, so {x} {relation} {y}{at}"
    if p.high < 0.5:
        return f"{head}: the interval lies below one half, so {y} {relation} {x}{at}"
    return f"{head}: the interval includes one half, so the difference is not resolved{at}"


def markdown_table(rows: Iterable[Mapping[str, object]]) -> str:
    """Rows (one mapping per row, column name -> cell as it should read) as a Markdown table,
    through pandas; cells are written as given, numbers are not reformatted."""
    import pandas as pd

    return pd.DataFrame(list(rows)).to_markdown(index=False, disable_numparse=True)


def summary_table(summaries: Mapping[str, Summary], metric: str = "score", digits: int = 0) -> str:
    """A Markdown table, one row per method: IQM and median of ``metric`` with their intervals."""
    percent = f"{next(iter(summaries.values())).iqm.confidence:.0%} CI" if summaries else "CI"
    return markdown_table({"method": name, f"IQM {metric} [{percent}]": s.iqm.format(digits=digits),
                           f"median {metric} [{percent}]": s.median.format(digits=digits), "runs": s.runs}
                          for name, s in summaries.items())


def _as_scores(values: np.ndarray | Sequence[float], name: str) -> np.ndarray:
    """``values`` as float64 of shape ``(runs, tasks)``, or an error that says what is wrong."""
    array = np.asarray(values)
    if array.dtype.kind not in "biuf":
        raise TypeError(f"scores of {name!r} must be numbers, got dtype {array.dtype}")
    if array.size == 0:
        raise ValueError(f"scores of {name!r} are empty (shape {array.shape})")
    if array.ndim not in (1, 2):
        raise ValueError(f"scores of {name!r} must have shape (runs,) or (runs, tasks), got {array.shape}")
    array = array.astype(np.float64).reshape(array.shape[0], -1)
    if not np.isfinite(array).all():
        runs = sorted(set(np.flatnonzero(~np.isfinite(array).all(axis=1)).tolist()))
        raise ValueError(
            f"scores of {name!r} are NaN or infinite in runs {runs}; a run that never solved "
            f"within its budget counts as the budget (a censored value, see steps_to_solve)")
    if array.shape[0] < 2:
        raise ValueError(f"scores of {name!r} have {array.shape[0]} run; a confidence interval "
                         f"needs at least 2 runs (seeds)")
    return array


def _check_resampling(reps: int, confidence: float) -> None:
    if int(reps) < 1:
        raise ValueError(f"reps must be at least 1, got {reps}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")


@contextlib.contextmanager
def _seeded_global_generator(seed: int) -> Iterator[None]:
    """NumPy's global generator seeded with ``seed`` inside the block, the caller's state after it."""
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(saved)


def _rliable():
    # Imported on first use: rliable brings arch, statsmodels and pandas, seconds to import.
    from rliable import library, metrics

    return library, metrics
