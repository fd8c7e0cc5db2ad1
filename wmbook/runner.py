"""One job runner for every grid of runs in the book: seeds x variants, in worker processes.

:func:`run_jobs` calls ``fn(job)`` for every job and returns the results in the order of the
jobs, with one progress bar. It runs on joblib, which pickles functions with cloudpickle: a
function defined in a notebook cell travels to the workers *by value*, so a reader who edits
the method on the page and re-runs the experiment cell sees every worker run the edit. (A
process pool of the standard library pickles functions by name, and its workers would import
the package's copy instead.)

Where the jobs run is joblib's setting, not the runner's:

- ``workers=1`` runs them one after the other in this process (easiest to debug);
- ``workers=N`` runs them in N local processes (joblib's ``loky`` backend);
- inside ``with joblib.parallel_config(backend="dask"):``, with a ``dask.distributed.Client``
  connected to a cluster, they run on that cluster's workers, on as many machines as it has
  (``backend="ray"`` likewise, after ``ray.util.joblib.register_ray()``). Under such a setting
  its ``n_jobs`` replaces ``workers`` (every worker of the cluster when it gives none); see
  the README's section "More than one machine".

Every job runs with ``threads`` torch threads (one by default): a run's numbers then depend on
its seed alone, not on the machine's core count or on which worker ran it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import joblib
from joblib.parallel import LokyBackend, SequentialBackend, get_active_backend
from tqdm.auto import tqdm

J = TypeVar("J")
R = TypeVar("R")


def _call(fn: Callable[[J], R], job: J, index: int, threads: int) -> tuple[int, R]:
    """Run one job with ``threads`` torch threads, restoring the caller's setting afterwards
    (the job may run in the notebook's own process)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return index, fn(job)
    finally:
        torch.set_num_threads(before)


def _n_jobs(workers: int, n: int) -> int:
    """``workers`` (at most one per job) on this machine; under a ``joblib.parallel_config``
    the configured ``n_jobs``, and ``-1`` (all its workers) for a backend other than the local
    processes when none is configured."""
    backend, configured = get_active_backend()
    if configured is not None:
        return configured
    if isinstance(backend, (LokyBackend, SequentialBackend)):
        return min(workers, n)
    return -1


class Jobs:
    """Jobs started by :func:`start_jobs`: they run in the background while this process does
    other work, and :meth:`results` waits for them."""

    def __init__(self, outputs, n: int, desc: str):
        self._outputs, self._n, self._desc = outputs, n, desc

    def results(self, progress: bool = True) -> list:
        """Every job's result, in the order of the jobs (waits for the jobs still running)."""
        results: list[Any] = [None] * self._n
        with tqdm(total=self._n, desc=self._desc, disable=not progress) as bar:
            for index, result in self._outputs:
                results[index] = result
                bar.update(1)
        self._outputs = iter(())
        return results


def start_jobs(fn: Callable[[J], R], jobs: Iterable[J], workers: int = 2, *, threads: int = 1,
               desc: str = "runs") -> Jobs:
    """Start ``fn(job)`` for every job, ``workers`` at a time, and return at once (with
    ``workers=1`` they run in this process, when :meth:`Jobs.results` asks for them). The
    arguments are those of :func:`run_jobs`."""
    jobs = list(jobs)
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    if not jobs:
        return Jobs(iter(()), 0, desc)
    parallel = joblib.Parallel(n_jobs=_n_jobs(workers, len(jobs)), return_as="generator_unordered")
    calls = (joblib.delayed(_call)(fn, job, i, threads) for i, job in enumerate(jobs))
    return Jobs(parallel(calls), len(jobs), desc)


def run_jobs(fn: Callable[[J], R], jobs: Iterable[J], workers: int = 2, *, threads: int = 1,
             desc: str = "runs", progress: bool = True) -> list[R]:
    """``[fn(job) for job in jobs]``, ``workers`` at a time, in the order of ``jobs``.

    Jobs are started in the order given (put the longest first so that the workers finish
    together) and the bar advances as each one finishes. ``fn`` and every job must pickle;
    a function defined in a notebook does. An exception in a job is raised here, with the
    job's traceback, after the other running jobs are stopped.
    """
    return start_jobs(fn, jobs, workers, threads=threads, desc=desc).results(progress)
