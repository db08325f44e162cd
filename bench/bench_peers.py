"""Seal and open of one random model with modelseal vs age (CLI), Google Tink streaming AEAD and openssl.

What each contender does, timed end to end (page-cached plaintext input; outputs in --out-dir):
  encrypt
    modelseal  modelseal.seal(plain, out, [X25519 recipient]): read, STREAM AES-256-GCM, write,
               fsync (seal always fsyncs, then renames atomically).
    age        `age -r <X25519 recipient> -o out plain` as a subprocess (process start included),
               then an fsync of out so it is as durable as modelseal's.
    tink       streaming AEAD (AES256_GCM_HKDF_1MB and _4KB; the faster is the one compared):
               4 MiB readinto from the plaintext file, write into new_encrypting_stream(out file),
               close, fsync.
  decrypt (authenticate + decrypt everything)
    modelseal  modelseal.open(sealed, X25519 identity): into one fresh private mapping in memory.
    age        `age -d -i key -o /dev/null sealed` (process start included; /dev/null costs age nothing,
               which favours age).
    tink       new_decrypting_stream(sealed file), readinto 4 MiB slices of one fresh private mapping.
openssl (the CLI, process start included; `openssl enc` refuses AEAD ciphers such as AES-256-GCM,
so there are two rows, neither of them the same construction as modelseal's):
  openssl aes-256-ctr        `openssl enc -aes-256-ctr -K .. -iv ..`: encryption only, NO integrity
                             (less work than modelseal does); encrypt to the file (+fsync), decrypt to
                             /dev/null.
  openssl aes-256-ctr+hmac   encrypt-then-MAC with two commands: the enc above, then `openssl dgst
                             -sha256 -mac HMAC` over the ciphertext (tag file fsynced too); decrypt =
                             the same dgst, compare the tag, then `enc -d` to /dev/null. Two passes over
                             the data, as anyone building AE from the openssl CLI has to.
Ratios are peer time / modelseal time (>1: modelseal is faster).
"""

from __future__ import annotations

import argparse
import hmac
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _benchutil import (
    MiB,
    Timing,
    add_output_options,
    fresh_private_map,
    fsync_path,
    machine,
    measure,
    skip,
    timing_dict,
    warm,
    write_random_file,
    write_results,
)

import modelseal

IO_STEP = 4 * MiB


def tink_primitive(template_name: str) -> Any:
    import tink
    from tink import streaming_aead

    streaming_aead.register()
    template = getattr(streaming_aead.streaming_aead_key_templates, template_name)
    handle = tink.new_keyset_handle(template)
    return handle.primitive(streaming_aead.StreamingAead)


def tink_encrypt(primitive: Any, src: Path, dst: Path) -> None:
    buf = memoryview(bytearray(IO_STEP))
    with src.open("rb", buffering=0) as fin, dst.open("wb") as raw, \
            primitive.new_encrypting_stream(raw, b"") as enc:
        while n := fin.readinto(buf):
            enc.write(buf[:n])
    fsync_path(dst)


def tink_decrypt(primitive: Any, src: Path, size: int) -> Callable[[], None]:
    target = fresh_private_map(size, True)
    view = memoryview(target)
    with src.open("rb") as raw, primitive.new_decrypting_stream(raw, b"") as dec:
        done = 0
        while done < size:
            n = dec.readinto(view[done : done + IO_STEP])
            if not n:
                raise EOFError("tink stream ended early")
            done += n

    def release() -> None:
        view.release()
        target.close()

    return release


def openssl_mac(key_hex: str, path: Path) -> bytes:
    out = subprocess.run(["openssl", "dgst", "-sha256", "-mac", "HMAC", "-macopt", f"hexkey:{key_hex}",
                          "-binary", str(path)], check=True, capture_output=True).stdout
    if len(out) != 32:
        raise RuntimeError(f"openssl dgst gave {len(out)} bytes")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out-dir", default="/tmp",
                    help="where the encrypted outputs go (default /tmp, ext4 here; /dev/shm is tmpfs)")
    add_output_options(ap)
    args = ap.parse_args()
    started = time.time()
    size = args.size_mib * MiB
    for tool in ("age", "age-keygen"):
        if shutil.which(tool) is None:
            skip(args, "peers", f"{tool} not found: apt-get install -y age")
    if shutil.which("openssl") is None:
        skip(args, "peers", "openssl not found: apt-get install -y openssl")
    print(machine())
    print(f"model {args.size_mib} MiB random; encrypted outputs in {args.out_dir}; "
          f"best and median of {args.reps}")

    with tempfile.TemporaryDirectory(dir="/tmp", prefix="bench-peers-") as d, \
            tempfile.TemporaryDirectory(dir=args.out_dir, prefix="bench-peers-out-") as o:
        tmp, out = Path(d), Path(o)
        plain = tmp / "model.bin"
        write_random_file(plain, size)
        warm(plain)

        age_key = tmp / "age.key"
        subprocess.run(["age-keygen", "-o", str(age_key)], check=True, capture_output=True)
        age_recipient = subprocess.run(["age-keygen", "-y", str(age_key)], check=True, capture_output=True,
                                       text=True).stdout.strip()
        identity = modelseal.generate_identity()
        tinks = {name: tink_primitive(name) for name in ("AES256_GCM_HKDF_1MB", "AES256_GCM_HKDF_4KB")}

        ssl_key, ssl_iv, ssl_mac_key = os.urandom(32).hex(), os.urandom(16).hex(), os.urandom(32).hex()
        ms_out, age_out = out / "model.mseal", out / "model.age"
        ssl_out, ssl_etm_out = out / "model.ctr", out / "model.etm"
        ssl_tag = out / "model.etm.tag"
        tink_out = {name: out / f"model.{name}.tink" for name in tinks}

        def ms_seal() -> None:
            modelseal.seal(plain, ms_out, [identity.recipient], overwrite=True)

        def age_seal() -> None:
            subprocess.run(["age", "-r", age_recipient, "-o", str(age_out), str(plain)], check=True)
            fsync_path(age_out)

        def ssl_enc(dst: Path) -> None:
            subprocess.run(["openssl", "enc", "-aes-256-ctr", "-K", ssl_key, "-iv", ssl_iv,
                            "-in", str(plain), "-out", str(dst)], check=True)

        def ssl_seal() -> None:
            ssl_enc(ssl_out)
            fsync_path(ssl_out)

        def ssl_etm_seal() -> None:
            ssl_enc(ssl_etm_out)
            ssl_tag.write_bytes(openssl_mac(ssl_mac_key, ssl_etm_out))
            fsync_path(ssl_etm_out)
            fsync_path(ssl_tag)

        def ssl_dec(src: Path) -> None:
            subprocess.run(["openssl", "enc", "-d", "-aes-256-ctr", "-K", ssl_key, "-iv", ssl_iv,
                            "-in", str(src), "-out", os.devnull], check=True)

        def ssl_open() -> None:
            ssl_dec(ssl_out)

        def ssl_etm_open() -> None:
            if not hmac.compare_digest(openssl_mac(ssl_mac_key, ssl_etm_out), ssl_tag.read_bytes()):
                raise RuntimeError("openssl HMAC tag mismatch")
            ssl_dec(ssl_etm_out)

        def tink_seal(name: str) -> Callable[[], None]:
            return lambda: tink_encrypt(tinks[name], plain, tink_out[name])

        def ms_open() -> Callable[[], None]:
            return modelseal.open(ms_out, identity).close

        def age_open() -> None:
            subprocess.run(["age", "-d", "-i", str(age_key), "-o", os.devnull, str(age_out)], check=True)

        def tink_open(name: str) -> Callable[[], Callable[[], None]]:
            return lambda: tink_decrypt(tinks[name], tink_out[name], size)

        encrypt: dict[str, Callable[[], Callable[[], None] | None]] = {
            "modelseal.seal -> file (+fsync)": ms_seal,
            "age -r -o file (+fsync)": age_seal,
            **{f"tink {n} -> file (+fsync)": tink_seal(n) for n in tinks},
            "openssl aes-256-ctr, no MAC (+fsync)": ssl_seal,
            "openssl aes-256-ctr+hmac (+fsync)": ssl_etm_seal,
        }
        decrypt: dict[str, Callable[[], Callable[[], None] | None]] = {
            "modelseal.open -> memory": ms_open,
            "age -d -o /dev/null": age_open,
            **{f"tink {n} -> memory": tink_open(n) for n in tinks},
            "openssl aes-256-ctr, no MAC -> /dev/null": ssl_open,
            "openssl aes-256-ctr+hmac -> /dev/null": ssl_etm_open,
        }
        results: dict[str, dict[str, Timing]] = {}
        for phase, contenders in (("encrypt", encrypt), ("decrypt", decrypt)):
            for run in contenders.values():
                run()  # untimed: creates the inputs of the decrypt phase; warms everything
            if phase == "decrypt":
                for p in [ms_out, age_out, *tink_out.values(), ssl_out, ssl_etm_out]:
                    warm(p)
            runs: dict[str, list[float]] = {}
            for _ in range(args.reps):
                for name, run in contenders.items():
                    runs.setdefault(name, []).extend(measure(name, size, 1, run, touch=size + 64 * MiB).runs)
            results[phase] = {n: Timing(n, r, size) for n, r in runs.items()}

        for phase, rows in results.items():
            ours = next(iter(rows.values()))
            print(f"\n## {phase}")
            print(f"{'what':44} {'best s':>8} {'GB/s':>6} {'vs ms':>6} "
                  f"{'median s':>9} {'GB/s':>6} {'vs ms':>6}")
            for r in rows.values():
                print(f"{r.name:44} {r.best:8.3f} {r.rate(r.best):6.2f} {r.best / ours.best:6.2f} "
                      f"{r.median:9.3f} {r.rate(r.median):6.2f} {r.median / ours.median:6.2f}")
            tink_rows = [r for n, r in rows.items() if n.startswith("tink")]
            fastest = min(tink_rows, key=lambda r: r.median)
            age_row = next(r for n, r in rows.items() if n.startswith("age"))
            print(f"modelseal vs age: {age_row.best / ours.best:.2f}x best, "
                  f"{age_row.median / ours.median:.2f}x median (goal >= 5x)")
            print(f"modelseal vs the faster tink ({fastest.name.split()[1]}): "
                  f"{fastest.best / ours.best:.2f}x "
                  f"best, {fastest.median / ours.median:.2f}x median (goal >= 3x)")
            for r in rows.values():
                if r.name.startswith("openssl"):
                    peer = r.name.split(" (")[0].split(" ->")[0]
                    print(f"modelseal vs {peer}: {r.best / ours.best:.2f}x best, "
                          f"{r.median / ours.median:.2f}x median")
        write_results(args, "peers", {
            "size_bytes": size,
            "out_dir": args.out_dir,
            # In each phase the first row is modelseal; ratios are peer time / modelseal time.
            "phases": {phase: [timing_dict(t) for t in rows.values()] for phase, rows in results.items()},
        }, started)


if __name__ == "__main__":
    main()
