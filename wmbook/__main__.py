"""Command line of the book: ``python -m wmbook {list,run,validate,build,all}``.

    python -m wmbook all --profile ci        # execute, validate and build the whole book
    python -m wmbook run --chapters 1        # execute Chapter 1 only (profile full)

Only the chapters that run import torch: ``list`` and ``--help`` answer at once.

The training tools of the later chapters are subcommands too; each lives in its own module, whose
``main(argv)`` receives the rest of the command line::

    python -m wmbook train-world-model-ppo --env CartPole-v1     # Chapter 4's V + M + C trainer
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path
import time

from wmbook.chapters import PROFILE_NAMES

# the choices of wmbook.device.pick_device, repeated here so that parsing needs no torch
DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


# subcommand -> module whose main(argv) runs it (listed in --help once the module exists)
TOOLS: dict[str, tuple[str, str]] = {
    "train-world-model-ppo": ("wmbook.agents.world_model_ppo", "Chapter 4: train V + M + C (PPO partly in the dream)"),
    "dreamer": ("wmbook.agents.dreamer", "Chapter 5: train the Dreamer agent"),
    "surgical": ("wmbook.surgical.cli", "Chapter 6: the surgical simulator, world model and policies"),
}


def _module_exists(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it or its parent packages (torch)."""
    top, _, rest = module.partition(".")
    spec = importlib.util.find_spec(top)
    if spec is None or not rest:
        return spec is not None
    folders = list(spec.submodule_search_locations or [])
    parts = rest.split(".")
    return any((Path(folder).joinpath(*parts[:-1]) / (parts[-1] + ".py")).is_file()
               or (Path(folder).joinpath(*parts) / "__init__.py").is_file() for folder in folders)


def _available_tools() -> dict[str, tuple[str, str]]:
    return {name: (module, text) for name, (module, text) in TOOLS.items() if _module_exists(module)}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m wmbook", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="list the chapters in _toc.yml")
    for name, text, failures in (
            ("run", "execute chapters with papermill into _build/stage",
             "A chapter that fails does not stop the others; its partial output stays in "
             "_build/stage, and the exit status is 1."),
            ("validate", "re-execute the executed chapters with nbval", ""),
            ("build", "build the HTML book from the validated chapters",
             "A chapter that failed in `all` is rendered as its error report, and the exit status "
             "is 1."),
            ("all", "run and validate (skipping unchanged chapters), then build",
             "A chapter that fails to execute or to validate does not stop the others: its page "
             "shows its error report, what it executed is kept in _build/failed, a summary of "
             "every chapter follows the build, and the exit status is 1. The next `all` runs the "
             "chapter again.")):
        sub = commands.add_parser(name, help=text,
                                  description=f"{text[0].upper()}{text[1:]}. {failures}".rstrip())
        if name in ("run", "validate", "all"):
            sub.add_argument("-c", "--chapters", nargs="+", metavar="CHAPTER",
                             help="chapter names or numbers (default: every chapter in _toc.yml)")
        if name in ("run", "all"):
            sub.add_argument("-p", "--profile", choices=PROFILE_NAMES, default="full",
                             help="budget preset: 'full' for the book's results, 'ci' for a fast check")
            sub.add_argument("--seed", type=int, default=0, help="seed of every generator (default 0)")
            sub.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
            sub.add_argument("-v", "--verbose", action="store_true", help="stream cell outputs")
        if name == "all":
            sub.add_argument("--force", action="store_true",
                             help="execute and validate even chapters whose inputs are unchanged")
    for name, (_, text) in _available_tools().items():
        commands.add_parser(name, help=text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    tools = _available_tools()
    if argv and argv[0] in tools:
        return int(importlib.import_module(tools[argv[0]][0]).main(argv[1:]) or 0)
    args = _parser().parse_args(argv)
    try:
        from wmbook import pipeline
    except ImportError as error:  # the book's tools are an optional extra of the package
        print(f"error: {error.name} is missing; install the book's tools with "
              "pip install -e '.[book]'", file=sys.stderr)
        return 1
    started = time.perf_counter()
    try:
        root = pipeline.find_root()
        available = pipeline.chapters(root)
        if args.command == "list":
            for chapter in available:
                print(f"{chapter.number:>3}  {chapter.name:<28} {chapter.source}")
            return 0
        selected = pipeline.select(available, getattr(args, "chapters", None))
        if args.command == "run":
            pipeline.run(root, selected, args.profile, args.seed, args.device, args.verbose)
        if args.command == "validate":
            pipeline.validate(root, selected)
        if args.command == "build":
            pipeline.build(root)
        if args.command == "all":
            runs = pipeline.run_and_validate(root, selected, args.profile, args.seed, args.device,
                                             args.verbose, args.force)
            try:
                pipeline.build(root)
            finally:
                print(pipeline.summary(runs))
        failed = pipeline.error_reports(root, available) if args.command in ("build", "all") else []
        if failed:
            print(f"error: the book shows error reports in place of {', '.join(failed)}, which "
                  f"failed (see {pipeline.RUN_REPORT} in {pipeline.STAGE})", file=sys.stderr)
            return 1
    except pipeline.PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"done in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
