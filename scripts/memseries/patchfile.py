"""Read a `git format-patch` file: its message, its trailers and its diff, hunk by hunk."""

from __future__ import annotations

import email
import email.policy
import re
from dataclasses import dataclass, field
from pathlib import Path

from memseries.errors import SeriesError

HUNK_HEADER = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
TRAILER = re.compile(r"^([A-Za-z][A-Za-z0-9-]*): (.+)$")


@dataclass
class Hunk:
    index: int  # 1-based within its file
    old_start: int
    old_count: int
    new_start: int
    new_count: int
    header: str
    old: list[str] = field(default_factory=list)  # lines with their "\n" (or without, at a file's end)
    new: list[str] = field(default_factory=list)


@dataclass
class FileDiff:
    old_path: str | None  # None for a new file
    new_path: str | None  # None for a deleted file
    hunks: list[Hunk] = field(default_factory=list)

    @property
    def path(self) -> str:
        return self.new_path or self.old_path or "?"


@dataclass
class Patch:
    path: Path
    subject: str
    message: str  # body without the subject
    trailers: dict[str, list[str]]
    header_text: str  # everything before the diff, verbatim
    diff_text: str
    files: list[FileDiff]

    @property
    def name(self) -> str:
        return self.path.name


def _strip_prefix(p: str) -> str | None:
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


def _split_lines(text: str) -> list[str]:
    """Split on "\\n" only (str.splitlines would also split on form feeds and friends)."""
    lines = text.split("\n")
    out = [line + "\n" for line in lines[:-1]]
    if lines[-1]:
        out.append(lines[-1])
    return out


def parse_diff(diff_text: str, where: str) -> list[FileDiff]:
    lines = _split_lines(diff_text)
    files: list[FileDiff] = []
    current: FileDiff | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("diff --git "):
            current = None
            i += 1
            continue
        if line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            current = FileDiff(_strip_prefix(line[4:].rstrip("\n").split("\t")[0]),
                               _strip_prefix(lines[i + 1][4:].rstrip("\n").split("\t")[0]))
            files.append(current)
            i += 2
            continue
        m = HUNK_HEADER.match(line)
        if m:
            if current is None:
                raise SeriesError(f"{where}: hunk outside a file diff at diff line {i + 1}")
            old_count = int(m.group(2)) if m.group(2) is not None else 1
            new_count = int(m.group(4)) if m.group(4) is not None else 1
            hunk = Hunk(len(current.hunks) + 1, int(m.group(1)), old_count, int(m.group(3)), new_count,
                        line.rstrip("\n"))
            i += 1
            old_left, new_left = old_count, new_count
            last: list[list[str]] = []
            while old_left or new_left or (i < len(lines) and lines[i].startswith("\\")):
                if i >= len(lines):
                    raise SeriesError(f"{where}: {current.path}: hunk #{hunk.index} is truncated")
                body = lines[i]
                tag, content = body[:1], body[1:]
                if tag == "\\":  # "\ No newline at end of file": the previous line has no newline
                    for side in last:
                        side[-1] = side[-1].rstrip("\n")
                    last = []
                elif tag in (" ", "\n"):
                    content = content if tag == " " else "\n"
                    hunk.old.append(content)
                    hunk.new.append(content)
                    old_left -= 1
                    new_left -= 1
                    last = [hunk.old, hunk.new]
                elif tag == "-":
                    hunk.old.append(content)
                    old_left -= 1
                    last = [hunk.old]
                elif tag == "+":
                    hunk.new.append(content)
                    new_left -= 1
                    last = [hunk.new]
                else:
                    raise SeriesError(f"{where}: {current.path}: hunk #{hunk.index} has a malformed line {i + 1}")
                if old_left < 0 or new_left < 0:
                    raise SeriesError(f"{where}: {current.path}: hunk #{hunk.index} has more lines than its header says")
                i += 1
            current.hunks.append(hunk)
            continue
        i += 1
    return files


def read_patch(path: Path) -> Patch:
    raw = path.read_text(encoding="utf-8", errors="surrogateescape")
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
    return Patch(path, subject, message.strip("\n"), parse_trailers(message), header_text, diff_text,
                 parse_diff(diff_text, path.name))
