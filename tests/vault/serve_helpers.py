"""A private `modelseal vault serve` with extra flags (--allow-export, --metrics-public, --client-ca ...).

Like conftest's server: a subprocess on a free 127.0.0.1 port, its stdout and stderr kept in a log,
always stopped. The health probe presents ``client_cert`` when the vault requires one.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from modelseal.vault.server import datadir

from .conftest import VaultServer, serve_process, stop_server, tls_context

__all__ = ["log_records", "tls_context", "vault_with"]


@contextlib.contextmanager
def vault_with(
    folder: Path, *flags: str, client_cert: tuple[Path, Path] | None = None
) -> Iterator[VaultServer]:
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "vault"
    datadir.init(data)
    server = serve_process(data, folder / "server.log", flags=flags, client_cert=client_cert)
    try:
        yield server
    finally:
        stop_server(server)


def log_records(server: VaultServer) -> list[dict[str, Any]]:
    """Every line of the server's log, parsed; a line that is not one JSON object fails the test."""
    records = []
    for number, line in enumerate(server.log.read_text().splitlines(), 1):
        record = json.loads(line)
        assert isinstance(record, dict), f"log line {number} is not a JSON object: {line[:200]}"
        records.append(record)
    return records
