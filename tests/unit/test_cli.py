"""The `modelseal` command: workflows end to end, one-line errors, documented exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelseal.cli.main import main


def run(*args: str | Path) -> int:
    return main([str(a) for a in args])


@pytest.fixture
def keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Path | str]:
    assert run("keygen", "-o", tmp_path / "MEK.dat", "--bits", "128", "--hex") == 0
    assert run("identity", "-o", tmp_path / "dev.key") == 0
    assert run("signer", "-o", tmp_path / "owner.key") == 0
    out = capsys.readouterr().out.split()
    return {
        "mek": tmp_path / "MEK.dat",
        "dev": tmp_path / "dev.key",
        "recipient": out[0],
        "owner": tmp_path / "owner.key",
        "owner_pub": tmp_path / "owner.pub",
    }


def test_seal_inspect_verify_unseal(
    tmp_path: Path, keys: dict[str, Path | str], capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "m.onnx").write_bytes(os.urandom(50_000))
    (tmp_path / "pw").write_text("s3cret\n")
    assert (
        run(
            "seal",
            tmp_path / "m.onnx",
            "-o",
            tmp_path / "m.mseal",
            "--mek",
            keys["mek"],
            "-r",
            keys["recipient"],
            "--passphrase-file",
            tmp_path / "pw",
            "--scrypt-log-n",
            "10",
            "--sign",
            keys["owner"],
            "--chunk-size",
            "16K",
            "--metadata",
            "name=demo",
        )
        == 0
    )
    capsys.readouterr()
    assert run("inspect", tmp_path / "m.mseal", "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["chunk_size"] == 16384 and info["metadata"] == {"name": "demo"}
    assert [r.split(":")[0] for r in info["recipients"]] == ["mek", "x25519", "scrypt"]
    assert run("verify", tmp_path / "m.mseal", "-i", keys["dev"], "--signer", keys["owner_pub"]) == 0
    assert "owner signature valid" in capsys.readouterr().out
    assert run("verify", tmp_path / "m.mseal", "--passphrase-file", tmp_path / "pw") == 0
    assert run("unseal", tmp_path / "m.mseal", "-o", tmp_path / "out.onnx", "-i", keys["mek"]) == 0
    assert (tmp_path / "out.onnx").read_bytes() == (tmp_path / "m.onnx").read_bytes()
    assert run("unseal", tmp_path / "m.mseal", "-o", tmp_path / "out.onnx", "-i", keys["mek"]) == 7
    assert "already exists" in capsys.readouterr().err


def test_rewrap_in_place_and_remove(
    tmp_path: Path, keys: dict[str, Path | str], capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "m.bin").write_bytes(b"x" * 10_000)
    assert run("seal", tmp_path / "m.bin", "-o", tmp_path / "m.mseal", "--mek", keys["mek"]) == 0
    assert run("rewrap", tmp_path / "m.mseal", "-i", keys["mek"], "-r", keys["recipient"], "--in-place") == 0
    assert run("verify", tmp_path / "m.mseal", "-i", keys["dev"]) == 0
    assert (
        run(
            "rewrap",
            tmp_path / "m.mseal",
            "-i",
            keys["mek"],
            "--remove-recipient",
            keys["recipient"],
            "-o",
            tmp_path / "n.mseal",
        )
        == 0
    )
    capsys.readouterr()
    assert run("verify", tmp_path / "n.mseal", "-i", keys["dev"]) == 5
    assert "no identity" in capsys.readouterr().err


def test_qaic_seed_workflow(
    tmp_path: Path, keys: dict[str, Path | str], capsys: pytest.CaptureFixture[str]
) -> None:
    qpc = tmp_path / "programqpc.bin"
    qpc.write_bytes(os.urandom(30_000))
    sessions = []
    for n in range(2):
        assert run("identity", "-o", tmp_path / f"card{n}.key") == 0
        pub = tmp_path / f"pub{n}.dat"
        pub.write_text(capsys.readouterr().out)
        sessions.append(pub)
    assert (
        run("encrypt-model", "--qpc", qpc, "--mek", keys["mek"], "--output-dir", tmp_path / "encryptqpc") == 0
    )
    encrypted = tmp_path / "encryptqpc" / "programqpc.bin.mseal"
    assert (
        run(
            "encrypt-with-session-keys",
            "--input-dir",
            tmp_path / "encryptqpc",
            "--mek",
            keys["mek"],
            "--pub-keys",
            sessions[0],
        )
        == 0
    )
    assert run("verify", encrypted, "-i", tmp_path / "card0.key") == 0
    # Reset of card 0: a new session key; wrap on the trusted side, replace on the host (no MEK).
    assert run("identity", "-o", tmp_path / "card0-new.key") == 0
    (tmp_path / "pub0-new.dat").write_text(capsys.readouterr().out)
    assert (
        run(
            "wrap-mek",
            "--mek",
            keys["mek"],
            "--pub-keys",
            tmp_path / "pub0-new.dat",
            sessions[1],
            "--output-dir",
            tmp_path / "wrappedMEK",
        )
        == 0
    )
    config = json.loads((tmp_path / "wrappedMEK" / "config.json").read_text())
    assert [d["device"] for d in config["devices"]] == ["0", "1"]
    assert (
        run(
            "replace-mek",
            "--encrypted-qpc",
            encrypted,
            "--wrapped-meks",
            tmp_path / "wrappedMEK",
            "--output-dir",
            tmp_path / "newEncryptedQPC",
        )
        == 0
    )
    replaced = tmp_path / "newEncryptedQPC" / encrypted.name
    assert run("verify", replaced, "-i", tmp_path / "card0-new.key") == 0
    assert run("verify", replaced, "-i", tmp_path / "card1.key") == 0
    capsys.readouterr()
    assert run("verify", replaced, "-i", tmp_path / "card0.key") == 5
    assert run("unseal", replaced, "-o", tmp_path / "plain.bin", "-i", tmp_path / "card1.key") == 0
    assert (tmp_path / "plain.bin").read_bytes() == qpc.read_bytes()


def test_errors_are_one_line_with_exit_codes(tmp_path: Path, keys: dict[str, Path | str]) -> None:
    (tmp_path / "m.bin").write_bytes(b"y" * 5000)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    cmd = [sys.executable, "-m", "modelseal"]
    subprocess.run(
        [*cmd, "seal", tmp_path / "m.bin", "-o", tmp_path / "m.mseal", "--mek", keys["mek"]],
        check=True,
        env=env,
    )
    data = bytearray((tmp_path / "m.mseal").read_bytes())
    data[-3] ^= 0xFF
    (tmp_path / "bad.mseal").write_bytes(bytes(data))
    (tmp_path / "foreign").write_bytes(b"hello world" * 10)
    cases = [
        (["verify", tmp_path / "bad.mseal", "-i", keys["mek"]], 4, "integrity check failed"),
        (["inspect", tmp_path / "foreign"], 3, "not a modelseal sealed model"),
        (["verify", tmp_path / "m.mseal", "-i", keys["dev"]], 5, "no identity"),
        (["verify", tmp_path / "m.mseal", "-i", tmp_path / "foreign"], 6, "neither a MEK file"),
        (["seal", tmp_path / "missing", "-o", tmp_path / "x.mseal", "--mek", keys["mek"]], 2, "cannot read"),
        (["verify", tmp_path / "m.mseal"], 2, "nothing to verify"),
    ]
    for args, code, message in cases:
        proc = subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, env=env)
        assert proc.returncode == code, (args, proc.stderr)
        assert proc.stderr.count("\n") == 1 and message in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run(
        [*cmd, "verify", "-v", str(tmp_path / "bad.mseal"), "-i", str(keys["mek"])],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_help_teaches(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run("--help")
    out = capsys.readouterr().out
    for word in ("seal", "unseal", "inspect", "verify", "rewrap", "wrap-mek", "replace-mek", "exit codes"):
        assert word in out
    with pytest.raises(SystemExit):
        run("seal", "--help")
    assert "example:" in capsys.readouterr().out


def test_bare_modelseal_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    """A newcomer typing just `modelseal` gets the commands, not `error: ... required: COMMAND`."""
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: modelseal") and "seal" in out and "vault" in out
    done = subprocess.run([sys.executable, "-m", "modelseal"], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and done.stdout.startswith("usage: modelseal") and not done.stderr
