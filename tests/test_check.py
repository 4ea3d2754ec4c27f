"""`memseries check`: exact application, the metadata rules, and one clear line for each kind of bad input."""

from __future__ import annotations

import re

from fakerepo import replace_line

DOCSTRING = "    :param parallelism: how many parallel processes are run in the executor, must be > 0\n"


def test_good_series_passes(fake_repo):
    fake_repo.make_patch("0001-doc.patch", replace_line(DOCSTRING, DOCSTRING + "    (patched)\n"))
    proc = fake_repo.memseries("check")
    assert proc.returncode == 0, proc.stderr
    assert "3.1.3: 1 patches apply exactly, 1 files changed" in proc.stdout


def test_unknown_base_is_one_clear_line(fake_repo):
    proc = fake_repo.memseries("check", "--base", "9.9.9")
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "memseries check: error: unknown base '9.9.9': supported bases are 3.1.3 "
        f"(directories under {fake_repo.root / 'airflow-core' / 'patches'})"
    )


def test_conflicting_patch_names_patch_file_and_hunk(fake_repo):
    patch = fake_repo.make_patch("0001-doc.patch", replace_line(DOCSTRING, DOCSTRING + "    (patched)\n"))
    # the context the patch expects is no longer what the base has at that line
    patch.write_text(patch.read_text().replace(" It uses the multiprocessing", " It uses the threading"))
    proc = fake_repo.memseries("check")
    assert proc.returncode == 1
    line = proc.stderr.strip()
    assert "\n" not in line
    assert re.search(
        r"0001-doc\.patch: airflow-core/src/airflow/executors/local_executor\.py: hunk #1 \(@@ -\d+,\d+ \+\d+,\d+ @@.*\) "
        r"does not apply: line \d+ is '    It uses the multiprocessing .*', the patch expects '    It uses the threading .*'",
        line,
    ), line


def test_second_patch_applies_on_top_of_the_first(fake_repo):
    fake_repo.make_patch("0001-a.patch", replace_line(DOCSTRING, DOCSTRING + "    (first)\n"))
    fake_repo.make_patch("0002-b.patch", replace_line("    (first)\n", "    (first)\n    (second)\n"))
    proc = fake_repo.memseries("check")
    assert proc.returncode == 0, proc.stderr
    assert "2 patches apply exactly" in proc.stdout


def test_missing_trailer_is_named(fake_repo):
    patch = fake_repo.make_patch("0001-doc.patch", replace_line(DOCSTRING, DOCSTRING + "    (patched)\n"))
    patch.write_text(patch.read_text().replace("Forwarded: no\n", ""))
    proc = fake_repo.memseries("check")
    assert proc.returncode == 1
    assert "FAIL 3.1.3: 0001-doc.patch: missing trailer Forwarded:" in proc.stderr


def test_missing_newsfragment_is_named(fake_repo):
    fake_repo.make_patch("0001-doc.patch", replace_line(DOCSTRING, DOCSTRING + "    (patched)\n"))
    (fake_repo.root / "newsfragments" / "1.misc.rst").unlink()
    proc = fake_repo.memseries("check")
    assert proc.returncode == 1
    assert "0001-doc.patch: newsfragment newsfragments/1.misc.rst does not exist" in proc.stderr


def test_missing_test_module_is_named(fake_repo):
    fake_repo.make_patch("0001-doc.patch", replace_line(DOCSTRING, DOCSTRING + "    (patched)\n"))
    (fake_repo.root / "airflow-core" / "tests" / "unit" / "test_dummy.py").unlink()
    proc = fake_repo.memseries("check")
    assert proc.returncode == 1
    assert "test module airflow-core/tests/unit/test_dummy.py does not exist" in proc.stderr


def test_series_and_patch_files_must_agree(fake_repo):
    fake_repo.make_patch("0001-doc.patch", replace_line(DOCSTRING, DOCSTRING + "    (patched)\n"))
    (fake_repo.base_dir / "series").write_text("0001-doc.patch\n0002-gone.patch\n")
    proc = fake_repo.memseries("check")
    assert proc.returncode == 1 and "patch 0002-gone.patch does not exist" in proc.stderr
    (fake_repo.base_dir / "series").write_text("")
    proc = fake_repo.memseries("check")
    assert proc.returncode == 1 and "not listed in the series: 0001-doc.patch" in proc.stderr


def test_junk_line_between_hunks_is_refused(fake_repo):
    """`git am` refuses a patch with a stray line between two hunks; `check` must refuse it too."""
    patch = fake_repo.make_patch(
        "0001-two.patch",
        lambda text: replace_line("    def terminate(self):\n", "    def terminate(self):  # (patched)\n")(
            replace_line(DOCSTRING, DOCSTRING + "    (patched)\n")(text)
        ),
    )
    text = patch.read_text()
    second = [m.start() for m in re.finditer(r"^@@ ", text, re.M)][1]
    patch.write_text(text[:second] + "junk between the hunks\n" + text[second:])
    proc = fake_repo.memseries("check")
    assert proc.returncode == 1
    line = proc.stderr.strip()
    assert "\n" not in line
    assert re.fullmatch(
        r"FAIL 3\.1\.3: 0001-two\.patch: airflow-core/src/airflow/executors/local_executor\.py: hunk #2 "
        r"\(@@ -\d+,\d+ \+\d+,\d+ @@.*\) is cut off from its file by a stray line before it "
        r"\(git apply: patch fragment without header at line \d+\)",
        line,
    ), line


def _edit_first_hunk_header(fake_repo, edit) -> tuple[str, tuple[int, int, int, int], str]:
    """A one-hunk patch whose header `edit((a, b, c, d)) -> (a, b, c, d)` rewrites; (new header, old numbers, rest)."""
    patch = fake_repo.make_patch("0001-doc.patch", replace_line(DOCSTRING, DOCSTRING + "    (patched)\n"))
    text = patch.read_text()
    m = re.search(r"^@@ -(\d+),(\d+) \+(\d+),(\d+) @@", text, re.M)
    old = tuple(map(int, m.groups()))
    header = "@@ -{},{} +{},{} @@".format(*edit(old))
    patch.write_text(text.replace(m.group(0), header, 1))
    return header, old, text[m.end():].split("\n", 1)[0]


def test_shifted_hunk_is_refused_not_searched_for(fake_repo):
    """`git apply` would find the context three lines further down; the series must not rely on that."""
    header, (_, _, c, _), rest = _edit_first_hunk_header(fake_repo, lambda h: (h[0] - 3, h[1], h[2] - 3, h[3]))
    proc = fake_repo.memseries("check")
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "FAIL 3.1.3: 0001-doc.patch: airflow-core/src/airflow/executors/local_executor.py: hunk #1 "
        f"({header}{rest}) does not apply where its header says: git apply finds its context +3 lines away "
        f"(at line {c}); restack the patch"
    )


def test_miscounted_hunk_is_refused(fake_repo):
    _edit_first_hunk_header(fake_repo, lambda h: (h[0], h[1] + 5, h[2], h[3] + 5))
    proc = fake_repo.memseries("check")
    assert proc.returncode == 1
    assert re.fullmatch(
        r"FAIL 3\.1\.3: 0001-doc\.patch: airflow-core/src/airflow/executors/local_executor\.py: hunk #1 \(@@ .*\) "
        r"is malformed \(git apply: corrupt patch at line \d+\)",
        proc.stderr.strip(),
    ), proc.stderr


def test_newsfragment_names_towncrier_accepts(fake_repo):
    patch = fake_repo.make_patch("0001-doc.patch", replace_line(DOCSTRING, DOCSTRING + "    (patched)\n"))
    frags = fake_repo.root / "newsfragments"
    for name, ok in (("+no-upstream-issue.bugfix.rst", True), ("1.misc.2.rst", True), ("one.misc.rst", False),
                     ("1.cleanup.rst", False)):
        (frags / name).write_text("A change.\n")
        patch.write_text(re.sub(r"^Newsfragment: .*$", f"Newsfragment: newsfragments/{name}", patch.read_text(),
                                flags=re.M))
        proc = fake_repo.memseries("check")
        assert (proc.returncode == 0) == ok, (name, proc.stderr)
        if not ok:
            assert proc.stderr.strip() == (
                f"FAIL 3.1.3: 0001-doc.patch: newsfragment newsfragments/{name} is not "
                "newsfragments/<number>.<type>[.<counter>].rst or +<slug>.<type>.rst"
            )
