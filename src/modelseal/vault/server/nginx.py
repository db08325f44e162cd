"""Run the shipped nginx gateway config (deploy/nginx/modelseal-vault.conf) on this machine.

For the demo and the tests: the template is rendered exactly as a deployment renders it (only its
${...} placeholders are substituted), included from a minimal main config, and nginx runs in the
foreground on a free 127.0.0.1 port with its own prefix folder, so it needs no root, writes
nothing outside that folder, and is stopped by :func:`stop`.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import Unavailable

PLACEHOLDER = re.compile(r"\$\{([A-Z_]+)\}")


def find_nginx() -> str | None:
    # Debian puts nginx in /usr/sbin, which is not on an ordinary user's PATH.
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def render(template: str, values: Mapping[str, str]) -> str:
    used = set(PLACEHOLDER.findall(template))
    # A placeholder left unrendered would reach nginx as an undefined $variable.
    if used != set(values):
        raise ValueError(f"template placeholders {sorted(used)} != rendered {sorted(values)}")
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


@dataclass
class Gateway:
    url: str
    process: subprocess.Popen[bytes]
    error_log: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def start(folder: Path, template: str, values: Mapping[str, str], *, nginx: str | None = None) -> Gateway:
    """nginx serving ``template`` rendered with ``values`` plus GATEWAY_LISTEN = a free port."""
    binary = nginx or find_nginx()
    if binary is None:
        raise Unavailable("nginx is not installed (Debian: apt-get install nginx)")
    folder.mkdir(parents=True, exist_ok=True)
    error_log = folder / "error.log"
    log = ""
    for _ in range(3):  # the free port may be taken between probe and bind
        port = _free_port()
        snippet = folder / "modelseal-vault.conf"
        snippet.write_text(render(template, {**values, "GATEWAY_LISTEN": f"127.0.0.1:{port}"}))
        # Debian's compiled-in log and temp paths are under /var: everything goes into the prefix.
        main = folder / "nginx.conf"
        main.write_text(
            f"""worker_processes 1;
events {{ worker_connections 64; }}
http {{
    access_log {folder}/access.log;
    client_body_temp_path {folder}/client_body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    include {snippet};
}}
"""
        )
        process = subprocess.Popen(
            [
                binary,
                "-p",
                f"{folder}/",
                "-c",
                str(main),
                "-e",
                str(error_log),
                "-g",
                f"daemon off; pid {folder}/nginx.pid;",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        gateway = Gateway(f"https://127.0.0.1:{port}", process, error_log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and process.poll() is None:
            if _listening(port):
                return gateway
            time.sleep(0.05)
        stop(gateway)
        log = error_log.read_text() if error_log.exists() else ""
        if "Address already in use" not in log:
            break
    raise Unavailable(f"nginx did not start: {log[-2000:]}")


def stop(gateway: Gateway) -> None:
    if gateway.process.poll() is None:
        gateway.process.send_signal(signal.SIGTERM)  # fast shutdown; SIGQUIT would wait for clients
        try:
            gateway.process.wait(10)
        except subprocess.TimeoutExpired:
            gateway.process.kill()
            gateway.process.wait()
