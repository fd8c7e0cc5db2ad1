"""The job runner: order, a notebook's functions reaching the workers, threads, errors."""

import os

import pytest
import torch

from wmbook.runner import run_jobs


def notebook_function(source: str, name: str):
    """A function as a notebook cell defines it: in ``__main__``, importable by no worker."""
    namespace = {"__name__": "__main__"}
    exec(source, namespace)
    return namespace[name]


def slow_square(x):
    import time

    time.sleep(0.05 * (3 - x % 3))  # later jobs finish first
    return x * x


def threads_and_pid(_):
    return torch.get_num_threads(), os.getpid()


def fails_on_three(x):
    if x == 3:
        raise ValueError(f"job {x} failed")
    return x


def test_results_come_back_in_the_order_of_the_jobs():
    assert run_jobs(slow_square, range(7), workers=2, progress=False) == [x * x for x in range(7)]
    assert run_jobs(slow_square, [], workers=2, progress=False) == []


def test_an_edited_notebook_function_reaches_every_worker():
    first = notebook_function("def loss(x):\n    return 2 * x\n", "loss")
    assert run_jobs(first, range(6), workers=2, progress=False) == [2 * x for x in range(6)]
    # the reader edits the cell and runs the experiment again: the same (reused) workers
    # must run the new definition, not the one they received before
    edited = notebook_function("def loss(x):\n    return 3 * x + 1\n", "loss")
    assert run_jobs(edited, range(6), workers=2, progress=False) == [3 * x + 1 for x in range(6)]


def test_jobs_run_in_workers_with_the_threads_asked_for():
    before = torch.get_num_threads()
    pooled = run_jobs(threads_and_pid, range(4), workers=2, threads=1, progress=False)
    assert {threads for threads, _ in pooled} == {1}
    assert all(pid != os.getpid() for _, pid in pooled)
    local = run_jobs(threads_and_pid, range(2), workers=1, threads=2, progress=False)
    assert {threads for threads, _ in local} == {2} and {pid for _, pid in local} == {os.getpid()}
    assert torch.get_num_threads() == before, "the caller's thread setting was not restored"


def test_a_failed_job_raises_its_error_here():
    with pytest.raises(ValueError, match="job 3 failed"):
        run_jobs(fails_on_three, range(6), workers=2, progress=False)
    with pytest.raises(ValueError, match="job 3 failed"):
        run_jobs(fails_on_three, range(6), workers=1, progress=False)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="workers"):
        run_jobs(slow_square, range(3), workers=0)
    with pytest.raises(ValueError, match="threads"):
        run_jobs(slow_square, range(3), threads=0)


def test_the_same_grid_runs_on_a_dask_cluster():
    """The setting that sends a grid to many machines, tried on a cluster of two local worker
    processes: same results, run by the cluster's workers, a notebook's function included."""
    distributed = pytest.importorskip("distributed")
    import joblib

    edited = notebook_function("def loss(x):\n    return 3 * x + 1\n", "loss")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        workers = {w["id"] for w in client.scheduler_info()["workers"].values()}
        with joblib.parallel_config(backend="dask"):
            assert run_jobs(slow_square, range(7), progress=False) == [x * x for x in range(7)]
            assert run_jobs(edited, range(5), progress=False) == [3 * x + 1 for x in range(5)]
            pids = {pid for _, pid in run_jobs(threads_and_pid, range(4), progress=False)}
        assert os.getpid() not in pids and len(workers) == 2


def touch(path):
    from pathlib import Path

    Path(path).touch()
    return path


def test_started_jobs_run_while_this_process_works(tmp_path):
    import time

    from wmbook.runner import start_jobs

    paths = [str(tmp_path / f"job{i}") for i in range(4)]
    jobs = start_jobs(touch, paths, workers=2)
    deadline = time.monotonic() + 120
    # nobody asks for the results yet: the jobs must finish on their own
    while not all(os.path.exists(p) for p in paths):
        assert time.monotonic() < deadline, "the started jobs did not run in the background"
        time.sleep(0.05)
    assert jobs.results(progress=False) == paths
    assert start_jobs(touch, [], workers=2).results(progress=False) == []
