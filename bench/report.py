"""Turn the bench scripts' JSON results into PNG plots and the generated part of docs/benchmarks.md.

  python bench/report.py [--results bench-results] [--page docs/benchmarks.md] [--img-dir docs/img]

Reads DIR/<bench>.json as written by the scripts' ``--results DIR`` (open, peers, runtimes, cfs,
rewrap, release, agent), draws docs/img/bench-*.png with matplotlib (Agg) and replaces what lies
between the markers ``<!-- bench-report:begin -->`` and ``<!-- bench-report:end -->`` of the page
(inserted before the page's first ``## `` heading if missing). Everything outside the markers stays
byte-identical; running it twice on the same results gives the same page. A bench without results
(not run, failed, or skipped for a missing component) gets a line saying so instead of a table.
Every ratio shown was computed from runs of one script in one run, never across scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

BEGIN = "<!-- bench-report:begin -->"
END = "<!-- bench-report:end -->"
ROOT = Path(__file__).resolve().parent.parent
BENCHES = ("open", "peers", "runtimes", "cfs", "rewrap", "release", "agent")
COMMAND = "make bench"

Result = dict[str, Any]


# --- loading --------------------------------------------------------------------------------------


def load_results(folder: Path) -> dict[str, Result]:
    results: dict[str, Result] = {}
    for name in BENCHES:
        path = folder / f"{name}.json"
        if path.is_file():
            results[name] = json.loads(path.read_text())
    return results


def median(runs: Sequence[float]) -> float:
    return float(statistics.median(runs))


def gbps(row: Result, key: str = "median") -> float:
    return float(row["nbytes"]) / float(row[key]) / 1e9


def fmt_bytes(n: float) -> str:
    if n >= 1 << 30:
        return f"{n / (1 << 30):.1f} GiB"
    if n >= 1 << 20:
        return f"{n / (1 << 20):.0f} MiB"
    return f"{n / 1024:.0f} KiB"


def when(stamp: str) -> str:
    """ISO time from the results -> '2026-12-02 18:41 UTC'."""
    return stamp.replace("T", " ")[:16] + " UTC"


def size_ticks(ax: Any, values: Sequence[float], fmt: str = "{:.0f}") -> None:
    """Log axis ticked at the measured values, labelled plainly."""
    from matplotlib.ticker import NullFormatter, NullLocator

    ticks = sorted(set(values))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(ticks, [fmt.format(v) for v in ticks])


def md_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return out


# --- plots ----------------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    # No software/version metadata: the same results give the same bytes on the same matplotlib.
    fig.savefig(path, dpi=110, metadata={"Software": None})
    _pyplot().close(fig)


def bars(ax: Any, rows: Sequence[Result], title: str, highlight: Callable[[str], bool]) -> None:
    names = [r["name"] for r in rows]
    medians = [gbps(r) for r in rows]
    bests = [gbps(r, "best") for r in rows]
    colors = ["tab:blue" if highlight(n) else "tab:gray" for n in names]
    y = list(range(len(rows)))
    ax.barh(y, medians, color=colors)
    ax.scatter(bests, y, color="black", marker="|", s=160, zorder=3)
    for yi, value, best in zip(y, medians, bests, strict=True):
        ax.text(max(value, best), yi, f"  {value:.2f}", va="center", fontsize=8)
    ax.set_yticks(y, [n if len(n) <= 44 else n[:42] + "…" for n in names], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("GB/s, higher is better (bar and label: median run; tick: best run)", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_xlim(0, max(bests + medians) * 1.2)


def plot_open(r: Result, path: Path) -> None:
    plt = _pyplot()
    fig, (a, b) = plt.subplots(2, 1, figsize=(8, 5.2), height_ratios=[len(r["open"]), len(r["seal"])])
    bars(
        a,
        r["open"],
        f"open() of a {fmt_bytes(r['size_bytes'])} model vs plain readinto (page cache)",
        lambda n: n.startswith("modelseal"),
    )
    bars(b, r["seal"], "seal() vs plain copy + fsync (ext4)", lambda n: n.startswith("modelseal"))
    save(fig, path)


def plot_peers(r: Result, path: Path) -> None:
    plt = _pyplot()
    phases = r["phases"]
    fig, axes = plt.subplots(len(phases), 1, figsize=(8, 1.2 + 0.42 * sum(len(v) for v in phases.values())))
    for ax, (phase, rows) in zip(axes, phases.items(), strict=True):
        bars(
            ax,
            rows,
            f"{phase}: {fmt_bytes(r['size_bytes'])} random model",
            lambda n: n.startswith("modelseal"),
        )
    save(fig, path)


def plot_runtimes(r: Result, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.4))
    series: dict[str, list[tuple[float, float]]] = {}
    for row in r["ort"]:
        series.setdefault(f"ONNX Runtime: {row['form']}", []).append((row["model_bytes"] / 1e6, row["ratio"]))
    for row in r["ov"]:
        series.setdefault("OpenVINO: IR compile", []).append((row["model_bytes"] / 1e6, row["ratio"]))
    for label, points in series.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.axhline(1.15, color="tab:blue", linestyle="--", linewidth=0.8, label="ORT target 1.15 (≥ 200 MB)")
    ax.axhline(1.5, color="tab:red", linestyle="--", linewidth=0.8, label="OpenVINO target 1.5")
    ax.set_xscale("log")
    size_ticks(ax, [p[0] for points in series.values() for p in points])
    ax.set_xlabel("model size, MB (log)")
    ax.set_ylabel("sealed load / plaintext load (median)")
    ax.set_title("Sealed vs plaintext load across model sizes (lower is better, 1 = no cost)", fontsize=10)
    top = max([1.5, *(p[1] for points in series.values() for p in points)])
    ax.set_ylim(top=top * 1.3)  # room for the legend above the curves
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    save(fig, path)


def plot_rewrap(r: Result, path: Path) -> None:
    plt = _pyplot()
    sizes = r["sizes"]
    mb = [s["size_bytes"] / 1e6 for s in sizes]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(mb, [s["in_place"]["median"] * 1e3 for s in sizes], marker="o", label="median")
    a.plot(mb, [s["in_place"]["best"] * 1e3 for s in sizes], marker=".", linestyle=":", label="best")
    a.set_xscale("log")
    size_ticks(a, mb)
    a.set_ylim(0, max(s["in_place"]["median"] * 1e3 for s in sizes) * 1.6)
    a.set_xlabel("sealed model size, MB (log)")
    a.set_ylabel("ms")
    a.set_title("in-place rewrap (add a recipient)", fontsize=10)
    a.legend(fontsize=8)
    for key, label in (
        ("rewrap_new", "rewrap -o new file"),
        ("copyfile_fsync", "copyfile + fsync"),
        ("copyfile", "copyfile (no fsync)"),
    ):
        b.plot(mb, [s[key]["median"] for s in sizes], marker="o", label=label)
    b.set_xscale("log")
    size_ticks(b, mb)
    b.set_yscale("log")
    b.set_xlabel("sealed model size, MB (log)")
    b.set_ylabel("seconds (median, log)")
    b.set_title("rewrap into a new file vs copying it", fontsize=10)
    b.legend(fontsize=8)
    save(fig, path)


def plot_release(r: Result, path: Path) -> None:
    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = {"sqlite": "tab:blue", "postgresql": "tab:orange"}
    for backend, rows in r["backends"].items():
        color = colors.get(backend, "tab:green")
        rel = [x for x in rows if x["what"] == "release"]
        health = [x for x in rows if x["what"] == "health"]
        conc = [x["connections"] for x in rel]
        a.plot(conc, [x["rate"] for x in rel], marker="o", color=color, label=f"{backend}: releases/s")
        a.plot(
            [x["connections"] for x in health],
            [x["rate"] for x in health],
            linestyle=":",
            color=color,
            label=f"{backend}: health/s (baseline)",
        )
        b.plot(conc, [x["p50"] for x in rel], marker="o", color=color, label=f"{backend} p50")
        b.plot(conc, [x["p99"] for x in rel], marker="^", linestyle="--", color=color, label=f"{backend} p99")
    a.axhline(1000, color="gray", linewidth=0.8, linestyle="--", label="target 1,000/s")
    b.axhline(25, color="gray", linewidth=0.8, linestyle="--", label="p99 target 25 ms")
    levels = [x["connections"] for rows in r["backends"].values() for x in rows]
    for ax in (a, b):
        ax.set_xscale("log", base=2)
        size_ticks(ax, levels)
        ax.set_xlabel("concurrent connections (wrk, log)")
        ax.legend(fontsize=7, loc="best")
    a.set_ylim(top=max(x["rate"] for rows in r["backends"].values() for x in rows) * 1.45)
    a.set_ylabel("requests/s")
    a.set_ylim(bottom=0)
    a.set_title("vault key releases/s vs concurrency", fontsize=10)
    b.set_yscale("log")
    b.set_ylabel("latency, ms (log)")
    b.set_title("release latency percentiles", fontsize=10)
    save(fig, path)


def plot_cfs(r: Result, path: Path) -> None:
    plt = _pyplot()
    groups = [(label, r[label]) for label in ("cold", "warm") if r.get(label)]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.8 / len(groups)
    names = [row["name"] for row in groups[0][1]]
    for i, (label, rows) in enumerate(groups):
        xs = [j + (i - (len(groups) - 1) / 2) * width for j in range(len(rows))]
        values = [gbps(row) for row in rows]
        ax.bar(xs, values, width, label=f"{label} read (median)")
        for x, v in zip(xs, values, strict=True):
            ax.text(x, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_ylabel("GB/s (higher is better)")
    ax.set_title(f"sequential read of a {fmt_bytes(r['size_bytes'])} model through FUSE", fontsize=10)
    ax.legend(fontsize=8)
    save(fig, path)


PLOTS: dict[str, Callable[[Result, Path], None]] = {
    "open": plot_open,
    "peers": plot_peers,
    "runtimes": plot_runtimes,
    "cfs": plot_cfs,
    "rewrap": plot_rewrap,
    "release": plot_release,
}


# --- the page section -----------------------------------------------------------------------------


def machine_lines(results: dict[str, Result]) -> list[str]:
    machines = [r["machine"] for r in results.values() if "machine" in r]
    if not machines:
        return ["No machine description in the results."]
    m = machines[0]
    libraries: dict[str, str] = {}
    tools: dict[str, str] = {}
    for each in machines:
        libraries.update(each.get("libraries", {}))
        tools.update(each.get("tools", {}))
    rows = [
        ["CPU", f"{m['cpu']} ({m.get('machine', '?')}); flags: {', '.join(m.get('cpu_flags', [])) or '?'}"],
        ["cores", f"{m['cores']} (os.cpu_count)"],
        ["memory", f"{m['memory_bytes'] / (1 << 30):.1f} GiB"],
        [
            "kernel",
            m["kernel"] + (f"; THP `{m['transparent_hugepage']}`" if m.get("transparent_hugepage") else ""),
        ],
        ["Python", m["python"]],
        ["libraries", ", ".join(f"{k} {v}" for k, v in sorted(libraries.items()))],
        ["tools", "; ".join(f"{k}: {v}" for k, v in sorted(tools.items()))],
    ]
    others = {(x["cpu"], x["cores"], x["kernel"]) for x in machines}
    lines = md_table(["", ""], rows)
    if len(others) > 1:
        lines.append("")
        lines.append(f"Note: the results come from more than one machine: {sorted(others)}.")
    return lines


def missing(name: str, results: dict[str, Result], folder: str) -> str | None:
    if name not in results:
        return f"_Not run in this pass: no `{folder}/{name}.json`._"
    if "skipped" in results[name]:
        return f"_Skipped in this pass: {results[name]['skipped']}._"
    return None


def section_open(r: Result) -> list[str]:
    rows = r["open"]
    opened = rows[-1]
    out = [
        f"Model {fmt_bytes(r['size_bytes'])} of random bytes, chunk {fmt_bytes(r['chunk_bytes'])}, "
        f"{len(opened['runs'])} interleaved runs each. Ratio = baseline time / modelseal time (> 1: "
        "modelseal is faster).",
        "",
    ]
    table = []
    for row in rows:
        ratio = (
            ""
            if row is opened
            else f"{row['best'] / opened['best']:.2f}x / {row['median'] / opened['median']:.2f}x"
        )
        table.append([row["name"], f"{row['best']:.3f}", f"{row['median']:.3f}", f"{gbps(row):.2f}", ratio])
    out += md_table(
        ["open: what", "best s", "median s", "GB/s (median)", "open vs this (best / median)"], table
    )
    out.append("")
    seal = r["seal"]
    base, ours = seal[0], seal[-1]
    table = [
        [
            row["name"],
            f"{row['best']:.3f}",
            f"{row['median']:.3f}",
            f"{gbps(row):.2f}",
            ""
            if row is base
            else f"{base['best'] / row['best']:.2f}x / {base['median'] / row['median']:.2f}x",
        ]
        for row in (base, ours)
    ]
    out += md_table(
        ["seal: what", "best s", "median s", "GB/s (median)", "vs plain copy (best / median)"], table
    )
    if r.get("peak_rss"):
        over = max(p["after"] for p in r["peak_rss"]) - r["size_bytes"]
        out += [
            "",
            f"Peak RSS of open() in a fresh interpreter (VmHWM): plaintext + {over / (1 << 20):.1f} MiB "
            "(interpreter and imports included; target ≤ +64 MiB).",
        ]
    return out


def section_peers(r: Result) -> list[str]:
    out = [
        f"Model {fmt_bytes(r['size_bytes'])} of random bytes; encrypted outputs in `{r['out_dir']}`. "
        "Ratio = peer time / modelseal time (> 1: modelseal is faster). `openssl enc` cannot do "
        "AES-GCM (it refuses AEAD ciphers), so openssl runs AES-256-CTR: once without any integrity "
        "(less work than modelseal does) and once as encrypt-then-MAC with `openssl dgst -hmac` "
        "(two passes). age and openssl decrypt to /dev/null, which favours them.",
        "",
    ]
    table = []
    for phase, rows in r["phases"].items():
        ours = rows[0]
        for row in rows:
            ratio = (
                ""
                if row is ours
                else f"{row['best'] / ours['best']:.2f}x / {row['median'] / ours['median']:.2f}x"
            )
            table.append(
                [phase, row["name"], f"{row['best']:.3f}", f"{row['median']:.3f}", f"{gbps(row):.2f}", ratio]
            )
    out += md_table(
        ["phase", "what", "best s", "median s", "GB/s (median)", "modelseal vs this (best / median)"], table
    )
    return out


def section_runtimes(r: Result) -> list[str]:
    out = [
        f"Each point is a sealed load against the plaintext load of the same model, {r['reps']} "
        "alternating runs each; ratio = median sealed time / median plaintext time (< 1.15 for ONNX "
        "Runtime and < 1.5 for OpenVINO are the targets, stated for models ≥ 200 MB).",
        "",
    ]
    table = []
    for row in [*r["ort"], *r["ov"]]:
        times = row["times"]
        plain = median(times[row["baseline"]])
        sealed = median(next(v for k, v in times.items() if k.startswith("sealed")))
        table.append(
            [
                row["form"],
                f"{row['nbytes'] / 1e6:.0f}",
                f"{plain:.3f}",
                f"{sealed:.3f}",
                f"**{row['ratio']:.2f}**",
                f"{row['target']:g}",
            ]
        )
    out += md_table(
        ["runtime / form", "MB", "plaintext s (median)", "sealed s (median)", "sealed / plain", "target"],
        table,
    )
    return out


def section_cfs(r: Result) -> list[str]:
    out = [
        "Sequential read (readinto 1 MiB) of the same model: plain page-cached file, `modelseal cfs "
        "mount`, gocryptfs. Cold = first read after drop_caches (no disk I/O: the ciphertext is "
        "page-cached); warm = a second read. Ratio = gocryptfs time / cfs time (> 1: cfs is faster).",
        "",
    ]
    table = []
    for label in ("cold", "warm"):
        rows = r.get(label) or []
        if len(rows) < 3:
            continue
        plain, cfs, goc = rows[0], rows[1], rows[2]
        table.append(
            [
                label,
                f"{gbps(plain):.2f}",
                f"{gbps(cfs):.2f}",
                f"{gbps(goc):.2f}",
                f"**{goc['median'] / cfs['median']:.2f}x** (best {goc['best'] / cfs['best']:.2f}x)",
            ]
        )
    out += md_table(["read", "plain GB/s", "cfs GB/s", "gocryptfs GB/s", "cfs vs gocryptfs (median)"], table)
    mount = r.get("mount_seconds", {})
    if mount:
        out += [
            "",
            f"Mount until usable: cfs {mount['cfs']:.2f} s (authenticates and decrypts the whole model "
            f"up front, CLI start included), gocryptfs {mount['gocryptfs']:.2f} s (decrypts on read).",
        ]
    return out


def section_rewrap(r: Result) -> list[str]:
    sizes = r["sizes"]
    out = [
        "Add one X25519 recipient. In place: header rewrite with two fsyncs, independent of the payload. "
        "New file: header + kernel copy of the payload (never re-encrypted), against `shutil.copyfile` of "
        "the same sealed file with and without an fsync (rewrap always fsyncs).",
        "",
    ]
    table = []
    for s in sizes:
        ip, rw, cp, cpf = s["in_place"], s["rewrap_new"], s["copyfile"], s["copyfile_fsync"]
        table.append(
            [
                f"{s['size_bytes'] / 1e6:.0f}",
                f"{ip['best'] * 1e3:.2f} / {ip['median'] * 1e3:.2f}",
                f"{rw['median']:.3f}",
                f"{cpf['median']:.3f}",
                f"{cp['median']:.3f}",
                f"{rw['median'] / cpf['median']:.2f}",
                f"{rw['median'] / cp['median']:.2f}",
            ]
        )
    out += md_table(
        [
            "MB",
            "in place ms (best / median)",
            "rewrap -o s",
            "copyfile+fsync s",
            "copyfile s",
            "rewrap / (copy+fsync)",
            "rewrap / copy",
        ],
        table,
    )
    if len(sizes) > 1:
        first, last = sizes[0]["in_place"]["median"], sizes[-1]["in_place"]["median"]
        out += ["", f"In place, largest / smallest model: **{last / first:.2f}x** (median; 1.0 = flat)."]
    return out


def section_release(r: Result) -> list[str]:
    out = [
        f"`modelseal vault serve` (TLS on loopback) driven by `wrk -t1`, {r['duration']:g} s per level, "
        f"serve flags: {r['serve_args'] or 'defaults'}. Baseline in the same run and TLS stack: "
        "`GET /v1/sys/health`; ratio = releases/s / health/s. Target: ≥ 1,000 releases/s with p99 ≤ 25 ms.",
        "",
    ]
    table = []
    for backend, rows in r["backends"].items():
        health = {x["connections"]: x for x in rows if x["what"] == "health"}
        for x in rows:
            if x["what"] != "release":
                continue
            h = health.get(x["connections"])
            table.append(
                [
                    backend,
                    str(x["connections"]),
                    f"{x['rate']:,.0f}",
                    f"{x['p50']:.1f}",
                    f"{x['p95']:.1f}",
                    f"{x['p99']:.1f}",
                    f"{h['rate']:,.0f}" if h else "",
                    f"{x['rate'] / h['rate']:.2f}" if h else "",
                    f"{x['cpu_us']:,.0f}",
                    f"{x['others']:.0f}%",
                ]
            )
    out += md_table(
        [
            "backend",
            "conc",
            "releases/s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "health/s",
            "ratio",
            "vault CPU µs/release",
            "others' CPU",
        ],
        table,
    )
    notes = []
    for backend, rows in r["backends"].items():
        for x in rows:
            others = {k: v for k, v in x.get("statuses", {}).items() if k != "200"}
            if x["what"] == "release" and (others or x.get("errors") or x.get("notes")):
                notes.append(
                    f"{backend} at {x['connections']}: other answers {others or 'none'}, "
                    f"socket errors {x.get('errors', 0)}" + "".join(f"; {n}" for n in x.get("notes", []))
                )
    if notes:
        out += ["", "Notes: " + " / ".join(notes) + "."]
    out += [
        "",
        "Each level: about 30 sampled 200 answers opened with HPKE; the audit chain verified with one "
        "`released` record per 200 (the script stops otherwise). `others' CPU` = CPU used meanwhile by "
        "processes other than the vault and wrk.",
    ]
    return out


def section_agent(r: Result) -> list[str]:
    rows = r["rows"]
    base = rows[0]
    out = [
        f"`modelseal.open` of a {fmt_bytes(r['size_bytes'])} sealed model, {r['runs']} runs each way; "
        "extra = "
        "p50 - local p50 (target ≤ 30 ms through the agent).",
        "",
    ]
    table = [
        [
            x["name"],
            f"{x['p50']:.2f}",
            f"{x['p95']:.2f}",
            f"{x['p99']:.2f}",
            "" if x is base else f"{x['p50'] - base['p50']:.2f}",
        ]
        for x in rows
    ]
    out += md_table(["path", "p50 ms", "p95 ms", "p99 ms", "extra at p50 ms"], table)
    return out


SECTIONS: dict[str, tuple[str, Callable[[Result], list[str]]]] = {
    "open": ("open() and seal() vs plain file I/O (`bench_open.py`)", section_open),
    "peers": ("Seal and open vs age, Tink and openssl (`bench_peers.py`)", section_peers),
    "runtimes": (
        "Sealed vs plaintext load in ONNX Runtime and OpenVINO (`bench_runtimes.py`)",
        section_runtimes,
    ),
    "cfs": ("Crypto-fs vs gocryptfs (`bench_cfs.py`)", section_cfs),
    "rewrap": ("Rewrap time vs model size (`bench_rewrap.py`)", section_rewrap),
    "release": (
        "Vault key release vs concurrency, SQLite and PostgreSQL (`bench_release.py`)",
        section_release,
    ),
    "agent": ("Opening through agent + vault (`bench_agent.py`)", section_agent),
}


def load_note(r: Result) -> str:
    """How busy the machine was: other processes' load biases every figure (the ratios less)."""
    load = r.get("load")
    if not load:
        return ""
    avg = "/".join(f"{x:.1f}" for x in load["loadavg_end"])
    note = f"; load average at the end {avg} (1/5/15 min)"
    waits = load.get("idle_waits") or {}
    if waits.get("waits"):
        note += (
            f"; {waits['timed_out']} of {waits['waits']} timed runs started while other processes kept "
            f"the CPUs busy (idle wait capped at {load.get('idle_wait_cap') or 'the script default'} s)"
        )
    return note


def generate(results: dict[str, Result], folder: str, img_dir: Path, page: Path) -> str:
    """The Markdown between the markers; draws the PNGs into ``img_dir`` as a side effect."""
    img_rel = Path(os.path.relpath(img_dir, page.parent)).as_posix()
    ran = [r for r in results.values() if "started" in r]
    lines = [
        "<!-- Generated by bench/report.py from the results of `make bench`: edit outside the markers. -->",
        "",
        "## Latest run (generated)",
        "",
    ]
    if ran:
        first = min(r["started"] for r in ran)
        last = max(r["finished"] for r in ran)
        total = sum(float(r.get("seconds", 0)) for r in ran)
        lines.append(
            f"Produced by `{COMMAND}` (each script in `bench/` with `--results {folder}`, then "
            f"`bench/report.py`), from {when(first)} to {when(last)} "
            f"({total / 60:.0f} min of benchmarks). Every ratio compares runs made by the same script "
            "in the same run, on page-cached inputs unless a row says otherwise. On a shared VM like "
            "this one, expect about ±20% between runs: compare the ratios, not the absolute times."
        )
    else:
        lines.append(f"No results: run `{COMMAND}`.")
    lines += [
        "",
        f"Re-run: `{COMMAND}` (all scripts at their default sizes), `{COMMAND} QUICK=1` (smaller models, "
        f'fewer runs), `{COMMAND} BENCHES="runtimes cfs"` (some scripts; the others\' results are kept), '
        "`BENCH_IDLE_WAIT=5` (cap the wait for idle CPUs on a busy machine). The command under each "
        "table is the one that produced it.",
        "",
        "### Machine",
        "",
        *machine_lines(results),
    ]
    for name in BENCHES:
        title, section = SECTIONS[name]
        lines += ["", f"### {title}", ""]
        reason = missing(name, results, folder)
        if reason:
            lines.append(reason)
            continue
        r = results[name]
        lines += section(r)
        if name in PLOTS:
            png = img_dir / f"bench-{name}.png"
            PLOTS[name](r, png)
            lines += ["", f"![{name}]({img_rel}/{png.name})"]
        lines += [
            "",
            f"<sub>`{r['command']}` — {when(r['started'])}, {float(r['seconds']):.0f} s{load_note(r)}</sub>",
        ]
    return "\n".join(lines)


def replace_section(text: str, generated: str) -> str:
    """``text`` with the part between the markers replaced (markers inserted if missing)."""
    begin, end = text.find(BEGIN), text.find(END)
    if begin < 0 and end < 0:
        heading = text.find("\n## ")
        at = len(text) if heading < 0 else heading + 1
        return text[:at] + f"{BEGIN}\n{generated}\n{END}\n\n" + text[at:]
    if begin < 0 or end < begin:
        raise SystemExit(f"the page has a broken marker pair ({BEGIN} ... {END})")
    return text[: begin + len(BEGIN)] + "\n" + generated + "\n" + text[end:]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, default=ROOT / "bench-results")
    ap.add_argument("--page", type=Path, default=ROOT / "docs" / "benchmarks.md")
    ap.add_argument("--img-dir", type=Path, default=ROOT / "docs" / "img")
    args = ap.parse_args(argv)
    results = load_results(args.results)
    try:
        label = args.results.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        label = args.results.name
    generated = generate(results, label, args.img_dir, args.page)
    with args.page.open(newline="") as f:
        text = f.read()
    updated = replace_section(text, generated)
    if updated != text:
        tmp = args.page.with_name(args.page.name + ".tmp")
        with tmp.open("w", newline="") as f:
            f.write(updated)
        tmp.replace(args.page)
    print(
        f"{args.page}: generated section from {len(results)} result file(s) "
        f"({', '.join(results) or 'none'}); plots in {args.img_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
