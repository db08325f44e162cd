"""A card whose Ed25519 identity key lives in a PKCS#11 token (SoftHSM2 in a temporary folder).

`device keygen` makes the pair inside the token (sensitive, never extractable) and writes the public
key; a real `device serve` signs its reports there with CKM_EDDSA, and `device attest` + `device
verify --device-pub` accept them exactly as reports signed by a key file. Skips with a reason where
SoftHSM2 or python-pkcs11 is missing (never in CI). The token comes from tests/softhsm.py.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from softhsm import PIN, SoftToken, soft_token

import modelseal
from modelseal import device
from modelseal.device.pkcs11_identity import TokenIdentityKey
from modelseal.errors import AttestationError, KeyFileError
from modelseal.keyrelease.report import Report
from modelseal.pkcs11util import TokenError, load_module

from .helpers import READY, cli, stop, wait_ready

if TYPE_CHECKING:
    from pkcs11 import Session

pkcs11 = pytest.importorskip("pkcs11", reason="python-pkcs11 not installed (extra: vault)")


@pytest.fixture(scope="module")
def token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftToken]:
    with soft_token(tmp_path_factory, "device") as made:
        yield made


def token_flags(token: SoftToken, label: str, pin_file: Path | None = None) -> list[str]:
    return [
        "--pkcs11-module", token.module, "--pkcs11-token", token.label,
        "--pin-file", str(pin_file or token.pin_file), "--key-label", label,
    ]  # fmt: skip


def keygen(token: SoftToken, label: str, pub: Path) -> Ed25519PublicKey:
    made = cli("device", "keygen", *token_flags(token, label), "--pub-out", pub)
    assert PIN not in made.stdout + made.stderr
    # What `device verify --device-pub` and `vault device enroll --device-pub` read.
    key = modelseal.load_signer_public(pub)
    assert made.stdout.strip() == modelseal.ed25519_public_string(key)
    return key


def wrong_pin_file(folder: Path) -> Path:
    wrong = folder / "wrong.pin"
    wrong.write_text("not-the-pin\n")
    wrong.chmod(0o600)
    return wrong


def session(token: SoftToken, *, rw: bool = False) -> Session:
    """A session of the test's own on the token (the process's one loaded library)."""
    session: Session = load_module(token.module).get_token(token_label=token.label).open(rw=rw, user_pin=PIN)
    return session


def test_keygen_serve_attest_verify(token: SoftToken, tmp_path: Path) -> None:
    pub = tmp_path / "card7.pub"
    public = keygen(token, "card-7", pub)

    log = tmp_path / "card7.log"
    command = [sys.executable, "-m", "modelseal", "device", "serve", "--device-id", "7", "--port", "0"]
    with log.open("wb") as err:
        process = subprocess.Popen(
            command + token_flags(token, "card-7"), stdout=subprocess.DEVNULL, stderr=err
        )
    try:
        port = wait_ready(process, log)
        assert modelseal.ed25519_public_string(public) in log.read_text()
        request, report = tmp_path / "request.dat", tmp_path / "report.dat"
        request.write_bytes(b"fresh nonce for card 7")
        cli("device", "attest", "--port", str(port), "-d", "7", "-i", request, "-o", report)
        verified = cli(
            "device", "verify", report, "--device-pub", pub, "--request", request,
            "-o", tmp_path / "session7.pub", "-d", "7", "--measurement", device.software_measurement().hex(),
        )  # fmt: skip
        key = device.verify_report(report.read_bytes(), public, request.read_bytes(), device_id=7)
        assert verified.stdout.strip() == key.text
        assert modelseal.load_recipient(str(tmp_path / "session7.pub")).slot == "7"

        # Another card's public key does not verify the token's reports (exit 11, one line).
        other = tmp_path / "other.key"
        other_pub, _ = modelseal.write_signer(modelseal.generate_signer(), other)
        refused = cli("device", "verify", report, "--device-pub", other_pub, "--request", request,
                      "-o", tmp_path / "x.pub", check=False)  # fmt: skip
        assert refused.returncode == 11 and "signature does not verify" in refused.stderr
        assert "Traceback" not in refused.stderr and not (tmp_path / "x.pub").exists()
    finally:
        stop(process)
    assert PIN not in log.read_text()

    # A report with the same fields signed by another key (a forged card) is refused.
    genuine = Report.from_bytes(report.read_bytes())
    forged = genuine.signed_by(modelseal.load_signer(other))
    with pytest.raises(AttestationError, match="signature does not verify"):
        device.verify_report(forged.to_bytes(), public, request.read_bytes())


def test_in_process_card_signs_in_the_token(token: SoftToken, tmp_path: Path) -> None:
    public = keygen(token, "card-5", tmp_path / "card5.pub")
    with (
        TokenIdentityKey.open(token.module, token.label, token.pin_file, "card-5") as key,
        device.DeviceServer(5, key, port=0, notice=lambda _: None) as card,
    ):
        assert key.public_key() == public
        requests = [f"request {i}".encode() for i in range(16)]
        # Concurrent attestations share the one token session: signing is serialized.
        with ThreadPoolExecutor(8) as pool:
            reports = list(pool.map(lambda r: device.attest("127.0.0.1", card.port, 5, r), requests))
        for request, report in zip(requests, reports, strict=True):
            assert device.verify_report(report, public, request, device_id=5).device_id == 5
    with pytest.raises(TokenError, match="session is closed"):
        key.sign(b"after close")


def test_the_identity_key_never_leaves_the_token(token: SoftToken, tmp_path: Path) -> None:
    from pkcs11 import Attribute, KeyType, ObjectClass

    keygen(token, "card-attrs", tmp_path / "attrs.pub")
    with session(token) as s:
        private = s.get_key(object_class=ObjectClass.PRIVATE_KEY, label="card-attrs")
        assert private.key_type == KeyType.EC_EDWARDS
        assert private[Attribute.EXTRACTABLE] is False
        assert private[Attribute.SENSITIVE] is True
        assert private[Attribute.NEVER_EXTRACTABLE] is True
        assert private[Attribute.TOKEN] is True
        with pytest.raises(pkcs11.exceptions.AttributeSensitive):
            private[Attribute.VALUE]

    # The label is never reused: keygen refuses, and the existing public key file is kept.
    again = cli("device", "keygen", *token_flags(token, "card-attrs"), "--pub-out", tmp_path / "b.pub",
                check=False)  # fmt: skip
    assert again.returncode == 6 and "already holds an object labelled 'card-attrs'" in again.stderr
    assert not (tmp_path / "b.pub").exists()
    kept = cli("device", "keygen", *token_flags(token, "card-new"), "--pub-out", tmp_path / "attrs.pub",
               check=False)  # fmt: skip
    assert kept.returncode == 7 and "refusing to overwrite" in kept.stderr
    # A public key that cannot be written: the new pair is destroyed again, the label stays free.
    lost = cli("device", "keygen", *token_flags(token, "card-lost"), "--pub-out", tmp_path / "no" / "x.pub",
               check=False)  # fmt: skip
    assert lost.returncode == 7 and "cannot write" in lost.stderr
    with session(token) as s:
        assert not list(s.get_objects({Attribute.LABEL: "card-new"}))
        assert not list(s.get_objects({Attribute.LABEL: "card-lost"}))


def test_wrong_pin_fails_clearly(token: SoftToken, tmp_path: Path) -> None:
    keygen(token, "card-pin", tmp_path / "pin.pub")
    wrong = wrong_pin_file(tmp_path)
    serve = cli("device", "serve", "--device-id", "1", "--port", "0", *token_flags(token, "card-pin", wrong),
                check=False)  # fmt: skip
    assert serve.returncode == 6, serve.stderr
    assert serve.stderr.strip() == "modelseal: error: the PKCS#11 token 'device' refused the PIN (wrong PIN)"
    assert not READY.search(serve.stderr)
    made = cli("device", "keygen", *token_flags(token, "card-never", wrong), "--pub-out", tmp_path / "n.pub",
               check=False)  # fmt: skip
    assert made.returncode == 6 and "refused the PIN (wrong PIN)" in made.stderr
    for output in (serve, made):
        assert "not-the-pin" not in output.stdout + output.stderr and "Traceback" not in output.stderr

    with pytest.raises(TokenError, match="refused the PIN") as refused:
        TokenIdentityKey.open(token.module, token.label, wrong, "card-pin")
    assert refused.value.code == "pin_incorrect" and "not-the-pin" not in str(refused.value)
    loose = tmp_path / "loose.pin"
    loose.write_text(PIN + "\n")
    loose.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        TokenIdentityKey.open(token.module, token.label, loose, "card-pin")


def test_missing_module_token_key_and_wrong_types(token: SoftToken, tmp_path: Path) -> None:
    from pkcs11 import Attribute, KeyType
    from pkcs11.util.ec import encode_named_curve_parameters

    def opening(label: str, module: str = token.module, name: str = token.label) -> TokenIdentityKey:
        return TokenIdentityKey.open(module, name, token.pin_file, label)

    with pytest.raises(TokenError, match="does not exist"):
        opening("x", module=str(tmp_path / "nope.so"))
    with pytest.raises(TokenError, match="no PKCS#11 token labelled 'absent'"):
        opening("x", name="absent")
    with pytest.raises(TokenError, match="holds no private key labelled 'nowhere'"):
        opening("nowhere")

    with session(token, rw=True) as s:
        s.generate_key(KeyType.AES, 256, label="an-aes-key", store=True)
        s.generate_keypair(
            KeyType.EC,
            label="a-p256-key",
            store=True,
            public_template={Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
        )
        s.generate_keypair(
            KeyType.EC_EDWARDS,
            label="an-exportable-key",
            store=True,
            public_template={Attribute.EC_PARAMS: encode_named_curve_parameters("1.3.101.112")},
            private_template={Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True},
        )
    with pytest.raises(TokenError, match="'an-aes-key' in token 'device' is a secret key, not an Ed25519"):
        opening("an-aes-key")
    with pytest.raises(TokenError, match="is not an Ed25519 key \\(its type is EC;"):
        opening("a-p256-key")
    with pytest.raises(TokenError, match="must stay in the token"):
        opening("an-exportable-key")

    # Through the CLI: one line, the right exit code.
    served = cli("device", "serve", "--device-id", "1", *token_flags(token, "a-p256-key"), check=False)
    assert served.returncode == 6 and served.stderr.count("\n") == 1 and "not an Ed25519 key" in served.stderr


def test_serve_flags_are_a_file_or_a_token(tmp_path: Path) -> None:
    key = tmp_path / "dev.key"
    modelseal.write_signer(modelseal.generate_signer(), key)
    both = cli(
        "device", "serve", "--device-id", "1", "--identity-key", key, "--pkcs11-token", "T", check=False
    )
    assert both.returncode == 2 and "--identity-key and --pkcs11-token exclude each other" in both.stderr
    neither = cli("device", "serve", "--device-id", "1", check=False)
    assert neither.returncode == 2 and "give the card's identity key" in neither.stderr
    partial = cli("device", "serve", "--device-id", "1", "--pkcs11-module", "m.so", "--key-label", "k",
                  check=False)  # fmt: skip
    assert partial.returncode == 2
    assert "also needs --pkcs11-token, --pin-file" in partial.stderr
    missing = cli("device", "keygen", "--pkcs11-module", "m.so", "--pub-out", tmp_path / "p", check=False)
    assert missing.returncode == 2 and "--pkcs11-token" in missing.stderr
