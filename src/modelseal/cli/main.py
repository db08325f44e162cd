"""`modelseal`: the parser of every command, and the one place errors become exit codes.

Errors print one line and exit with the error's code (see `modelseal --help`); a traceback only
with --verbose. Secrets are never taken from argv: passphrases come from a file or a prompt. The
commands live in one module per group (keys, sealing, qaic, cfs, device, vault, agent), each with an
``add_commands(add)``; what they share is in ``_common``.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Iterator, Sequence

import modelseal

from . import agent, cfs, device, keys, qaic, sealing, vault
from ._common import add_command

EXIT_CODES = """exit codes:
  0  success
  1  unexpected error
  2  usage error (bad or contradictory arguments)
  3  format error (not a sealed model, malformed or unsupported version)
  4  integrity error (tampered, truncated, spliced; bad signature)
  5  no matching identity (wrong key or passphrase)
  6  key file error
  7  output error (exists, unsafe path, disk)
  8  not enough header room for an in-place rewrap
  9  an optional part is not installed (the message names the pip extra)
  10 crypto-fs or memory-lock error (no FUSE, mount refused, mlock required but refused)
  11 device error (card unreachable or refused; attestation report rejected)
  12 key service (vault) error
  13 vault: permission denied (no, unknown or revoked token; role not allowed)
  14 vault: key not found
  15 vault sealed or unreachable
  16 vault audit chain broken
  17 lease lost: the vault revoked this device or its licence ended (model closed)
  129 stopped by SIGHUP, 130 by Ctrl-C (SIGINT), 143 by SIGTERM: nothing partial is left behind
"""

SEED_TABLE = """seed workflow (qaic-encrypt) -> modelseal:
  encrypt-model --qpc F --mek MEK.dat --output-dir D [--pub-keys P...]
  encrypt-with-session-keys --input-dir D --mek MEK.dat --pub-keys P...
  wrap-mek --mek MEK.dat --pub-keys P... --output-dir W
  replace-mek --encrypted-qpc F --wrapped-meks W... --output-dir O
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelseal",
        description="Seal (encrypt, authenticate, sign) AI models and open them in memory only.",
        epilog=EXIT_CODES + "\n" + SEED_TABLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"modelseal {modelseal.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str, example: str) -> argparse.ArgumentParser:
        return add_command(sub, name, help_text, example)

    for group in (keys, sealing, qaic, cfs, device, vault, agent):
        group.add_commands(add)
    return parser


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the program is so cleanup runs as for Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum: int, frame: object) -> None:
    raise Stopped(signum)


@contextlib.contextmanager
def _stop_signals_raise(args: argparse.Namespace) -> Iterator[None]:
    """SIGTERM/SIGHUP unwind like Ctrl-C while a command runs (`cfs mount` and `cfs run` install
    their own on top); the old handlers come back after. The servers (`own_signals`) are left to
    their own handling, so a supervisor still sees them stop by the signal it sent."""
    if getattr(args, "own_signals", False) or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _raise_stopped) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    if not (sys.argv[1:] if argv is None else argv):
        parser.print_help()  # bare `modelseal`: what it can do, not an error
        return 0
    args = parser.parse_args(argv)
    try:
        with _stop_signals_raise(args):
            # A command may return an exit code of its own (cfs run passes on its child's).
            code = args.func(args)
    except modelseal.ModelSealError as e:
        if args.verbose:
            raise
        print(f"modelseal: error: {e.diagnostic}", file=sys.stderr)
        return e.exit_code
    except Stopped as e:
        print(f"modelseal: stopped by {signal.Signals(e.signum).name}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("modelseal: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        if args.verbose:
            raise
        print(
            f"modelseal: error: {e.strerror or e}{f': {e.filename}' if e.filename else ''}", file=sys.stderr
        )
        return 1
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
