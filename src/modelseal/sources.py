"""What gets sealed: a file or a folder, read as one stream of aligned files.

Symbolic links to regular files are followed (Hugging Face caches are made of them); any other
kind of entry (socket, device, dangling link) is refused rather than silently skipped.
"""

from __future__ import annotations

import io
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .errors import FormatError, UsageError
from .fileio import readinto_full
from .format.manifest import Manifest, ManifestEntry, layout


@dataclass(frozen=True)
class SourceFile:
    name: str
    path: Path
    size: int
    executable: bool


def collect(src: str | os.PathLike[str]) -> list[SourceFile]:
    root = Path(src)
    try:
        st = root.stat()
    except OSError as e:
        raise UsageError(f"cannot read {root}: {e.strerror}") from None
    if stat.S_ISREG(st.st_mode):
        return [SourceFile(root.name, root, st.st_size, bool(st.st_mode & 0o111))]
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{root} is neither a file nor a folder")
    files = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames) + [d for d in dirnames if Path(dirpath, d).is_symlink()]:
            path = Path(dirpath, name)
            try:
                fst = path.stat()
            except OSError:
                raise UsageError(f"cannot read {path} (dangling link?)") from None
            if stat.S_ISDIR(fst.st_mode):
                raise UsageError(f"{path} links to a folder; links are followed only to files (loops)")
            if not stat.S_ISREG(fst.st_mode):
                raise UsageError(f"{path} is not a regular file; only files can be sealed")
            rel = path.relative_to(root).as_posix()
            files.append(SourceFile(rel, path, fst.st_size, bool(fst.st_mode & 0o111)))
    if not files:
        raise UsageError(f"{root} holds no files to seal")
    files.sort(key=lambda f: f.name)
    return files


def plan(files: list[SourceFile], folder: bool) -> tuple[Manifest, int]:
    entries, payload_length = layout([(f.name, f.size, f.executable) for f in files])
    return Manifest(entries, folder), payload_length


class PlainStream:
    """Reads the payload plaintext in order: each file at its offset, zeros in the alignment gaps."""

    def __init__(self, files: list[SourceFile], entries: list[ManifestEntry]) -> None:
        self._pending = list(zip(files, entries, strict=True))
        self._pos = 0
        self._current: tuple[io.FileIO, ManifestEntry, SourceFile] | None = None

    def fill(self, view: memoryview) -> None:
        done = 0
        while done < len(view):
            if self._current is None:
                source, entry = self._pending[0]
                if self._pos < entry.offset:
                    gap = min(entry.offset - self._pos, len(view) - done)
                    view[done : done + gap] = bytes(gap)
                    done += gap
                    self._pos += gap
                    continue
                self._pending.pop(0)
                self._current = (source.path.open("rb", buffering=0), entry, source)
            f, entry, source = self._current
            take = min(entry.offset + entry.size - self._pos, len(view) - done)
            try:
                readinto_full(f, view[done : done + take])
            except FormatError:
                raise UsageError(f"{source.path} shrank while it was being sealed") from None
            done += take
            self._pos += take
            if self._pos == entry.offset + entry.size:
                grew = f.read(1)
                f.close()
                self._current = None
                if grew:
                    raise UsageError(f"{source.path} grew while it was being sealed")

    def close(self) -> None:
        if self._current is not None:
            self._current[0].close()
            self._current = None
