"""atheris (libFuzzer) harness for the header path; run by test_fuzz_header.py in a subprocess.

    python tests/adversarial/atheris_header.py -runs=100000 -seed=1 CORPUS_DIR

Every input goes through check_one (read_header on a memfd, then unlock): a Python exception other
than the documented failure classes, or an allocation larger than the file, is a crash that
libFuzzer reports (exit code != 0, an artifact file written). modelseal's modules are instrumented
for coverage feedback.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["modelseal"]):
    import modelseal.format.header
    import modelseal.header_auth
    import modelseal.opening
    import modelseal.recipients  # noqa: F401

from adversarial.fuzz_inputs import AllocationGuard, check_one

_GUARD = AllocationGuard()


def one_input(data: bytes) -> None:
    check_one(data, _GUARD)


def main() -> None:
    with _GUARD:
        atheris.Setup(sys.argv, one_input)
        atheris.Fuzz()


if __name__ == "__main__":
    main()
