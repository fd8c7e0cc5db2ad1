"""The part-1 experiment, end to end: simulate the data, train the world model (with and without
the dual path), evaluate it both ways, and format the tables.

Every step is a function of a :class:`~wmbook.surgical.config.SurgicalConfig`, so the command line
(:mod:`wmbook.surgical.cli`) and a notebook run the same code.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from wmbook.checkpoint import load_checkpoint, save_checkpoint, write_json
from wmbook.stats import markdown_table
from wmbook.surgical.model import (SurgicalWorldModel, load_world_model, train_world_model, window_losses,
                                    world_model_payload)
from wmbook.surgical import evaluation as E
from wmbook.surgical.config import SurgicalConfig
from wmbook.surgical.data import SurgicalDataset, load_dataset
from wmbook.surgical.imitation import ImitationPolicy
from wmbook.surgical.surgeons import ORACLE, Surgeon, SurgeonProfile, generate_dataset
from wmbook.surgical.triplets import COMPONENTS


def generate(config: SurgicalConfig, progress: bool = False) -> Path:
    """Simulate the data set of ``config.data`` into ``config.data.root``; returns the manifest."""
    d = config.data
    return generate_dataset(d.root, d.procedures, d.test, d.seed, config.simulator, d.surgeons,
                            d.action_accuracy, d.tool_accuracy, progress)


def ensure_data(config: SurgicalConfig, progress: bool = False) -> SurgicalDataset:
    """The data set at ``config.data.root``, simulated first if it has no manifest yet."""
    if not (Path(config.data.root) / "manifest.json").is_file():
        generate(config, progress)
    return load_dataset(config.data.root)


def train(config: SurgicalConfig, dataset: SurgicalDataset, dual_path: bool | None = None,
          out: str | Path | None = None, progress: bool = False,
          loss_fn: Callable = window_losses) -> tuple[SurgicalWorldModel, dict]:
    """Train a world model on the training split (``dual_path`` overrides the config), minimising
    ``loss_fn``, and save it atomically to ``out`` when given. A checkpoint already at ``out``
    with the same model and training settings is loaded instead of retrained, unless
    ``loss_fn`` is another than the package's :func:`~wmbook.surgical.model.window_losses`."""
    train_config = config.training
    if dual_path is not None:
        train_config = dataclasses.replace(train_config, dual_path=dual_path)
    model_config = config.model_config(dataset.embedding_dim)
    if out is not None and Path(out).is_file() and loss_fn is window_losses:
        saved = load_checkpoint(out, "SurgicalWorldModel")
        if saved["config"] == asdict(model_config) and saved["train_config"] == asdict(train_config):
            return load_world_model(out), {"seconds": saved.get("seconds", 0.0), "reused": True}
    torch.manual_seed(train_config.seed)
    model = SurgicalWorldModel(model_config)
    history = train_world_model(model, dataset.train, train_config, progress, loss_fn)
    info = {"seconds": history.seconds, "final_loss": float(np.mean(history.losses["total"][-50:])),
            "reused": False}
    if out is not None:
        save_checkpoint(out, "SurgicalWorldModel", {**world_model_payload(model, train_config),
                                                    "seconds": history.seconds})
    return model, info


def expert_for(dataset: SurgicalDataset):
    """A factory ``start -> Surgeon`` giving each test procedure's own surgeon."""
    by_name = {p.name: p for p in dataset.test + dataset.train}

    def make(start):
        meta = by_name[start.name].meta
        if "surgeon" not in meta:
            raise ValueError(f"procedure {start.name} does not name its surgeon: not simulated data")
        return Surgeon(SurgeonProfile(**meta["surgeon"]))
    return make


def evaluate(config: SurgicalConfig, dataset: SurgicalDataset, model: SurgicalWorldModel,
             truth: bool = True, map_table: bool = True, progress: bool = False) -> dict[str, Any]:
    """The imitation baseline's mAP table (with ``map_table``), the model's open-loop embedding
    error (true actions) and its one-step accuracy on true and recognised actions; with
    ``truth``, the true outcome in the simulator of the expert, the imitation policy (sampling
    its 1 to 3 triplets, and taking the most likely ones) and the scripted oracle."""
    ev = config.evaluation
    test = dataset.test
    results: dict[str, Any] = {
        "embedding_error": E.embedding_errors(model, test, ev.embedding_horizon, "true"),
        "action_inputs": {a: E.action_input_accuracy(model, test, a) for a in ("true", "recognised")},
    }
    if map_table:
        results["map"] = {str(k): v for k, v in
                          E.map_table(model, test, ev.horizons, ev.context_actions).items()}
    if truth:
        starts = [p.start(ev.start_frame) for p in test]
        policies = {"expert": expert_for(dataset),
                    "imitation": lambda start: ImitationPolicy(model, ev.policy_seed),
                    "imitation_most_likely": lambda start: ImitationPolicy(model, deterministic=True),
                    "oracle": lambda start: Surgeon(ORACLE)}
        outcomes = E.simulator_outcomes(policies, starts, config.simulator,
                                        model.config.reward_weights, progress)
        results["truth"] = {name: value["mean"] for name, value in outcomes.items()}
        results["truth_runs"] = {name: value["runs"] for name, value in outcomes.items()}
    return results


def report(config: SurgicalConfig, progress: bool = False) -> dict[str, Any]:
    """The whole part-1 experiment: data, the dual-path and the clean-only world models, their
    evaluation, and the wall times (written to ``config.output.results``)."""
    started = time.perf_counter()
    dataset = ensure_data(config, progress)
    data_seconds = time.perf_counter() - started
    out = Path(config.output.world_model)
    clean_path = out.with_name(out.stem + "_clean" + out.suffix)
    dual, dual_info = train(config, dataset, True, out, progress)
    clean, clean_info = train(config, dataset, False, clean_path, progress)
    t0 = time.perf_counter()
    results = {"dual_path": evaluate(config, dataset, dual, progress=progress)}
    results["clean_only"] = evaluate(config, dataset, clean, truth=False, map_table=False,
                                     progress=progress)
    results["seconds"] = {"data": data_seconds, "train_dual": dual_info["seconds"],
                          "train_clean": clean_info["seconds"], "evaluate": time.perf_counter() - t0,
                          "total": time.perf_counter() - started}
    results["reused_checkpoints"] = dual_info["reused"] or clean_info["reused"]
    results["data"] = {"train": len(dataset.train), "test": len(dataset.test),
                       "frames_train": int(sum(len(p) for p in dataset.train)),
                       "embedding_dim": dataset.embedding_dim}
    results["config"] = config.to_dict()
    write_json(config.output.results, results)
    return results


# -- tables -----------------------------------------------------------------------------------


def format_map_table(table: dict, title: str = "mAP (%)") -> str:
    """A markdown table: horizons as rows, the six components as columns."""
    return markdown_table({title: "current" if str(k) == "0" else f"+{k} s",
                           **{c: f"{100 * row[c]:.1f}" for c in COMPONENTS}} for k, row in table.items())


def format_report(results: dict) -> str:
    """The markdown summary of :func:`report`'s results."""
    dual = results["dual_path"]
    parts = []
    if "map" in dual:
        parts += ["Imitation baseline (the world model's imitation head), ivtmetrics video-wise mAP on the "
                  "test procedures, context actions from the recogniser:", "",
                  format_map_table(dual["map"]), ""]
    err = dual["embedding_error"]
    parts += ["Open-loop next-embedding MSE given the true actions (frame variance "
              f"{err['variance']:.4f}):", "",
              markdown_table({"steps": name, **{str(k + 1): f"{v:.4f}" for k, v in enumerate(err[key])}}
                             for name, key in (("world model", "mse"), ("copy last frame", "copy_last"))), ""]
    models = (("dual path", "dual_path"), ("clean only", "clean_only")) if "clean_only" in results \
        else (("this model", "dual_path"),)
    parts += ["One-step accuracy fed true or recognised actions:", "", markdown_table(
        {"training": label, "actions fed": actions, "next-phase accuracy": f"{100 * row['phase_accuracy']:.1f} %",
         "next-embedding MSE": f"{row['embedding_mse']:.4f}", "reward MSE": f"{row.get('reward_mse', float('nan')):.4f}"}
        for label, key in models for actions in ("true", "recognised")
        for row in [results[key]["action_inputs"][actions]])]
    if "truth" in dual:
        parts += ["", "True outcome in the simulator from the test procedures' start states "
                  "(means over procedures):", "", markdown_table(
                      {"policy": name, "completed": f"{100 * row['completed']:.0f} %",
                       "phases": f"{row['phases_completed']:.1f}", "frames": f"{row['frames']:.0f}",
                       "adverse events": f"{row['adverse_events']:.2f}", "true risk": f"{row['true_risk']:.1f}",
                       "true return": f"{row['true_return']:.1f}"} for name, row in dual["truth"].items())]
    if "seconds" in results:
        s = results["seconds"]
        parts += ["", f"Wall time: data {s['data']:.0f} s, dual-path training {s['train_dual']:.0f} s, "
                  f"clean training {s['train_clean']:.0f} s, evaluation {s['evaluate']:.0f} s."]
    return "\n".join(parts)
