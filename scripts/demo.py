"""`make demo`: the main job end to end on a real small model.

Trains a small scikit-learn classifier, converts it to ONNX, seals it (MEK + a device's X25519
identity, owner-signed), checks it without a key, loads it into ONNX Runtime from memory only
(modelseal.runtimes.onnxruntime) and shows the outputs equal the plaintext model's; then flips one
byte and shows the tampered model is refused. Everything lands in demo-output/ (the plaintext
.onnx stays there as the owner's original; the edge side never writes plaintext).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
from skl2onnx import to_onnx
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

import modelseal
from modelseal.runtimes.onnxruntime import load_session

OUT = Path(os.environ.get("MODELSEAL_DEMO_OUT") or Path(__file__).resolve().parent.parent / "demo-output")


def step(text: str) -> None:
    print(f"\n== {text}")


def build_model(path: Path) -> np.ndarray:
    digits = load_digits()
    x = digits.data.astype(np.float32) / 16.0
    clf = MLPClassifier(hidden_layer_sizes=(256, 128), max_iter=60, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # 60 epochs are plenty for a demo
        clf.fit(x[:1500], digits.target[:1500])
    path.write_bytes(to_onnx(clf, x[:1], options={"zipmap": False}).SerializeToString())
    sample: np.ndarray = x[1500:1520]
    return sample


def run(session: ort.InferenceSession, x: np.ndarray) -> list[np.ndarray]:
    return [np.asarray(o) for o in session.run(None, {session.get_inputs()[0].name: x})]


def main() -> int:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir()

    step("owner: build a real model (MLP on the digits data set, exported to ONNX)")
    plain = OUT / "digits.onnx"
    x = build_model(plain)
    print(f"{plain.name}: {plain.stat().st_size} bytes")

    step("owner: create keys (MEK, a device identity, the owner signer)")
    mek = modelseal.keygen()
    modelseal.write_mek(mek, OUT / "MEK.dat")
    device = modelseal.generate_identity()
    modelseal.write_x25519_identity(device, OUT / "device.key")
    signer = modelseal.generate_signer()
    modelseal.write_signer(signer, OUT / "owner.key")
    print(f"device recipient: {modelseal.x25519_recipient_string(device.recipient)}")
    print(f"owner public key: {modelseal.ed25519_public_string(signer.public_key())}")

    step("owner: seal the model to the MEK and the device, signed")
    sealed = OUT / "digits.onnx.mseal"
    result = modelseal.seal(
        plain,
        sealed,
        [device.recipient],
        mek=mek,
        signer=signer,
        metadata={"name": "digits-mlp", "runtime": "onnxruntime"},
    )
    print(
        f"{sealed.name}: {result.sealed_length} bytes, {result.chunk_count} chunk(s), signed={result.signed}"
    )

    step("anyone: inspect and verify the owner signature without any key")
    info = modelseal.inspect(sealed)
    print(f"recipients: {', '.join(info.recipients)}; signer: {info.signer}")
    modelseal.verify(sealed, signer=signer.public_key())
    print("owner signature and payload digest: valid")

    step("device: load the sealed model into ONNX Runtime from memory and run inference")
    t0 = time.perf_counter()
    session = load_session(
        sealed, modelseal.load_identity(OUT / "device.key"), signer=signer.public_key(),
        providers=["CPUExecutionProvider"],
    )
    print(f"authenticated, decrypted and loaded in {1000 * (time.perf_counter() - t0):.1f} ms;"
          " the plaintext was in memory only and is zeroized now")
    sealed_out = run(session, x)
    plain_out = run(ort.InferenceSession(str(plain), providers=["CPUExecutionProvider"]), x)
    print(f"predicted labels (sealed):    {sealed_out[0].tolist()}")
    print(f"predicted labels (plaintext): {plain_out[0].tolist()}")
    same = all(np.array_equal(a, b) for a, b in zip(sealed_out, plain_out, strict=True))
    print(f"outputs identical to the plaintext model's: {same}")
    if not same:
        return 1

    step("container: an unmodified app reads the model as a plain file via `modelseal cfs run`")
    app = (
        "import os, sys, numpy as np, onnxruntime as ort;"
        "s = ort.InferenceSession(os.environ['MODELSEAL_FILE'], providers=['CPUExecutionProvider']);"
        "x = np.load(sys.argv[1]); y = s.run(None, {s.get_inputs()[0].name: x})[0];"
        "print('app saw', os.environ['MODELSEAL_FILE'], '->', y.tolist())"
    )
    np.save(OUT / "inputs.npy", x)
    cmd = [sys.executable, "-m", "modelseal", "cfs", "run", str(sealed), "-i", str(OUT / "device.key"),
           "--", sys.executable, "-c", app, str(OUT / "inputs.npy")]
    child = subprocess.run(cmd, capture_output=True, text=True, check=False)
    print(child.stdout.strip() or child.stderr.strip())
    if child.returncode != 0 or str(plain_out[0].tolist()) not in child.stdout:
        print("ERROR: the app under cfs run did not get the plaintext model's outputs")
        return 1

    step("attacker: flip one byte of the sealed payload")
    tampered = OUT / "tampered.mseal"
    data = bytearray(sealed.read_bytes())
    data[info.header_length + 100] ^= 0x01
    tampered.write_bytes(bytes(data))
    try:
        modelseal.open(tampered, device)
    except modelseal.IntegrityError as e:
        print(f"refused: {e}")
    else:
        print("ERROR: the tampered model opened")
        return 1

    step("a wrong key is refused at the header, before any chunk is decrypted")
    try:
        modelseal.open(sealed, modelseal.generate_identity())
    except modelseal.NoMatchingIdentityError as e:
        print(f"refused: {e}")
    print("\ndemo complete: files in demo-output/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
