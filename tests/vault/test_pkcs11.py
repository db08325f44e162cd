"""The PKCS#11 root on a real SoftHSM2 token made by the tests in a temporary folder.

The token's AES key is generated inside the token, non-extractable; the data folder holds only the
root encrypted by it. Skips with a reason where SoftHSM2 or python-pkcs11 is missing (never in CI).
The token comes from tests/softhsm.py, shared with the device's token identity key tests.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from softhsm import PIN, SoftToken, soft_token

from modelseal.errors import KeyFileError, UsageError
from modelseal.pkcs11util import load_module
from modelseal.vault.errors import KeyServiceError
from modelseal.vault.server import datadir
from modelseal.vault.server.roots.pkcs11 import Pkcs11Options, open_root

from .conftest import serve_process, stop_server

pkcs11 = pytest.importorskip("pkcs11", reason="python-pkcs11 not installed (extra: vault)")


@pytest.fixture(scope="module")
def token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftToken]:
    with soft_token(tmp_path_factory, "T") as made:
        yield made


def options(soft: SoftToken, **overrides: Any) -> Pkcs11Options:
    return dataclasses.replace(Pkcs11Options(soft.module, soft.label, soft.pin_file), **overrides)


def token_key(token: SoftToken, label: str) -> object:
    """The vault's key as python-pkcs11 sees it, its attributes read in a session of our own."""
    from pkcs11 import Attribute

    lib = load_module(token.module)
    with lib.get_token(token_label=token.label).open(user_pin=PIN) as session:
        key = session.get_key(label=label)
        attributes = {
            name: key[attribute]
            for name, attribute in (
                ("extractable", Attribute.EXTRACTABLE),
                ("sensitive", Attribute.SENSITIVE),
                ("never_extractable", Attribute.NEVER_EXTRACTABLE),
                ("token", Attribute.TOKEN),
                ("value_len", Attribute.VALUE_LEN),
            )
        }
        with pytest.raises(pkcs11.exceptions.AttributeSensitive):
            key[Attribute.VALUE]
        return attributes


def pkcs11_section(data: Path) -> dict[str, object]:
    config = json.loads((data / "vault.json").read_text())
    assert config["root"] == "pkcs11"
    return dict(config["pkcs11"])


def test_init_serve_and_key_operations(token: SoftToken, tmp_path: Path) -> None:
    data = tmp_path / "vault"
    init = subprocess.run(
        [
            sys.executable, "-m", "modelseal", "vault", "init", "--data", str(data),
            "--root", "pkcs11", "--module", token.module, "--token", token.label,
            "--pin-file", str(token.pin_file), "--key-label", "vault-e2e",
        ],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    assert PIN not in init.stdout + init.stderr
    assert not (data / datadir.ROOT_FILE).exists()

    server = serve_process(data, tmp_path / "server.log")
    try:
        with server.client() as admin:
            assert admin.ready()["status"] == "ready"
            assert admin.seal_status() == {"sealed": False}
            admin.create_key("through-the-token")
            answer = admin.datakey("through-the-token", plaintext=True)
            assert admin.unwrap("through-the-token", answer.key_version, answer.wrapped) == answer.plaintext
    finally:
        stop_server(server)

    # The root only the token can decrypt is not in the data folder (database with WAL, config, log).
    config = json.loads((data / "vault.json").read_text())
    root = bytes(open_root(config["pkcs11"], config["vault_id"]))
    files = [p for p in data.rglob("*") if p.is_file()] + [server.log]
    everything = b"".join(p.read_bytes() for p in files)
    for needle in (root, root.hex().encode(), base64.b64encode(root), PIN.encode()):
        assert needle not in everything

    # The same folder serves again: the root comes back from the token after a restart.
    server = serve_process(data, tmp_path / "server.log")
    try:
        with server.client() as admin:
            assert admin.unwrap("through-the-token", answer.key_version, answer.wrapped) == answer.plaintext
    finally:
        stop_server(server)


def test_the_token_key_never_leaves_the_token(token: SoftToken, tmp_path: Path) -> None:
    datadir.init(tmp_path / "vault", "pkcs11", pkcs11=options(token, key_label="vault-attrs"))
    assert token_key(token, "vault-attrs") == {
        "extractable": False,
        "sensitive": True,
        "never_extractable": True,
        "token": True,
        "value_len": 32,
    }
    section = pkcs11_section(tmp_path / "vault")
    assert section["key_label"] == "vault-attrs" and PIN not in json.dumps(section)


def test_wrong_pin_fails_clearly(token: SoftToken, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.pin"
    wrong.write_text("not-the-pin\n")
    wrong.chmod(0o600)
    with pytest.raises(KeyServiceError, match="refused the PIN") as refused:
        datadir.init(tmp_path / "a", "pkcs11", pkcs11=options(token, pin_file=wrong))
    assert refused.value.code == "pin_incorrect"

    # A vault made with the right PIN whose PIN file later goes wrong: serve stops with one line.
    data = tmp_path / "b"
    datadir.init(data, "pkcs11", pkcs11=options(token, key_label="vault-pin"))
    token.pin_file.write_text("not-the-pin\n")
    try:
        serve = subprocess.run(
            [
                sys.executable,
                "-m",
                "modelseal",
                "vault",
                "serve",
                "--data",
                str(data),
                "--listen",
                "127.0.0.1:9",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        token.pin_file.write_text(PIN + "\n")
    assert serve.returncode == 12
    assert "refused the PIN (wrong PIN)" in serve.stderr and "Traceback" not in serve.stderr


def test_pin_file_hygiene(token: SoftToken, tmp_path: Path) -> None:
    loose = tmp_path / "loose.pin"
    loose.write_text(PIN + "\n")
    loose.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        datadir.init(tmp_path / "a", "pkcs11", pkcs11=options(token, pin_file=loose))
    with pytest.raises(KeyFileError, match="cannot read PIN file"):
        datadir.init(tmp_path / "b", "pkcs11", pkcs11=options(token, pin_file=tmp_path / "missing.pin"))
    big = tmp_path / "big.pin"
    big.write_text("1" * 1000)
    big.chmod(0o600)
    with pytest.raises(KeyFileError, match="larger than"):
        datadir.init(tmp_path / "c", "pkcs11", pkcs11=options(token, pin_file=big))


def test_missing_module_token_and_key(token: SoftToken, tmp_path: Path) -> None:
    with pytest.raises(KeyServiceError, match="does not exist"):
        datadir.init(tmp_path / "a", "pkcs11", pkcs11=options(token, module=str(tmp_path / "nope.so")))
    not_a_library = tmp_path / "fake.so"
    not_a_library.write_bytes(b"\x7fELF not really")
    with pytest.raises(KeyServiceError, match="cannot load PKCS#11 module"):
        datadir.init(tmp_path / "b", "pkcs11", pkcs11=options(token, module=str(not_a_library)))
    with pytest.raises(KeyServiceError, match="no PKCS#11 token labelled 'absent'"):
        datadir.init(tmp_path / "c", "pkcs11", pkcs11=options(token, token="absent"))
    with pytest.raises(UsageError):
        datadir.init(tmp_path / "d", "pkcs11", pkcs11=options(token, key_label=""))

    data = tmp_path / "e"
    datadir.init(data, "pkcs11", pkcs11=options(token, key_label="vault-gone"))
    with pytest.raises(KeyServiceError, match="already holds a key labelled 'vault-gone'"):
        datadir.init(tmp_path / "f", "pkcs11", pkcs11=options(token, key_label="vault-gone"))
    with load_module(token.module).get_token(token_label=token.label).open(rw=True, user_pin=PIN) as session:
        session.get_key(label="vault-gone").destroy()
    with pytest.raises(KeyServiceError, match="holds no key labelled 'vault-gone'"):
        datadir.DataDir(data).open_store()


def test_tampered_or_foreign_config_fails_closed(token: SoftToken, tmp_path: Path) -> None:
    first, second = tmp_path / "one", tmp_path / "two"
    datadir.init(first, "pkcs11", pkcs11=options(token, key_label="vault-one"))
    datadir.init(second, "pkcs11", pkcs11=options(token, key_label="vault-two"))
    config = json.loads((first / "vault.json").read_text())

    flipped = dict(config["pkcs11"])
    sealed = bytearray.fromhex(str(flipped["sealed_root"]))
    sealed[0] ^= 1
    flipped["sealed_root"] = sealed.hex()
    with pytest.raises(KeyServiceError, match="could not decrypt this vault's root key"):
        open_root(flipped, config["vault_id"])

    # Vault one's ciphertext under vault two's key (and id): the AAD and the key both differ.
    other = json.loads((second / "vault.json").read_text())
    swapped = {**other["pkcs11"], "sealed_root": config["pkcs11"]["sealed_root"]}
    with pytest.raises(KeyServiceError, match="could not decrypt"):
        open_root(swapped, other["vault_id"])

    for field, value in (("nonce", "00"), ("module", "relative.so"), ("sealed_root", "zz")):
        with pytest.raises(KeyServiceError, match=f"pkcs11.{field}"):
            open_root({**config["pkcs11"], field: value}, config["vault_id"])

    assert bytes(open_root(config["pkcs11"], config["vault_id"])) != bytes(
        open_root(other["pkcs11"], other["vault_id"])
    )
