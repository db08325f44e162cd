"""SoftHSM2 tokens for the tests: the vault's PKCS#11 root and the device's token identity key.

One token folder per test process, holding every token the suite uses (``TOKEN_LABELS``), all made
at the first use: the PKCS#11 library is loaded once per process and never unloaded
(modelseal.pkcs11util.load_module), and SoftHSM2 reads its configuration and token list at that
first load, so a folder or token made afterwards would stay invisible to it. ``soft_token`` sets
SOFTHSM2_CONF while a test module uses its token, for the CLI subprocesses it runs. Skips with a
reason where SoftHSM2 is missing (a failure under CI=true, see ci_no_skip.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

MODULE_PATHS = ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so")
PIN = "4711-user"
SO_PIN = "0815-so"
# Every token any test module uses; one each, so that no module sees another's keys.
TOKEN_LABELS = ("T", "device")


@dataclass(frozen=True)
class SoftToken:
    module: str
    label: str
    pin_file: Path
    conf: Path


_made: dict[str, Path] = {}


def _conf(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    module = next((p for p in MODULE_PATHS if Path(p).is_file()), None)
    util = shutil.which("softhsm2-util")
    if module is None or util is None:
        pytest.skip("SoftHSM2 is not installed (apt-get install softhsm2)")
    if "conf" not in _made:
        folder = tmp_path_factory.mktemp("softhsm")
        (folder / "tokens").mkdir()
        conf = folder / "softhsm2.conf"
        conf.write_text(
            f"directories.tokendir = {folder / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
        )
        for label in TOKEN_LABELS:
            made = subprocess.run(
                [util, "--init-token", "--free", "--label", label, "--pin", PIN, "--so-pin", SO_PIN],
                capture_output=True,
                text=True,
                timeout=60,
                env={**os.environ, "SOFTHSM2_CONF": str(conf)},
            )
            assert made.returncode == 0, made.stderr
            pin_file = folder / f"{label}.pin"
            pin_file.write_text(PIN + "\n")
            pin_file.chmod(0o600)
        _made["conf"] = conf
    return module, _made["conf"]


@contextmanager
def soft_token(tmp_path_factory: pytest.TempPathFactory, label: str) -> Iterator[SoftToken]:
    """The token ``label`` (one of TOKEN_LABELS), with SOFTHSM2_CONF set meanwhile."""
    assert label in TOKEN_LABELS, f"add {label!r} to TOKEN_LABELS"
    module, conf = _conf(tmp_path_factory)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SOFTHSM2_CONF", str(conf))
        yield SoftToken(module, label, conf.parent / f"{label}.pin", conf)
