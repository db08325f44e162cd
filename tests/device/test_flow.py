"""The qaic flow end to end, from the shell: four cards, session keys, a reset and a rewrap.

keygen MEK -> encrypt-model -> attest 4 cards -> verify -> encrypt-with-session-keys -> every card
loads and runs the model -> reset card 2 -> its load fails -> attest again -> wrap-mek + replace-mek
-> card 2 loads again, the others still do, and the payload bytes never changed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

import modelseal
from modelseal.device import NOT_THIS_SESSION

from .helpers import Card, OnnxModel, cli


def payload(path: Path) -> bytes:
    """The sealed model's ciphertext after its header: what a rewrap must never touch."""
    return path.read_bytes()[modelseal.inspect(path).header_length :]


def attest_and_verify(work: Path, card: Card, measurement: str, tag: str) -> Path:
    request = work / f"request{card.device_id}{tag}.dat"
    request.write_bytes(os.urandom(32))
    report = work / f"report{card.device_id}{tag}.dat"
    pub = work / f"pub{card.device_id}{tag}.dat"
    common = ["--ip", "127.0.0.1", "--port", str(card.port), "-d", str(card.device_id)]
    cli("device", "attest", *common, "-i", request, "-o", report)
    cli("device", "verify", report, "--device-pub", card.pub, "--request", request, "-o", pub,
        "-d", str(card.device_id), "--measurement", measurement)  # fmt: skip
    return pub


def run_on(card: Card, sealed: Path, x_npy: Path) -> dict[str, np.ndarray]:
    common = ["--ip", "127.0.0.1", "--port", str(card.port), "-d", str(card.device_id)]
    out = json.loads(cli("device", "run", *common, sealed, "--input", f"x={x_npy}", "--json").stdout)
    return {name: np.array(o["data"], dtype=o["dtype"]).reshape(o["shape"]) for name, o in out.items()}


def test_four_cards_reset_and_rewrap(
    tmp_path: Path, onnx_model: OnnxModel, spawn_cards: Callable[[list[int]], list[Card]]
) -> None:
    cards = spawn_cards([0, 1, 2, 3])
    pool = ThreadPoolExecutor(4)
    x_npy = tmp_path / "x.npy"
    np.save(x_npy, onnx_model.inputs["x"])

    def check_all(sealed: Path, which: list[Card]) -> None:
        for outputs in pool.map(lambda c: run_on(c, sealed, x_npy), which):
            assert outputs.keys() == onnx_model.expected.keys()
            np.testing.assert_allclose(outputs["y"], onnx_model.expected["y"], rtol=1e-5, atol=1e-5)

    mek = tmp_path / "MEK.dat"
    cli("keygen", "-o", mek, "--bits", "128", "--hex")
    cli("encrypt-model", "--qpc", onnx_model.path, "--mek", mek, "--output-dir", tmp_path / "encryptqpc")
    sealed = tmp_path / "encryptqpc" / "model.onnx.mseal"
    measurement = cli("device", "measure").stdout.strip()

    pubs = list(pool.map(lambda c: attest_and_verify(tmp_path, c, measurement, ""), cards))
    assert "# device: 2" in pubs[2].read_text()
    cli(
        "encrypt-with-session-keys", "--input-dir", tmp_path / "encryptqpc", "--mek", mek, "--pub-keys", *pubs
    )
    before = payload(sealed)
    check_all(sealed, cards)

    common2 = ["--ip", "127.0.0.1", "--port", str(cards[2].port), "-d", "2"]
    cli("device", "reset", *common2)
    refused = cli("device", "load", *common2, sealed, check=False)
    assert refused.returncode == modelseal.NoMatchingIdentityError.exit_code
    assert NOT_THIS_SESSION in refused.stderr and len(refused.stderr.strip().splitlines()) == 1

    new_pub = attest_and_verify(tmp_path, cards[2], measurement, "-after-reset")
    assert new_pub.read_text() != pubs[2].read_text()
    cli("wrap-mek", "--mek", mek, "--pub-keys", new_pub, "--output-dir", tmp_path / "wrappedMEK")
    cli("replace-mek", "--encrypted-qpc", sealed, "--wrapped-meks", tmp_path / "wrappedMEK",
        "--output-dir", tmp_path / "newEncryptedQPC")  # fmt: skip
    replaced = tmp_path / "newEncryptedQPC" / "model.onnx.mseal"

    check_all(replaced, cards)  # card 2 through its new wrap; 0, 1 and 3 through their old ones
    assert payload(replaced) == before == payload(sealed)
    assert sorted(modelseal.inspect(replaced).as_dict()["devices"].values()) == ["0", "1", "2", "3"]
    pool.shutdown()
