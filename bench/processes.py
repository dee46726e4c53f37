"""Processes the benchmarks start, and their CPU time and memory as ``/proc`` reports them.

CPU time is ``utime + stime`` of ``/proc/PID/stat``, summed over all threads of the
process. Peak RSS is ``VmHWM`` of ``/proc/PID/status``: the kernel's high-water mark of
resident memory since the process started, so no sample can miss a peak. Machine-wide
CPU use comes from the first line of ``/proc/stat``. Linux only.

Every process started here is stopped by its own id: SIGTERM, then SIGKILL when it has
not exited within the grace period.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
STOP_GRACE_SECONDS: Final = 15.0


def cpu_seconds(pid: int) -> float:
    """Return the CPU seconds (user + system) that process ``pid`` has used so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name may hold spaces and brackets: the fields start after the last ')'.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise LookupError(f"{key} missing from /proc/{pid}/status")


def peak_rss_bytes(pid: int) -> int:
    """Return the peak resident set size of process ``pid`` since it started (VmHWM)."""
    return _status_kib(pid, "VmHWM") * 1024


def children_of(parent: int) -> list[tuple[int, str]]:
    """Return ``(pid, command line)`` of every process whose parent is ``parent``."""
    children: list[tuple[int, str]] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            children.append((int(entry.name), command))
    return children


@dataclass(frozen=True)
class MachineCpu:
    """A reading of ``/proc/stat``: busy and total jiffies of all cores together."""

    busy: int
    total: int

    @classmethod
    def read(cls) -> MachineCpu:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        total = sum(values[:8])  # guest time is already counted in user and nice
        return cls(total - idle, total)

    def busy_fraction_since(self, earlier: MachineCpu) -> float:
        """Return the share of all cores' time spent busy between ``earlier`` and this reading."""
        total = self.total - earlier.total
        return (self.busy - earlier.busy) / total if total else 0.0


def stop_process(process: subprocess.Popen[bytes], grace: float = STOP_GRACE_SECONDS) -> int | None:
    """Send SIGTERM to ``process``, then SIGKILL after ``grace`` seconds; return its exit status."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=grace)
    return process.returncode


class ConsumerProcess:
    """A consumer running as a child process, its output going to a log file."""

    def __init__(self, name: str, command: Sequence[str], environment: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("wb")
        self.started_at = time.time()
        self._process = subprocess.Popen(  # noqa: S603 - commands are built by the benchmark itself
            list(command), env=environment, stdout=self._log, stderr=subprocess.STDOUT
        )
        self.pid = self._process.pid
        self.exit_status: int | None = None

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def peak_rss_bytes(self) -> int:
        return peak_rss_bytes(self.pid)

    def running(self) -> bool:
        return self._process.poll() is None

    def count_log_lines(self, text: str) -> int:
        return self.log_path.read_text(errors="replace").count(text)

    def wait_for_log(self, text: str, count: int, timeout: float) -> float:
        """Wait until ``text`` appears ``count`` times in the log; return the seconds waited.

        Raises RuntimeError when the process exits first or the wait times out.
        """
        started = time.monotonic()
        while self.count_log_lines(text) < count:
            if not self.running():
                raise RuntimeError(f"{self.name} exited with status {self._process.returncode}; see {self.log_path}")
            if time.monotonic() - started > timeout:
                raise RuntimeError(
                    f"{self.name} did not log {text!r} {count} times within {timeout} s; see {self.log_path}"
                )
            time.sleep(0.05)
        return time.monotonic() - started

    def stop(self) -> int | None:
        """Stop the process by its id and close its log; return its exit status."""
        self.exit_status = stop_process(self._process)
        self._log.close()
        return self.exit_status
