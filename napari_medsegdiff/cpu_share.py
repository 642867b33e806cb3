"""Sharing the CPU gracefully: fewer torch threads while other processes are busy.

torch's OpenMP worker threads spin-wait for each other at every parallel region. On a
quiet machine that is the fastest way to run small tensors; when another process holds a
core, each barrier waits for a thread that is not running and work slows 5-10x
(BENCHMARKS.md, "Shared CPU"). :class:`CpuShare` watches how much CPU *other* processes
use (``/proc/stat`` minus this process's own CPU time) and drops torch to one thread while
they and our threads together want at least ``BUSY_CORES`` of a core more than the machine
has, going back to the starting count when they leave (on a large shared server, other
users on other cores do not count). Linux only; elsewhere it does nothing. The user's own
choice wins: an ``OMP_NUM_THREADS`` in the environment turns it off.
"""

from __future__ import annotations

import os
import time

import torch

BUSY_CORES = 0.6  # cores wanted beyond the machine's (others + our threads): one thread
QUIET_CORES = 0.3  # ... and back once the excess is below this
INTERVAL_S = 0.5  # shortest window the load is measured over
_PROC_STAT = "/proc/stat"


def _busy_and_total() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine since boot; None without /proc."""
    try:
        with open(_PROC_STAT, encoding="ascii") as fh:
            fields = fh.readline().split()[1:]
    except OSError:
        return None
    ticks = [int(v) for v in fields[:8]]
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks) - idle) / hz, sum(ticks) / hz


class CpuShare:
    """Call :meth:`adjust` between units of work (a chunk of denoising, a training step)."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.enabled = (
            torch.device(device).type == "cpu"
            and "OMP_NUM_THREADS" not in os.environ
            and torch.get_num_threads() > 1
            and _busy_and_total() is not None
        )
        self.full = torch.get_num_threads()
        self.others = 0.0  # cores other processes used over the last window
        self.excess = 0.0  # others + our threads - the machine's cores
        self._mark = self._sample() if self.enabled else None

    def _sample(self) -> tuple[float, float, float, float] | None:
        machine = _busy_and_total()
        if machine is None:
            return None
        return time.monotonic(), machine[0], time.process_time(), machine[1]

    def adjust(self) -> int:
        """Re-measure (at most every ``INTERVAL_S``) and set the thread count; returns it."""
        if not self.enabled or self._mark is None:
            return torch.get_num_threads()
        now = self._sample()
        if now is None:
            return torch.get_num_threads()
        wall = now[0] - self._mark[0]
        if wall < INTERVAL_S:
            return torch.get_num_threads()
        machine_busy = now[1] - self._mark[1]
        ours = now[2] - self._mark[2]
        cores = (now[3] - self._mark[3]) / wall
        self._mark = now
        self.others = max(0.0, (machine_busy - ours) / wall)
        self.excess = self.others + self.full - cores
        threads = torch.get_num_threads()
        if threads > 1 and self.excess >= BUSY_CORES:
            torch.set_num_threads(1)
        elif threads < self.full and self.excess < QUIET_CORES:
            torch.set_num_threads(self.full)
        return torch.get_num_threads()

    def restore(self) -> None:
        """Back to the starting thread count (end of a run)."""
        if self.enabled:
            torch.set_num_threads(self.full)
