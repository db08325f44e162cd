"""`modelseal agent serve`: the edge agent (argparse wiring over modelseal.agent only)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import modelseal

from ._common import AddParser, add_command, connection_flags, connection_limits

EXAMPLE = (
    "modelseal agent serve --vault https://vault:8180 --ca ca.pem --listen unix:/run/modelseal/agent.sock"
)


def _default_cache() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "modelseal" / "agent-models")


def _mode(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an octal file mode: {text!r} (e.g. 660)") from None
    if not 0 < mode <= 0o777 or mode & 0o111:
        raise argparse.ArgumentTypeError("the socket mode is rw bits only, e.g. 600 or 660")
    return mode


def cmd_serve(args: argparse.Namespace) -> None:
    try:
        import httpx  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise modelseal.RuntimeUnavailableError(e.name or "the agent dependencies", "vault") from None
    from modelseal import agent

    config = agent.AgentConfig(
        vault=args.vault,
        listen=args.listen,
        cache_dir=Path(args.cache),
        ca=args.ca,
        client_cert=args.client_cert,
        client_key=args.client_key,
        rate=args.rate,
        burst=args.burst,
        total_rate=args.total_rate,
        socket_mode=args.socket_mode,
        limits=connection_limits(args),
    )
    agent.serve(config)


def add_commands(add: AddParser) -> None:
    top = add(
        "agent",
        "the edge agent: forwards containers' key requests to the vault, unable to read them",
        EXAMPLE,
    )
    sub = top.add_subparsers(dest="agent_command", required=True, metavar="COMMAND")
    p = add_command(
        sub,
        "serve",
        "serve containers on a unix socket or loopback port until SIGTERM; JSON log lines on stderr",
        EXAMPLE,
    )
    p.add_argument(
        "--vault", required=True, metavar="URL", help="the vault (or its gateway), https://HOST:PORT"
    )
    p.add_argument("--ca", metavar="CA.pem", help="CA to trust for the vault's certificate")
    p.add_argument("--client-cert", metavar="C.pem", help="client certificate for mTLS to the vault/gateway")
    p.add_argument("--client-key", metavar="K.pem", help="its private key")
    p.add_argument(
        "--listen",
        required=True,
        metavar="ADDR",
        help="unix:PATH (recommended; access = the socket's mode) or HOST:PORT",
    )
    p.add_argument(
        "--socket-mode", type=_mode, default=0o660, metavar="MODE", help="unix socket mode (default 660)"
    )
    p.add_argument(
        "--cache",
        default=_default_cache(),
        metavar="DIR",
        help="node cache of sealed models (ciphertext only)",
    )
    p.add_argument("--rate", type=float, default=20.0, help="requests/s per caller (default 20)")
    p.add_argument("--burst", type=int, default=40, help="burst per caller (default 40)")
    p.add_argument("--total-rate", type=float, default=500.0, help="requests/s for all callers (default 500)")
    connection_flags(p)
    p.set_defaults(func=cmd_serve, own_signals=True)
