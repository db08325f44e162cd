"""`modelseal cfs mount|run`: the Crypto-fs commands (argparse wiring over modelseal.cfs only)."""

from __future__ import annotations

import argparse
import os
import pwd
import sys
from typing import Any

import modelseal
from modelseal import cfs

from ._common import AddParser, CliError, add_command, identities, identity_args

RUN_USAGE = "modelseal cfs run SEALED... [-i IDENTITY]... [options] -- CMD [ARGS...]"


def _uid(text: str) -> int:
    if text.isdigit():
        return int(text)
    try:
        return pwd.getpwnam(text).pw_uid
    except KeyError:
        raise argparse.ArgumentTypeError(f"no such user: {text!r}") from None


def _notice(message: str) -> None:
    print(f"modelseal: {message}", file=sys.stderr, flush=True)


def _model_args(p: argparse.ArgumentParser) -> None:
    identity_args(p)
    p.add_argument("--signer", metavar="PUB", help="also require this owner's signature")
    p.add_argument(
        "--layout",
        choices=cfs.LAYOUTS,
        default="merge",
        help="merge: every model's files at the top, refusing name clashes (default); "
        "per-model: one folder per sealed file, named after it without .mseal",
    )
    p.add_argument(
        "--require-mlock",
        action="store_true",
        help="fail instead of warning when the plaintext cannot be locked in RAM (RLIMIT_MEMLOCK)",
    )
    p.add_argument(
        "--lease-interval",
        type=float,
        default=300.0,
        metavar="S",
        help="as a vault device: re-check the lease every S seconds; when the vault revokes the device "
        "or the licence ends, unmount/stop and zeroize (default 300)",
    )
    p.add_argument(
        "--lease-grace",
        type=float,
        default=900.0,
        metavar="S",
        help="keep serving this long after the last good answer while the vault is unreachable (default 900)",
    )
    p.add_argument(
        "--model-cache",
        default=_default_model_cache(),
        metavar="DIR",
        help="where models named by their vault repository id are downloaded (ciphertext only)",
    )


def _default_model_cache() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "modelseal", "models")


def _resolve_models(names: list[str], keys: list[Any], cache: str) -> list[str]:
    """Local sealed files stay as they are; a name that is no file is a model id in the vault's
    repository, fetched (ciphertext) through the device's vault or agent into ``cache``."""
    devices = [i for i in keys if hasattr(i, "fetch_model")]
    resolved = []
    for name in names:
        if os.path.exists(name) or os.sep in name or not devices:
            resolved.append(name)
            continue
        os.makedirs(cache, mode=0o700, exist_ok=True)
        target = os.path.join(cache, f"{name}.mseal")
        answer = devices[0].fetch_model(name, target)
        state = "unchanged" if answer.get("not_modified") else f"{answer.get('size')} bytes"
        _notice(f"model {name!r} from the vault repository: {target} ({state})")
        resolved.append(target)
    return resolved


def _lease(args: argparse.Namespace) -> cfs.LeasePolicy:
    try:
        return cfs.LeasePolicy(interval=args.lease_interval, grace=args.lease_grace)
    except ValueError as e:
        raise CliError(str(e)) from None


def cmd_mount(args: argparse.Namespace) -> None:
    keys = identities(args)
    args.sealed = _resolve_models(args.sealed, keys, args.model_cache)
    signer = modelseal.load_signer_public(args.signer) if args.signer else None
    options = {
        "signer": signer,
        "allow_uids": args.allow_uid,
        "require_mlock": args.require_mlock,
        "layout": args.layout,
        "cache": args.cache,
        "notice": _notice,
        "lease": _lease(args),
    }
    if args.foreground:

        def ready(m: cfs.Mounted) -> None:
            _notice(
                f"serving {len(m.files)} file(s) at {m.mountpoint} (pid {m.pid}"
                f"{', memory locked' if m.locked else ', memory NOT locked'}); "
                "stop with Ctrl-C, SIGTERM or fusermount3 -u"
            )

        cfs.mount(
            args.sealed,
            keys,
            args.at,
            signer=signer,
            allow_uids=args.allow_uid,
            require_mlock=args.require_mlock,
            layout=args.layout,
            cache=args.cache,
            notice=_notice,
            on_ready=ready,
            lease=_lease(args),
        )
        _notice(f"unmounted {args.at}")
        return
    m = cfs.spawn_mount(args.sealed, keys, args.at, **options)
    _notice(
        f"mounted {len(m.files)} file(s) at {m.mountpoint} (server pid {m.pid}"
        f"{', memory locked' if m.locked else ', memory NOT locked'}); "
        f"unmount with: fusermount3 -u {m.mountpoint}  (or kill {m.pid})"
    )


def cmd_run(args: argparse.Namespace) -> int:
    rest: list[str] = args.rest
    if "--" not in rest:
        raise CliError("give the command to run after --: " + RUN_USAGE)
    cut = rest.index("--")
    # Options may sit among the sealed files (argparse's REMAINDER took them): parse that part
    # again and merge it with what was given before the first sealed file.
    extra = _run_parser().parse_intermixed_args(rest[:cut])
    for key, value in vars(extra).items():
        if key == "identity":
            args.identity = (args.identity or []) + (value or [])
        elif not hasattr(args, key) or value not in (None, False, "merge"):
            setattr(args, key, value)
    if not args.sealed:
        raise CliError("give at least one sealed model before --")
    command = rest[cut + 1 :]
    if not command:
        raise CliError("give the command to run after --")
    keys = identities(args)
    sealed = _resolve_models(args.sealed, keys, args.model_cache)
    signer = modelseal.load_signer_public(args.signer) if args.signer else None
    code = cfs.run(
        sealed,
        keys,
        command,
        signer=signer,
        layout=args.layout,
        lock=cfs.LockPolicy(require=args.require_mlock, notice=_notice),
        lease=_lease(args),
    )
    return code


def _run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="modelseal cfs run", usage=RUN_USAGE, add_help=False)
    _model_args(p)
    p.add_argument("sealed", nargs="+")
    return p


def add_commands(add: AddParser) -> None:
    """Register `cfs mount` and `cfs run` under a `cfs` command made with main's ``add``."""
    top = add(
        "cfs",
        "Crypto-fs: serve sealed models as plain files from locked memory (FUSE or memfd)",
        "modelseal cfs mount model.mseal --at /run/model -i MEK.dat",
    )
    sub = top.add_subparsers(dest="cfs_command", required=True, metavar="COMMAND")

    def add_sub(name: str, help_text: str, example: str, **kw: str) -> argparse.ArgumentParser:
        return add_command(sub, name, help_text, example, **kw)

    p = add_sub(
        "mount",
        "mount sealed models read-only (FUSE); only the allowed uids may list or read",
        "modelseal cfs mount model.mseal --at /run/model -i MEK.dat --allow-uid 1000",
    )
    p.add_argument("sealed", nargs="+", metavar="SEALED")
    p.add_argument("--at", required=True, metavar="DIR", help="existing folder to mount on")
    _model_args(p)
    p.add_argument(
        "--allow-uid",
        action="append",
        type=_uid,
        metavar="UID",
        help=f"uid or user name allowed to list and read (repeatable; default: you, uid {os.getuid()})",
    )
    p.add_argument(
        "--cache",
        choices=("keep", "open", "direct"),
        default="keep",
        help="kernel page cache: keep across opens (default, fastest, a 2nd plaintext copy in "
        "kernel memory), open (dropped at each open), direct (none; no shared mmap)",
    )
    p.add_argument(
        "--foreground",
        action="store_true",
        help="serve in this process (default: return once DIR is usable, server detached)",
    )
    p.set_defaults(func=cmd_mount)

    p = add_sub(
        "run",
        "run a command with the models' files in sealed memfds (no FUSE needed); exits with its code",
        "modelseal cfs run model.mseal -i MEK.dat -- python serve.py",
        usage=RUN_USAGE,
    )
    _model_args(p)
    p.add_argument("rest", nargs=argparse.REMAINDER, help="SEALED... -- CMD [ARGS...]")
    p.epilog = (
        (p.epilog or "") + "\n\nthe command finds its files through:\n"
        "  MODELSEAL_DIR    private folder of links, same layout as `cfs mount`\n"
        "  MODELSEAL_FILES  JSON object: file name -> path\n"
        "  MODELSEAL_FILE   the path, when there is exactly one file"
    )
    p.set_defaults(func=cmd_run)
