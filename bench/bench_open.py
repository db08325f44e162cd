"""open() (authenticate + decrypt into memory) and seal() of a 1 GiB model vs plain file I/O.

Baselines are measured in the same run on the same page-cached files:
  open: one unbuffered readinto of the plaintext file into a fresh buffer (the cheapest way to get
        the model's bytes into memory at all), into three kinds of fresh buffer.
  seal: a plain chunked copy of the plaintext to a new file, fsynced (seal fsyncs its output too).
Peak RSS of open() is taken in a fresh child interpreter (VmHWM), so nothing else in this process
counts against it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

from _benchutil import (
    MiB,
    Timing,
    add_output_options,
    fresh_private_map,
    fsync_path,
    machine,
    measure,
    print_table,
    readinto_full,
    timing_dict,
    warm,
    write_random_file,
    write_results,
)

import modelseal

CHILD = textwrap.dedent(
    """
    import json, sys
    import modelseal

    def hwm() -> int:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM")

    before = hwm()
    with modelseal.open(sys.argv[1], modelseal.load_mek(sys.argv[2])) as m:
        assert len(m.read()) == m.size()
        after = hwm()
    print(json.dumps({"before": before, "after": after}))
    """
)


def child_peak_rss(sealed: Path, key: Path) -> dict[str, int]:
    out = subprocess.run([sys.executable, "-c", CHILD, str(sealed), str(key)],
                         capture_output=True, text=True, check=True).stdout
    result: dict[str, int] = json.loads(out)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--seal-reps", type=int, default=3)
    ap.add_argument("--chunk-mib", type=int, default=modelseal.DEFAULT_CHUNK_SIZE // MiB)
    add_output_options(ap)
    args = ap.parse_args()
    started = time.time()
    size = args.size_mib * MiB
    print(machine())
    print(f"model {args.size_mib} MiB random, chunk {args.chunk_mib} MiB")

    with tempfile.TemporaryDirectory(dir="/tmp", prefix="bench-open-") as d:
        tmp = Path(d)
        plain, sealed, key = tmp / "model.bin", tmp / "model.mseal", tmp / "model.mek"
        write_random_file(plain, size)
        mek = modelseal.keygen()
        modelseal.write_mek(mek, key)
        identity = modelseal.MEK(mek)
        modelseal.seal(plain, sealed, mek=mek, chunk_size=args.chunk_mib * MiB)
        warm(plain)
        warm(sealed)

        def plain_read(make: Callable[[], memoryview], release: Callable[[], None]) -> Callable[[], None]:
            view = make()
            with plain.open("rb", buffering=0) as f:
                readinto_full(f, view)
            return release

        def baseline(huge: bool) -> Callable[[], Callable[[], None]]:
            def run() -> Callable[[], None]:
                m = fresh_private_map(size, huge)
                view = memoryview(m)

                def release() -> None:
                    view.release()
                    m.close()

                return plain_read(lambda: view, release)

            return run

        def bytearray_run() -> Callable[[], None]:
            holder: list[bytearray] = []

            def make() -> memoryview:
                holder.append(bytearray(size))
                return memoryview(holder[0])

            return plain_read(make, holder.clear)

        def open_run() -> Callable[[], None]:
            model = modelseal.open(sealed, identity)
            return model.close

        # Interleave the contenders so drift (other tenants, THP compaction) hits all of them alike.
        rows: dict[str, list[float]] = {}
        names: dict[str, Callable[[], Callable[[], None]]] = {
            "readinto -> fresh MAP_PRIVATE|ANON + MADV_HUGEPAGE": baseline(True),
            "readinto -> fresh MAP_PRIVATE|ANON (4 KiB pages)": baseline(False),
            "readinto -> fresh bytearray": bytearray_run,
            "modelseal.open (decrypt+verify all)": open_run,
        }
        for run in names.values():
            # Untimed: the first 1 GiB a VM process touches also pays the hypervisor's first touch.
            run()()
        for _ in range(args.reps):
            for name, run in names.items():
                rows.setdefault(name, []).extend(measure(name, size, 1, run, touch=size + 64 * MiB).runs)
        timings = [Timing(n, r, size) for n, r in rows.items()]
        opened = timings[-1]
        print_table("open vs plain readinto (page-cached files)", timings, timings[0])
        for base in timings[:-1]:
            print(f"open / [{base.name}]: best {base.best / opened.best:.2f}x, "
                  f"median {base.median / opened.median:.2f}x (target >= 0.85x)")

        peaks = [child_peak_rss(sealed, key) for _ in range(2)]
        print("\n## peak RSS of open() in a fresh child (VmHWM)")
        for p in peaks:
            over = p["after"] - size
            print(f"interpreter+import {p['before'] / MiB:7.1f} MiB, after open {p['after'] / MiB:8.1f} MiB "
                  f"= plaintext + {over / MiB:.1f} MiB (target <= +64 MiB)")

        copy_dst, seal_dst = tmp / "copy.bin", tmp / "out.mseal"

        def copy_run() -> None:
            # seal's own I/O pattern minus the crypto: chunked reads, writes, one fsync at the end.
            buf = memoryview(bytearray(args.chunk_mib * MiB))
            with plain.open("rb", buffering=0) as fin, copy_dst.open("wb", buffering=0) as fout:
                while n := fin.readinto(buf):
                    fout.write(buf[:n])
            fsync_path(copy_dst)

        def seal_run() -> None:
            modelseal.seal(plain, seal_dst, mek=mek, chunk_size=args.chunk_mib * MiB, overwrite=True)

        srows: dict[str, list[float]] = {}
        snames = {
            "plain copy + fsync (4 MiB chunks)": copy_run,
            "modelseal.seal (-> file, fsynced)": seal_run,
        }
        for _ in range(args.seal_reps):
            for name, srun in snames.items():
                srows.setdefault(name, []).extend(measure(name, size, 1, srun).runs)
        stimings = [Timing(n, r, size) for n, r in srows.items()]
        print_table("seal vs plain copy (output on the same ext4 disk)", stimings, stimings[0])
        write_results(args, "open", {
            "size_bytes": size,
            "chunk_bytes": args.chunk_mib * MiB,
            # open: the first row is the strictest baseline, the last is modelseal.open.
            "open": [timing_dict(t) for t in timings],
            "peak_rss": peaks,
            # seal: the first row is the baseline (plain copy + fsync), the second modelseal.seal.
            "seal": [timing_dict(t) for t in stimings],
        }, started)


if __name__ == "__main__":
    main()
