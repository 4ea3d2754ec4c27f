"""export: each series of a base as an mbox for `git am` on an apache/airflow checkout at that release's tag.

Each message is the patch as committed here, with the project-internal trailers (Tests, Newsfragment) turned
into what they point at: the patch's test modules and its newsfragment are added to its diff as new files (the
newsfragment where upstream keeps it: airflow-core/newsfragments/, providers/<name>/newsfragments/). Core's mbox
is dist/series-<base>.mbox; another distribution's is dist/series-<distribution>-<version>.mbox (it applies at
that distribution's own release tag). Files are written whole or not at all.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from memseries import paths, series
from memseries.bases import AIRFLOW_CORE, DEFAULT_BASE, Base, Series, get_base
from memseries.errors import SeriesError
from memseries.patchfile import Patch

HELP = "write each series of a base as an mbox ready for `git am` on apache/airflow (tests and newsfragments included)"
INTERNAL_TRAILERS = ("Tests", "Newsfragment")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", default=DEFAULT_BASE, help=f"Airflow release (default {DEFAULT_BASE})")
    parser.add_argument("--distribution", help="only this distribution's series (e.g. apache-airflow-providers-celery)")
    parser.add_argument("-o", "--output", type=Path, help="mbox file (- for stdout); needs a single series")


def new_file_diff(repo_path: str, text: str) -> str:
    lines = text.split("\n")
    body = [f"+{line}\n" for line in lines[:-1]]
    if lines[-1]:
        body += [f"+{lines[-1]}\n", "\\ No newline at end of file\n"]
    count = len(lines) - 1 + bool(lines[-1])
    return (
        f"diff --git a/{repo_path} b/{repo_path}\nnew file mode 100644\n--- /dev/null\n+++ b/{repo_path}\n"
        f"@@ -0,0 +1,{count} @@\n" + "".join(body)
    )


def export_message(patch: Patch, s: Series) -> str:
    header = re.sub(rf"^(?:{'|'.join(INTERNAL_TRAILERS)}): .*\n", "", patch.header_text, flags=re.M)
    header = header.rstrip("\n") + "\n"
    if not header.endswith("---\n"):
        header += "---\n"
    extra = [new_file_diff(t, paths.read_utf8(paths.REPO / t, t)) for t in series.test_modules(patch)]
    fragment = series.newsfragment(patch)
    if fragment:
        upstream = s.dist.upstream_newsfragments + fragment.removeprefix(s.dist.newsfragments)
        extra.append(new_file_diff(upstream, paths.read_utf8(paths.REPO / fragment, fragment)))
    diff = patch.diff_text if patch.diff_text.endswith("\n") else patch.diff_text + "\n"
    return header + diff + "".join(extra) + "\n"


def export(base: Base, s: Series) -> str:
    patches = series.load(s)
    series.apply_to_pristine(base, s, patches)  # refuse to export a series that does not apply
    return "".join(export_message(p, s) for p in patches)


def default_output(base: Base, s: Series) -> Path:
    name = f"series-{base.version}.mbox" if s.dist == AIRFLOW_CORE else f"series-{s.dist.name}-{s.version}.mbox"
    return paths.DIST / name


def run(args) -> int:
    base = get_base(args.base)
    chosen = [s for s in base.series if args.distribution in (None, s.dist.name)]
    if not chosen:
        raise SeriesError(f"base {base.version} has no series" + (f" for {args.distribution}" if args.distribution else ""))
    if args.output and len(chosen) > 1:
        raise SeriesError(f"base {base.version} has {len(chosen)} series: choose one with --distribution to use -o")
    mboxes = [(s, export(base, s)) for s in chosen]  # every series exported before anything is written
    if str(args.output) == "-":
        sys.stdout.write(mboxes[0][1])
        return 0
    for s, mbox in mboxes:
        out = args.output or default_output(base, s)
        paths.write_atomic(out, mbox.encode("utf-8"))
        print(out)
    return 0
