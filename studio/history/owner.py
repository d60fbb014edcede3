"""Which process owns a running run, and whether that process is still there.

An owner is "host:pid:start", where start is the process's start time in clock ticks since boot
(Linux /proc), so a pid the kernel has reused for another program does not look alive. On the same
host liveness is checked directly; a run owned on another host (a shared data folder) is judged by
its heartbeat, which the running process refreshes every HEARTBEAT_S seconds.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime, timedelta, timezone
from functools import cache

HEARTBEAT_S = 10.0
# A run owned elsewhere whose heartbeat is older than this is taken for dead: several missed beats,
# so a busy machine that beats late is not mislabelled.
STALE_AFTER = timedelta(seconds=12 * HEARTBEAT_S)


def process_start(pid: int) -> str | None:
    """The start time of a process (clock ticks since boot), or None where /proc does not say."""
    try:
        stat = open(f"/proc/{pid}/stat", "rb").read().decode(errors="replace")
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: fields after the last ')' are fixed
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


@cache
def this_process() -> str:
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{process_start(pid) or '?'}"


def _parse(owner: str) -> tuple[str, int, str] | None:
    parts = owner.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    host, pid, start = parts
    return host, int(pid), start


def owner_is_gone(owner: str | None, heartbeat_at: datetime | None, now: datetime | None = None) -> bool:
    """True when the process that owns a running row has certainly stopped (or was never recorded)."""
    if not owner:
        return True  # rows from before owners were recorded: only a crash leaves them running
    parsed = _parse(owner)
    if parsed is None:
        return True
    host, pid, start = parsed
    if owner == this_process():
        return False
    if host == socket.gethostname():
        current = process_start(pid)
        if current is not None:
            return start != "?" and current != start  # a reused pid belongs to another program
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False  # alive, another user's
        return False
    now = now or datetime.now(timezone.utc)
    if heartbeat_at is None:
        return True
    if heartbeat_at.tzinfo is None:
        heartbeat_at = heartbeat_at.replace(tzinfo=timezone.utc)
    return now - heartbeat_at > STALE_AFTER
