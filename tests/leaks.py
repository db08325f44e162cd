"""Finding plaintext where it must not be: does a file contain a slice of a model?"""

from __future__ import annotations

from pathlib import Path


def contains(path: Path, needle: bytes) -> bool:
    """True if ``path`` holds ``needle``, read in 8 MiB blocks (matches across block seams count)."""
    tail = b""
    try:
        with path.open("rb") as f:
            while block := f.read(8 << 20):
                if needle in tail + block:
                    return True
                tail = block[-(len(needle) - 1) :]
    except OSError:
        return False
    return False
