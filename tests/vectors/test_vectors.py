"""The sealed-model test vectors (docs/SPEC.md §12), checked against modelseal and an independent reader.

Each ``*.vec`` file is a few ``name: value`` lines, an empty line, then the sealed model's bytes.
modelseal must do what ``expect:`` says, with the error class the spec maps it to; the independent
reader (written from the spec, sharing no code with modelseal) must reach the same verdict and the
same plaintext. The committed files must also be exactly what scripts/gen_vectors.py writes.
"""

from __future__ import annotations

import ast
import hashlib
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import independent_reader as ref
import pytest

import modelseal

HERE = Path(__file__).resolve().parent
GENERATOR = HERE.parent.parent / "scripts" / "gen_vectors.py"
VECTORS = sorted(HERE.glob("*.vec"))
EXPECTATIONS = ("success", "header failure", "payload failure", "no match")


@dataclass
class Vector:
    name: str
    expect: str
    sealed: bytes
    file_key: bytes | None = None
    identity_pem: bytes | None = None
    passphrase: str | None = None
    signer: str | None = None
    payload: dict[str, str] = field(default_factory=dict)
    comment: str = ""


def load(path: Path) -> Vector:
    raw = path.read_bytes()
    head, sep, sealed = raw.partition(b"\n\n")
    assert sep, f"{path.name}: no empty line before the sealed bytes"
    v = Vector(path.stem, "", sealed)
    for line in head.decode("utf-8").splitlines():
        key, _, value = line.partition(": ")
        if key == "expect":
            v.expect = value
        elif key == "file key":
            v.file_key = bytes.fromhex(value)
        elif key == "identity":
            v.identity_pem = value.replace("\\n", "\n").encode()
        elif key == "passphrase":
            v.passphrase = value
        elif key == "signer":
            v.signer = value
        elif key == "payload":
            name, _, digest = value.rpartition("=")
            v.payload[name] = digest
        elif key == "comment":
            v.comment = value
        else:
            raise AssertionError(f"{path.name}: unknown field {key!r}")
    assert v.expect in EXPECTATIONS, f"{path.name}: bad expect {v.expect!r}"
    assert sum(x is not None for x in (v.file_key, v.identity_pem, v.passphrase)) == 1, path.name
    assert bool(v.payload) == (v.expect == "success"), path.name
    return v


def ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


def library_identity(v: Vector, tmp_path: Path) -> modelseal.Identity:
    if v.file_key is not None:
        return modelseal.MEK(v.file_key)
    if v.passphrase is not None:
        return modelseal.Passphrase(v.passphrase.encode())
    assert v.identity_pem is not None
    # Through the key-file loader, so the PEM form of SPEC §9 is exercised too.
    key_file = tmp_path / "identity.pem"
    key_file.write_bytes(v.identity_pem)
    return modelseal.load_identity(key_file)


def reader_identity(v: Vector) -> ref.Identity:
    if v.file_key is not None:
        return ref.MekKey(v.file_key)
    if v.passphrase is not None:
        return ref.PassphraseKey(v.passphrase.encode())
    assert v.identity_pem is not None
    return ref.X25519Key.from_pem(v.identity_pem)


@pytest.mark.parametrize("path", VECTORS, ids=ids(VECTORS))
def test_modelseal(path: Path, tmp_path: Path, decrypt_calls: list[int]) -> None:
    v = load(path)
    sealed = tmp_path / "model.mseal"
    sealed.write_bytes(v.sealed)
    identity = library_identity(v, tmp_path)
    signer = modelseal.load_signer_public(v.signer) if v.signer else None

    if v.expect == "success":
        with modelseal.open(sealed, identity, signer=signer) as model:
            got = {name: hashlib.sha256(model.read(name)).hexdigest() for name in model.names()}
        assert got == v.payload
        return

    expected: tuple[type[BaseException], ...] = {
        "header failure": (modelseal.FormatError, modelseal.IntegrityError),
        "payload failure": (modelseal.IntegrityError,),
        "no match": (modelseal.NoMatchingIdentityError,),
    }[v.expect]
    with pytest.raises(modelseal.ModelSealError) as caught:
        modelseal.open(sealed, identity, signer=signer)
    assert isinstance(caught.value, expected), f"{type(caught.value).__name__}: {caught.value}"
    if v.expect == "header failure":
        assert decrypt_calls == [], "a header failure was reported only after decrypting chunks"
    if v.expect == "no match":
        assert not isinstance(caught.value, modelseal.IntegrityError)


@pytest.mark.parametrize("path", VECTORS, ids=ids(VECTORS))
def test_independent_reader(path: Path) -> None:
    v = load(path)
    signer = ref.parse_ed25519_text(v.signer) if v.signer else None
    if v.expect == "success":
        files = ref.open_sealed(v.sealed, reader_identity(v), signer)
        assert {name: hashlib.sha256(data).hexdigest() for name, data in files.items()} == v.payload
        return
    with pytest.raises(ref.Rejected) as caught:
        ref.open_sealed(v.sealed, reader_identity(v), signer)
    assert caught.value.kind == v.expect, f"{type(caught.value).__name__}: {caught.value}"


def test_generator_reproduces_committed_vectors(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(GENERATOR), "--out", str(tmp_path)], check=True, capture_output=True)
    fresh = {p.name: p.read_bytes() for p in tmp_path.glob("*.vec")}
    committed = {p.name: p.read_bytes() for p in VECTORS}
    assert sorted(fresh) == sorted(committed)
    changed = [name for name in fresh if fresh[name] != committed[name]]
    assert not changed, f"re-run scripts/gen_vectors.py and review: {changed}"


def test_vector_set_is_complete_and_small() -> None:
    kinds = {load(p).expect for p in VECTORS}
    assert kinds == set(EXPECTATIONS)
    assert sum(p.stat().st_size for p in VECTORS) < 300 * 1024


def test_independent_reader_shares_no_code_with_modelseal() -> None:
    tree = ast.parse((HERE / "independent_reader.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    allowed = set(sys.stdlib_module_names) | {"cryptography", "__future__"}
    assert {name.split(".")[0] for name in imported} <= allowed
