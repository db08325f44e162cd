"""rewrap (add an X25519 recipient) of sealed models across a sweep of sizes (default 10 MB to 2 GB).

  in place:  modelseal.rewrap(sealed, MEK, add=[X25519], in_place=True): unwrap, new header, a
             fsynced header backup, pwrite of the header region, fsync. Between runs the added
             recipient is removed again (untimed) so the header room never runs out.
  new file:  modelseal.rewrap(sealed, MEK, add=[X25519], out=new): new header + a kernel copy of the
             payload (copy_file_range), fsync, atomic rename. Baselines: shutil.copyfile of the same
             sealed file, without and with an fsync of the copy (rewrap's output is always fsynced).
Destinations are deleted (untimed) before every run. Files live on /tmp (ext4 here, no reflinks).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _benchutil import (
    Timing,
    add_output_options,
    fsync_path,
    machine,
    measure,
    timing_dict,
    warm,
    write_results,
)

import modelseal


def make_sealed(folder: Path, name: str, size: int, mek: bytes) -> Path:
    plain = folder / f"{name}.bin"
    with plain.open("wb") as f:
        # Sparse zeros: rewrap never reads the payload's meaning, and a hole is fast to seal.
        f.truncate(size)
    sealed = folder / f"{name}.mseal"
    modelseal.seal(plain, sealed, mek=mek)
    plain.unlink()
    return sealed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes-mb", default="10,100,500,2000", help="decimal MB, comma separated")
    ap.add_argument("--reps", type=int, default=15, help="in-place runs (new-file runs: 5 small, 3 large)")
    add_output_options(ap)
    args = ap.parse_args()
    started = time.time()
    print(machine())
    mek = modelseal.keygen()
    identity = modelseal.MEK(mek)
    added = modelseal.generate_identity().recipient
    added_spec = modelseal.x25519_recipient_string(added)

    with tempfile.TemporaryDirectory(dir="/tmp", prefix="bench-rewrap-") as d:
        tmp = Path(d)
        inplace: list[Timing] = []
        newfile: list[tuple[Timing, Timing, Timing]] = []
        dst = tmp / "out.mseal"
        for mb in (int(x) for x in args.sizes_mb.split(",")):
            size = mb * 1000 * 1000
            sealed = make_sealed(tmp, f"m{mb}", size, mek)
            nbytes = sealed.stat().st_size
            warm(sealed)

            def add_in_place(sealed: Path = sealed) -> Callable[[], None]:
                modelseal.rewrap(sealed, identity, add=[added], in_place=True)

                def undo() -> None:
                    modelseal.rewrap(sealed, identity, remove=[added_spec], in_place=True)

                return undo

            inplace.append(measure(f"{mb} MB in place", nbytes, args.reps, add_in_place))
            reps = 5 if nbytes < 1 << 30 else 3

            def rewrap_new(sealed: Path = sealed) -> Callable[[], None]:
                modelseal.rewrap(sealed, identity, add=[added], out=dst)
                return lambda: dst.unlink()

            def copy(sealed: Path = sealed) -> Callable[[], None]:
                shutil.copyfile(sealed, dst)
                return lambda: dst.unlink()

            def copy_fsync(sealed: Path = sealed) -> Callable[[], None]:
                shutil.copyfile(sealed, dst)
                fsync_path(dst)
                return lambda: dst.unlink()

            runs: dict[str, list[float]] = {}
            contenders = {"rewrap -o new": rewrap_new, "copyfile": copy, "copyfile+fsync": copy_fsync}
            for _ in range(reps):
                for name, run in contenders.items():
                    # Let the previous run's writeback drain so it is not billed to the next one.
                    os.sync()
                    time.sleep(0.2)
                    runs.setdefault(name, []).extend(measure(name, nbytes, 1, run).runs)
            t = [Timing(f"{mb} MB {n}", r, nbytes) for n, r in runs.items()]
            newfile.append((t[0], t[1], t[2]))
            sealed.unlink()

        print("\n## in-place rewrap (add one X25519 recipient), milliseconds")
        print(f"{'model':24} {'best ms':>8} {'median ms':>10}")
        for r in inplace:
            print(f"{r.name:24} {r.best * 1e3:8.2f} {r.median * 1e3:10.2f}")
        if len(inplace) > 1:
            print(f"largest / smallest: {inplace[-1].median / inplace[0].median:.2f}x (median)")

        print("\n## rewrap into a new file vs copying the sealed file, seconds")
        print(f"{'model':12} {'rewrap':>8} {'copyfile':>9} {'+fsync':>8} {'rw/copy':>8} {'rw/copy+fsync':>14}"
              f"   (medians; best in brackets)")
        for rw, cp, cpf in newfile:
            model = rw.name.split(" MB")[0] + " MB"
            print(f"{model:12} {rw.median:8.3f} {cp.median:9.3f} {cpf.median:8.3f} "
                  f"{rw.median / cp.median:8.2f} {rw.median / cpf.median:14.2f}   "
                  f"[{rw.best / cp.best:.2f} / {rw.best / cpf.best:.2f}]")
        mbs = [int(x) for x in args.sizes_mb.split(",")]
        write_results(args, "rewrap", {
            "sizes": [
                {"mb": mb, "size_bytes": ip.nbytes, "in_place": timing_dict(ip),
                 "rewrap_new": timing_dict(rw), "copyfile": timing_dict(cp),
                 "copyfile_fsync": timing_dict(cpf)}
                for mb, ip, (rw, cp, cpf) in zip(mbs, inplace, newfile, strict=True)
            ],
        }, started)


if __name__ == "__main__":
    main()
