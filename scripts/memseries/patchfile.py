"""Read a `git format-patch` file: its header (subject, message, trailers) and where its diff's files and hunks are.

Applying is `git apply`'s job (gitapply.py); this reader only names things for messages and metadata checks.
"""

from __future__ import annotations

import email
import email.policy
import re
from dataclasses import dataclass
from pathlib import Path

from memseries.errors import SeriesError
from memseries.paths import read_utf8

HUNK_HEADER = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
TRAILER = re.compile(r"^([A-Za-z][A-Za-z0-9-]*): (.+)$")


@dataclass(frozen=True)
class HunkRef:
    path: str  # repository path of the file the hunk changes
    index: int  # 1-based within its file
    header: str  # the "@@ ... @@" line
    old_start: int
    line: int  # 1-based line of the header in the patch file


@dataclass
class Patch:
    path: Path
    subject: str
    message: str  # body without the subject
    trailers: dict[str, list[str]]
    header_text: str  # everything before the diff, verbatim
    diff_text: str
    files: list[str]  # repository paths the diff touches (new path, or old path for a deletion)
    renames: list[tuple[str, str]]
    hunks: list[HunkRef]

    @property
    def name(self) -> str:
        return self.path.name

    def hunk_at(self, path: str, old_start: int) -> HunkRef | None:
        return next((h for h in self.hunks if h.path == path and h.old_start == old_start), None)

    def hunk_around(self, line: int) -> HunkRef | None:
        """The last hunk whose header is at or before `line` of the patch file."""
        before = [h for h in self.hunks if h.line <= line]
        return before[-1] if before else None

    def hunk_body(self, ref: HunkRef) -> list[str]:
        """The hunk's lines, as in the patch file (with their tag), up to the next header or file."""
        lines = self.raw.split("\n")[ref.line:]
        out = []
        for line in lines:
            if line.startswith(("@@", "diff --git ", "-- ")) and not line.startswith("--- "):
                break
            out.append(line)
        return out

    @property
    def raw(self) -> str:
        return read_utf8(self.path)


def _strip_prefix(p: str) -> str | None:
    p = p.split("\t")[0]
    if p == "/dev/null":
        return None
    return p[2:] if p[:2] in ("a/", "b/") else p


def parse_trailers(message: str) -> dict[str, list[str]]:
    """Trailers are the `Key: value` lines of the message's last paragraph."""
    paragraphs = [p for p in re.split(r"\n\s*\n", message.strip()) if p.strip()]
    trailers: dict[str, list[str]] = {}
    if not paragraphs:
        return trailers
    for line in paragraphs[-1].splitlines():
        m = TRAILER.match(line.strip())
        if m:
            trailers.setdefault(m.group(1), []).append(m.group(2).strip())
    return trailers


def _index(raw: str) -> tuple[list[str], list[tuple[str, str]], list[HunkRef]]:
    files: list[str] = []
    renames: list[tuple[str, str]] = []
    hunks: list[HunkRef] = []
    lines = raw.split("\n")
    current, old, count = None, None, 0
    for n, line in enumerate(lines, 1):
        if line.startswith("--- ") and n < len(lines) and lines[n].startswith("+++ "):
            old, new = _strip_prefix(line[4:]), _strip_prefix(lines[n][4:])
            current, count = new or old, 0
            if current and current not in files:
                files.append(current)
            if old and new and old != new:
                renames.append((old, new))
        elif (m := HUNK_HEADER.match(line)) and current:
            count += 1
            hunks.append(HunkRef(current, count, line, int(m.group(1)), n))
    return files, renames, hunks


def read_patch(path: Path) -> Patch:
    raw = read_utf8(path)
    m = re.search(r"^(---\n(?=diff --git )|diff --git )", raw, re.M)
    if not m:
        raise SeriesError(f"{path.name}: no diff found")
    header_text, diff_text = raw[: m.start()], raw[m.start():]
    if diff_text.startswith("---\n"):
        diff_text = diff_text[4:]
    # format-patch may end with a "-- \n<git version>" signature
    diff_text = re.sub(r"\n-- \n[^\n]*\n*\Z", "\n", diff_text)
    msg = email.message_from_string(header_text, policy=email.policy.compat32)
    subject = re.sub(r"^\[PATCH[^\]]*\]\s*", "", " ".join((msg.get("Subject") or "").split()))
    if not subject:
        raise SeriesError(f"{path.name}: no Subject header (is it a `git format-patch` file?)")
    message = msg.get_payload() if isinstance(msg.get_payload(), str) else ""
    message = re.split(r"^---$", message, maxsplit=1, flags=re.M)[0]  # a diffstat, if any, is not message
    files, renames, hunks = _index(raw)
    return Patch(path, subject, message.strip("\n"), parse_trailers(message), header_text, diff_text, files,
                 renames, hunks)
