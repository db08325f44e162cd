"""Helpers shared by the bench/ scripts (not part of modelseal)."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import gc
import json
import mmap
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

MiB = 1 << 20
GiB = 1 << 30


def write_random_file(path: Path, size: int) -> None:
    """Incompressible bytes, so no layer (page cache, crypto) gets an easy ride."""
    step = 16 * MiB
    with path.open("wb") as f:
        left = size
        while left:
            n = min(step, left)
            f.write(os.urandom(n))
            left -= n


def warm(path: Path) -> None:
    """Read a file once so every timed run sees it in the page cache (we measure CPU, not the disk)."""
    buf = bytearray(8 * MiB)
    with path.open("rb", buffering=0) as f:
        while f.readinto(buf):
            pass


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fresh_private_map(size: int, huge: bool) -> mmap.mmap:
    m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                  prot=mmap.PROT_READ | mmap.PROT_WRITE)
    if huge and hasattr(mmap, "MADV_HUGEPAGE"):
        with contextlib.suppress(OSError):
            m.madvise(mmap.MADV_HUGEPAGE)
    return m


def readinto_full(f: object, view: memoryview) -> None:
    """Like modelseal.fileio.readinto_full: loop, as unbuffered reads may return short counts."""
    readinto = f.readinto  # type: ignore[attr-defined]
    done = 0
    while done < len(view):
        n = readinto(view[done:])
        if not n:
            raise EOFError("short file")
        done += n


def _cpu_times() -> tuple[int, int]:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return sum(fields), fields[3] + fields[4]  # total, idle + iowait


# How the idle waits went (written into the results): a run that timed out started on a busy machine.
IDLE_STATS = {"waits": 0, "timed_out": 0, "seconds": 0.0}


def wait_for_idle(max_wait: float = 120.0, window: float = 0.25, min_idle: float = 0.9) -> float:
    """Wait until other processes leave the CPUs alone; returns the seconds waited.

    These machines have 2 vCPUs and open() uses both (a reader thread beside the decryptor), so a
    test run next door halves it: a timing taken then measures the neighbour, not us. The
    environment variable BENCH_IDLE_WAIT lowers ``max_wait`` (seconds) on a machine that is never
    idle; the results then count how many runs started without the machine being idle.
    """
    cap = os.environ.get("BENCH_IDLE_WAIT")
    if cap:
        max_wait = min(max_wait, float(cap))
    start = time.monotonic()
    while True:
        total0, idle0 = _cpu_times()
        time.sleep(window)
        total1, idle1 = _cpu_times()
        idle = (idle1 - idle0) / max(1, total1 - total0)
        waited = time.monotonic() - start
        if idle >= min_idle or waited >= max_wait:
            IDLE_STATS["waits"] += 1
            IDLE_STATS["timed_out"] += idle < min_idle
            IDLE_STATS["seconds"] += waited
            return waited


def touch_memory(size: int) -> None:
    """Write and release ``size`` bytes of fresh memory.

    On these VMs (virtio-balloon) guest pages idle for a couple of seconds may be handed back to
    the host, and the next first touch then costs up to ~1.5 s/GiB in host faults; doing it just
    before a timed run makes both contenders start from host-backed memory. It reduces the spikes;
    it does not remove them.
    """
    m = fresh_private_map(size, True)
    holder = ctypes.c_char.from_buffer(m)
    try:
        ctypes.memset(ctypes.addressof(holder), 1, size)
    finally:
        del holder
    m.close()


@dataclass
class Timing:
    name: str
    runs: list[float]
    nbytes: int

    @property
    def best(self) -> float:
        return min(self.runs)

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    def rate(self, seconds: float) -> float:
        return self.nbytes / seconds / 1e9


def measure(
    name: str, nbytes: int, reps: int, run: Callable[[], Callable[[], None] | None], touch: int = 0
) -> Timing:
    """Time ``run`` ``reps`` times; it may return an untimed cleanup (e.g. closing a 1 GiB mapping)."""
    runs = []
    for _ in range(reps):
        wait_for_idle()
        gc.collect()
        if touch:
            touch_memory(touch)
        t0 = time.perf_counter()
        cleanup = run()
        runs.append(time.perf_counter() - t0)
        if cleanup is not None:
            cleanup()
    return Timing(name, runs, nbytes)


def print_table(title: str, rows: Sequence[Timing], baseline: Timing, note: str = "") -> None:
    """Best-of and median-of-N side by side; ratios are baseline time / row time (>1 = faster)."""
    print(f"\n## {title}")
    if note:
        print(note)
    print(f"{'what':52} {'best s':>8} {'GB/s':>6} {'x base':>7} {'median s':>9} {'GB/s':>6} {'x base':>7}")
    for r in rows:
        print(
            f"{r.name:52} {r.best:8.3f} {r.rate(r.best):6.2f} {baseline.best / r.best:7.2f} "
            f"{r.median:9.3f} {r.rate(r.median):6.2f} {baseline.median / r.median:7.2f}"
        )
    print(f"(baseline: {baseline.name}; {len(baseline.runs)} runs each; x base = baseline time / time)")


def machine() -> str:
    cpu = "?"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    import cryptography

    return (
        f"nproc {os.cpu_count()}, {cpu}, Linux {platform.release()}, Python {sys.version.split()[0]}, "
        f"cryptography {cryptography.__version__}"
    )


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str]:
    """A fresh database in a throw-away PostgreSQL cluster on loopback; yields its URL.

    The cluster is the tests' (tests/vault/postgres.py: initdb as the `postgres` user when root,
    trust auth on 127.0.0.1 and a private unix socket, always stopped and removed), so the benches
    and the tests run one implementation.
    """
    tests = str(Path(__file__).resolve().parent.parent / "tests")
    if tests not in sys.path:
        sys.path.append(tests)
    from vault.postgres import PostgresUnavailable, running_postgres

    try:
        with running_postgres() as server:
            yield server.create_database("bench")
    except PostgresUnavailable as e:
        raise SystemExit(f"PostgreSQL: {e}") from None


# --- machine-readable results (read by bench/report.py) -------------------------------------------

RESULTS_SCHEMA = 1
LIBRARIES = (
    "modelseal", "cryptography", "numpy", "onnxruntime", "onnx", "openvino", "tink", "sqlalchemy",
    "psycopg", "uvicorn", "httpx", "matplotlib",
)
TOOLS: dict[str, list[str]] = {
    "age": ["age", "--version"],
    "openssl": ["openssl", "version"],
    "gocryptfs": ["gocryptfs", "-version"],
    "wrk": ["wrk", "-v"],
    "fusermount3": ["fusermount3", "-V"],
}


def add_output_options(ap: argparse.ArgumentParser) -> None:
    """``--json PATH`` and ``--results DIR``: also write the measured rows as JSON (bench/report.py)."""
    ap.add_argument("--json", type=Path, default=None, metavar="PATH",
                    help="also write the measured rows, machine-readable, to this JSON file")
    ap.add_argument("--results", type=Path, default=None, metavar="DIR",
                    help="also write the measured rows to DIR/<bench>.json (what `make bench` uses)")


def _first_line(argv: list[str]) -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        text = (done.stdout or done.stderr).strip()
        if text:
            return text.splitlines()[0].strip()
    return None


def machine_info() -> dict[str, Any]:
    """What the figures were measured on: CPU, cores, memory, kernel, Python, library and tool versions."""
    from importlib import metadata

    cpu, flags = "?", set[str]()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and cpu == "?":
                cpu = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    mem = 0
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    thp = None
    with contextlib.suppress(OSError):
        thp = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip()
    libraries: dict[str, str] = {}
    for name in LIBRARIES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            libraries[name] = metadata.version(name)
    tools: dict[str, str] = {}
    for name, argv in TOOLS.items():
        if found := _first_line(argv):
            tools[name] = found
    postgres = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    if postgres and (found := _first_line([str(postgres[-1]), "--version"])):
        tools["postgresql"] = found
    return {
        "cpu": cpu,
        "cpu_flags": sorted(flags & {"aes", "avx2", "avx512f", "vaes", "vpclmulqdq", "sha_ni", "hypervisor"}),
        "cores": os.cpu_count(),
        "memory_bytes": mem,
        "kernel": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "transparent_hugepage": thp,
        "python": sys.version.split()[0],
        "libraries": libraries,
        "tools": tools,
    }


def timing_dict(t: Timing) -> dict[str, Any]:
    return {"name": t.name, "runs": t.runs, "nbytes": t.nbytes, "best": t.best, "median": t.median}


def write_results(args: argparse.Namespace, bench: str, data: dict[str, Any], started: float) -> None:
    """Write ``data`` (the measured rows) to --json and/or --results DIR/<bench>.json, if asked for."""
    targets = [p for p in (getattr(args, "json", None),) if p is not None]
    if getattr(args, "results", None) is not None:
        targets.append(args.results / f"{bench}.json")
    if not targets:
        return
    finished = time.time()
    doc = {
        "bench": bench,
        "schema": RESULTS_SCHEMA,
        "started": datetime.datetime.fromtimestamp(started, datetime.UTC).isoformat(timespec="seconds"),
        "finished": datetime.datetime.fromtimestamp(finished, datetime.UTC).isoformat(timespec="seconds"),
        "seconds": round(finished - started, 1),
        "command": " ".join(["python", *(shlex.quote(a) for a in sys.argv)]),
        "machine": machine_info(),
        # Load of the machine: the 1/5/15-minute load averages at the end, and the idle waits before
        # the timed runs (timed_out: runs that started while other processes were busy).
        "load": {"loadavg_end": list(os.getloadavg()), "idle_waits": dict(IDLE_STATS),
                 "idle_wait_cap": os.environ.get("BENCH_IDLE_WAIT")},
        **data,
    }
    for path in targets:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        tmp.replace(path)
        print(f"# results written to {path}")


def skip(args: argparse.Namespace, bench: str, reason: str) -> NoReturn:
    """A missing prerequisite: record it (so the report says why the bench has no rows) and stop.

    With an output option the exit status is 0 (`make bench` goes on); without, it is an error.
    """
    print(f"{bench} skipped: {reason}", file=sys.stderr)
    if getattr(args, "json", None) is None and getattr(args, "results", None) is None:
        raise SystemExit(1)
    write_results(args, bench, {"skipped": reason}, time.time())
    raise SystemExit(0)
