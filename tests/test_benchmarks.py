"""The collection benchmark runs end to end (timings belong in docs/performance.md, not in assertions)."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.process import ROOT

CONFIGURATIONS = ("1 GPU x 1 engine", "8 GPUs x 1 engine", "1 GPU x 4 engines", "8 GPUs x 4 engines")


def test_bench_collect_quick_prints_a_row_per_configuration() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_collect.py"), "--quick"],
                          cwd=ROOT, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    for name in CONFIGURATIONS:
        row = re.search(rf"^\| {re.escape(name)} \|(.*)\|$", done.stdout, re.M)
        assert row is not None, f"no table row for {name}:\n{done.stdout}"
        assert row.group(1).count("|") >= 9, row.group(0)  # every column filled
