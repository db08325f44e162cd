"""Key-release throughput of the vault on loopback with TLS (issue 4: >= 1,000 releases/s, p99 <= 25 ms).

`modelseal vault serve` runs as its own process (TLS, SQLite in its data folder; then PostgreSQL in
a throw-away cluster, the tests' tests/vault/postgres.py). The set-up goes through the API: a
master key, a data key, N devices in one group, a policy for the group and a licence (so every
release also counts a use and a device). Then `wrk` (Debian package wrk; C, keep-alive connections,
a Lua script) drives load from its own process at each concurrency level for a fixed time:

  * every request is real and used once: fresh X25519 ephemeral key, fresh nonce, a timestamp inside
    the +-120 s window, the device's PSK MAC; they are built just before their level runs;
  * a baseline in the same run and through the same TLS stack: GET /v1/sys/health at each level;
  * a sample of the 200 answers is opened (HPKE, with the ephemeral key of the request it answers)
    and must give the data key; after the run the audit chain must verify and hold exactly one
    `released` record per 200 answered (and no other outcome).

Reported per level: releases/s, p50/p95/p99/max latency (wrk's), health/s, the ratio, and the
server's CPU per release (from /proc, the server process and its children).

  python bench/bench_release.py                      # SQLite then PostgreSQL, levels 1 8 32 64
  python bench/bench_release.py --backends sqlite --serve-args=--no-group-commit   # one change
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from _benchutil import add_output_options, machine, throwaway_postgres, wait_for_idle, write_results
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import text

from modelseal.keyrelease import wire
from modelseal.vault.client import VaultClient, VaultRecipient, read_token_file
from modelseal.vault.server import datadir
from modelseal.vault.server.audit import verify_audit
from modelseal.vault.server.engine import make_engine, sqlite_url

TARGET_RATE = 1000.0
TARGET_P99_MS = 25.0
SAMPLES_PER_LEVEL = 40
DOMAIN = "default"

# One script for both the baseline and the releases. Each request takes the next pre-built body;
# the thread stops instead of ever sending one twice. A sample of answers is written out with the
# number of requests made so far: the request it answers is among the last `connections` of them.
LUA = r"""
local mode, bodies_path, sample_path, sample_every = nil, nil, nil, 1
local bodies, n, i = {}, 0, 0
local sample_file, samples = nil, 0
statuses, exhausted = {}, 0
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  mode = args[1]
  -- Formatted here, not at load: wrk sets the Host header only after loading the script.
  health = wrk.format("GET", "/v1/sys/health")
  if mode == "release" then
    bodies_path, sample_path, sample_every = args[2], args[3], tonumber(args[4])
    for line in io.lines(bodies_path) do
      n = n + 1
      bodies[n] = line
    end
    sample_file = io.open(sample_path, "w")
  end
end

local health, headers = nil, {["Content-Type"] = "application/json"}

function request()
  if health == nil then  -- wrk checks one request in its main Lua state, where init never ran
    health = wrk.format("GET", "/v1/sys/health")
  end
  if mode ~= "release" then
    return health
  end
  if i >= n then
    exhausted = exhausted + 1
    wrk.thread:stop()
    return health
  end
  i = i + 1
  return wrk.format("POST", "/v1/release", headers, bodies[i])
end

function response(status, hdrs, body)
  statuses[status] = (statuses[status] or 0) + 1
  if sample_file ~= nil and samples < 200 then
    if status ~= 200 or (statuses[200] % sample_every) == 0 then
      samples = samples + 1
      sample_file:write(status, "\t", i, "\t", body:gsub("[\r\n]", ""), "\n")
      sample_file:flush()
    end
  end
end

function done(summary, latency, requests)
  local parts = {}
  for _, t in ipairs(threads) do
    for status, count in pairs(t:get("statuses")) do
      table.insert(parts, string.format('"%d": %d', status, count))
    end
    if t:get("exhausted") > 0 then
      table.insert(parts, '"exhausted": 1')
    end
  end
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "p50": %d, "p95": %d, "p99": %d, "max": %d, ' ..
    '"errors": %d, "statuses": {%s}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(95),
    latency:percentile(99), latency.max,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    table.concat(parts, ", ")))
end
"""


@dataclass
class Setup:
    url: str
    ca: Path
    key_name: str
    key_version: int
    wrapped: bytes
    data_key: bytes
    devices: list[tuple[str, bytes]]


@dataclass
class Built:
    bodies: Path
    ephemeral: list[bytes]  # raw X25519 private keys, in request order
    nonces: list[bytes]
    devices: list[str]


@dataclass
class Level:
    what: str
    connections: int
    rate: float
    p50: float
    p95: float
    p99: float
    max: float
    statuses: dict[str, int]
    errors: int
    cpu_us: float = 0.0  # server CPU per request
    client_cpu_us: float = 0.0  # wrk's CPU per request
    verified: int = 0
    notes: list[str] = field(default_factory=list)
    others: float = 0.0  # CPU (of all cores, %) used by other processes than the vault and wrk


def busy_cpu() -> float:
    """Seconds of CPU used by everything on the machine so far (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and its descendants (uvicorn workers), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        stats[int(entry)] = fields
        children.setdefault(int(fields[1]), []).append(int(entry))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        if current in stats:
            total += (int(stats[current][11]) + int(stats[current][12])) / tick
        todo.extend(children.get(current, []))
    return total


def prepare(url: str, ca: Path, token: str, n_devices: int) -> Setup:
    with VaultClient(url, token, ca=ca) as admin:
        admin.create_key("bench")
        recipient = VaultRecipient.prepare(admin, "bench")
        devices = [
            (f"bench-{i:04d}", admin.create_device(f"bench-{i:04d}", ["bench"])[1]) for i in range(n_devices)
        ]
        admin.put_policy("bench", "bench", groups=["bench"])
        admin.create_licence("bench", "bench", max_uses=10**9, max_devices=n_devices)
    return Setup(url, ca, "bench", recipient.key_version, recipient.wrapped, recipient.data_key, devices)


def build(setup: Setup, count: int, path: Path) -> Built:
    """``count`` valid, distinct release requests, one JSON body per line."""
    b64 = base64.b64encode
    keys, nonces, names = [], [], []
    wrapped = b64(setup.wrapped).decode()
    now = int(time.time())
    with path.open("w") as out:
        for i in range(count):
            name, psk = setup.devices[i % len(setup.devices)]
            private = X25519PrivateKey.generate()
            public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
            nonce = os.urandom(16)
            mac = wire.mac(
                psk,
                wire.mac_input(
                    domain=DOMAIN,
                    device=name,
                    key_name=setup.key_name,
                    key_version=setup.key_version,
                    wrapped=setup.wrapped,
                    timestamp=now,
                    nonce=nonce,
                    ephemeral_public=public,
                ),
            )
            body = {
                "device": name,
                "key_name": setup.key_name,
                "key_version": setup.key_version,
                "wrapped": wrapped,
                "timestamp": now,
                "nonce": b64(nonce).decode(),
                "ephemeral_public": b64(public).decode(),
                "mac": b64(mac).decode(),
            }
            out.write(json.dumps(body, separators=(",", ":")) + "\n")
            keys.append(private.private_bytes_raw())
            nonces.append(nonce)
            names.append(name)
    return Built(path, keys, nonces, names)


def run_wrk(
    url: str, script: Path, connections: int, seconds: float, args: list[str]
) -> tuple[dict[str, Any], float]:
    """wrk's RESULT line and the CPU seconds wrk used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds:g}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url,
            "--",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        check=False,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT ") :])
            return result, cpu
    raise SystemExit(f"wrk failed ({done.returncode}): {done.stdout[-1500:]}{done.stderr[-1500:]}")


def level(what: str, result: dict[str, Any], connections: int, cpu: float, client_cpu: float) -> Level:
    statuses = {str(k): int(v) for k, v in result["statuses"].items()}
    seconds = int(result["duration_us"]) / 1e6
    answered = sum(v for k, v in statuses.items() if k.isdigit())
    per = 1e6 / max(1, answered)
    return Level(
        what,
        connections,
        statuses.get("200", 0) / seconds,
        int(result["p50"]) / 1000,
        int(result["p95"]) / 1000,
        int(result["p99"]) / 1000,
        int(result["max"]) / 1000,
        statuses,
        int(result["errors"]),
        cpu * per,
        client_cpu * per,
    )


def verify_samples(setup: Setup, built: Built, samples: Path) -> tuple[int, list[str]]:
    """Open every sampled 200 with the ephemeral key of the request it answers; list the others."""
    verified, problems = 0, []
    for line in samples.read_text().splitlines():
        status, index, body = line.split("\t", 2)
        if status != "200":
            problems.append(f"{status}: {body[:200]}")
            continue
        sealed = base64.b64decode(json.loads(body)["sealed"])
        last = min(int(index), len(built.ephemeral))
        opened = 0
        # Nearest first: the answered request is usually among the last `connections` made, but
        # a slow one may be older (other connections kept going meanwhile).
        for j in range(last - 1, -1, -1):
            info = wire.hpke_info(
                domain=DOMAIN,
                device=built.devices[j],
                key_name=setup.key_name,
                key_version=setup.key_version,
                nonce=built.nonces[j],
            )
            try:
                key = wire.SUITE.decrypt(
                    sealed, X25519PrivateKey.from_private_bytes(built.ephemeral[j]), info=info
                )
            except Exception:
                continue
            if key != setup.data_key:
                raise SystemExit("a release answer opened to something other than the data key")
            opened += 1
            break
        if opened != 1:
            raise SystemExit("a sampled release answer opens with none of the requests' ephemeral keys")
        verified += 1
    return verified, problems


def audit_check(database_url: str, released: int, cut: int) -> str:
    """The chain verifies, has a `released` record for every 200 and no other outcome.

    wrk stops a level on the clock and drops the answers still in flight, up to one per
    connection (``cut`` in all): those were committed and audited but never counted as 200.
    """
    engine = make_engine(database_url)
    try:
        records = verify_audit(engine)
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT event FROM audit WHERE op = 'key.release'")).scalars().all()
    finally:
        engine.dispose()
    outcomes: dict[str, int] = {}
    for event in rows:
        outcome = str(json.loads(event).get("outcome"))
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    audited = outcomes.get("released", 0)
    if not released <= audited <= released + cut or set(outcomes) - {"released"}:
        raise SystemExit(
            f"audit mismatch: {released} answered 200 (+ up to {cut} cut off), key.release records {outcomes}"
        )
    return (
        f"audit chain verified ({records} records); {audited} released records for {released} 200s "
        f"counted + {audited - released} answered after wrk stopped counting (at most {cut})"
    )


@contextmanager
def vault_server(
    folder: Path, database_url: str | None, serve_args: list[str]
) -> Iterator[tuple[str, Path, int]]:
    """`vault serve` on a fresh data folder: (url, CA file, pid); always stopped."""
    data = folder / "vault"
    datadir.init(data, database_url=database_url)
    ca = data / "tls" / "ca.pem"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    url = f"https://127.0.0.1:{port}"
    database = ["--database", database_url] if database_url else []
    argv = [
        sys.executable,
        "-m",
        "modelseal",
        "vault",
        "serve",
        "--data",
        str(data),
        "--listen",
        f"127.0.0.1:{port}",
        *database,
        *serve_args,
    ]
    log = folder / "vault.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/v1/sys/health", verify=str(ca), timeout=2).is_success:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the vault did not start: {log.read_text()[-1500:]}")
            time.sleep(0.1)
        yield url, ca, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_backend(name: str, folder: Path, database_url: str | None, args: argparse.Namespace) -> list[Level]:
    script = folder / "bench.lua"
    script.write_text(LUA)
    rows: list[Level] = []
    released = 0
    with vault_server(folder, database_url, shlex.split(args.serve_args)) as (url, ca, pid):
        setup = prepare(url, ca, read_token_file(folder / "vault" / datadir.TOKEN_FILE), args.devices)
        # Warm-up (connections, caches, first fsyncs); its releases count in the audit check too.
        warm = build(setup, 2000, folder / "warm.jsonl")
        result, _ = run_wrk(
            url, script, 8, 2, ["release", str(warm.bodies), str(folder / "warm.tsv"), "1000"]
        )
        released += int(result["statuses"].get("200", 0))
        for connections in args.levels:
            wait_for_idle(max_wait=30)
            before = tree_cpu(pid)
            result, client = run_wrk(url, script, connections, args.duration, ["health"])
            health = level("health", result, connections, tree_cpu(pid) - before, client)
            rows.append(health)

            built = build(setup, int(args.max_rate * args.duration), folder / f"c{connections}.jsonl")
            samples = folder / f"c{connections}.tsv"
            every = max(1, int(1000 * args.duration / SAMPLES_PER_LEVEL))
            wait_for_idle(max_wait=30)
            before, busy, started = tree_cpu(pid), busy_cpu(), time.monotonic()
            result, client = run_wrk(
                url,
                script,
                connections,
                args.duration,
                ["release", str(built.bodies), str(samples), str(every)],
            )
            served = tree_cpu(pid) - before
            row = level("release", result, connections, served, client)
            elapsed = (time.monotonic() - started) * (os.cpu_count() or 1)
            row.others = max(0.0, busy_cpu() - busy - served - client) / elapsed * 100
            if row.statuses.pop("exhausted", 0):
                row.notes.append(f"ran out of pre-built requests: raise --max-rate above {args.max_rate:g}")
            row.verified, problems = verify_samples(setup, built, samples)
            row.notes.extend(problems[:3])
            released += row.statuses.get("200", 0)
            rows.append(row)
            print(
                f"  {name} c={connections}: {row.rate:,.0f} releases/s p99 {row.p99:.1f} ms "
                f"(health {health.rate:,.0f}/s); answers {row.statuses}",
                flush=True,
            )
    cut = 8 + sum(args.levels)
    print("  " + audit_check(database_url or sqlite_url(folder / "vault"), released, cut))
    return rows


def report(name: str, rows: list[Level]) -> None:
    print(f"\n## {name}")
    print(
        f"{'conc':>4} {'releases/s':>10} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'max ms':>7} "
        f"{'health/s':>9} {'ratio':>6} {'CPU us':>7} {'health':>7} {'wrk':>5} {'others':>6} "
        f"{'opened':>6}  target"
    )
    health = {r.connections: r for r in rows if r.what == "health"}
    for r in rows:
        if r.what != "release":
            continue
        base = health[r.connections]
        met = r.rate >= TARGET_RATE and r.p99 <= TARGET_P99_MS
        others = {k: v for k, v in r.statuses.items() if k != "200"}
        print(
            f"{r.connections:4d} {r.rate:10,.0f} {r.p50:7.2f} {r.p95:7.2f} {r.p99:7.2f} {r.max:7.1f} "
            f"{base.rate:9,.0f} {r.rate / base.rate:6.2f} {r.cpu_us:7.0f} {base.cpu_us:7.0f} "
            f"{r.client_cpu_us:5.0f} {r.others:5.0f}% {r.verified:6d}  {'met' if met else 'NOT met'}"
            + (f"  other answers {others}" if others else "")
            + (f"  errors {r.errors}" if r.errors else "")
        )
        for note in r.notes:
            print(f"     note: {note}")
    print(
        "(ratio = releases/s / health/s at the same concurrency, same TLS stack; CPU us = the vault's "
        "CPU per release, health = per health request, wrk = the load generator's per request; others = "
        "CPU of both cores used meanwhile by other processes (other work on the machine); opened = "
        f"sampled 200s opened with HPKE; target >= {TARGET_RATE:,.0f}/s with p99 <= {TARGET_P99_MS:g} ms)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", default="sqlite,postgresql", help="comma list (default sqlite,postgresql)")
    ap.add_argument("--levels", default="1,8,32,64", help="concurrency levels (default 1,8,32,64)")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per level (default 8)")
    ap.add_argument("--devices", type=int, default=64, help="devices the requests cycle through")
    ap.add_argument(
        "--max-rate",
        type=float,
        default=4000.0,
        help="requests pre-built per second of a level (default 4000)",
    )
    ap.add_argument("--serve-args", default="", help="extra `vault serve` flags, e.g. --no-group-commit")
    add_output_options(ap)
    args = ap.parse_args()
    args.levels = [int(x) for x in args.levels.split(",")]
    if shutil.which("wrk") is None:
        raise SystemExit("bench_release needs wrk: apt-get install wrk")
    print(f"# vault key release over TLS on loopback; {machine()}")
    print(f"# serve flags: {args.serve_args or '(defaults)'}; {args.duration:g} s per level; wrk -t1")
    started, measured = time.time(), {}
    for backend in args.backends.split(","):
        with tempfile.TemporaryDirectory(prefix=f"bench-release-{backend}-") as tmp:
            if backend == "sqlite":
                rows = run_backend(backend, Path(tmp), None, args)
            elif backend == "postgresql":
                with throwaway_postgres() as url:
                    rows = run_backend(backend, Path(tmp), url, args)
            else:
                raise SystemExit(f"unknown backend {backend!r}")
        report(f"{backend} ({args.serve_args or 'default flags'})", rows)
        measured[backend] = [asdict(r) for r in rows]
    write_results(args, "release", {"serve_args": args.serve_args, "duration": args.duration,
                                    "backends": measured}, started)


if __name__ == "__main__":
    main()
