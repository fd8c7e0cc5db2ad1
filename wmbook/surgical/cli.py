"""Command line of the surgical world model: ``python -m wmbook surgical COMMAND ...``.

    python -m wmbook surgical generate --out DATA [--procedures 50 --test 10 --seed 0]
    python -m wmbook surgical check DATA_OR_FILE
    python -m wmbook surgical train --config configs/surgical_world_model.yaml --mode train
    python -m wmbook surgical train --config ... --mode eval --world_model PATH
    python -m wmbook surgical evaluate --config ... --world_model PATH [--no-truth]
    python -m wmbook surgical report --config ...
    python -m wmbook surgical tdmpc --config ... --mode train --world_model PATH --policy PATH
    python -m wmbook surgical tdmpc --config ... --mode eval --world_model PATH --policy PATH
    python -m wmbook surgical iql|ppo ...   (the same options: the offline baseline, PPO in the model)
    python -m wmbook surgical compare --config ... --world_model PATH [--results F --markdown F]

``--config`` is optional everywhere (the defaults are those of
``configs/surgical_world_model.yaml``); ``--data``, ``--out``, ``--steps`` and ``--seed``
override it. Bad input ends with a one-line ``error: ...`` and exit status 1 (2 for a
malformed command line).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m wmbook surgical", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    gen = commands.add_parser("generate", help="simulate a data set of procedures")
    gen.add_argument("--config", help="YAML configuration (data and simulator sections)")
    gen.add_argument("--out", help="folder to write (default: data.root of the configuration)")
    gen.add_argument("--procedures", type=int, help="number of procedures (default 50)")
    gen.add_argument("--test", type=int, help="how many of them form the test split (default 10)")
    gen.add_argument("--seed", type=int, help="seed of the patients, surgeons and split (default 0)")
    gen.add_argument("--embedding-dim", type=int, help="size of a frame embedding (default 64)")

    check = commands.add_parser("check", help="check a data set folder or one procedure file")
    check.add_argument("path")

    for name, text in (("train", "train the world model (--mode train) or evaluate one (--mode eval)"),
                       ("evaluate", "evaluate a trained world model: mAP, embedding error, truth")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--config", help="YAML configuration (default: the built-in defaults)")
        if name == "train":
            sub.add_argument("--mode", choices=("train", "eval"), default="train")
            sub.add_argument("--no-dual-path", action="store_true",
                             help="train on true actions only (the ablation)")
            sub.add_argument("--steps", type=int, help="training steps (overrides the configuration)")
            sub.add_argument("--seed", type=int, help="training seed (overrides the configuration)")
            sub.add_argument("--out", help="checkpoint to write (default: output.world_model)")
        sub.add_argument("--data", help="data set folder (default: data.root of the configuration)")
        sub.add_argument("--world_model", "--world-model", dest="world_model",
                         help="trained world model checkpoint (for evaluation)")
        sub.add_argument("--results", help="JSON file for the results (default: print only)")
        sub.add_argument("--no-truth", action="store_true", help="skip the simulator outcomes")

    for name, text in (("tdmpc", "train (--mode train) or evaluate (--mode eval) the surgical TD-MPC planner"),
                       ("iql", "train or evaluate the offline baseline (implicit Q-learning)"),
                       ("ppo", "train or evaluate PPO in the world model")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--config", help="YAML configuration (default: the built-in defaults)")
        sub.add_argument("--mode", choices=("train", "eval"), default="train")
        sub.add_argument("--data", help="data set folder (default: data.root of the configuration)")
        sub.add_argument("--world_model", "--world-model", dest="world_model", required=True,
                         help="trained world model checkpoint")
        sub.add_argument("--policy", required=True,
                         help="policy checkpoint to write (train; resumed if unfinished) or read (eval)")
        sub.add_argument("--steps", type=int, help="training steps (PPO: imagined steps)")
        sub.add_argument("--seed", type=int, help="seed of the policy")
        sub.add_argument("--safety", action="store_true", help="PPO: predicted risk as a Lagrangian constraint")
        sub.add_argument("--map-stride", type=int, default=1, help="score every k-th test frame's anticipation")
        sub.add_argument("--results", help="JSON file for the evaluation (default: print only)")
        sub.add_argument("--no-truth", action="store_true", help="skip the simulator outcomes")

    cmp = commands.add_parser("compare", help="train every policy against a world model; mAP and truth tables")
    cmp.add_argument("--config", help="YAML configuration (default: the built-in defaults)")
    cmp.add_argument("--data", help="data set folder (default: data.root of the configuration)")
    cmp.add_argument("--world_model", "--world-model", dest="world_model", required=True)
    cmp.add_argument("--ppo-steps", type=int, default=12_000, help="imagined steps of each PPO run")
    cmp.add_argument("--offline-steps", type=int, default=1500, help="TD-MPC and IQL training steps")
    cmp.add_argument("--results", help="JSON file for the results")
    cmp.add_argument("--markdown", help="also write the tables to this markdown file")

    rep = commands.add_parser("report", help="the whole experiment: data, both world models, every table")
    rep.add_argument("--config", help="YAML configuration (default: the built-in defaults)")
    rep.add_argument("--markdown", help="also write the tables to this markdown file")
    return parser


def _config(args):
    from wmbook.surgical.config import load_config

    config = load_config(args.config)
    data = {}
    if getattr(args, "data", None):
        data["root"] = args.data
    if args.command == "generate":
        for key, attr in (("root", "out"), ("procedures", "procedures"), ("test", "test"), ("seed", "seed")):
            if getattr(args, attr) is not None:
                data[key] = getattr(args, attr)
        if args.embedding_dim is not None:
            config = dataclasses.replace(config, simulator=dataclasses.replace(
                config.simulator, embedding_dim=args.embedding_dim))
    if data:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, **data))
    training = {}
    if getattr(args, "steps", None) is not None:
        training["steps"] = args.steps
    if getattr(args, "seed", None) is not None and args.command == "train":
        training["seed"] = args.seed
    if training:
        config = dataclasses.replace(config, training=dataclasses.replace(config.training, **training))
    return config


def _run(args) -> int:
    if args.command == "check":
        return _check(Path(args.path))
    import torch

    from wmbook.device import set_threads
    from wmbook.surgical import experiment as X

    set_threads(1)
    torch.set_num_threads(1)
    config = _config(args)
    if args.command == "generate":
        manifest = X.generate(config, progress=True)
        print(f"wrote {config.data.procedures} procedures and {manifest}")
        return 0
    if args.command == "report":
        results = X.report(config, progress=True)
        text = X.format_report(results)
        print(text)
        if args.markdown:
            from wmbook.checkpoint import atomic_write
            with atomic_write(args.markdown, "w") as handle:
                handle.write(text + "\n")
        print(f"results written to {config.output.results}")
        return 0
    from wmbook.surgical.model import load_world_model
    from wmbook.surgical.data import load_dataset

    dataset = load_dataset(config.data.root)
    if args.command in ("tdmpc", "iql", "ppo"):
        return _policy_command(args, config, dataset)
    if args.command == "compare":
        from wmbook.checkpoint import atomic_write, write_json
        from wmbook.surgical import compare as PC

        model = load_world_model(args.world_model)
        settings = PC.CompareSettings(ppo_steps=args.ppo_steps, offline_steps=args.offline_steps)
        results = PC.compare_policies(config, dataset, model, settings, progress=True)
        text = PC.format_comparison(results)
        print(text)
        if args.results:
            write_json(args.results, results)
        if args.markdown:
            with atomic_write(args.markdown, "w") as handle:
                handle.write(text + "\n")
        return 0
    if args.command == "train" and args.mode == "train":
        out = args.out or config.output.world_model
        _, info = X.train(config, dataset, dual_path=not args.no_dual_path, out=out, progress=True)
        verb = "reused" if info["reused"] else f"trained in {info['seconds']:.0f} s and saved"
        print(f"world model {verb}: {out}")
        return 0
    if not args.world_model:
        raise ValueError(f"{args.command}{' --mode eval' if args.command == 'train' else ''} needs "
                         f"--world_model PATH (a checkpoint written by train --mode train)")
    model = load_world_model(args.world_model)
    if model.config.embedding_dim != dataset.embedding_dim:
        raise ValueError(f"{args.world_model} was trained on {model.config.embedding_dim}-d embeddings, "
                         f"the data at {config.data.root} has {dataset.embedding_dim}")
    results = X.evaluate(config, dataset, model, truth=not args.no_truth, progress=True)
    print(X.format_report({"dual_path": results}))
    if args.results:
        from wmbook.checkpoint import write_json
        write_json(args.results, results)
    return 0


def _policy_command(args, config, dataset) -> int:
    from wmbook.surgical import compare as PC
    from wmbook.surgical import policies as P
    from wmbook.surgical.model import load_world_model

    model = load_world_model(args.world_model)
    if model.config.embedding_dim != dataset.embedding_dim:
        raise ValueError(f"{args.world_model} was trained on {model.config.embedding_dim}-d embeddings, "
                         f"the data at {config.data.root} has {dataset.embedding_dim}")
    overrides: dict = {}
    if args.steps is not None:
        overrides["total_timesteps" if args.command == "ppo" else "steps"] = args.steps
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.safety:
        if args.command != "ppo":
            raise ValueError("--safety applies to ppo (TD-MPC's planner takes its risk budget from its settings)")
        overrides["safety"] = True
    if args.mode == "train":
        info = P.train_policy(args.command, model, dataset.train, args.policy, overrides, progress=True)
        verb = "finished already, reused" if "seconds" not in info else \
            f"{'resumed and ' if info['resumed'] else ''}trained in {info['seconds']:.0f} s and saved"
        print(f"{args.command} policy {verb}: {args.policy}")
        return 0
    results = PC.evaluate_policy(args.command, model, dataset, args.policy, config, truth=not args.no_truth,
                                 map_stride=args.map_stride, progress=True)
    from wmbook.surgical.experiment import format_map_table
    print(format_map_table(results["map"], f"{args.command} mAP (%)"))
    if "truth" in results:
        print(" ".join(f"{key} {value:.2f}" for key, value in results["truth"].items()))
    if args.results:
        from wmbook.checkpoint import write_json
        write_json(args.results, results)
    return 0


def _check(path: Path) -> int:
    from wmbook.surgical.data import load_dataset, load_procedure

    if path.is_dir():
        dataset = load_dataset(path)
        frames = sum(len(p) for p in dataset.train + dataset.test)
        print(f"{path}: {len(dataset.train)} train and {len(dataset.test)} test procedures, "
              f"{frames} frames, embeddings of dimension {dataset.embedding_dim}: ok")
    else:
        procedure = load_procedure(path)
        extras = [k for k in ("recognised", "rewards", "states") if getattr(procedure, k) is not None]
        print(f"{path}: {len(procedure)} frames, embeddings of dimension {procedure.embedding_dim}, "
              f"extras {extras or 'none'}: ok")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        return _run(args)
    except (ValueError, KeyError, FileNotFoundError, OSError, RuntimeError, TypeError,
            json.JSONDecodeError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
