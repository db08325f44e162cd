"""Reports: what a card signs, and every report the owner must refuse."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

import modelseal
from modelseal import device
from modelseal.device import AttestationError, Report

from .helpers import cli


def fresh(card: device.DeviceServer, request: bytes) -> bytes:
    return device.attest("127.0.0.1", card.port, 5, request)


def test_a_fresh_report_verifies_and_binds_the_session_key(card: device.DeviceServer, card_key: Any) -> None:
    request = os.urandom(32)
    key = device.verify_report(
        fresh(card, request),
        card_key.public_key(),
        request,
        device_id=5,
        measurement=card.service.measurement,
    )
    assert key.device_id == 5 and key.recipient.slot == "5" and key.session_counter == 1
    assert key.measurement == device.software_measurement()


def test_report_fields_and_json(card: device.DeviceServer) -> None:
    request = b"anycontent\n"
    report = Report.from_bytes(fresh(card, request))
    assert report.request_digest == hashlib.sha256(request).digest()
    shown = report.as_dict()
    assert shown["session_public_key"].startswith("ms-x25519:") and shown["device_id"] == 5


def test_bad_signature_is_refused(card: device.DeviceServer, card_key: Any) -> None:
    request = os.urandom(16)
    report = Report.from_bytes(fresh(card, request))
    forged = dataclasses.replace(report, signature=bytes(64))
    with pytest.raises(AttestationError, match="signature"):
        device.verify_report(forged.to_bytes(), card_key.public_key(), request)
    # Any field changed after signing, e.g. a session key swapped in by the host, breaks it too.
    swapped = dataclasses.replace(report, session_public_key=os.urandom(32))
    with pytest.raises(AttestationError, match="signature"):
        device.verify_report(swapped.to_bytes(), card_key.public_key(), request)


def test_unknown_device_is_refused(card: device.DeviceServer, card_key: Any) -> None:
    request = os.urandom(16)
    report = fresh(card, request)
    other = modelseal.generate_signer().public_key()
    with pytest.raises(AttestationError, match="signature"):
        device.verify_report(report, other, request)
    with pytest.raises(AttestationError, match="unknown device 5"):
        device.verify_report(report, {0: card_key.public_key()}, request)
    assert device.verify_report(report, {5: card_key.public_key()}, request).device_id == 5
    with pytest.raises(AttestationError, match="not device 4"):
        device.verify_report(report, card_key.public_key(), request, device_id=4)


def test_report_for_another_request_is_refused(card: device.DeviceServer, card_key: Any) -> None:
    old = os.urandom(16)
    replayed = fresh(card, old)
    with pytest.raises(AttestationError, match="another request"):
        device.verify_report(replayed, card_key.public_key(), os.urandom(16))


def test_wrong_measurement_is_refused(card_key: Any) -> None:
    claimed = bytes(range(32))
    with device.DeviceServer(6, card_key, port=0, measurement=claimed, notice=lambda _: None) as other:
        request = os.urandom(16)
        report = device.attest("127.0.0.1", other.port, 6, request)
    with pytest.raises(AttestationError, match="measurement"):
        device.verify_report(
            report, card_key.public_key(), request, measurement=device.software_measurement()
        )
    assert device.verify_report(report, card_key.public_key(), request, measurement=claimed).device_id == 6


def test_old_and_future_reports_are_refused(card: device.DeviceServer, card_key: Any) -> None:
    request = os.urandom(16)
    report = fresh(card, request)
    stamp = Report.from_bytes(report).timestamp
    pub = card_key.public_key()
    device.verify_report(report, pub, request, now=stamp + 299)
    with pytest.raises(AttestationError, match="old"):
        device.verify_report(report, pub, request, now=stamp + 301)
    with pytest.raises(AttestationError, match="old"):
        device.verify_report(report, pub, request, max_age=10, now=stamp + 11)
    with pytest.raises(AttestationError, match="future"):
        device.verify_report(report, pub, request, now=stamp - 3600)


def test_garbage_is_not_a_report(card_key: Any) -> None:
    for data in (b"", b"\xff" * 10, os.urandom(5000)):
        with pytest.raises(AttestationError):
            device.verify_report(data, card_key.public_key(), b"")


def test_measurement_covers_the_card_code(tmp_path: Path) -> None:
    root = tmp_path / "modelseal"
    for src in device.measurement.measured_files():
        dst = root / src.relative_to(device.measurement._package_root())
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(src.read_bytes())
    assert device.software_measurement(root) == device.software_measurement()
    (root / "cli").mkdir()
    (root / "cli" / "extra.py").write_text("# host-side code is not measured\n")
    assert device.software_measurement(root) == device.software_measurement()
    (root / "device" / "server.py").write_text("# a patched card\n")
    assert device.software_measurement(root) != device.software_measurement()


def test_cli_verify_refuses_with_one_line(card: device.DeviceServer, card_key: Any, tmp_path: Path) -> None:
    request, other = tmp_path / "request.dat", tmp_path / "other.dat"
    request.write_bytes(b"anycontent\n")
    other.write_bytes(b"other\n")
    report = tmp_path / "report.dat"
    cli(
        "device",
        "attest",
        "--ip",
        "127.0.0.1",
        "--port",
        str(card.port),
        "-d",
        "5",
        "-i",
        request,
        "-o",
        report,
    )
    pub, _ = modelseal.write_signer(card_key, tmp_path / "dev5.key")
    out = tmp_path / "pub.dat"
    result = cli("device", "verify", report, "--device-pub", pub, "--request", other, "-o", out, check=False)
    assert result.returncode == AttestationError.exit_code == 11
    assert "another request" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()
    bad = cli("device", "verify", report, "--device-pub", pub, "--request", request, "-o", out,
              "--measurement", "00" * 32, check=False)  # fmt: skip
    assert bad.returncode == 11 and "measurement" in bad.stderr
    cli("device", "verify", report, "--device-pub", pub, "--request", request, "-o", out, "-d", "5")
    assert modelseal.load_recipient(str(out)).slot == "5"
