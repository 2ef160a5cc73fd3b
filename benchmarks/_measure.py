"""Timing and memory helpers shared by the benchmark scripts (not part of the package).

`run_measured` runs one child process and returns its wall time (interpreter start-up
included) and *its own* peak RSS, read from `os.wait4`'s rusage of that child, so that
several children measured one after the other do not mix their peaks (the cumulative
`RUSAGE_CHILDREN` maximum would).
"""

from __future__ import annotations

import datetime as _dt
import os
import resource
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass


def peak_rss_gib() -> float:
    """Peak RSS of this process so far, GiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def mem_available_gib() -> float | None:
    """MemAvailable from /proc/meminfo, GiB (None where unreadable)."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return None


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).astimezone().isoformat(timespec="seconds")


@dataclass
class ChildRun:
    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    peak_rss_gib: float
    load_before: list[float]
    load_after: list[float]

    def tail(self, n: int = 15) -> str:
        return "\n".join((self.stderr or self.stdout).strip().splitlines()[-n:])


def run_measured(command: Sequence[str], *, env: dict | None = None, cwd: str | None = None,
                 timeout: float | None = None) -> ChildRun:
    """Run `command`; wall time from spawn to exit and the child's own peak RSS (wait4)."""
    import signal
    import tempfile
    import threading

    load_before = load_average()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(command), stdout=out, stderr=err, text=True, env=env,
                                cwd=cwd, start_new_session=True)
        timer = None
        if timeout:
            timer = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
            timer.start()
        _, status, rusage = os.wait4(proc.pid, 0)  # reap it ourselves: its own rusage
        wall = time.perf_counter() - t0
        if timer:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    return ChildRun(proc.returncode, stdout, stderr, wall, rusage.ru_maxrss / 1024**2,
                    load_before, load_average())
