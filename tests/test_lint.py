"""The code stays ruff- and mypy-clean (both come with the test extra)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tool(name: str) -> list[str]:
    if shutil.which(name) is None and not (Path(sys.executable).parent / name).exists():
        pytest.skip(f"{name} not installed (pip install -e '.[test]')")
    return [sys.executable, "-m", name]


def test_ruff() -> None:
    result = subprocess.run([*_tool("ruff"), "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_on_the_package() -> None:
    result = subprocess.run(_tool("mypy"), cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# stopping processes by name can stop someone else's (another Prometheus on the CI machine)
_BY_NAME = re.compile(r"\b(pkill|killall|pgrep)\b")


def test_nothing_stops_processes_by_name() -> None:
    """CI and tests stop only the processes they started, by PID (issue 12, defect 7)."""
    suffixes = {".py", ".sh", ".yaml", ".yml", ""}
    scripts = [ROOT / "Dockerfile", *(p for folder in ("tests", "benchmarks", "tools", "deploy", "exporter", ".ci")
                                      for p in (ROOT / folder).rglob("*") if p.suffix in suffixes and p.is_file())]
    offenders = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
                 for path in scripts if path != Path(__file__)
                 for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
                 if _BY_NAME.search(line)]
    assert not offenders, "\n".join(offenders)
