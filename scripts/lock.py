"""The lock of tested versions (constraints.txt): write it from a green .venv, or show drift from it.

    python scripts/lock.py write constraints.txt   # after a green `make test`: pin what was tested
    python scripts/lock.py drift constraints.txt   # which installed versions differ from the lock

The lock is a pip constraints file: `make test`, `make demo`, `make bench` and CI install with
`pip install -c constraints.txt`, so a fresh clone gets the versions the suite last passed with, while
pyproject.toml keeps the loose lower bounds library users install against.
"""

from __future__ import annotations

import argparse
import re
import sys
from importlib.metadata import distributions
from pathlib import Path

HEADER = """\
# Versions `make test` last passed with: `make test`, `make demo`, `make bench` and .ci/run install
# through this file (pip install -c constraints.txt). pyproject.toml keeps loose lower bounds for
# library users. Regenerate after a green run: .venv/bin/python scripts/lock.py write constraints.txt;
# `make test-latest` runs the suite on the newest releases and prints how they differ from this.
"""

_PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==(\S+)")


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed() -> dict[str, str]:
    found = {}
    for dist in distributions():
        name = dist.metadata["Name"]
        if name and _key(name) not in ("modelseal", "pip"):
            found[_key(name)] = dist.version
    return found


def read_lock(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        m = _PIN.match(line.strip())
        if m:
            pins[_key(m.group(1))] = m.group(2)
    return pins


def write(path: Path) -> int:
    lines = [f"{name}=={version}" for name, version in sorted(installed().items())]
    path.write_text(HEADER + "\n".join(lines) + "\n")
    print(f"pinned {len(lines)} packages in {path}", file=sys.stderr)
    return 0


def drift(path: Path) -> int:
    lock, now = read_lock(path), installed()
    changed = [(n, lock[n], now[n]) for n in sorted(lock.keys() & now.keys()) if lock[n] != now[n]]
    added = sorted(now.keys() - lock.keys())
    for name, old, new in changed:
        print(f"  {name}: {old} (lock) -> {new}")
    for name in added:
        print(f"  {name}: not in the lock -> {now[name]}")
    print(f"{len(changed)} version(s) differ from {path}, {len(added)} package(s) new")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("action", choices=("write", "drift"))
    parser.add_argument("lock", type=Path)
    args = parser.parse_args()
    return write(args.lock) if args.action == "write" else drift(args.lock)


if __name__ == "__main__":
    sys.exit(main())
