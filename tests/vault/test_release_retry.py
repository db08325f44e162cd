"""A device's key release rides out a vault restart, and never releases twice.

``DeviceIdentity.release`` sends again (a fresh nonce, the MAC over it) with backoff for up to
``retry_for`` seconds, but only on answers that say the vault did not act: nothing listened, the
agent never reached it, it was sealed or full, its transaction rolled back. A read timeout or any
other failure after sending is not retried (the vault may have released and counted a use).

In process against a scripted transport (each attempt's request is seen and answered), and end to
end: the vault stopped under a running agent and started again 1.5 s later on the same port.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

import modelseal
from modelseal.keyrelease import wire
from modelseal.vault.client import DeviceIdentity, VaultClient
from modelseal.vault.errors import Unavailable

from .agent_helpers import agent_process
from .conftest import VaultServer, _free_port, serve_process, stop_server
from .release_helpers import LocalVault, local_vault

pytestmark = pytest.mark.faults

FILE_KEY = bytes(range(32))


def scripted(outcomes: list[object]) -> tuple[DeviceIdentity, list[dict[str, object]]]:
    """A device whose vault answers each attempt with the next outcome: an exception to raise (as
    the transport would), a (status, code) error answer, or "ok" (the key, sealed as the vault does)."""
    seen: list[dict[str, object]] = []

    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body)
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        if isinstance(outcome, tuple):
            status, code = outcome
            return httpx.Response(status, json={"error": {"code": code, "message": code}})
        info = wire.hpke_info(
            domain="default", device="cam", key_name="k", key_version=1, nonce=base64.b64decode(body["nonce"])
        )
        public = X25519PublicKey.from_public_bytes(base64.b64decode(body["ephemeral_public"]))
        sealed = wire.SUITE.encrypt(FILE_KEY, public, info=info)
        return httpx.Response(
            200, json={"key_name": "k", "key_version": 1, "sealed": base64.b64encode(sealed).decode()}
        )

    client = VaultClient("https://vault.test")
    client._http = httpx.Client(base_url="https://vault.test", transport=httpx.MockTransport(handle))
    return DeviceIdentity(client, "cam", bytes(32), retry_for=5.0), seen


def test_a_vault_that_is_not_there_yet_is_asked_again_with_fresh_nonces() -> None:
    refused = httpx.ConnectError("connection refused")
    device, seen = scripted(
        [refused, (502, "vault_unreachable"), (503, "sealed"), (429, "too_many_requests"), "ok"]
    )
    assert device.release("k", 1, b"w" * 60) == FILE_KEY
    assert len(seen) == 5 and len({str(s["nonce"]) for s in seen}) == 5  # every attempt its own nonce


@pytest.mark.parametrize(
    "after_sending",
    [httpx.ReadTimeout("no answer"), (503, "storage_lost"), (502, "vault_failed"), (503, "release_denied")],
)
def test_a_request_the_vault_may_have_acted_on_is_not_sent_again(after_sending: object) -> None:
    device, seen = scripted([after_sending, "ok"])
    with pytest.raises(Unavailable):
        device.release("k", 1, b"w" * 60)
    assert len(seen) == 1


def test_the_retries_end_at_the_deadline() -> None:
    device, seen = scripted([httpx.ConnectError("refused")] * 1000)
    device.retry_for = 1.0
    started = time.monotonic()
    with pytest.raises(Unavailable, match="cannot reach the vault"):
        device.release("k", 1, b"w" * 60)
    assert time.monotonic() - started < 2.5 and 3 <= len(seen) < 100


def test_an_open_through_the_agent_rides_out_a_vault_restart(tmp_path: Path) -> None:
    local: LocalVault = local_vault(tmp_path)
    _, psk = local.devices.create_device(local.admin, "cam", ["edge"])
    local.devices.put_policy(local.admin, "p", "k", [], ["edge"])
    data = tmp_path / "v"
    local.store.engine.dispose()
    port = _free_port()
    vault = serve_process(data, tmp_path / "vault1.log", port=port)
    try:
        with agent_process(vault.url, vault.ca, tmp_path / "agent") as running:
            stop_server(vault)
            restarted: list[VaultServer] = []
            timer = threading.Timer(
                1.5, lambda: restarted.append(serve_process(data, tmp_path / "vault2.log", port=port))
            )
            timer.start()
            started = time.monotonic()
            try:
                with modelseal.open(local.sealed.path, DeviceIdentity(running.address, "cam", psk)) as model:
                    assert bytes(model.read()) == local.sealed.data
            finally:
                timer.join()
            took = time.monotonic() - started
            print(f"opened {took:.2f} s after the vault went down (back after 1.5 s)")
            assert 1.4 < took < 5.5
    finally:
        stop_server(vault)
        for server in locals().get("restarted", []):
            stop_server(server)
