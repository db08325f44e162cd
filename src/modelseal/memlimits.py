"""How much more memory this process may use, so a model that cannot fit is refused, not OOM-killed.

Decrypting a 500 MB model in a 300 MB cgroup ends in SIGKILL (exit 137) half-way, with nothing said.
Before any allocation, :func:`check_room` compares what the plaintext needs with the tightest of:

* cgroup v2: ``memory.max`` minus what the cgroup uses, for the process's cgroup and every ancestor
  (a parent's limit binds its children); page cache counts as free, since the kernel reclaims it
  before it kills;
* cgroup v1: ``memory.limit_in_bytes`` minus ``memory.usage_in_bytes`` (less its cache) likewise;
* ``RLIMIT_AS`` minus the address space the process has mapped already.

A limit that cannot be read is no limit: the check only refuses what the kernel would surely refuse.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass
from pathlib import Path

from .errors import MemoryLimitError

CGROUP_ROOT = Path("/sys/fs/cgroup")
_UNLIMITED_V1 = 1 << 62  # v1 writes "no limit" as a huge page-aligned number


@dataclass(frozen=True)
class Room:
    """Bytes the process may still allocate, and the limit that says so."""

    bytes: int
    source: str


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" and garbage: no limit


def _stat_field(path: Path, name: str) -> int:
    """The number after ``name`` in a "name value [unit]" file (memory.stat, /proc/self/status); 0 if none."""
    try:
        for line in path.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 2 and fields[0] == name and fields[1].isdigit():
                return int(fields[1])
    except OSError:
        pass
    return 0


def _cgroup_paths(proc_cgroup: str) -> tuple[str | None, str | None]:
    """(the v2 path, the v1 memory controller's path) of this process."""
    v2 = v1 = None
    for line in proc_cgroup.splitlines():
        _, controllers, path = line.split(":", 2) if line.count(":") >= 2 else ("", "", "")
        if controllers == "" and path:
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v2, v1


def _ancestors(root: Path, path: str) -> list[Path]:
    parts = [p for p in path.split("/") if p]
    return [root.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]


def cgroup_room(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> Room | None:
    try:
        v2, v1 = _cgroup_paths(proc_cgroup.read_text())
    except OSError:
        return None
    found: list[Room] = []
    if v2 is not None:
        for folder in _ancestors(root, v2):
            limit, used = _read_int(folder / "memory.max"), _read_int(folder / "memory.current")
            if limit is not None and used is not None:
                free = limit - used + _stat_field(folder / "memory.stat", "file")
                found.append(Room(max(0, free), f"cgroup memory.max of {folder}"))
    if v1 is not None:
        for folder in _ancestors(root / "memory", v1):
            limit = _read_int(folder / "memory.limit_in_bytes")
            used = _read_int(folder / "memory.usage_in_bytes")
            if limit is not None and used is not None and limit < _UNLIMITED_V1:
                free = limit - used + _stat_field(folder / "memory.stat", "cache")
                found.append(Room(max(0, free), f"cgroup memory.limit_in_bytes of {folder}"))
    return min(found, key=lambda r: r.bytes, default=None)


def address_space_room(status: Path = Path("/proc/self/status")) -> Room | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    mapped_kib = _stat_field(status, "VmSize:")  # "VmSize:  123456 kB"
    return Room(max(0, soft - mapped_kib * 1024), "RLIMIT_AS")


def room() -> Room | None:
    """The tightest limit on further allocations, or None where nothing limits them."""
    return min(
        (r for r in (cgroup_room(), address_space_room()) if r is not None),
        key=lambda r: r.bytes,
        default=None,
    )


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def check_room(needed: int, what: str) -> None:
    """Raise MemoryLimitError, naming both sizes, if ``needed`` bytes cannot fit."""
    free = room()
    if free is not None and needed > free.bytes:
        raise MemoryLimitError(
            f"{what} needs {_mb(needed)} of memory but this process may use only {_mb(free.bytes)} "
            f"more ({free.source}); nothing was decrypted"
        )
