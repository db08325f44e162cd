"""A real PostgreSQL for the tests: a throw-away cluster on loopback, always stopped and removed.

initdb refuses to run as root, so as root the cluster belongs to the `postgres` system user (Debian's
postgresql package creates it) and every server command runs through `runuser`; as any other user
it simply belongs to that user. The cluster listens on 127.0.0.1 and on a unix socket in its own
folder only, on a free port, with trust authentication (nothing outside this machine can reach it).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

SUPERUSER = "postgres"
START_TIMEOUT = 60


class PostgresUnavailable(Exception):
    """PostgreSQL can't be run here; the message is the skip reason."""


def find_bin_dir() -> Path:
    """The folder with initdb and pg_ctl: PATH first, then Debian's versioned folders (newest)."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0,
    )
    if not candidates:
        raise PostgresUnavailable("PostgreSQL is not installed (apt-get install postgresql)")
    return Path(candidates[-1]).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresServer:
    root: Path
    port: int
    bin_dir: Path
    owner: pwd.struct_passwd | None  # the system user the cluster runs as, when we are root

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def argv(self, *args: str) -> list[str]:
        argv = [str(self.bin_dir / args[0]), *args[1:]]
        if self.owner is not None:
            argv = ["runuser", "-u", self.owner.pw_name, "--", *argv]
        return argv

    def stop_argv(self) -> list[str]:
        return self.argv("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def _run(self, *args: str, timeout: float = START_TIMEOUT) -> subprocess.CompletedProcess[str]:
        # cwd inside the cluster folder: the server user may not be able to enter ours.
        return subprocess.run(
            self.argv(*args), cwd=self.root, capture_output=True, text=True, timeout=timeout, check=False
        )

    def create_database(self, prefix: str = "vault") -> str:
        """A fresh empty database; returns its SQLAlchemy URL."""
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=SUPERUSER, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # name is ours: [a-z0-9_] only
        return self.url(name)

    def drop_database(self, url: str) -> None:
        import psycopg

        name = url.rsplit("/", 1)[1]
        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=SUPERUSER, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def start(self) -> None:
        options = " ".join(
            (
                f"-p {self.port}",
                "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={self.root}",
                "-c max_connections=200",
            )
        )
        done = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-o", options, "start")
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {done.stdout}{done.stderr}{log}")

    def stop(self) -> None:
        if not (self.data / "postmaster.pid").exists():
            return
        done = subprocess.run(
            self.stop_argv(), cwd=self.root, capture_output=True, text=True, timeout=30, check=False
        )
        if done.returncode != 0 and (self.data / "postmaster.pid").exists():
            # pg_ctl could not stop it: kill the postmaster we started (its pid is the file's first line).
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            with suppress(ProcessLookupError):
                os.kill(pid, 9)


def _owner() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    try:
        owner = pwd.getpwnam(SUPERUSER)
    except KeyError:
        raise PostgresUnavailable(
            f"running as root and there is no {SUPERUSER!r} user to run initdb"
        ) from None
    if shutil.which("runuser") is None:
        raise PostgresUnavailable("running as root and runuser is missing (util-linux)")
    return owner


def requirements() -> tuple[Path, pwd.struct_passwd | None]:
    """(bin folder, cluster owner); raises PostgresUnavailable with the reason when missing."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise PostgresUnavailable("psycopg is not installed (extra: vault)") from None
    return find_bin_dir(), _owner()


# Stops the cluster and removes its folder once its stdin closes: when the test process ends, even
# killed (a SIGKILLed or timed-out pytest runs no teardown and would leave a server running).
_WATCHDOG = """
import os, shutil, subprocess, sys
sys.stdin.buffer.read()
root = sys.argv[1]
if os.path.exists(os.path.join(root, "data", "postmaster.pid")):
    subprocess.run(sys.argv[2:], cwd=root, capture_output=True, timeout=30, check=False)
shutil.rmtree(root, ignore_errors=True)
"""


@contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """Start a throw-away cluster; raises PostgresUnavailable when that can't be done here."""
    bin_dir, owner = requirements()
    root = Path(tempfile.mkdtemp(prefix="modelseal-pg-"))
    server = PostgresServer(root, 0, bin_dir, owner)
    watchdog = subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, str(root), *server.stop_argv()],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # not in our process group: a Ctrl-C there must not kill it first
    )
    try:
        if owner is not None:
            os.chown(root, owner.pw_uid, owner.pw_gid)
        done = server._run(
            "initdb",
            "-D",
            str(server.data),
            "-A",
            "trust",
            "-U",
            SUPERUSER,
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stdout}{done.stderr}")
        for attempt in range(3):  # the free port may be taken between probe and bind
            server.port = _free_port()
            try:
                server.start()
                break
            except RuntimeError:
                server.stop()
                if attempt == 2:
                    raise
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
        assert watchdog.stdin is not None
        watchdog.stdin.close()
        try:
            watchdog.wait(30)
        except subprocess.TimeoutExpired:
            watchdog.kill()
            watchdog.wait()
