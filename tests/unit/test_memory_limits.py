"""A model that cannot fit in the memory the process may use is refused before anything is
decrypted (exit 10, both sizes named), instead of an OOM kill half-way (exit 137)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import modelseal
from modelseal import memlimits

MB = 1_000_000

OPEN_CHILD = textwrap.dedent(
    """
    import resource, sys
    import modelseal
    if len(sys.argv) > 3:  # an address-space limit this far above what is mapped now
        mapped = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (mapped + int(sys.argv[3]), resource.RLIM_INFINITY))
    try:
        with modelseal.open(sys.argv[1], modelseal.load_mek(sys.argv[2])) as m:
            print(len(m.read()))
    except modelseal.MemoryLimitError as e:
        print(e.message, file=sys.stderr)
        sys.exit(e.exit_code)
    """
)


def sealed_model(folder: Path, size: int) -> tuple[Path, Path]:
    plain = folder / f"model-{size}.bin"
    with plain.open("wb") as f:
        for _ in range(size // (4 << 20)):
            f.write(os.urandom(4 << 20))
        f.write(os.urandom(size % (4 << 20)))
    mek = folder / "MEK.dat"
    if not mek.exists():
        modelseal.write_mek(modelseal.keygen(), mek)
    sealed = folder / f"model-{size}.mseal"
    modelseal.seal(plain, sealed, mek=modelseal.load_mek(mek))
    plain.unlink()
    return sealed, mek


@contextlib.contextmanager
def memory_cgroup(limit: int) -> Iterator[Path]:
    """A fresh memory cgroup (v2, else v1) limited to ``limit`` bytes; yields its cgroup.procs."""
    if os.geteuid() != 0:
        pytest.skip("creating a memory cgroup needs root")
    name = f"modelseal-test-{uuid.uuid4().hex[:8]}"
    v2 = Path("/sys/fs/cgroup")
    controllers = v2 / "cgroup.controllers"
    if controllers.exists() and "memory" in controllers.read_text().split():
        with contextlib.suppress(OSError):
            (v2 / "cgroup.subtree_control").write_text("+memory")
        folder, limit_file = v2 / name, "memory.max"
    elif (v2 / "memory" / "memory.limit_in_bytes").exists():
        folder, limit_file = v2 / "memory" / name, "memory.limit_in_bytes"
    else:
        pytest.skip("no memory cgroup controller mounted at /sys/fs/cgroup")
    folder.mkdir()
    try:
        (folder / limit_file).write_text(str(limit))
        if limit_file == "memory.limit_in_bytes" and (folder / "memory.memsw.limit_in_bytes").exists():
            with contextlib.suppress(OSError):
                (folder / "memory.memsw.limit_in_bytes").write_text(str(limit))  # no escape to swap
        yield folder / "cgroup.procs"
    finally:
        for _ in range(50):
            try:
                folder.rmdir()
                break
            except OSError:
                time.sleep(0.1)  # the last member's exit is accounted a moment later


def in_cgroup(procs: Path, argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as a member of the cgroup from its first instruction (the shell joins, then execs)."""
    join = f'echo $$ > {procs} && exec "$@"'
    return subprocess.run(["sh", "-c", join, "sh", *argv], capture_output=True, text=True, timeout=120)


def test_a_model_larger_than_the_cgroup_allows_is_refused_not_killed(tmp_path: Path) -> None:
    big, mek = sealed_model(tmp_path, 500 * MB)
    small, _ = sealed_model(tmp_path, 60 * MB)
    with memory_cgroup(300 * MB) as procs:
        refused = in_cgroup(procs, [sys.executable, "-c", OPEN_CHILD, str(big), str(mek)])
        assert refused.returncode == 10, refused.stderr[-2000:]
        # The plaintext and the reader's 48 MiB of staging buffers.
        assert "opening model-500000000.mseal needs 550.3 MB of memory" in refused.stderr
        assert "cgroup" in refused.stderr and "nothing was decrypted" in refused.stderr
        fits = in_cgroup(procs, [sys.executable, "-c", OPEN_CHILD, str(small), str(mek)])
        assert fits.returncode == 0 and fits.stdout.strip() == str(60 * MB), fits.stderr[-2000:]
        cli = in_cgroup(
            procs, [sys.executable, "-m", "modelseal", "cfs", "run", str(big), "-i", str(mek), "--", "true"]
        )
        assert cli.returncode == 10 and cli.stderr.count("\n") == 1, cli.stderr[-2000:]
        # The plaintext and the memfds it is copied into.
        assert cli.stderr.startswith("modelseal: error: serving 1 model(s) needs 1,000.0 MB of memory")


def test_an_address_space_limit_is_refused_with_both_sizes(tmp_path: Path) -> None:
    big, mek = sealed_model(tmp_path, 200 * MB)
    child = subprocess.run(
        [sys.executable, "-c", OPEN_CHILD, str(big), str(mek), str(150 * MB)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 10, child.stderr[-2000:]
    assert "opening model-200000000.mseal needs 2" in child.stderr and "(RLIMIT_AS)" in child.stderr


def test_cgroup_v2_limits_of_every_ancestor_count(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("0::/app/worker\n")
    tree = (("", "max", 9_000, 0), ("app", 1_000, 700, 100), ("app/worker", 900, 100, 0))
    for folder, limit, used, cache in tree:
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        (tmp_path / folder / "memory.max").write_text(f"{limit}\n")
        (tmp_path / folder / "memory.current").write_text(f"{used}\n")
        (tmp_path / folder / "memory.stat").write_text(f"anon {used}\nfile {cache}\n")
    room = memlimits.cgroup_room(tmp_path, proc)
    # The worker may use 800 more on its own, but its parent has only 1000 - 700 + 100 (page cache).
    assert room == memlimits.Room(400, f"cgroup memory.max of {tmp_path / 'app'}")
    proc.write_text("0::/\n")
    assert memlimits.cgroup_room(tmp_path, proc) is None  # the root's "max": no limit


def test_cgroup_v1_limits_are_read(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("5:cpu:/\n4:memory:/box\n0::/\n")
    box = tmp_path / "memory" / "box"
    box.mkdir(parents=True)
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text(str(9223372036854771712))
    (tmp_path / "memory" / "memory.usage_in_bytes").write_text("5000")
    (box / "memory.limit_in_bytes").write_text("3000")
    (box / "memory.usage_in_bytes").write_text("1000")
    (box / "memory.stat").write_text("cache 500\nrss 500\n")
    expected = memlimits.Room(2500, f"cgroup memory.limit_in_bytes of {box}")
    assert memlimits.cgroup_room(tmp_path, proc) == expected
