"""Apply a series exactly: every hunk must match its context at the very line its header names.

No fuzz and no offset search (unlike `patch`, and unlike `git apply`, which silently looks for the context
elsewhere). A patch that does not apply stops everything with the patch, the file and the hunk; nothing is
written until the whole series has applied in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from memseries.errors import SeriesError
from memseries.patchfile import FileDiff, Hunk, Patch, _split_lines

SRC_PREFIX = "airflow-core/src/"
NOT_INSTALLED = ("airflow-core/tests/", "airflow-core/newsfragments/", "newsfragments/")


def wheel_path(repo_path: str, patch: Patch) -> str | None:
    """Map an apache/airflow repository path onto the apache-airflow-core wheel; None: not part of the wheel."""
    if repo_path.startswith(SRC_PREFIX):
        return repo_path[len(SRC_PREFIX):]
    if repo_path.startswith(NOT_INSTALLED):
        return None
    raise SeriesError(
        f"{patch.name}: {repo_path} is outside airflow-core/src and airflow-core/tests: "
        "the apache-airflow-core wheel has no such file"
    )


def _describe(hunk: Hunk) -> str:
    return f"hunk #{hunk.index} ({hunk.header})"


def apply_file_diff(original: str | None, fd: FileDiff, patch: Patch) -> str | None:
    """The file's new text (None: deleted)."""
    where = f"{patch.name}: {fd.path}"
    if fd.old_path is None:
        if original is not None:
            raise SeriesError(f"{where}: the patch creates this file, but it already exists")
        lines: list[str] = []
    else:
        if original is None:
            raise SeriesError(f"{where}: no such file in the base")
        lines = _split_lines(original)
    out: list[str] = []
    pos = 0  # next unread line of the original, 0-based
    for hunk in fd.hunks:
        start = hunk.old_start - 1 if hunk.old_count else hunk.old_start
        if start < pos:
            raise SeriesError(f"{where}: {_describe(hunk)} overlaps the previous hunk")
        if lines[start:start + len(hunk.old)] != hunk.old:
            actual = lines[start:start + len(hunk.old)]
            first_diff = next(
                (k for k, (a, b) in enumerate(zip(actual, hunk.old)) if a != b), min(len(actual), len(hunk.old))
            )
            detail = (
                f"line {start + first_diff + 1} is {actual[first_diff]!r}, the patch expects {hunk.old[first_diff]!r}"
                if first_diff < min(len(actual), len(hunk.old))
                else f"the file ends at line {len(lines)}"
            )
            raise SeriesError(f"{where}: {_describe(hunk)} does not apply: {detail}")
        out.extend(lines[pos:start])
        expected_new_start = hunk.new_start - 1 if hunk.new_count else hunk.new_start
        if len(out) != expected_new_start:
            raise SeriesError(
                f"{where}: {_describe(hunk)} does not apply: its new-side line {hunk.new_start} does not follow "
                "from the hunks before it"
            )
        out.extend(hunk.new)
        pos = start + len(hunk.old)
    out.extend(lines[pos:])
    if fd.new_path is None:
        if out:
            raise SeriesError(f"{where}: the patch deletes this file but leaves lines in it")
        return None
    return "".join(out)


def apply_series(
    patches: Iterable[Patch], read: Callable[[str], str | None]
) -> dict[str, str | None]:
    """Apply in order; returns {wheel path: new text or None for deleted}. `read` gives a base file or None."""
    changed: dict[str, str | None] = {}
    for patch in patches:
        for fd in patch.files:
            if fd.old_path and fd.new_path and fd.old_path != fd.new_path:
                raise SeriesError(f"{patch.name}: renames ({fd.old_path} -> {fd.new_path}) are not supported")
            target = wheel_path(fd.path, patch)
            if target is None:
                continue
            current = changed[target] if target in changed else read(target)
            changed[target] = apply_file_diff(current, fd, patch)
    return changed


def read_from_dir(root: Path) -> Callable[[str], str | None]:
    def read(rel: str) -> str | None:
        p = root / rel
        return p.read_text(encoding="utf-8", errors="surrogateescape") if p.is_file() else None

    return read


def write_to_dir(root: Path, changed: dict[str, str | None]) -> None:
    for rel, text in changed.items():
        p = root / rel
        if text is None:
            p.unlink()
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text, encoding="utf-8", errors="surrogateescape")
