"""Fuzzing the header parser: hypothesis (100,000 inputs in the slow variant) and atheris.

tests/unit/test_header_parser.py already runs ~7,000 hypothesis examples of ``parse_header`` on a
bytes object. This goes further: every input goes through ``read_header`` on a real file (the
allocation that follows the preamble is recorded and bounded by the file's size) and, when it
parses, through ``unlock`` with a MEK and an X25519 identity (hostile stanzas reach unwrapping and
HPKE). Inputs mix raw bytes, lying preambles, mutations of a real header and headers built from
random fields with consistent or lying lengths. The only exceptions allowed are the documented
FormatError / IntegrityError / NoMatchingIdentityError.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import modelseal
from modelseal.format import manifest
from modelseal.format.header import MAX_HEADER_LENGTH, Core, parse_core

from .forge import encode_stanza
from .fuzz_inputs import AllocationGuard, check_one, preamble, real_header

HERE = Path(__file__).resolve().parent
_SEED: bytes | None = None


def _seed() -> bytes:
    global _SEED
    if _SEED is None:
        with tempfile.TemporaryDirectory() as d:
            _SEED = real_header(Path(d))
    return _SEED


_BOUNDARY_U32 = [
    0,
    1,
    19,
    20,
    21,
    4095,
    4096,
    65536,
    65537,
    1 << 20,
    (1 << 20) + 1,
    16 << 20,
    MAX_HEADER_LENGTH,
    MAX_HEADER_LENGTH + 1,
    2**31,
    2**32 - 1,
]


# The structured generators below take one seed from hypothesis and draw the rest from it: hypothesis
# spends ~40 us per draw, and 100,000 inputs of ~40 draws each would not fit the slow run's budget.


def mutated_header(seed: int) -> bytes:
    """A real header with 1-6 edits: bytes, u16/u32 fields set to boundary values, cuts, inserts."""
    rng = random.Random(seed)
    data = bytearray(_seed())
    used = len(data.rstrip(b"\x00")) + 1  # most edits land in the fields, not in the zero padding
    for _ in range(rng.randint(1, 6)):
        op = rng.choice(["byte", "byte", "u16", "u32", "insert", "delete", "truncate", "append"])
        at = rng.randint(0, min(used, len(data)) if rng.random() < 0.9 else len(data))
        if op == "byte" and at < len(data):
            data[at] = rng.randrange(256)
        elif op == "u16" and at + 2 <= len(data):
            data[at : at + 2] = rng.choice([0, 1, 8, 9, 1024, 1025, 4096, 4097, 65535]).to_bytes(2, "big")
        elif op == "u32" and at + 4 <= len(data):
            data[at : at + 4] = rng.choice(_BOUNDARY_U32).to_bytes(4, "big")
        elif op == "insert":
            data[at:at] = rng.randbytes(rng.randint(1, 64))
        elif op == "delete":
            del data[at : at + rng.randint(1, 64)]
        elif op == "truncate":
            del data[at:]
        elif op == "append":
            data += rng.randbytes(rng.randint(0, 256))
    return bytes(data)


# Metadata: JSON objects that parse (with a lone-surrogate escape, an overflowing float), and values
# that must not: other JSON values, non-standard constants, too many digits, not JSON, not UTF-8.
_METADATA_OK = [
    b"{}",
    b" {} ",
    b'{"name":"tiny","v":[1,2.5,null,true]}',
    b'{"a":{"b":{"c":[[],{}]}}}',
    b'{"k":"\xc3\xa9t\xc3\xa9"}',
    b'{"\\ud800":1}',
    b'{"n":1e999}',
]
_METADATA_BAD = [
    b'{"n":NaN}',
    b'{"n":-Infinity}',
    b'{"big":' + b"9" * 5000 + b"}",
    b"[]",
    b'"text"',
    b"0",
    b"null",
    b"",
    b"{",
    b'{"a":1}x',
    b"\xff\xfe{}",
]


def _stanza(rng: random.Random) -> bytes:
    kind = rng.choice([b"x25519", b"scrypt", b"mek", b"vault", b"other.type-1", b"", b"A", b"a" * 33])
    args = [
        rng.randbytes(rng.choice([0, 1, 8, 16, 64, 1024, 1025]))
        for _ in range(rng.choice([0, 1, 2, 2, 3, 8, 9]))
    ]
    body = rng.randbytes(rng.choice([0, 1, 32, 48, 60, 64, 80, 100])) if rng.random() < 0.9 else bytes(65537)
    lie = rng.choice([None, None, None, "type", "count", "arg", "body"])
    n = rng.randrange(65536)
    return encode_stanza(
        kind,
        args,
        body,
        rng.randbytes(32),
        type_length=n % 256 if lie == "type" else None,
        arg_count=n % 256 if lie == "count" else None,
        arg_lengths=[n] * len(args) if lie == "arg" else None,
        body_length=n * 3 if lie == "body" else None,
    )


def built_header(seed: int) -> bytes:
    """A header assembled from random fields: deep into the parser, with lengths that may lie."""
    rng = random.Random(seed)
    signed = rng.random() < 0.5
    random32 = rng.randbytes(32)
    core = Core(
        salt=random32,
        chunk_size=rng.choice([4096, 4 << 20, 256 << 20])
        if rng.random() < 0.8
        else rng.choice([0, 4095, (256 << 20) + 1]),
        payload_length=rng.choice([0, 1, 4096, 2**63, 2**64 - 1]),
        metadata=(
            rng.choice(_METADATA_OK)
            if rng.random() < 0.75
            else rng.choice(_METADATA_BAD)
            if rng.random() < 0.5
            else rng.randbytes(rng.randint(0, 40))
        ),
        manifest=rng.randbytes(rng.randint(0, 200)),
        signer_key=random32 if signed else b"",
        payload_digest=random32 if signed else b"",
        aead=1 if rng.random() < 0.9 else rng.choice([0, 2, 255]),
    ).encode()
    stanzas = [_stanza(rng) for _ in range(rng.randint(0, 4))]
    count = len(stanzas) if rng.random() < 0.7 else rng.choice([0, 1, 4096, 4097, 65535])
    body = core + random32 + (random32 * 2 if signed else b"") + count.to_bytes(2, "big") + b"".join(stanzas)
    used = 20 + len(body)
    header_length = (
        rng.choice([used, used + 1, used + 100, -(-used // 4096) * 4096])
        if rng.random() < 0.8
        else rng.choice([used - 1, 21, 4096, MAX_HEADER_LENGTH + 1])
    )
    core_length = (
        len(core) if rng.random() < 0.85 else rng.choice([0, len(core) - 1, len(core) + 1, 2**32 - 1])
    )
    zeros = header_length - used if 0 <= header_length - used <= 8192 else 0
    padding = bytes(zeros) if rng.random() < 0.9 else rng.randbytes(rng.randint(0, 64))
    return preamble(header_length, core_length) + body + padding + rng.randbytes(rng.randint(0, 64))


lying_preamble = st.builds(
    lambda hl, cl, version, reserved, tail: preamble(hl, cl, version, reserved) + tail,
    st.sampled_from(_BOUNDARY_U32) | st.integers(0, 2**32 - 1),
    st.sampled_from(_BOUNDARY_U32) | st.integers(0, 2**32 - 1),
    st.sampled_from([1, 1, 1, 0, 2, 65535]),
    st.sampled_from([0, 0, 0, 1, 65535]),
    st.binary(max_size=600),
)

_SEEDS = st.integers(0, 2**64 - 1)
HOSTILE = st.one_of(
    st.binary(max_size=8192), lying_preamble, _SEEDS.map(mutated_header), _SEEDS.map(built_header)
)


def _fuzz(examples: int) -> int:
    """Run ``examples`` hypothesis inputs through check_one; return how many ran."""
    ran = 0
    with AllocationGuard() as guard:

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate, Phase.shrink],
            suppress_health_check=list(HealthCheck),
        )
        @given(HOSTILE)
        def run(data: bytes) -> None:
            nonlocal ran
            ran += 1
            check_one(data, guard)

        run()
    return ran


def test_fuzz_read_header_and_unlock() -> None:
    assert _fuzz(3_000) >= 3_000


@pytest.mark.slow
def test_fuzz_read_header_and_unlock_100k() -> None:
    ran = _fuzz(100_000)
    assert ran >= 100_000, f"only {ran} inputs ran"


def test_memory_stays_linear_in_the_input() -> None:
    """tracemalloc over a sample: peak memory grows with the file, never with a declared length."""
    worst: list[tuple[int, int]] = []

    @settings(
        max_examples=300,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(HOSTILE)
    def run(data: bytes) -> None:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        check_one(data)
        _, peak = tracemalloc.get_traced_memory()
        peak -= before
        worst.append((peak, len(data)))
        assert peak <= 64 * len(data) + (1 << 20), (peak, len(data))

    tracemalloc.start()
    try:
        run()
        # A preamble announcing a 64 MiB header on a tiny file allocates nothing near that.
        liar = preamble(MAX_HEADER_LENGTH, MAX_HEADER_LENGTH - 20) + os.urandom(100)
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        check_one(liar)
        _, peak = tracemalloc.get_traced_memory()
        peak -= before
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak
    assert len(worst) >= 300


def test_deeply_nested_metadata_is_a_format_error() -> None:
    """Found by this suite: ~1,000 '[' in the public metadata crash the parser before any key is used."""
    core = Core(salt=bytes(32), chunk_size=4096, payload_length=0, metadata=b"[" * 100_000, manifest=b"")
    with pytest.raises(modelseal.FormatError):
        parse_core(core.encode())


def test_deeply_nested_manifest_is_a_format_error() -> None:
    """The manifest is decrypted before it is parsed, so only a key holder can send one; still bounded."""
    with pytest.raises(modelseal.FormatError, match="malformed manifest"):
        manifest.decode(b"[" * 100_000, 0)


# -- atheris (coverage-guided, libFuzzer) -----------------------------------------------------------------

ATHERIS_HARNESS = HERE / "atheris_header.py"


def _atheris(runs: int, tmp_path: Path) -> None:
    pytest.importorskip(
        "atheris", reason="atheris is not installed (the dev extra, Linux x86-64 wheels only)"
    )
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    seed = _seed()
    (corpus / "real").write_bytes(seed)
    (corpus / "preamble").write_bytes(seed[:20])
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    cmd = [
        sys.executable,
        str(ATHERIS_HARNESS),
        f"-runs={runs}",
        "-seed=20240607",
        "-max_len=16384",
        "-rss_limit_mb=2048",
        "-timeout=30",
        f"-artifact_prefix={artifacts}/",
        str(corpus),
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env, cwd=tmp_path)
    crashes = sorted(p.name for p in artifacts.iterdir())
    assert r.returncode == 0 and not crashes, f"atheris found a crash {crashes}:\n{r.stderr[-4000:]}"
    done = re.search(r"Done (\d+) runs", r.stderr)
    assert done and int(done.group(1)) >= runs, r.stderr[-2000:]


def test_atheris_header_parser(tmp_path: Path) -> None:
    _atheris(20_000, tmp_path)


@pytest.mark.slow
def test_atheris_header_parser_500k(tmp_path: Path) -> None:
    _atheris(500_000, tmp_path)
