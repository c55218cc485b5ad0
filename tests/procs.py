"""Finding the processes a test started, by command line, when any of them may exit meanwhile.

Listing children and then reading each one's command line races with a child that exits in
between (`psutil.NoSuchProcess` from `cmdline()`): such a child is simply not there any more.
"""

from __future__ import annotations

import psutil


def children_named(pid: int, needle: str) -> list[psutil.Process]:
    """Live descendants of `pid` whose command line contains `needle` (none if `pid` is gone)."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for child in children:
        try:
            if needle in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:  # exited (or became unreadable) since the listing
            continue
    return found


def listeners(port: int) -> list[str]:
    """What still listens on TCP `port`, as 'pid name' (pid None when the socket's owner is not
    ours to see). Connections in TIME_WAIT after a server closed them are not listeners: a
    bare bind() fails on them, yet a restarted server (SO_REUSEADDR) binds fine."""
    found = []
    for c in psutil.net_connections(kind="tcp"):
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port:
            try:
                name = psutil.Process(c.pid).name() if c.pid else "?"
            except psutil.Error:
                name = "?"
            found.append(f"{c.pid} {name}")
    return found
