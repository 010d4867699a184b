"""Is the process that was streaming a reply still alive?

A row being streamed records its writer's host, pid and the pid's start time; a reader that
finds the writer gone (or the pid reused by another process) marks the row interrupted.
"""

from __future__ import annotations

import os
import socket
import time

HOST = socket.gethostname()
FOREIGN_HOST_STALE_S = 600.0  # another machine's writer: trust its heartbeat for this long


def process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux), or None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # fields 3.. of proc(5)
    if fields[0] == "Z":  # a zombie is dead, whatever kill(0) says
        return "zombie"
    return fields[19]  # field 22: starttime


MY_START = process_start(os.getpid())


def writer_alive(host: str | None, pid: int | None, start: str | None, heartbeat: float | None) -> bool:
    if host != HOST:
        return heartbeat is not None and time.time() - heartbeat < FOREIGN_HOST_STALE_S
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    now = process_start(pid)
    if now == "zombie":
        return False
    return start is None or now is None or now == start
