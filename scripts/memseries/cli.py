"""`memseries VERB ...`: one module per verb, each with HELP, add_arguments(parser) and run(args) -> int."""

from __future__ import annotations

import argparse
import importlib
import sys

from memseries.errors import SeriesError

VERBS = ("check", "apply", "build", "venv", "export", "prove", "unit", "workspace", "refresh", "bench", "demo")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="memseries", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    modules = {}
    for verb in VERBS:
        try:
            mod = importlib.import_module(f"memseries.{verb}")
        except ModuleNotFoundError as exc:
            if exc.name == f"memseries.{verb}":
                continue  # a verb still being written
            raise
        modules[verb] = mod
        p = sub.add_parser(verb, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
    args = parser.parse_args(argv)
    try:
        return modules[args.verb].run(args) or 0
    except SeriesError as exc:
        print(f"memseries {args.verb}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"memseries {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
