"""The Dyna-DQN benchmark script: five methods like for like, statistics that can fail, and
provenance."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("stable_baselines3")
pytest.importorskip("rliable")
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_script(name: str = "dyna_vs_sb3"):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_benchmark_writes_a_table_with_provenance(tmp_path):
    script = load_script()
    out = tmp_path / "results.md"
    # a budget below learning_starts: no learning, so nothing solves, but every path runs
    assert script.main(["--seeds", "0", "1", "--budget", "500", "--eval-every", "250", "--workers", "1",
                        "--k", "2", "--reps", "100", "--out", str(out), "--runs", str(tmp_path / "runs")]) == 0
    text = re.sub(" +", " ", out.read_text())  # tables' padding aside
    assert text.startswith("K = 2, given on the command line.")
    names = script.Methods(2)
    assert names.all() == ["DQN (wmbook)", "DQN, 3 updates/step (wmbook)", "Dyna-DQN, K=2 (wmbook)",
                           "DQN (stable-baselines3, rl-zoo settings)", "DQN (stable-baselines3, 3 updates/step)"]
    for method in names.all():
        assert f"| {method} | > 500, > 500 | " in text  # per seed, and the runs went to the end
        # every run censored at the budget: IQM and median are the budget, 2 runs unsolved
        assert f"| {method} | 500 [500, 500] | 500 [500, 500] | 2 | 2 |" in text
    assert text.count("0.50 [0.50, 0.50]: the interval includes one half, so the difference is not "
                      "resolved at 2 seeds") == 4  # identical censored runs: ties
    assert "IQM final return [95% CI]" in text
    assert "- command: `python benchmarks/dyna_vs_sb3.py --seeds 0 1" in text
    assert "stable-baselines3 2." in text and "rliable 1." in text and "- date: " in text and "cores" in text
    assert "ratio 1.00 (target: at most 1/3) - not met" in text
    total = sum(o.seconds for o in script.run_cached(script.jobs_for([0, 1], 2, 500, 250), 1, echo=False,
                                                   cache=tmp_path / "runs"))
    assert f"Wall time: the 10 runs took {total:,.0f} s" in text and "read back" not in text
    # a second invocation reads every run back, and says its time is not theirs
    assert script.main(["--seeds", "0", "1", "--budget", "500", "--eval-every", "250", "--workers", "1",
                        "--k", "2", "--reps", "100", "--out", str(out), "--runs", str(tmp_path / "runs")]) == 0
    again = out.read_text()
    assert f"Wall time: the 10 runs took {total:,.0f} s" in again
    assert "and ran 0 of them, the other 10 read back from earlier invocations." in again


def test_an_interrupted_benchmark_resumes_from_the_runs_it_kept(tmp_path, monkeypatch):
    script = load_script()
    jobs = script.jobs_for([0], k=2, budget=300, eval_every=150)
    ran, cut_off = [], [True]

    def fake_job(args):
        ran.append(args)
        if len(ran) == 3 and cut_off[0]:
            raise RuntimeError("interrupted")  # the third run is cut off
        return script.Outcome(args[1], args[2], None, 1.0, [150, 300], [20.0, 30.0 + len(ran)])

    monkeypatch.setattr(script, "job", fake_job)
    with pytest.raises(RuntimeError, match="interrupted"):
        script.run_cached(jobs, workers=1, echo=False, cache=tmp_path)
    assert len(list(tmp_path.glob("*.json"))) == 2
    ran.clear()
    cut_off[0] = False
    outcomes = script.run_cached(jobs, workers=1, echo=False, cache=tmp_path)
    assert [o.method for o in outcomes] == [j[1] for j in jobs]
    assert ran == jobs[2:]  # only the runs not kept were run again
    assert [o.final_return for o in outcomes[:2]] == [31.0, 32.0]  # read back as they were
    assert len(list(tmp_path.glob("*.json"))) == len(jobs)
    (tmp_path / script.job_file(tmp_path, jobs[0]).name).write_text("{not json")
    with pytest.raises(SystemExit, match="not a run outcome"):
        script.run_cached(jobs, workers=1, echo=False, cache=tmp_path)


def _outcome(script, method, seed, solved_at, final, steps=(1000, 2000, 3000)):
    returns = [final] * len(steps)
    return script.Outcome(method, seed, solved_at, 1.0, list(steps), returns)


def test_statistics_and_verdict_read_the_intervals():
    script = load_script()
    names = script.Methods(5)
    solved = {names.dqn: [9000, 9500, 8000, 8500, None],
              names.control: [5000, 6000, 5500, 7000, 6500],
              names.dyna: [1500, 2000, 1000, 1500, 2000],
              names.zoo: [9000, 8000, 9500, 8500, 9000],
              names.sb3_ratio: [3000, 2500, 4000, 3500, 3000]}
    finals = {names.dqn: 200.0, names.control: 400.0, names.dyna: 481.0, names.zoo: 480.0,
              names.sb3_ratio: 450.0}
    outcomes = [_outcome(script, m, s, v, finals[m] + s) for m, runs in solved.items()
                for s, v in enumerate(runs)]
    text, steps, final = script.statistics(outcomes, names, budget=10_000, reps=200)
    text = re.sub(" +", " ", text)
    assert steps[names.dyna].iqm.estimate == pytest.approx(1666.67, abs=1)
    assert text.split(f"| {names.dqn} |")[1].split("\n")[0].endswith("| 5 | 1 |")
    # every Dyna run beats every run of every other method: established each time
    assert text.count("1.00 [1.00, 1.00]: the interval lies above one half") == 4
    assert f"ends with a higher return than a run of {names.zoo} is " in text
    lines = script.verdict(names, steps, final)
    assert "ratio 0.19 (target: at most 1/3) - met." in lines[0]
    assert lines[1].endswith("(target: at least as high) - met; the intervals overlap, so the "
                             "difference is not resolved at this number of seeds.")
    # the same verdict fails where Dyna is only a little faster than the zoo's DQN
    slow = [script.Outcome(o.method, o.seed, (o.solved_at or 0) * 4 if o.method == names.dyna else o.solved_at,
                           1.0, o.eval_steps, o.eval_returns) for o in outcomes]
    text, steps, final = script.statistics(slow, names, budget=10_000, reps=200)
    assert "- not met" in script.verdict(names, steps, final)[0]


def test_outcome_final_return_and_kept_share():
    script = load_script()
    run = script.Outcome("m", 0, 1000, 1.0, [500, 1000, 1500, 2000, 2500], [10.0, 480.0, 100.0, 490.0, 475.0])
    assert run.final_return == 475.0 and run.kept_solved == pytest.approx(2 / 3)
    assert np.isnan(script.Outcome("m", 0, None, 1.0, [500], [10.0]).kept_solved)


def test_k_is_chosen_on_tuning_seeds_the_reported_runs_do_not_use(monkeypatch, capsys):
    script = load_script()
    asked = []

    def fake_jobs(jobs, workers, echo=True, cache=None):
        asked.extend(jobs)
        solved = {1: 6000, 5: 3000, 10: 3500}
        return [script.Outcome(name, seed, solved[k], 1.0, [7000], [500.0])
                for _, name, seed, k, *_ in jobs]

    monkeypatch.setattr(script, "run_cached", fake_jobs)
    k, iqms = script.choose_k([1, 5, 10], [100, 101], 7000, 500, 1)
    assert k == 5 and iqms == {1: 6000.0, 5: 3000.0, 10: 3500.0}
    assert {job[2] for job in asked} == {100, 101}
    assert script.seed_list([3]) == [0, 1, 2] and script.seed_list([4, 7]) == [4, 7]
    with pytest.raises(SystemExit):
        script.main(["--seeds", "100", "101", "--out", "-"])  # tuning seeds reported: refused
    assert "overlap the reported seeds" in capsys.readouterr().err


def test_ppo_benchmark_writes_its_table_with_provenance_and_wall_time(tmp_path):
    script = load_script("ppo_vs_sb3")
    out = tmp_path / "ppo.md"
    # two PPO iterations of 8 x 32 steps each: nothing solves, but every path runs
    assert script.main(["--seeds", "0", "1", "--budget", "512", "--eval-every", "256", "--workers", "1",
                        "--reps", "100", "--out", str(out)]) == 0
    text = re.sub(" +", " ", out.read_text())
    for method in ("PPO (wmbook)", "PPO (stable-baselines3, rl-zoo settings)"):
        assert f"| {method} | > 512, > 512 | " in text
        assert f"| {method} | 512 [512, 512] | 512 [512, 512] | 2 |" in text  # censored at the budget
    assert "- command: `python benchmarks/ppo_vs_sb3.py --seeds 0 1" in text
    assert "Wall time: the 4 runs took " in text and "read back" not in text
    with pytest.raises(SystemExit):
        script.main(["--eval-every", "500", "--out", "-"])  # not a multiple of the 8 environments


def _row(cpu, seed, stage=None, final=None):
    row = {"asked": cpu, "cpu_capability": cpu.upper(), "mode": "pretrain", "seed": seed, "theta_r2": 0.99,
           "end_auc": 0.5 if stage == "M" else 0.98, "p_end": 0.6, "p_live": 0.05, "nll": -40.0,
           "failed_stage": stage, "seconds": 60.0}
    if final is not None:
        row.update(mode="headline", ratio=0.5, final_return=final)
    return row


def test_the_cross_cpu_benchmark_counts_the_seeds_that_passed(tmp_path):
    script = load_script("vmc_across_cpus")
    assert script.seed_list("0-2,7") == [0, 1, 2, 7]
    rows = [_row("avx2", 1), _row("avx2", 2, "M"), _row("avx512", 1), _row("avx512", 2)]
    text = script.report(rows, "pretrain")
    assert "avx2: V and M passed on 1 of 2 seeds" in text and "avx512: V and M passed on 2 of 2 seeds" in text
    assert "| avx2 | AVX2 | 2 | 0.990 | 0.500 | M failed |" in text
    rows = [_row("avx2", 1, final=500.0), _row("avx2", 2, final=474.9)]
    assert "reached 475 on 1 of 2" in script.report(rows, "headline")
    # a row already on disk for the same settings is read back, not recomputed
    path = tmp_path / "pretrain_avx2_seed1.json"
    kept = {**rows[0], "settings": script.settings_key()}
    path.write_text(__import__("json").dumps(kept))
    assert script.run_in_child("pretrain", "avx2", 1, path, script.settings_key()) == kept
    (tmp_path / "pretrain_avx2_seed2.json").write_text(__import__("json").dumps(
        {**_row("avx2", 2, "M"), "settings": script.settings_key()}))
    assert script.main(["--seeds", "1-2", "--cpus", "avx2", "--out", str(tmp_path), "--workers", "1"]) == 0
    with pytest.raises(SystemExit):
        script.main(["--cpus", "avx9"])
