"""rewrap(): change who can open a sealed model, touching the header only (never re-encrypting)."""

from __future__ import annotations

import hmac
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .envelope import assemble, unlock
from .errors import UsageError
from .format.header import DEFAULT_HEADER_ROOM, Stanza, header_length_for
from .inspection import stanza_label
from .keyfiles import X25519_PREFIX, parse_recipient
from .opening import Identities, open_sealed_file, read_header
from .progress import Progress, no_progress
from .recipients import MEK, Recipient
from .rewriting import write_in_place, write_new_file


@dataclass(frozen=True)
class RewrapResult:
    path: Path
    recipients: list[str]
    header_length: int
    in_place: bool


def _removal_matcher(spec: str) -> Recipient | str:
    return parse_recipient(spec) if spec.startswith(X25519_PREFIX) else spec


def _matches(stanza: Stanza, spec: Recipient | str) -> bool:
    if isinstance(spec, str):
        return spec in (stanza_label(stanza), stanza.type)
    return spec.matches(stanza)


def select_stanzas(stanzas: Sequence[Stanza], remove: Sequence[str]) -> list[Stanza]:
    """Drop the stanzas named by ``remove`` (labels, types or recipient strings); each must match one."""
    kept = list(stanzas)
    for spec in remove:
        matcher = _removal_matcher(spec)
        remaining = [s for s in kept if not _matches(s, matcher)]
        if len(remaining) == len(kept):
            raise UsageError(f"no recipient of this model matches {spec!r} (see `modelseal inspect`)")
        kept = remaining
    return kept


def rewrap(
    path: str | os.PathLike[str],
    identity: Identities,
    *,
    add: Sequence[Recipient] = (),
    remove: Sequence[str] = (),
    out: str | os.PathLike[str] | None = None,
    in_place: bool = False,
    header_room: int = DEFAULT_HEADER_ROOM,
    overwrite: bool = False,
    progress: Progress = no_progress,
) -> RewrapResult:
    """Add and remove recipients. The payload, its MAC'd core and the owner signature are unchanged."""
    if (out is None) == (not in_place):
        raise UsageError("rewrap needs exactly one of an output path or in-place mode")
    with open_sealed_file(path) as f:
        old = read_header(f)
    unlocked = unlock(old, identity)
    stanzas = select_stanzas(old.stanzas, remove)
    stanzas += [s for r in add for s in r.wrap(unlocked.file_key)]
    if sum(s.type == "scrypt" for s in stanzas) > 1:
        raise UsageError(
            "a sealed model may hold only one passphrase: remove the old one (--remove-recipient scrypt)"
        )
    if not stanzas and not _is_a_given_mek(unlocked.file_key, identity):
        raise UsageError("this would leave no recipient able to open the model")
    new = assemble(unlocked.file_key, old.core, stanzas, old.header_length, old.signature)
    if in_place:
        write_in_place(path, old, new)
        target = Path(path)
    else:
        assert out is not None
        if new.used_length > new.header_length:
            grown = header_length_for(new.used_length, header_room)
            new = assemble(unlocked.file_key, old.core, stanzas, grown, old.signature)
        write_new_file(path, old, new, out, overwrite=overwrite, progress=progress)
        target = Path(out)
    return RewrapResult(target, [stanza_label(s) for s in new.stanzas], new.header_length, in_place)


def _is_a_given_mek(file_key: bytes, identity: Identities) -> bool:
    """True if the file key is one of the MEK files given, which open the model with no stanza at all."""
    items = identity if isinstance(identity, Sequence) else [identity]
    return any(isinstance(i, MEK) and hmac.compare_digest(i.key, file_key) for i in items)
