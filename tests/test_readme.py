"""The README stays a product README: short, and every file it names exists."""

from __future__ import annotations

import re
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
README = REPOSITORY / "README.md"
REPORTS = REPOSITORY / "docs" / "benchmarks"
# Names the README gives in backticks that are no files of this repository: folders made at run
# time, the data beside it, URL paths.
NOT_FILES = {"../shared/data", "./data", "/docs", "state/quickstart/admin-token"}


def test_the_readme_is_at_most_200_lines() -> None:
    assert len(README.read_text().splitlines()) <= 200


def test_every_path_and_report_the_readme_names_exists() -> None:
    text = README.read_text()
    paths = set(re.findall(r"`([\w./-]+/[\w./-]*)`", text)) - NOT_FILES
    missing = [path for path in sorted(paths) if not (REPOSITORY / path).exists()]
    reports = set(re.findall(r"`([\w-]+\.md)`", text))  # bare names: reports
    missing += [name for name in sorted(reports) if not (REPORTS / name).exists()]
    assert paths and reports
    assert missing == []
