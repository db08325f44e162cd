"""Reading an strace log for plaintext leaving a process through write syscalls or files opened to write.

The trace is taken with ``strace -f -y -xx -s N``: every string argument and every path strace prints
beside a file descriptor (``-y``) is hex-escaped (``\\x41``), so a log line can be parsed without
ambiguity, and whole buffers are printed up to N bytes (a longer one ends in ``...`` and is reported
as unreadable rather than assumed clean).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

WRITES = ("write", "pwrite64", "writev", "pwritev", "pwritev2")
# Syscalls that move data between descriptors without a user buffer strace could show.
MOVES = ("sendfile", "sendfile64", "copy_file_range", "splice", "tee", "vmsplice")
TRACED = ",".join([*WRITES, *MOVES, "openat", "open", "creat", "openat2", "connect", "sendto", "sendmsg"])
WINDOW = 64

_CALL = re.compile(r"^(?P<pid>\d+) +(?:<\.\.\. )?(?P<name>[a-z0-9_]+)\((?P<args>.*)$")
_FD = re.compile(r"^(?P<fd>-?\d+|AT_FDCWD)(?:<(?P<path>(?:\\x[0-9a-f]{2})*)>)?")
_STRING = re.compile(r'"(?P<hex>(?:\\x[0-9a-f]{2})*)"(?P<cut>\.\.\.)?')
_FAMILY = re.compile(r"sa_family=(?P<family>AF_[A-Z0-9]+)")
_SUN_PATH = re.compile(r'sun_path=(?:@)?"(?P<hex>(?:\\x[0-9a-f]{2})*)"')
_WRITE_FLAGS = re.compile(r"\bO_(?:WRONLY|RDWR|CREAT|TRUNC|APPEND)\b")


def _unhex(text: str) -> bytes:
    return bytes.fromhex(text.replace("\\x", ""))


def fd_kind(path: str | None) -> str:
    """memfd, pipe, socket, anon, device, proc, or file (anything on a filesystem, /dev/shm included)."""
    if path is None:
        return "unknown"
    if path.startswith("/memfd:"):
        return "memfd"
    if path.startswith("pipe:"):
        return "pipe"
    if path.startswith(("socket:", "UNIX:", "TCP:", "UDP:", "NETLINK:")):
        return "socket"
    if path.startswith("anon_inode:"):
        return "anon"
    if path.startswith("/proc/"):
        return "proc"
    if path.startswith("/dev/") and not path.startswith(("/dev/shm/", "/dev/mqueue/")):
        return "device"
    return "file"


@dataclass
class Write:
    pid: int
    syscall: str
    fd_path: str | None
    data: bytes
    truncated: bool


@dataclass
class Open:
    pid: int
    syscall: str
    path: str
    flags: str
    writing: bool


@dataclass
class Connect:
    """A connect() (or a sendto/sendmsg naming an address): the family and, for AF_UNIX, the path."""

    pid: int
    syscall: str
    family: str
    path: str | None


@dataclass
class Trace:
    writes: list[Write] = field(default_factory=list)
    opens: list[Open] = field(default_factory=list)
    connects: list[Connect] = field(default_factory=list)
    moves: list[str] = field(default_factory=list)  # raw lines of sendfile & co.
    lines: int = 0


def parse(log: Path) -> Trace:
    trace = Trace()
    with log.open("r", encoding="ascii", errors="replace") as f:
        for line in f:
            trace.lines += 1
            m = _CALL.match(line)
            if m is None or "resumed>" in line[: 40 + len(m.group("name"))]:
                continue  # signals, exits, and the second half of a call split across threads
            name, args, pid = m.group("name"), m.group("args"), int(m.group("pid"))
            if name in WRITES:
                fd = _FD.match(args)
                path = (
                    _unhex(fd.group("path")).decode("utf-8", "replace")
                    if fd and fd.group("path") is not None
                    else None
                )
                strings = list(_STRING.finditer(args))
                data = b"".join(_unhex(s.group("hex")) for s in strings)
                trace.writes.append(Write(pid, name, path, data, any(s.group("cut") for s in strings)))
            elif name in ("connect", "sendto", "sendmsg"):
                family = _FAMILY.search(args)
                if family is None:
                    continue  # a send on an already connected socket: its connect() was recorded
                sun = _SUN_PATH.search(args)
                path = _unhex(sun.group("hex")).decode("utf-8", "replace") if sun else None
                trace.connects.append(Connect(pid, name, family.group("family"), path))
            elif name in MOVES:
                trace.moves.append(line.rstrip())
            elif name in ("openat", "open", "creat", "openat2"):
                dirfd = _FD.match(args) if name in ("openat", "openat2") else None
                strings = list(_STRING.finditer(args))
                if not strings:
                    continue
                path = _unhex(strings[0].group("hex")).decode("utf-8", "replace")
                if not path.startswith("/") and dirfd is not None and dirfd.group("path"):
                    path = _unhex(dirfd.group("path")).decode("utf-8", "replace").rstrip("/") + "/" + path
                flags = args[strings[0].end() :].split(")")[0].strip(", ")
                writing = name == "creat" or _WRITE_FLAGS.search(flags) is not None
                trace.opens.append(Open(pid, name, path, flags, writing))
    return trace


class Needle:
    """Finds whether a buffer shares any WINDOW-byte run with a plaintext (not only whole copies).

    Every WINDOW-byte run of the plaintext contains an aligned block of WINDOW // 2 bytes, so a buffer
    is scanned once against a set of those blocks and each hit is confirmed byte for byte.
    """

    def __init__(self, plaintext: bytes) -> None:
        assert len(plaintext) >= WINDOW
        self.plain = plaintext
        self.half = WINDOW // 2
        self.blocks: dict[bytes, list[int]] = {}
        for at in range(0, len(plaintext) - self.half + 1, self.half):
            self.blocks.setdefault(plaintext[at : at + self.half], []).append(at)

    def found_in(self, data: bytes) -> bool:
        half = self.half
        for j in range(0, len(data) - half + 1):
            starts = self.blocks.get(data[j : j + half])
            if starts is None:
                continue
            for at in starts:
                for shift in range(0, half + 1):
                    lo_d, lo_p = j - shift, at - shift
                    if lo_d < 0 or lo_p < 0:
                        break
                    if data[lo_d : lo_d + WINDOW] == self.plain[
                        lo_p : lo_p + WINDOW
                    ] and lo_d + WINDOW <= len(data):
                        return True
        return False


def writes_carrying(trace: Trace, needle: Needle) -> Iterator[Write]:
    for w in trace.writes:
        if len(w.data) >= WINDOW and needle.found_in(w.data):
            yield w


def strace_command(log: Path, size: int) -> list[str]:
    return ["strace", "-f", "-y", "-xx", "-qq", f"-s{size}", "-e", f"trace={TRACED}", "-o", str(log)]
