"""What Linux says about a process (/proc), and re-running a script under the project's venv.

Standard library only, so that benchmarks can import it before their dependencies are there.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "; fields[0] is field 3 (state)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """VmRSS of a process (0 when /proc does not say)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def ensure_venv(modules: tuple[str, ...], who: str) -> None:
    """Re-run this script under ./.venv when this interpreter lacks one of ``modules``; exit with a
    one-line reason when there is no such venv either."""
    if all(importlib.util.find_spec(name) is not None for name in modules):
        return
    venv = ROOT / ".venv" / "bin" / "python"
    if venv.exists() and not os.environ.get("INFERMETER_BENCH_REEXEC"):
        os.environ["INFERMETER_BENCH_REEXEC"] = "1"
        os.execv(str(venv), [str(venv), *sys.argv])
    raise SystemExit(f"{who}: needs the project's dependencies (pip install -e .) or ./.venv")
