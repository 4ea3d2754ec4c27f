"""export: a base's series as one mbox for `git am` on an apache/airflow checkout at that tag.

Each message is the patch as committed here, with the project-internal trailers (Tests, Newsfragment) turned
into what they point at: the patch's test modules and its newsfragment are added to its diff as new files
(the newsfragment at airflow-core/newsfragments/, where upstream keeps them).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from memseries import paths, series
from memseries.bases import get_base
from memseries.patchfile import Patch

HELP = "write a base's series as an mbox ready for `git am` on apache/airflow (tests and newsfragments included)"
INTERNAL_TRAILERS = ("Tests", "Newsfragment")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", required=True, help="Airflow release, e.g. 3.1.3")
    parser.add_argument("-o", "--output", type=Path, help="mbox file (default dist/series-<base>.mbox; - for stdout)")


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


def export_message(patch: Patch) -> str:
    header = re.sub(rf"^(?:{'|'.join(INTERNAL_TRAILERS)}): .*\n", "", patch.header_text, flags=re.M)
    header = header.rstrip("\n") + "\n"
    if not header.endswith("---\n"):
        header += "---\n"
    extra = [new_file_diff(t, (paths.REPO / t).read_text()) for t in series.test_modules(patch)]
    fragment = series.newsfragment(patch)
    if fragment:
        extra.append(new_file_diff(f"airflow-core/{fragment}", (paths.REPO / fragment).read_text()))
    diff = patch.diff_text if patch.diff_text.endswith("\n") else patch.diff_text + "\n"
    return header + diff + "".join(extra) + "\n"


def export(base_version: str) -> str:
    base = get_base(base_version)
    patches = series.load(base)
    series.apply_to_pristine(base, patches)  # refuse to export a series that does not apply
    return "".join(export_message(p) for p in patches)


def run(args) -> int:
    mbox = export(args.base)
    if str(args.output) == "-":
        sys.stdout.write(mbox)
        return 0
    out = args.output or paths.DIST / f"series-{args.base}.mbox"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(mbox)
    print(out)
    return 0
