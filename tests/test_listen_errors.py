"""A server that cannot listen says so in one line with one exit code (18), whichever server it is:
the vault, the edge agent, the emulated card. Before: the vault exited 3 ("format error") with only
JSON log lines, the agent 1 with a bare "No such file or directory", the card 11 plus a gRPC log line.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelseal.errors import ListenError

pytest.importorskip("uvicorn", reason="the vault extra is not installed")


@pytest.fixture
def taken() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        yield int(holder.getsockname()[1])


def modelseal(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelseal", *args], capture_output=True, text=True, timeout=120, check=False
    )


def one_line(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert done.returncode == ListenError.exit_code, (done.returncode, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and all(w in lines[0] for w in words), done.stderr


def test_the_vault_on_a_port_in_use(tmp_path: Path, taken: int) -> None:
    assert modelseal("vault", "init", "--data", str(tmp_path / "v")).returncode == 0
    done = modelseal("vault", "serve", "--data", str(tmp_path / "v"), "--listen", f"127.0.0.1:{taken}")
    one_line(done, f"cannot listen on 127.0.0.1:{taken}", "pick another --listen")


def test_the_agent_on_a_port_in_use_or_a_missing_socket_folder(tmp_path: Path, taken: int) -> None:
    vault = ["--vault", "https://127.0.0.1:9", "--cache", str(tmp_path / "cache")]
    one_line(modelseal("agent", "serve", *vault, "--listen", f"127.0.0.1:{taken}"), "cannot listen")
    missing = tmp_path / "no-such-folder" / "agent.sock"
    done = modelseal("agent", "serve", *vault, "--listen", f"unix:{missing}")
    one_line(done, str(missing.parent), "does not exist")


def test_the_card_on_a_port_in_use(tmp_path: Path, taken: int) -> None:
    pytest.importorskip("grpc", reason="the device extra is not installed")
    key = tmp_path / "dev.key"
    assert modelseal("signer", "-o", str(key)).returncode == 0
    done = modelseal("device", "serve", "--device-id", "0", "--port", str(taken), "--identity-key", str(key))
    one_line(done, "cannot listen", str(taken))
