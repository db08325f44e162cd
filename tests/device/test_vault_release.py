"""A card gets its model's key from the vault by attestation and runs the model; the host relays.

challenge (vault) -> GetAttestationReport(nonce) (card) -> attest/release (vault: report, policy,
licence, audit) -> LoadModel with the sealed key (card opens it with its session key) -> Run.
The model has only a `vault` stanza: no x25519 stanza for any session, so without the vault no
card can open it; and the host process is checked byte for byte never to have held the file key.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from vault.conftest import VaultServer, start_server, stop_server

import modelseal
from modelseal import device
from modelseal.device import NOT_THIS_SESSION
from modelseal.vault.client import VaultClient, VaultRecipient
from modelseal.vault.client.attested import release_to_device, vault_stanza
from modelseal.vault.errors import PermissionDenied

from .helpers import Card, OnnxModel, cli


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VaultServer]:
    server = start_server(tmp_path_factory.mktemp("vault"))
    try:
        yield server
    finally:
        stop_server(server)


@dataclass
class Setup:
    sealed: Path
    data_key: bytes
    name: str


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def prepare(vault: VaultServer, model: OnnxModel, identity_pub: bytes, folder: Path) -> Setup:
    """Seal the model to a fresh vault data key only, and enrol a device allowed to get it."""
    key_name, name = unique("k"), unique("card")
    sealed = folder / f"{key_name}.onnx.mseal"
    with vault.client() as admin:
        admin.create_key(key_name)
        recipient = VaultRecipient.prepare(admin, key_name)
        modelseal.seal(model.path, sealed, [recipient], mek=recipient.data_key)
        admin.create_device(name)
        admin.enroll_device(name, identity_pub, device.software_measurement())
        admin.put_policy(unique("p"), key_name, devices=[name])
    return Setup(sealed, recipient.data_key, name)


def pub_bytes(path: Path) -> bytes:
    return modelseal.load_signer_public(path).public_bytes(Encoding.Raw, PublicFormat.Raw)


def encodings(secret: bytes) -> set[bytes]:
    forms = {secret, secret.hex().encode(), secret.hex().upper().encode()}
    for b64 in (base64.b64encode(secret), base64.urlsafe_b64encode(secret)):
        forms |= {b64, b64.rstrip(b"=")}
    return forms


def test_cli_runs_the_model_through_an_attested_release(
    vault: VaultServer,
    onnx_model: OnnxModel,
    spawn_cards: Callable[[list[int]], list[Card]],
    tmp_path: Path,
) -> None:
    (card,) = spawn_cards([0])
    setup = prepare(vault, onnx_model, pub_bytes(card.pub), tmp_path)
    x_npy = tmp_path / "x.npy"
    np.save(x_npy, onnx_model.inputs["x"])
    common = ["--ip", "127.0.0.1", "--port", str(card.port), "-d", "0"]
    attested: list[str | Path] = ["--vault-device", setup.name, "--vault", vault.url, "--vault-ca", vault.ca]

    # Without the vault the card has no way in: nothing in the header is wrapped to its session.
    refused = cli("device", "load", *common, setup.sealed, check=False)
    assert refused.returncode == modelseal.NoMatchingIdentityError.exit_code
    assert NOT_THIS_SESSION in refused.stderr

    for _ in range(2):  # a reset in between: the next load attests the new session
        out = cli("device", "run", *common, *attested, setup.sealed, "--input", f"x={x_npy}", "--json")
        (y,) = json.loads(out.stdout).values()
        got = np.array(y["data"], dtype=y["dtype"]).reshape(y["shape"])
        np.testing.assert_allclose(got, onnx_model.expected["y"], rtol=1e-5, atol=1e-5)
        cli("device", "reset", *common)

    with vault.client() as admin:
        admin.revoke_device(setup.name)
    denied = cli("device", "load", *common, *attested, setup.sealed, check=False)
    assert denied.returncode == PermissionDenied.exit_code
    assert denied.stderr.strip().splitlines() == ["modelseal: error: vault: key release refused"]


HOST_SCRIPT = """
import json, sys
import httpx
import numpy as np
import modelseal.header_auth, modelseal.opening, modelseal.recipients.x25519
from modelseal.format.stream import PayloadCipher

def trap(*args, **kwargs):
    raise SystemExit("the host tried to unwrap or decrypt")

modelseal.header_auth.unlock = modelseal.opening.unlock = trap
modelseal.opening.open_into = modelseal.opening.open = trap
PayloadCipher.decrypt_into = trap
modelseal.recipients.x25519.X25519Identity.unwrap = trap

from modelseal.device.client import DeviceClient
from modelseal.vault.client.attested import release_to_device
from modelseal.vault.client import VaultClient

seen = []  # every byte this process sent or received, on either connection
real_send = httpx.Client.send
def send(self, request, **kwargs):
    response = real_send(self, request, **kwargs)
    response.read()
    seen.extend((bytes(request.content), bytes(response.content)))
    return response
httpx.Client.send = send

real_call = DeviceClient._call
def call(self, kind, method, request_type, response_type, request):
    if kind == "stream_unary":
        messages = list(request)
        seen.extend(m.SerializeToString() for m in messages)
        request = iter(messages)
    else:
        seen.append(request.SerializeToString())
    response = real_call(self, kind, method, request_type, response_type, request)
    seen.append(response.SerializeToString())
    return response
DeviceClient._call = call

url, ca, name, port, sealed, x_path, out = sys.argv[1:8]
with VaultClient(url, ca=ca) as vault, DeviceClient("127.0.0.1", int(port), 5) as card:
    loaded = release_to_device(vault, card, sealed, device=name)
    y = card.run(loaded.handle, {"x": np.load(x_path)})["y"]
np.save(out + ".npy", y)
with open(out + ".seen", "wb") as f:
    f.write(b"\\0".join(seen))
"""


def test_host_process_never_holds_the_file_key(
    vault: VaultServer,
    onnx_model: OnnxModel,
    card: device.DeviceServer,
    card_key: Any,
    tmp_path: Path,
) -> None:
    public = card_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    setup = prepare(vault, onnx_model, public, tmp_path)
    np.save(tmp_path / "x.npy", onnx_model.inputs["x"])
    script = tmp_path / "host.py"
    script.write_text(HOST_SCRIPT)
    out = tmp_path / "host"
    argv = [vault.url, vault.ca, setup.name, card.port, setup.sealed, tmp_path / "x.npy", out]
    subprocess.run([sys.executable, script, *map(str, argv)], check=True, timeout=120)

    np.testing.assert_allclose(np.load(f"{out}.npy"), onnx_model.expected["y"], rtol=1e-5, atol=1e-5)
    seen = Path(f"{out}.seen").read_bytes()
    assert setup.sealed.read_bytes()[:4096] in seen and b'"sealed"' in seen  # the recorder saw it all
    assert not any(form in seen for form in encodings(setup.data_key))
    with vault.client() as admin:
        records = [r["event"] for r in admin.audit(limit=1000) if r["event"].get("device") == setup.name]
    assert [(r["op"], r.get("outcome")) for r in records if r["op"] == "key.release"] == [
        ("key.release", "released")
    ]


def test_the_card_refuses_a_release_it_cannot_open(
    vault: VaultServer,
    onnx_model: OnnxModel,
    card: device.DeviceServer,
    card_key: Any,
    tmp_path: Path,
) -> None:
    public = card_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    setup = prepare(vault, onnx_model, public, tmp_path)
    name_, version, wrapped = vault_stanza(setup.sealed)
    with (
        VaultClient(vault.url, ca=vault.ca) as client,
        device.DeviceClient("127.0.0.1", card.port, 5, timeout=30) as c,
    ):
        nonce = client.attest_challenge(setup.name)
        report = c.attestation_report(nonce)
        sealed_key = client.attest_release(setup.name, report, name_, version, wrapped, nonce)
        release = device.SealedRelease(sealed_key, "default", setup.name, name_, version, nonce)
        flipped = sealed_key[:-1] + bytes([sealed_key[-1] ^ 1])
        # What the host could try: relabel the release, flip a byte, or keep it past a reset.
        for bad in (
            device.SealedRelease(sealed_key, "default", "another-card", name_, version, nonce),
            device.SealedRelease(flipped, "default", setup.name, name_, version, nonce),
            device.SealedRelease(sealed_key, "default", setup.name, name_, version + 1, nonce),
        ):
            with pytest.raises(modelseal.NoMatchingIdentityError, match=NOT_THIS_SESSION):
                c.load(setup.sealed, bad)
        with pytest.raises(modelseal.UsageError, match="malformed vault release"):
            c.load(
                setup.sealed, device.SealedRelease(sealed_key, "default", setup.name, name_, version, b"x")
            )
        loaded = c.load(setup.sealed, release)
        out = c.run(loaded.handle, onnx_model.inputs)
        np.testing.assert_allclose(out["y"], onnx_model.expected["y"], rtol=1e-5, atol=1e-5)
        c.reset()
        with pytest.raises(modelseal.NoMatchingIdentityError, match=NOT_THIS_SESSION):
            c.load(setup.sealed, release)  # sealed to the session the reset destroyed
        # The helper does the whole round again for the new session.
        again = release_to_device(client, c, setup.sealed, device=setup.name)
        assert again.session_counter == 2
