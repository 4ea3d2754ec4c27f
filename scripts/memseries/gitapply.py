"""Apply a series exactly, with `git apply` in a scratch tree.

`git apply` refuses fuzz and malformed patches (a junk line between hunks, counts that do not add up), but it
silently applies a hunk whose context it finds a few lines away from where the header says. We do not accept
that: a series must apply exactly where its headers say, so a stale patch is restacked, not guessed. `git apply
-v` reports every such hunk ("Hunk #2 succeeded at 120 (offset 3 lines)."), and any such line is an error here.
Every problem is one line naming the patch, the file and the hunk. Nothing outside the scratch tree is written
until the whole series has applied.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from memseries.errors import SeriesError
from memseries.patchfile import HunkRef, Patch

CHECKING = re.compile(r"^Checking patch (.+)\.\.\.$")
OFFSET = re.compile(r"^Hunk #(\d+) succeeded at (\d+) \(offset (-?\d+) lines?\)\.$")
FAILED = re.compile(r"^error: patch failed: (.+):(\d+)$")
AT_LINE = re.compile(r"^error: (.*) at line (\d+)")
MISSING = re.compile(r"^error: (.+): (No such file or directory|does not exist in index)$")
EXISTS = re.compile(r"^error: (.+): already exists in working directory$")

Reader = Callable[[str], bytes | None]


def _describe(ref: HunkRef | None) -> str:
    return f"hunk #{ref.index} ({ref.header})" if ref else "a hunk"


def _mismatch(patch: Patch, ref: HunkRef, tree: Path) -> str:
    """Where the hunk's old side and the file first differ, for the one-line message."""
    path = tree / ref.path
    lines = path.read_text(encoding="utf-8", errors="surrogateescape").split("\n") if path.is_file() else []
    expected = [line[1:] if line else "" for line in patch.hunk_body(ref) if line[:1] in (" ", "-", "")]
    start = ref.old_start - 1
    for k, want in enumerate(expected):
        if start + k >= len(lines):
            return f"the file ends at line {len(lines)}"
        if lines[start + k] != want:
            return f"line {start + k + 1} is {lines[start + k] + chr(10)!r}, the patch expects {want + chr(10)!r}"
    return "git apply refuses it"


def _failure(patch: Patch, output: str, tree: Path) -> str:
    for line in output.splitlines():
        if m := FAILED.match(line):
            ref = patch.hunk_at(m.group(1), int(m.group(2)))
            detail = _mismatch(patch, ref, tree) if ref else "git apply refuses it"
            return f"{patch.name}: {m.group(1)}: {_describe(ref)} does not apply: {detail}"
        if m := MISSING.match(line):
            return f"{patch.name}: {m.group(1)}: no such file in the base"
        if m := EXISTS.match(line):
            return f"{patch.name}: {m.group(1)}: the patch creates this file, but it already exists"
        if m := AT_LINE.match(line):
            ref = patch.hunk_around(int(m.group(2)))
            says = f"(git apply: {m.group(1)} at line {m.group(2)})"
            if ref is None:
                return f"{patch.name}: malformed diff {says}"
            if m.group(1).startswith("patch fragment without header"):
                return f"{patch.name}: {ref.path}: {_describe(ref)} is cut off from its file by a stray line before it {says}"
            return f"{patch.name}: {ref.path}: {_describe(ref)} is malformed {says}"
    errors = [line.removeprefix("error: ") for line in output.splitlines() if line.startswith("error: ")]
    return f"{patch.name}: git apply failed: {(errors or [output.strip() or 'no output'])[0]}"


def git_apply(patch: Patch, tree: Path, include: str) -> None:
    """Apply one patch to `tree` (repository layout) with `git apply -v`; refuse any hunk moved by an offset."""
    proc = subprocess.run(["git", "apply", "-v", "--whitespace=nowarn", f"--include={include}*", str(patch.path)],
                          cwd=tree, capture_output=True, text=True, errors="surrogateescape")
    output = proc.stderr + proc.stdout
    if proc.returncode != 0:
        raise SeriesError(_failure(patch, output, tree))
    current = "?"
    for line in output.splitlines():
        if m := CHECKING.match(line):
            current = m.group(1)
        elif m := OFFSET.match(line):
            index, at, offset = map(int, m.groups())
            ref = next((h for h in patch.hunks if h.path == current and h.index == index), None)
            raise SeriesError(
                f"{patch.name}: {current}: {_describe(ref)} does not apply where its header says: git apply finds "
                f"its context {offset:+d} lines away (at line {at}); restack the patch"
            )
        elif line.startswith("Context reduced"):
            raise SeriesError(f"{patch.name}: {current}: git apply needed fuzz: {line}")


def apply_series(patches: Iterable[Patch], read: Reader, src_prefix: str,
                 not_installed: tuple[str, ...] = ()) -> dict[str, bytes | None]:
    """Apply in order; {path inside the wheel: new bytes, or None when deleted} for every file the series touches.

    `read(wheel_path)` gives a pristine file's bytes (None: no such file). Patch paths are repository paths:
    `src_prefix` + the wheel path; paths under `not_installed` (tests, newsfragments) are not applied.
    """
    patches = list(patches)
    touched: list[str] = []
    for patch in patches:
        for old, new in patch.renames:
            raise SeriesError(f"{patch.name}: renames ({old} -> {new}) are not supported")
        for path in patch.files:
            if path.startswith(src_prefix):
                if path[len(src_prefix):] not in touched:
                    touched.append(path[len(src_prefix):])
            elif not path.startswith(not_installed):
                raise SeriesError(f"{patch.name}: {path} is outside {src_prefix} and the tests: the wheel has no such file")
    with tempfile.TemporaryDirectory(prefix="memseries-apply-") as tmp:
        tree = Path(tmp)
        subprocess.run(["git", "init", "-q", str(tree)], check=True, capture_output=True)
        for rel in touched:
            data = read(rel)
            if data is not None:
                dest = tree / src_prefix / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(data)
        for patch in patches:
            git_apply(patch, tree, src_prefix)
        out: dict[str, bytes | None] = {}
        for rel in touched:
            p = tree / src_prefix / rel
            out[rel] = p.read_bytes() if p.is_file() else None
        return out


def read_from_dir(root: Path) -> Reader:
    def read(rel: str) -> bytes | None:
        p = root / rel
        return p.read_bytes() if p.is_file() else None

    return read


def write_to_dir(root: Path, changed: dict[str, bytes | None]) -> None:
    for rel, data in changed.items():
        p = root / rel
        if data is None:
            p.unlink(missing_ok=True)
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
