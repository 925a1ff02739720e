"""Test helpers shared by the sandbox tests: find `sleep <marker>` processes left behind by a program."""

from __future__ import annotations

import os
import time
from pathlib import Path


def sleepers(marker: str) -> list[int]:
    """Live processes whose command line is `sleep <marker>` (zombies have none)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if len(cmdline) >= 2 and cmdline[0].endswith(b"sleep") and cmdline[1] == marker.encode():
                found.append(int(entry))
    return found


def gone_soon(*markers: str, within_s: float = 5.0) -> bool:
    """Whether every `sleep <marker>` process is gone within `within_s` (SIGKILL is delivered asynchronously)."""
    deadline = time.monotonic() + within_s
    while any(sleepers(m) for m in markers):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
