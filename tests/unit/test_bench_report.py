"""bench/report.py on synthetic results: the page's generated block is replaced between its markers
(idempotently, the rest byte-identical) and the PNG plots are drawn. No timing is judged here."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

INTRO = "# Benchmarks\r\n\nHand-written intro, with a CRLF line and trailing spaces.   \n\n"
REST = "## Machine\n\nhand-written analysis\n\n## Vault key release\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"


@pytest.fixture(scope="module")
def report() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "bench" / "report.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def timing(name: str, runs: list[float], nbytes: int) -> dict[str, Any]:
    ordered = sorted(runs)
    return {
        "name": name,
        "runs": runs,
        "nbytes": nbytes,
        "best": ordered[0],
        "median": ordered[len(runs) // 2],
    }


def common(bench: str) -> dict[str, Any]:
    return {
        "bench": bench,
        "schema": 1,
        "started": "2026-12-02T18:00:00+00:00",
        "finished": "2026-12-02T18:05:00+00:00",
        "seconds": 300.0,
        "command": f"python bench/bench_{bench}.py --results bench-results",
        "machine": {
            "cpu": "Synthetic CPU",
            "cpu_flags": ["aes"],
            "cores": 2,
            "memory_bytes": 8 << 30,
            "kernel": "Linux 6.0",
            "machine": "x86_64",
            "transparent_hugepage": "[madvise]",
            "python": "3.11.7",
            "libraries": {"cryptography": "50"},
            "tools": {"age": "1.1.1"},
        },
    }


def synthetic() -> dict[str, dict[str, Any]]:
    g = 1 << 30
    ort = [
        {
            "form": form,
            "mib": mb,
            "model_bytes": mb * 1_048_576,
            "nbytes": mb * 1_048_576,
            "baseline": "plain InferenceSession(path)",
            "target": 1.15,
            "ratio": 1.0 + mb / 1000,
            "times": {
                "plain InferenceSession(path)": [0.1, 0.2, 0.3],
                "sealed load_session": [0.2, 0.3, 0.4],
            },
        }
        for mb in (16, 64, 208)
        for form in ("ONNX single file", "ORT format (.ort)")
    ]
    ov = [
        {
            "form": "OpenVINO IR (xml + bin)",
            "mib": mb,
            "model_bytes": mb << 20,
            "nbytes": mb << 20,
            "baseline": "plain core.compile_model(xml path)",
            "target": 1.5,
            "ratio": 1.3,
            "times": {
                "plain core.compile_model(xml path)": [0.1, 0.1],
                "sealed compile_model (shared Tensor)": [0.13],
            },
        }
        for mb in (16, 64, 208)
    ]

    def levels(scale: float) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for c in (1, 8, 32):
            for what, rate in (("health", 2000.0), ("release", 300.0 * scale * c**0.5)):
                rows.append(
                    {
                        "what": what,
                        "connections": c,
                        "rate": rate,
                        "p50": c * 1.0,
                        "p95": c * 1.5,
                        "p99": c * 2.0,
                        "max": c * 3.0,
                        "statuses": {"200": 100},
                        "errors": 0,
                        "cpu_us": 1000.0,
                        "client_cpu_us": 50.0,
                        "verified": 30,
                        "notes": [],
                        "others": 1.0,
                    }
                )
        return rows

    return {
        "open": {
            **common("open"),
            "size_bytes": g,
            "chunk_bytes": 4 << 20,
            "open": [
                timing("readinto -> hugepage", [0.28, 0.27], g),
                timing("readinto -> bytearray", [0.6, 0.59], g),
                timing("modelseal.open (decrypt+verify all)", [0.25, 0.26], g),
            ],
            "peak_rss": [{"before": 30 << 20, "after": g + (43 << 20)}],
            "seal": [timing("plain copy + fsync", [0.9, 1.0], g), timing("modelseal.seal", [1.0, 2.0], g)],
        },
        "peers": {
            **common("peers"),
            "size_bytes": g,
            "out_dir": "/tmp",
            "phases": {
                phase: [
                    timing("modelseal", [0.3], g),
                    timing("age", [1.0], g),
                    timing("tink AES256_GCM_HKDF_1MB", [0.8], g),
                    timing("openssl aes-256-ctr", [0.4], g),
                ]
                for phase in ("encrypt", "decrypt")
            },
        },
        "runtimes": {**common("runtimes"), "reps": 3, "ort": ort, "ov": ov},
        "cfs": {
            **common("cfs"),
            "size_bytes": g,
            "cold": [timing("plain", [0.2], g), timing("cfs", [0.4], g), timing("gocryptfs", [1.0], g)],
            "warm": [timing("plain", [0.1], g), timing("cfs", [0.15], g), timing("gocryptfs", [1.0], g)],
            "mount_seconds": {"cfs": 1.2, "gocryptfs": 0.1},
        },
        "rewrap": {
            **common("rewrap"),
            "sizes": [
                {
                    "mb": mb,
                    "size_bytes": mb * 10**6,
                    "in_place": timing("in place", [0.002, 0.0021], mb),
                    "rewrap_new": timing("rw", [mb / 1000], mb),
                    "copyfile": timing("cp", [mb / 3000], mb),
                    "copyfile_fsync": timing("cpf", [mb / 1100], mb),
                }
                for mb in (10, 100, 2000)
            ],
        },
        "release": {
            **common("release"),
            "serve_args": "",
            "duration": 8.0,
            "backends": {"sqlite": levels(1.0), "postgresql": levels(0.4)},
        },
        "agent": {
            **common("agent"),
            "size_bytes": 1 << 20,
            "runs": 3,
            "rows": [
                {"name": n, "p50": p, "p95": p * 2, "p99": p * 3, "samples_ms": [p]}
                for n, p in (("local key (baseline)", 0.7), ("via vault (TLS)", 7.0), ("via agent", 9.0))
            ],
        },
    }


def write_results(folder: Path, results: dict[str, dict[str, Any]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, doc in results.items():
        (folder / f"{name}.json").write_text(json.dumps(doc))
    return folder


def run(report: ModuleType, results: Path, page: Path, img: Path) -> None:
    assert report.main(["--results", str(results), "--page", str(page), "--img-dir", str(img)]) == 0


def test_section_replaced_between_markers_idempotently(report: ModuleType, tmp_path: Path) -> None:
    results = write_results(tmp_path / "bench-results", synthetic())
    page, img = tmp_path / "docs" / "benchmarks.md", tmp_path / "docs" / "img"
    page.parent.mkdir()
    before = INTRO + f"{report.BEGIN}\nstale generated text\n{report.END}\n\n" + REST
    page.write_bytes(before.encode())

    run(report, results, page, img)
    first = page.read_bytes().decode()
    head, _, tail = first.partition(report.END)
    assert head.startswith(INTRO + report.BEGIN + "\n")
    assert tail == "\n\n" + REST  # everything after the end marker is byte-identical
    assert "stale generated text" not in first
    block = head[len(INTRO) :]
    assert "Synthetic CPU" in block and "make bench" in block
    for name in ("open", "peers", "runtimes", "cfs", "rewrap", "release"):
        png = img / f"bench-{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"](img/bench-{name}.png)" in block
    assert "| sqlite | 8 |" in block and "| postgresql | 32 |" in block
    assert "**2.50x**" in block  # cfs vs gocryptfs, cold: 1.0 s / 0.4 s
    assert "largest / smallest model: **1.00x**" in block  # in-place rewrap, same median at every size
    assert "| ONNX single file | 218 |" in block  # 208 MiB in decimal MB

    run(report, results, page, img)
    assert page.read_bytes().decode() == first  # idempotent


def test_markers_inserted_when_missing_and_gaps_reported(report: ModuleType, tmp_path: Path) -> None:
    data = synthetic()
    only = {"rewrap": data["rewrap"], "cfs": {**common("cfs"), "skipped": "gocryptfs is not installed"}}
    results = write_results(tmp_path / "r", only)
    page = tmp_path / "benchmarks.md"
    page.write_bytes((INTRO + REST).encode())
    run(report, results, page, tmp_path / "img")
    text = page.read_bytes().decode()
    assert text.startswith(INTRO + report.BEGIN + "\n")
    assert text.endswith(report.END + "\n\n" + REST)
    assert "Skipped in this pass: gocryptfs is not installed" in text
    assert "Not run in this pass: no `r/release.json`" in text
    assert (tmp_path / "img" / "bench-rewrap.png").is_file()
    assert not (tmp_path / "img" / "bench-cfs.png").exists()


def test_broken_markers_refused(report: ModuleType) -> None:
    with pytest.raises(SystemExit):
        report.replace_section(f"{report.END}\n{report.BEGIN}\n", "x")


def test_the_real_page_has_one_marker_pair(report: ModuleType) -> None:
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    assert text.count(report.BEGIN) == 1 and text.count(report.END) == 1
    assert text.index(report.BEGIN) < text.index(report.END)
