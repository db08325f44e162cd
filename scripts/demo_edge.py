"""`make demo`, part 2: the edge path end to end, with the real services and the CLI a user types.

platform: a vault (SQLite, TLS) behind the real nginx gateway; the owner creates a master key,
seals a real ONNX model under it, uploads the ciphertext to the vault's repository, registers an
edge device with its PSK and a policy + licence. edge node: the agent on a unix socket forwards to
the gateway. container: with only its PSK file and the agent's socket, it fetches the model by id,
Crypto-fs serves it from locked memory (a FUSE mount, or `cfs run` where FUSE is missing) and an
unmodified ONNX Runtime app reads it as a plain file and prints its predictions. Then the owner
revokes the device: at its next lease check the running container loses the model, and the next
open is refused with a clear message.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort

from modelseal import cfs
from modelseal.vault.server import nginx as gateway

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo import build_model, step

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(os.environ.get("MODELSEAL_DEMO_OUT") or ROOT / "demo-output") / "edge"
MODEL_ID = "digits-mlp"
DEVICE = "edge-cam-1"
# The inference app knows nothing of modelseal: it gets a path and reads a plain file.
APP = """
import os, sys, time, numpy as np, onnxruntime as ort
path = os.environ["MODELSEAL_FILE"] if sys.argv[1] == "-" else sys.argv[1]
inputs, seconds = np.load(sys.argv[2]), float(sys.argv[3])
session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
print("app predicted", session.run(None, {session.get_inputs()[0].name: inputs})[0].tolist(), flush=True)
end = time.monotonic() + seconds
while time.monotonic() < end:  # a long-running service keeps serving requests
    session.run(None, {session.get_inputs()[0].name: inputs})
    time.sleep(0.1)
"""


def modelseal_cmd(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    shown = " ".join(a if " " not in a else repr(a) for a in args)
    print(f"$ modelseal {shown}")
    proc = subprocess.run([sys.executable, "-m", "modelseal", *args], env=env, text=True, capture_output=True)
    for line in (proc.stdout + proc.stderr).strip().splitlines()[-6:]:
        print(f"  {line}")
    if check and proc.returncode != 0:
        raise SystemExit(f"ERROR: `modelseal {shown}` failed with exit code {proc.returncode}")
    return proc


def wait_for(what: str, ready: object, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with suppress(Exception):
            if callable(ready) and ready():
                return
        time.sleep(0.1)
    raise SystemExit(f"ERROR: {what} did not come up within {timeout:.0f} s")


@contextmanager
def background(name: str, argv: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    log = open(OUT / f"{name}.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    data, ca = OUT / "vault", OUT / "vault" / "tls" / "ca.pem"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    step("platform: initialise the vault (SQLite, TLS certificates, root key file, admin token)")
    modelseal_cmd("vault", "init", "--data", str(data), env=env)
    port = free_port()
    serve = [
        sys.executable,
        "-m",
        "modelseal",
        "vault",
        "serve",
        "--data",
        str(data),
        "--listen",
        f"127.0.0.1:{port}",
    ]
    with background("vault", serve, env):
        vault_url = f"https://127.0.0.1:{port}"
        wait_for("the vault", lambda: httpx.get(f"{vault_url}/v1/sys/health", verify=str(ca)).is_success)
        print(f"vault listening on {vault_url} (loopback only)")

        step("platform: put the real nginx gateway in front of the vault")
        gw = None
        if gateway.find_nginx() is None:
            if os.environ.get("CI") == "true":
                raise SystemExit("ERROR: nginx is missing (make test installs it)")
            print("nginx is not installed (apt-get install nginx): the agent will talk to the vault directly")
            public_url = vault_url
        else:
            template = (ROOT / "deploy" / "nginx" / "modelseal-vault.conf").read_text()
            gw = gateway.start(
                OUT / "nginx",
                template,
                {
                    "GATEWAY_CERT": str(data / "tls" / "server.pem"),
                    "GATEWAY_KEY": str(data / "tls" / "server.key"),
                    "CLIENT_CA": str(ca),
                    "CLIENT_VERIFY": "optional",
                    "VAULT_UPSTREAM": f"127.0.0.1:{port}",
                    "VAULT_CA": str(ca),
                    "VAULT_TLS_NAME": "localhost",
                },
            )
            public_url = gw.url
            print(f"gateway (nginx, deploy/nginx/modelseal-vault.conf) on {public_url} -> vault")
        try:
            return edge_flow(env, public_url, data, ca)
        finally:
            if gw is not None:
                gateway.stop(gw)


def edge_flow(env: dict[str, str], public_url: str, data: Path, ca: Path) -> int:
    owner = {
        **env,
        "MODELSEAL_VAULT_ADDR": public_url,
        "MODELSEAL_VAULT_CA": str(ca),
        "MODELSEAL_VAULT_TOKEN_FILE": str(data / "admin.token"),
    }

    step("owner: build a real model, seal it under a vault master key, upload the ciphertext")
    plain = OUT / "digits.onnx"
    x = build_model(plain)
    np.save(OUT / "inputs.npy", x)
    expected = ort.InferenceSession(str(plain), providers=["CPUExecutionProvider"])
    want = expected.run(None, {expected.get_inputs()[0].name: x})[0].tolist()
    sealed = OUT / "digits.onnx.mseal"
    modelseal_cmd("vault", "key", "create", "models", env=owner)
    modelseal_cmd("seal", str(plain), "-o", str(sealed), "--vault-key", "models", env=owner)
    # Through the gateway too: its /v1/models/{id} location streams uploads of any size.
    modelseal_cmd("vault", "model", "upload", str(sealed), "--id", MODEL_ID, env=owner)

    step("owner: register the edge device (its PSK goes to the device only) and allow it the key")
    psk = OUT / "device.psk"
    modelseal_cmd("vault", "device", "create", DEVICE, "--group", "edge", "--psk-out", str(psk), env=owner)
    modelseal_cmd("vault", "policy", "create", "edge-models", "--key", "models", "--group", "edge", env=owner)
    modelseal_cmd(
        "vault", "licence", "create", "edge-2026", "--policy", "edge-models", "--max-devices", "10", env=owner
    )

    step("edge node: the agent forwards containers' requests to the gateway (it holds no key)")
    sock = OUT / "agent.sock"
    agent = [
        sys.executable,
        "-m",
        "modelseal",
        "agent",
        "serve",
        "--vault",
        public_url,
        "--ca",
        str(ca),
        "--listen",
        f"unix:{sock}",
        "--cache",
        str(OUT / "agent-cache"),
    ]
    with background("agent", agent, env):
        wait_for("the agent", sock.is_socket)
        print(f"agent on unix:{sock}")
        container = {k: v for k, v in env.items() if not k.startswith("MODELSEAL_VAULT")}
        container["XDG_CACHE_HOME"] = str(OUT / "container-cache")
        return container_flow(container, owner, sock, psk, want)


def container_flow(
    container: dict[str, str], owner: dict[str, str], sock: Path, psk: Path, want: list[int]
) -> int:
    device_args = ["--agent", f"unix:{sock}", "--psk-file", str(psk), "--lease-interval", "1"]
    # MODELSEAL_DEMO_NO_FUSE=1 shows (and tests) the path of machines without FUSE.
    no_fuse = os.environ.get("MODELSEAL_DEMO_NO_FUSE") == "1"
    use_fuse = cfs.fuse_unavailable() is None and not no_fuse
    if not use_fuse and not no_fuse and os.environ.get("CI") == "true":
        raise SystemExit(f"ERROR: FUSE is unavailable in CI: {cfs.fuse_unavailable()}")
    app = [sys.executable, "-c", APP]

    if use_fuse:
        step("container: Crypto-fs mounts the model by its id (FUSE, locked memory, no plaintext on disk)")
        mnt = OUT / "mnt"
        mnt.mkdir()
        modelseal_cmd("cfs", "mount", MODEL_ID, "--at", str(mnt), *device_args, env=container)
        model_path = mnt / "digits.onnx"
        print(f"the app opens {model_path} as a plain file:")
        proc = subprocess.run(
            [*app, str(model_path), str(OUT / "inputs.npy"), "0"],
            capture_output=True,
            text=True,
            env=container,
        )
        print(f"  {proc.stdout.strip() or proc.stderr.strip()}")
        if str(want) not in proc.stdout:
            print("ERROR: the app did not get the plaintext model's predictions")
            return 1
        print("predictions identical to the plaintext model's: True")

        step("owner: the device is reported stolen: revoke it in the vault")
        modelseal_cmd("vault", "device", "revoke", DEVICE, env=owner)
        deadline = time.monotonic() + 15
        while os.path.ismount(mnt) and time.monotonic() < deadline:
            time.sleep(0.2)
        if os.path.ismount(mnt):
            print("ERROR: the mount survived the revocation")
            return 1
        print("at its next lease check Crypto-fs unmounted and zeroized the model")
    else:
        why = "MODELSEAL_DEMO_NO_FUSE=1" if no_fuse else f"FUSE unavailable: {cfs.fuse_unavailable()}"
        step(f"container: `cfs run` ({why}) hands the app the model in a sealed memfd")
        print("$ modelseal cfs run digits-mlp --agent ... --psk-file ... -- python app.py  (serves for 60 s)")
        child = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "modelseal",
                "cfs",
                "run",
                MODEL_ID,
                *device_args,
                "--",
                *app,
                "-",
                str(OUT / "inputs.npy"),
                "60",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=container,
        )
        assert child.stdout is not None
        print(f"  {child.stdout.readline().strip()}")
        step("owner: the device is reported stolen: revoke it in the vault")
        modelseal_cmd("vault", "device", "revoke", DEVICE, env=owner)
        try:
            _, err = child.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            child.kill()
            print("ERROR: the app kept running after the revocation")
            return 1
        print(f"  {err.strip().splitlines()[-1] if err.strip() else ''} (exit {child.returncode})")
        if child.returncode != 17:
            return 1

    step("container: the next open is refused")
    proc = modelseal_cmd(
        "cfs",
        "run",
        MODEL_ID,
        *device_args,
        "--",
        sys.executable,
        "-c",
        "print('ran')",
        env=container,
        check=False,
    )
    if proc.returncode == 0 or "ran" in proc.stdout:
        print("ERROR: a revoked device opened the model")
        return 1
    print(f"refused with exit code {proc.returncode}: nothing was decrypted, nothing ran")
    print("\nedge demo complete: everything above ran on this machine (see demo-output/edge/*.log)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
