"""Chapter 4 across seeds and CPU instruction sets: does V and M's pretraining hold, and the headline?

PyTorch picks its CPU kernels by the instruction set the CPU offers (``AVX2``, ``AVX512``; the
plain ``DEFAULT`` kernels run anywhere), and kernels that differ in the last bits can send the same
seed's training down another path. The environment variable ``ATEN_CPU_CAPABILITY`` makes a CPU
use a lesser set, so one machine can play several. For each instruction set asked for, this
script runs, in a fresh process with that variable set (one thread each, ``--workers`` at a time):

- ``pretrain`` mode: every seed's random data and pretraining of V and M under Chapter 4's
  ``full`` profile, then :func:`~wmbook.agents.world_model_ppo.diagnostics.check_pretraining`
  on held-out episodes: the pole's angle from ``z`` and M's end AUC, and which stage failed;
- ``headline`` mode: the same, then the controller at the chapter's headline imagination ratio,
  and its mean greedy return over the chapter's 20 evaluation episodes.

Each seed's outcome is one JSON line in ``--out`` (default ``benchmarks/runs/vmc_across_cpus``),
named by mode, instruction set and seed, with a fingerprint of the chapter's settings; a rerun
reads back what is there for the same settings and computes only what is missing. The report counts, per instruction set, the seeds whose V and M passed their checks
and, in ``headline`` mode, those whose controller reached 475::

    python benchmarks/vmc_across_cpus.py --seeds 200-209 --cpus avx2,avx512             # pretraining
    python benchmarks/vmc_across_cpus.py --mode headline --seeds 0-2 --cpus avx2        # the headline

An instruction set the CPU does not offer runs on the best one it does (PyTorch falls back); the
report names the set each run actually used.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

from wmbook.runner import run_jobs

MODES = ("pretrain", "headline")
CPUS = ("default", "avx2", "avx512")


def seed_list(text: str) -> list[int]:
    """``"0-2,7"`` -> ``[0, 1, 2, 7]``."""
    seeds: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        seeds += list(range(int(low), int(high or low) + 1))
    return seeds


def settings_key() -> str:
    """A fingerprint of what a row depends on: Chapter 4's ``full`` profile (its trainer, held-out
    steps and headline ratio)."""
    import dataclasses
    import hashlib

    import wmbook.chapters.ch04_vision_memory_controller as ch4

    chapter = ch4.PROFILES["full"]
    settings = {"trainer": dataclasses.asdict(chapter.trainer), "heldout_steps": chapter.heldout_steps,
                "headline_ratio": chapter.headline_ratio}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def one_seed(mode: str, seed: int) -> dict:
    """Pretrain ``seed`` under Chapter 4's full profile, check V and M, and in ``headline`` mode
    train and evaluate the controller at the headline ratio (runs in the child process)."""
    import torch

    import wmbook.chapters.ch04_vision_memory_controller as ch4

    torch.set_num_threads(1)
    chapter = ch4.PROFILES["full"]
    started = time.perf_counter()
    saved = ch4.pretrain_seed(chapter, seed)
    check = saved.check
    row = {"mode": mode, "seed": seed, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "theta_r2": check.theta_r2, "end_auc": check.end_auc, "p_end": check.p_end, "p_live": check.p_live,
           "nll": check.nll, "failed_stage": check.failed_stage}
    if mode == "headline":
        run = ch4.train_controller(chapter, saved, chapter.headline_ratio)
        row.update(ratio=chapter.headline_ratio, final_return=run.final_return)
    row["seconds"] = time.perf_counter() - started
    return row


def run_in_child(mode: str, cpu: str, seed: int, path: Path, key: str) -> dict:
    """``one_seed`` in a fresh process under ``ATEN_CPU_CAPABILITY=cpu``; its row is written to
    ``path``, where a row of the same settings ``key`` is read back instead."""
    if path.is_file():
        row = json.loads(path.read_text())
        if row.get("settings") == key:
            return row
    env = {**os.environ, "ATEN_CPU_CAPABILITY": cpu, "OMP_NUM_THREADS": "1"}
    if cpu != "avx512":
        env["ONEDNN_MAX_CPU_ISA"] = "AVX2" if cpu == "avx2" else "SSE41"
    code = f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); " \
           f"from vmc_across_cpus import one_seed; print(json.dumps(one_seed({mode!r}, {seed})))"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} seed {seed} under {cpu} failed:\n{done.stderr[-3000:]}")
    row = {"asked": cpu, "settings": key, **json.loads(done.stdout.strip().splitlines()[-1])}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(row) + "\n")
    os.replace(tmp, path)  # a row is there whole or not at all
    return row


def _child_job(mode: str, key: str, job: tuple) -> dict:
    cpu, seed, path = job
    return run_in_child(mode, cpu, seed, path, key)


def report(rows: list[dict], mode: str) -> str:
    """A Markdown table per seed and a count per instruction set."""
    lines = ["| asked | used | seed | pole angle R^2 from z | M's end AUC | pretraining |"
             + (" final return |" if mode == "headline" else ""),
             "|---|---|---|---|---|---|" + ("---|" if mode == "headline" else "")]
    for r in rows:
        verdict = "passed" if r["failed_stage"] is None else f"{r['failed_stage']} failed"
        lines.append(f"| {r['asked']} | {r['cpu_capability']} | {r['seed']} | {r['theta_r2']:.3f} | "
                     f"{r['end_auc']:.3f} | {verdict} |" + (f" {r['final_return']:.1f} |" if mode == "headline" else ""))
    lines.append("")
    for cpu in dict.fromkeys(r["asked"] for r in rows):
        mine = [r for r in rows if r["asked"] == cpu]
        passed = sum(r["failed_stage"] is None for r in mine)
        text = f"{cpu}: V and M passed on {passed} of {len(mine)} seeds"
        if mode == "headline":
            solved = sum(r["final_return"] >= 475 for r in mine)
            text += f"; the controller at ratio {mine[0]['ratio']:g} reached 475 on {solved} of {len(mine)}"
        lines.append(text)
    hours = sum(r["seconds"] for r in rows) / 3600
    lines.append(f"cost: {hours:.2f} CPU-hours in all, read back from the run files where they were there")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=MODES, default="pretrain")
    parser.add_argument("--seeds", type=seed_list, default=seed_list("200-209"), help="e.g. 200-209 or 0-2,7")
    parser.add_argument("--cpus", default="avx2,avx512", help=f"comma-separated, of {', '.join(CPUS)}")
    parser.add_argument("--workers", type=int, default=2, help="processes side by side (one thread each)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "runs" / "vmc_across_cpus")
    args = parser.parse_args(argv)
    cpus = args.cpus.split(",")
    unknown = sorted(set(cpus) - set(CPUS))
    if unknown:
        parser.error(f"unknown instruction set {', '.join(unknown)} (choose from {', '.join(CPUS)})")
    jobs = [(cpu, seed, args.out / f"{args.mode}_{cpu}_seed{seed}.json") for cpu in cpus for seed in args.seeds]
    key = settings_key()
    rows = run_jobs(partial(_child_job, args.mode, key), jobs, args.workers, desc="seeds")
    print(report(rows, args.mode))
    return 0


if __name__ == "__main__":
    sys.exit(main())
