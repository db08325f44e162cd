"""`modelseal cfs run`: the child gets sealed memfds by name; nothing plaintext reaches a disk."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from privileges import drop_ipc_lock

import modelseal
from modelseal import cfs

from .conftest import MiB, Sealed, cli, files_containing, scan_roots, seal_file

# Runs as the child: checks what it was given and reports as JSON on stdout.
CHILD = textwrap.dedent(
    """
    import errno, fcntl, hashlib, json, mmap, os, stat, sys
    folder = os.environ["MODELSEAL_DIR"]
    files = json.loads(os.environ["MODELSEAL_FILES"])
    report = {"dir_mode": stat.S_IMODE(os.stat(folder).st_mode), "files": {}, "refused": []}
    for name, path in files.items():
        assert path.startswith(folder + "/"), path
        with open(path, "rb") as f:
            data = f.read()
        seams = [(k * 4194304 + d, 9000) for k in (1, 2) for d in (-4500, 0) if k * 4194304 + d < len(data)]
        fd = os.open(path, os.O_RDWR)
        parts = [os.pread(fd, n, off) == data[off:off + n] for off, n in seams]
        attempts = (lambda: os.pwrite(fd, b"x", 0), lambda: os.ftruncate(fd, len(data) + 1),
                    lambda: os.ftruncate(fd, len(data) - 1),
                    lambda: mmap.mmap(fd, len(data), flags=mmap.MAP_SHARED,
                                      prot=mmap.PROT_READ | mmap.PROT_WRITE),
                    lambda: fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE))
        for attempt in attempts if data else ():  # an empty file cannot shrink or be mapped
            try:
                attempt()
            except PermissionError:
                report["refused"].append(True)
            else:
                report["refused"].append(False)
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        os.close(fd)
        report["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "seams_ok": all(parts),
                                 "seals": seals, "single": os.environ.get("MODELSEAL_FILE")}
    print(json.dumps(report))
    sys.exit(int(sys.argv[1]))
    """
)


def _run(*args: str | os.PathLike[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli("cfs", "run", *args), capture_output=True, text=True, timeout=timeout)


def test_child_reads_its_files_which_refuse_changes(model: Sealed, tmp_path: Path) -> None:
    r = _run(model.sealed, "-i", model.mek, "--", sys.executable, "-c", CHILD, "7")
    assert r.returncode == 7, r.stderr  # the child's exit code
    report = json.loads(r.stdout)
    assert report["dir_mode"] == 0o700
    entry = report["files"]["model.bin"]
    assert entry["sha256"] == hashlib.sha256(model.data).hexdigest()
    assert entry["seams_ok"]
    assert entry["single"] and entry["single"].endswith("/model.bin")
    assert report["refused"] == [True] * 5  # write, grow, shrink, writable mmap, new seal: EPERM
    sealed_bits = 0x1 | 0x2 | 0x4 | 0x8  # F_SEAL_SEAL | SHRINK | GROW | WRITE
    assert entry["seals"] & sealed_bits == sealed_bits
    # The folder of links is gone once the child has exited.
    assert not Path(entry["single"]).parent.exists()


def test_folder_model_and_options_among_the_sealed_files(folder_model: Sealed, model: Sealed) -> None:
    r = _run(folder_model.sealed, "-i", folder_model.mek, model.sealed, "-i", model.mek,
             "--layout", "per-model", "--", sys.executable, "-c", CHILD, "0")
    assert r.returncode == 0, r.stderr
    files = json.loads(r.stdout)["files"]
    expected = {f"ir/{n}": d for n, d in folder_model.files.items()} | {"model.bin/model.bin": model.data}
    assert {n: f["sha256"] for n, f in files.items()} == {
        n: hashlib.sha256(d).hexdigest() for n, d in expected.items()
    }
    assert all(f["single"] is None for f in files.values())
    assert all(json.loads(r.stdout)["refused"])


def test_paths_work_in_a_grandchild_without_the_fds(model: Sealed) -> None:
    # A wrapper that spawns the real server with close_fds (the default) still finds the files.
    inner = (
        "import os,hashlib;print(hashlib.sha256(open(os.environ['MODELSEAL_FILE'],'rb').read()).hexdigest())"
    )
    outer = f"import subprocess,sys; sys.exit(subprocess.call([sys.executable, '-c', {inner!r}]))"
    r = _run(model.sealed, "-i", model.mek, "--", sys.executable, "-c", outer)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == hashlib.sha256(model.data).hexdigest()


@pytest.mark.parametrize("what", ["tampered", "wrong key"])
def test_bad_model_never_starts_the_child(model: Sealed, tmp_path: Path, what: str) -> None:
    sealed, mek = model.sealed, model.mek
    if what == "tampered":
        sealed = tmp_path / "t.mseal"
        data = bytearray(model.sealed.read_bytes())
        data[len(data) // 2] ^= 0x80
        sealed.write_bytes(data)
    else:
        mek = tmp_path / "k"
        mek.write_bytes(os.urandom(32))
    marker = tmp_path / "started"
    r = _run(sealed, "-i", mek, "--", "touch", marker)
    assert r.returncode == (4 if what == "tampered" else 5), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    if what == "tampered":
        assert "integrity check failed" in r.stderr
    assert not marker.exists()


def test_signals_are_forwarded_and_the_exit_code_returned(model: Sealed, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    child = (
        "import os, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(42))\n"
        f"open({str(ready)!r}, 'w').write(os.environ['MODELSEAL_DIR'])\n"
        "time.sleep(60)\n"
    )
    args = cli("cfs", "run", model.sealed, "-i", model.mek, "--", sys.executable, "-c", child)
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        links = Path(ready.read_text())
        assert links.is_dir()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 42
        assert not links.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_killed_child_gives_128_plus_signal(model: Sealed) -> None:
    r = _run(model.sealed, "-i", model.mek, "--", sys.executable, "-c",
             "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert r.returncode == 128 + signal.SIGKILL


def test_usage_errors(model: Sealed) -> None:
    r = _run(model.sealed, "-i", model.mek, "true")
    assert r.returncode == 2 and "after --" in r.stderr
    r = _run(model.sealed, "-i", model.mek, "--")
    assert r.returncode == 2
    r = _run(model.sealed, "-i", model.mek, "--", "/nonexistent/cmd")
    assert r.returncode == 10 and "cannot run" in r.stderr


def test_no_plaintext_in_any_file_after_run(folder_model: Sealed, tmp_path: Path) -> None:
    r = _run(folder_model.sealed, "-i", folder_model.mek, "--", sys.executable, "-c", CHILD, "0")
    assert r.returncode == 0, r.stderr
    assert files_containing(folder_model.needle, scan_roots(tmp_path), [folder_model.plain]) == []


def test_library_run_in_process(model: Sealed) -> None:
    child = "import os,sys; sys.exit(len(open(os.environ['MODELSEAL_FILE'],'rb').read()) % 200)"
    code = cfs.run([model.sealed], modelseal.load_identity(model.mek), [sys.executable, "-c", child])
    assert code == len(model.data) % 200


def test_mlock_refused_warns_or_fails(tmp_path: Path) -> None:
    big = seal_file(tmp_path / "big", size=12 * MiB)
    args = cli("cfs", "run", big.sealed, "-i", big.mek, "--require-mlock", "--", "true")
    r = subprocess.run(args, capture_output=True, text=True, timeout=60, preexec_fn=drop_ipc_lock)
    assert r.returncode == 10 and "RLIMIT_MEMLOCK" in r.stderr, r.stderr
    args.remove("--require-mlock")
    r = subprocess.run(args, capture_output=True, text=True, timeout=60, preexec_fn=drop_ipc_lock)
    assert r.returncode == 0 and "mlock) refused" in r.stderr and "--require-mlock" in r.stderr


def running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return not stat.rsplit(") ", 1)[1].startswith("Z")


@pytest.mark.faults
def test_a_killed_runner_takes_its_command_with_it_and_leaves_no_core_and_no_links(
    model: Sealed, tmp_path: Path
) -> None:
    """kill -9 of the runner: the command dies too (it would run on with no lease checks), the
    runner was writing no core file (it holds the key), and its folder of links is swept by the
    next run. Before: the command ran on, and a crash could dump the runner's memory to disk."""
    ready = tmp_path / "ready"
    child = (
        "import os, time\n"
        f"open({str(ready)!r}, 'w').write(str(os.getpid()) + ' ' + os.environ['MODELSEAL_DIR'])\n"
        "time.sleep(120)\n"
    )
    args = cli("cfs", "run", model.sealed, "-i", model.mek, "--", sys.executable, "-c", child)
    hard = resource.getrlimit(resource.RLIMIT_CORE)[1]
    # Started allowed to dump core (whatever this shell's default), so the runner's own 0 is seen.
    proc = subprocess.Popen(args, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_CORE, (hard, hard)))
    try:
        deadline = time.monotonic() + 60
        while not (ready.exists() and " " in ready.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        pid_text, links_text = ready.read_text().split(" ", 1)
        child_pid, links = int(pid_text), Path(links_text)
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        core = next(line for line in limits.splitlines() if line.startswith("Max core file size"))
        assert core.split()[4:6] == ["0", "0"], core
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 10
        while running(child_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not running(child_pid), "the command outlived its runner"
        assert links.exists()  # SIGKILL leaves no chance to clean up ...
        r = _run(model.sealed, "-i", model.mek, "--", sys.executable, "-c", "pass")
        assert r.returncode == 0, r.stderr
        assert not links.exists()  # ... the next run sweeps it
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
