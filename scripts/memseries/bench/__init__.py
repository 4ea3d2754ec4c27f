"""bench: one module per benchmark in this package (name with dashes on the command line)."""

from __future__ import annotations

import argparse
import importlib
import pkgutil

HELP = "run a benchmark: unpatched base vs patched build vs upstream, one table and one PNG per run"
NOT_BENCHMARKS = {"common", "payloads"}


def _benchmarks() -> dict[str, str]:
    return {
        info.name.replace("_", "-"): f"{__name__}.{info.name}"
        for info in pkgutil.iter_modules(__path__)
        if info.name not in NOT_BENCHMARKS
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name, module_name in sorted(_benchmarks().items()):
        mod = importlib.import_module(module_name)
        doc = (mod.__doc__ or name).strip().split("\n")[0]
        p = sub.add_parser(name, help=doc, description=mod.__doc__)
        mod.add_arguments(p)
        p.set_defaults(_bench_module=mod)


def run(args) -> int:
    return args._bench_module.run(args)
