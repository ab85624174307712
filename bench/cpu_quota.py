"""A CPU quota for one process, through a cgroup of its own (v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``).

The Redis Cluster benchmark holds each shard to a share of a core so that the
shards, not the client processes on the same few cores, bound the admitted
rate, as one Redis bounds a fleet of many replicas. Needs a writable cgroup
file system (root in a container usually has it); ``QuotaUnavailable`` says
why not otherwise.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

_ROOT = Path("/sys/fs/cgroup")
_PERIOD_US = 100_000


class QuotaUnavailable(Exception):
    """No writable cgroup CPU controller here."""


def _base() -> tuple[Path, bool]:
    """The folder new cgroups go in, and whether it is cgroup v2."""
    if (_ROOT / "cgroup.controllers").exists():
        return _ROOT, True
    if (_ROOT / "cpu" / "cpu.cfs_quota_us").exists():
        return _ROOT / "cpu", False
    raise QuotaUnavailable("no cgroup CPU controller under /sys/fs/cgroup")


def limit(pid: int, cpus: float, name: str) -> Path:
    """Put ``pid`` (all its threads) in a new cgroup ``name`` allowed ``cpus`` cores; returns the cgroup."""
    base, v2 = _base()
    group = base / name
    try:
        group.mkdir(exist_ok=True)
        quota = max(1_000, int(cpus * _PERIOD_US))
        if v2:
            (group / "cpu.max").write_text(f"{quota} {_PERIOD_US}")
        else:
            (group / "cpu.cfs_period_us").write_text(str(_PERIOD_US))
            (group / "cpu.cfs_quota_us").write_text(str(quota))
        (group / "cgroup.procs").write_text(str(pid))
    except OSError as exc:
        release(group)
        raise QuotaUnavailable(f"cannot set a CPU quota ({type(exc).__name__}: {exc.strerror})") from None
    return group


def release(group: Path) -> None:
    """Remove the cgroup once its processes have ended (moving any left back to the root)."""
    with contextlib.suppress(OSError):
        for pid in (group / "cgroup.procs").read_text().split():
            (group.parent / "cgroup.procs").write_text(pid)
    with contextlib.suppress(OSError):
        os.rmdir(group)
