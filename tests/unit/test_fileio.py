"""Outputs appear whole or not at all: errors, Ctrl-C and SIGKILL leave no name behind, and what a
killed writer without O_TMPFILE left is swept by the next writer, never anything else."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from modelseal import OutputError
from modelseal.fileio import atomic_output, atomic_write_bytes, sweep_debris, temp_path

# A child that starts writing an output, says so, then waits to be killed.
WRITER = textwrap.dedent(
    """
    import os, sys, time
    from modelseal import fileio
    if sys.argv[2] == "named":
        del os.O_TMPFILE  # the fallback for filesystems without it
    with fileio.atomic_output(sys.argv[1], 0o644) as f:
        f.write(b"plaintext" * 100_000)
        f.flush()
        print("writing", flush=True)
        time.sleep(60)
    """
)


def killed_writer(target: Path, mode: str) -> None:
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(target), mode], stdout=subprocess.PIPE)
    assert child.stdout is not None
    assert child.stdout.readline() == b"writing\n"
    child.send_signal(signal.SIGKILL)
    child.wait()


def test_an_output_appears_only_when_complete(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with atomic_output(target, 0o640) as f:
        f.write(b"data")
        assert os.listdir(tmp_path) == []  # unnamed until the block ends
    assert target.read_bytes() == b"data" and target.stat().st_mode & 0o777 == 0o640


def test_an_error_or_ctrl_c_inside_the_block_leaves_nothing(tmp_path: Path) -> None:
    for error in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(error)), atomic_output(tmp_path / "out.bin") as f:
            f.write(b"half")
            raise error
    assert os.listdir(tmp_path) == []


def test_an_existing_output_is_replaced_only_when_asked(tmp_path: Path) -> None:
    target = tmp_path / "key"
    atomic_write_bytes(target, b"first", 0o600)
    with pytest.raises(OutputError, match=r"already exists; refusing to overwrite it \(-f/--force"):
        atomic_write_bytes(target, b"second", 0o600)
    assert target.read_bytes() == b"first"
    atomic_write_bytes(target, b"second", 0o600, overwrite=True)
    assert target.read_bytes() == b"second" and sorted(os.listdir(tmp_path)) == ["key"]
    link = tmp_path / "dangling"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutputError, match="already exists"):
        atomic_write_bytes(link, b"x")


def test_the_fallback_temp_is_private_and_removed_on_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(os, "O_TMPFILE")
    with pytest.raises(RuntimeError), atomic_output(tmp_path / "plain.bin", 0o644):
        (temp,) = tmp_path.iterdir()
        assert temp.name.startswith(".plain.bin.") and temp.name.endswith(".mstmp")
        assert temp.stat().st_mode & 0o777 == 0o600  # plaintext on its way is never readable by others
        raise RuntimeError
    assert os.listdir(tmp_path) == []
    atomic_write_bytes(tmp_path / "plain.bin", b"ok")
    assert os.listdir(tmp_path) == ["plain.bin"]


def test_sigkill_leaves_no_name_with_o_tmpfile(tmp_path: Path) -> None:
    killed_writer(tmp_path / "model.onnx", "unnamed")
    assert os.listdir(tmp_path) == []


def test_sigkill_debris_of_the_fallback_is_swept_by_the_next_writer(tmp_path: Path) -> None:
    killed_writer(tmp_path / "model.onnx", "named")
    (debris,) = tmp_path.iterdir()
    assert debris.name.endswith(".mstmp") and debris.stat().st_mode & 0o777 == 0o600
    # Not by this process: it is older than the debris, which might be a live writer's for all it knows.
    assert sweep_debris(tmp_path) == [] and debris.exists()
    # A writer started after the killed one removes it, and only it.
    (tmp_path / "notes.mstmp").write_text("not our pattern")
    (tmp_path / ".x.99999999.0123abcd.mstmp.keep").write_text("not our pattern either")
    later = "import sys; from modelseal import fileio; fileio.atomic_write_bytes(sys.argv[1], b'new')"
    subprocess.run([sys.executable, "-c", later, str(tmp_path / "other.bin")], check=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".x.99999999.0123abcd.mstmp.keep",
        "notes.mstmp",
        "other.bin",
    ]


def test_sweeping_spares_live_writers_and_young_files(tmp_path: Path) -> None:
    mine = temp_path(tmp_path / "a")  # this process is alive
    mine.write_bytes(b"")
    os.utime(mine, (0, 0))
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        theirs = tmp_path / f".b.{sleeper.pid}.0123abcd.mstmp"
        theirs.mkdir()
        os.utime(theirs, (0, 0))
        dead = tmp_path / ".c.99999999.0123abcd.mstmp"  # pid beyond pid_max: gone
        dead.mkdir()
        (dead / "part").write_bytes(b"x")
        os.utime(dead, (0, 0))
        young = tmp_path / ".d.99999999.fedcba98.mstmp"
        young.write_bytes(b"")
        os.utime(young, (time.time() + 60, time.time() + 60))
        assert sweep_debris(tmp_path) == [dead]
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, theirs.name, young.name])
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_full_disk_is_one_error_and_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """unseal and seal onto a filled filesystem: exit 7 with one line, no partial output, no temp."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    import modelseal
    from modelseal.cli.main import main

    plain = tmp_path / "model.bin"
    plain.write_bytes(os.urandom(1 << 20))
    mek = tmp_path / "MEK.dat"
    modelseal.write_mek(modelseal.keygen(), mek)
    sealed = tmp_path / "model.mseal"
    modelseal.seal(plain, sealed, mek=modelseal.load_mek(mek))
    full = tmp_path / "full"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(full)], check=True)
    try:
        with open(full / "filler", "wb", buffering=0) as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 4096)
        capsys.readouterr()
        for argv in (
            ["unseal", str(sealed), "-o", str(full / "out.bin"), "-i", str(mek), "-q"],
            ["seal", str(plain), "-o", str(full / "out.mseal"), "--mek", str(mek), "-q"],
        ):
            assert main(argv) == 7
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and "No space left on device" in err
            assert sorted(os.listdir(full)) == ["filler"]
    finally:
        subprocess.run(["umount", "-l", str(full)], check=True)
