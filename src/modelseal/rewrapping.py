"""rewrap(): change who can open a sealed model, touching the header only (never re-encrypting)."""

from __future__ import annotations

import hmac
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UsageError
from .format.header import DEFAULT_HEADER_ROOM, Stanza, header_length_for
from .header_auth import assemble, unlock
from .header_rewrite import write_in_place, write_new_file
from .inspection import stanza_label
from .keyfiles import X25519_PREFIX, parse_recipient, x25519_recipient_string
from .opening import Identities, open_sealed_file, read_header
from .progress import Progress, no_progress
from .recipients import MEK, Recipient, X25519Recipient
from .recipients.x25519 import slot_of


@dataclass(frozen=True)
class RewrapResult:
    path: Path
    recipients: list[str]
    header_length: int
    in_place: bool
    skipped: list[str] = field(default_factory=list)  # recipients asked for that were already there


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
    replace: bool = False,
    progress: Progress = no_progress,
) -> RewrapResult:
    """Add and remove recipients. The payload, its MAC'd core and the owner signature are unchanged.

    Re-running is safe: a recipient already present (same key, same device slot) is skipped and
    listed in ``skipped``, and an in-place rewrap that changes nothing writes nothing. Another key
    for an occupied device slot (or this key in another slot) is refused unless ``replace``.
    """
    if (out is None) == (not in_place):
        raise UsageError("rewrap needs exactly one of an output path or in-place mode")
    with open_sealed_file(path) as f:
        old = read_header(f)
    unlocked = unlock(old, identity)
    stanzas = select_stanzas(old.stanzas, remove)
    stanzas, skipped = add_recipients(stanzas, add, unlocked.file_key, replace=replace)
    if sum(s.type == "scrypt" for s in stanzas) > 1:
        raise UsageError(
            "a sealed model may hold only one passphrase: remove the old one (--remove-recipient scrypt)"
        )
    if not stanzas and not _is_a_given_mek(unlocked.file_key, identity):
        raise UsageError("this would leave no recipient able to open the model")
    new = assemble(unlocked.file_key, old.core, stanzas, old.header_length, old.signature)
    if in_place:
        if stanzas != old.stanzas:  # a re-run that adds nothing writes nothing
            write_in_place(path, old, new)
        target = Path(path)
    else:
        assert out is not None
        if new.used_length > new.header_length:
            grown = header_length_for(new.used_length, header_room)
            new = assemble(unlocked.file_key, old.core, stanzas, grown, old.signature)
        write_new_file(path, old, new, out, overwrite=overwrite, progress=progress)
        target = Path(out)
    labels = [stanza_label(s) for s in new.stanzas]
    return RewrapResult(target, labels, new.header_length, in_place, [_describe(r) for r in skipped])


def add_recipients(
    stanzas: list[Stanza], add: Sequence[Recipient], file_key: bytes, *, replace: bool = False
) -> tuple[list[Stanza], list[Recipient]]:
    """``stanzas`` plus a wrap for each of ``add`` not already present; and those that were."""
    stanzas, skipped = list(stanzas), list[Recipient]()
    for recipient in add:
        slot = recipient.slot if isinstance(recipient, X25519Recipient) else None
        mine = [s for s in stanzas if recipient.matches(s)]
        if isinstance(recipient, X25519Recipient | MEK) and any(slot_of(s) == slot for s in mine):
            skipped.append(recipient)
            continue
        clashes = [s for s in mine if isinstance(recipient, X25519Recipient)]
        clashes += [s for s in stanzas if slot is not None and slot_of(s) == slot and s not in mine]
        if clashes and not replace:
            raise UsageError(_clash_message(recipient, clashes[0]))
        stanzas = [s for s in stanzas if s not in clashes]
        stanzas += recipient.wrap(file_key)
    return stanzas, skipped


def _clash_message(recipient: Recipient, held: Stanza) -> str:
    if recipient.matches(held):
        return (
            f"{_describe(recipient)} is already a recipient as device {slot_of(held) or '(none)'}: "
            "give --replace to move it"
        )
    return (
        f"device slot {slot_of(held)} already holds another session key ({stanza_label(held)}): "
        "give --replace to swap it, or name this key's device (--device N, or `# device: N` in its file)"
    )


def _describe(recipient: Recipient) -> str:
    if isinstance(recipient, X25519Recipient):
        text = x25519_recipient_string(recipient)
        return f"{text} (device {recipient.slot})" if recipient.slot is not None else text
    return f"mek:{recipient.key_id.hex()}" if isinstance(recipient, MEK) else type(recipient).__name__


def _is_a_given_mek(file_key: bytes, identity: Identities) -> bool:
    """True if the file key is one of the MEK files given, which open the model with no stanza at all."""
    items = identity if isinstance(identity, Sequence) else [identity]
    return any(isinstance(i, MEK) and hmac.compare_digest(i.key, file_key) for i in items)
