"""Command line of the book's build: ``python -m bookbuild {list,run,validate,build,all}``.

    python -m bookbuild all --profile ci        # execute, validate and build the whole book
    python -m bookbuild run --chapters 1        # execute Chapter 1 only (profile full)

Only the chapters that run import torch: ``list`` and ``--help`` answer at once. The package's
own tools (the trainers of Chapters 4-6) are ``python -m wmbook``'s subcommands.
"""

from __future__ import annotations

import argparse
import sys
import time

from wmbook.chapters import PROFILE_NAMES

# the choices of wmbook.device.pick_device, repeated here so that parsing needs no torch
DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bookbuild", description=__doc__.split("\n")[0],
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        from bookbuild import pipeline
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
