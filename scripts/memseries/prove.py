"""prove: run each patch's tests against the UNPATCHED base and require failures there.

A test module that passes without its patch proves nothing: every module listed in a patch's `Tests:` trailer
must have at least one test that fails (an assertion in the test itself, not a setup error) on the plain base.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

from memseries import paths, series
from memseries.bases import DEFAULT_BASE, get_base
from memseries.venv import venv_python

HELP = "run each patch's test modules on the unpatched base venv; succeed only if each has a failing test there"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", default=DEFAULT_BASE, help=f"Airflow release (default {DEFAULT_BASE})")
    parser.add_argument("--backend", default="sqlite", choices=("sqlite", "postgres"))
    parser.add_argument("--python", type=Path, help="the unpatched interpreter to use (default: the base's unpatched venv)")


def outcomes(python: Path, module: str, backend: str) -> dict[str, int]:
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        subprocess.run(
            [str(python), "-m", "pytest", module, "-q", "-p", "no:cacheprovider", "--import-mode=importlib",
             f"--junitxml={xml}", "-o", "junit_family=xunit1"],
            cwd=paths.REPO, capture_output=True, text=True, env={**os.environ, "MEMSERIES_BACKEND": backend},
        )
        counts = {"tests": 0, "failed": 0, "errors": 0, "skipped": 0, "passed": 0}
        if not xml.exists():
            counts["errors"] = 1
            return counts
        for case in ET.parse(xml).getroot().iter("testcase"):
            counts["tests"] += 1
            if case.find("failure") is not None:
                counts["failed"] += 1
            elif case.find("error") is not None:
                counts["errors"] += 1
            elif case.find("skipped") is not None:
                counts["skipped"] += 1
            else:
                counts["passed"] += 1
        return counts


def run(args) -> int:
    base = get_base(args.base)
    if not base.patched:
        print(f"base {base.version} has no series: nothing to prove")
        return 0
    python = args.python or venv_python(base, patched=False)
    unproven = 0
    print(f"{'patch':46} {'test module':66} {'fail':>4} {'err':>4} {'pass':>4}  verdict")
    for s in base.series:
        for patch in series.load(s):
            for module in series.test_modules(patch):
                c = outcomes(python, module, args.backend)
                ok = c["failed"] > 0
                unproven += not ok
                verdict = "proven (fails on the base)" if ok else "NOT PROVEN: nothing fails without the patch"
                short = module.replace("/tests/unit/", "/…/", 1)
                print(f"{patch.name:46} {short:66} {c['failed']:>4} {c['errors']:>4} {c['passed']:>4}  {verdict}")
    if unproven:
        print(f"{unproven} test module(s) do not fail on the unpatched base {base.version}")
        return 1
    print(f"every patch's tests fail on the unpatched base {base.version}")
    return 0
