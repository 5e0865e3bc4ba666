"""CPU time read from /proc: a server's (every process of its session) and the machine's,
so that a figure says what it cost and what else the cores were doing meanwhile."""

from __future__ import annotations

import os

_TICK = os.sysconf("SC_CLK_TCK")


def session_cpu_seconds(session_id: int) -> float:
    """utime + stime of every live process in session `session_id` (the API was started
    in a session of its own: the uvicorn supervisor and its worker processes)."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        # fields[0] is field 3 of proc(5): session is field 6, utime 14, stime 15
        if int(fields[3]) == session_id:
            total += int(fields[11]) + int(fields[12])
    return total / _TICK


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent not idle since boot (/proc/stat): over a window,
    what this machine did in all, whoever did it."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:9]]  # user .. steal (guest is in user)
    return (sum(ticks) - ticks[3] - ticks[4]) / _TICK  # less idle and iowait
