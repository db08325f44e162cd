"""The qaic session-key flow: wrap a MEK for device session keys, then swap the wraps into a model.

`wrap_mek` runs where the MEK is (the owner's trusted machine) and writes, per device, the three
files qaic's `replace-mek` expects. `replace_mek` runs anywhere, without the MEK: it replaces the
model's X25519 stanzas with the new ones, whose MACs the MEK holder already computed, and keeps the
header length so the header MAC (which it cannot recompute) stays valid.

Per device folder (see docs/SPEC.md §6):
  MEK.encrypt  the HPKE ciphertext of the MEK (encapsulated key || sealed MEK), the stanza body
  MEK.pub      the device session public key it is wrapped to (32 raw bytes)
  MEK.nonce    the 32-byte stanza MAC made with the MEK (modelseal's wrap needs no separate nonce;
               the file keeps qaic's name so scripts that move the three files keep working)
  MEK.device   the device number (slot) the wrap is for, also in config.json
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from .errors import HeaderRoomError, KeyFileError, UsageError
from .fileio import atomic_write_bytes
from .format.header import MAC_SIZE, MAX_STANZA_BODY, Header, Stanza
from .format.keys import FILE_KEY_SIZES, authenticate_stanza
from .header_auth import VERSION
from .header_rewrite import write_new_file
from .keyfiles import x25519_recipient_string
from .opening import open_sealed_file, read_header
from .progress import Progress, no_progress
from .recipients import MEK, X25519Recipient
from .recipients.mek import STANZA_TYPE as MEK_TYPE
from .recipients.x25519 import ENC_SIZE, MAX_SLOT, check_slot, fingerprint, public_bytes, slot_of
from .recipients.x25519 import STANZA_TYPE as X25519_TYPE

CONFIG_FORMAT = "modelseal-wrapped-mek/1"


@dataclass(frozen=True)
class WrappedMEK:
    device: str | None
    stanza: Stanza
    mek_id: bytes | None = None  # from config.json: lets replace-mek refuse a wrap of another MEK


def device_slots(recipients: Sequence[X25519Recipient]) -> list[X25519Recipient]:
    """Give every session key a device slot: the one its file names, else its position."""
    slotted = [
        r if r.slot is not None else dataclasses.replace(r, slot=str(i)) for i, r in enumerate(recipients)
    ]
    slots = [r.slot for r in slotted]
    if len(set(slots)) != len(slots):
        raise UsageError(f"two session keys claim the same device: {slots}")
    return slotted


def wrap_mek(
    mek: MEK, recipients: Sequence[X25519Recipient], output_dir: str | os.PathLike[str]
) -> list[Path]:
    """Write ``deviceN/{MEK.encrypt,MEK.nonce,MEK.pub,MEK.device}`` and ``config.json`` under ``output_dir``.

    N is the device number the session key file names (``# device: N``), else its position. Files
    already there are replaced: a wrap is no secret (only the session's private key opens it), and
    re-running after a card reset is the flow.
    """
    if not recipients:
        raise UsageError("wrap-mek needs at least one device public key")
    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    folders = []
    devices = []
    for recipient in device_slots(recipients):
        assert recipient.slot is not None
        (stanza,) = recipient.wrap(mek.key)
        stanza = authenticate_stanza(mek.key, stanza)
        folder = root / f"device{recipient.slot}"  # the slot alphabet keeps this inside root
        folder.mkdir(exist_ok=True)
        atomic_write_bytes(folder / "MEK.encrypt", stanza.body, overwrite=True)
        atomic_write_bytes(folder / "MEK.nonce", stanza.mac, overwrite=True)
        atomic_write_bytes(folder / "MEK.pub", public_bytes(recipient.public_key), overwrite=True)
        atomic_write_bytes(folder / "MEK.device", recipient.slot.encode() + b"\n", overwrite=True)
        folders.append(folder)
        devices.append(
            {
                "device": recipient.slot,
                "folder": folder.name,
                "recipient": x25519_recipient_string(recipient),
                "mek_id": mek.key_id.hex(),
            }
        )
    config = {"format": CONFIG_FORMAT, "version": VERSION, "devices": devices}
    atomic_write_bytes(root / "config.json", json.dumps(config, indent=2).encode() + b"\n", overwrite=True)
    return folders


def _read_small(path: Path, limit: int) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise KeyFileError(f"cannot read {path}: {e.strerror}") from None
    if len(data) > limit:
        raise KeyFileError(f"{path} is too large")
    return data


def _load_one(folder: Path, label: str | None, mek_id: bytes | None = None) -> WrappedMEK:
    """One device folder. The slot comes only from MEK.device, written with the MAC that covers it."""
    pub = _read_small(folder / "MEK.pub", 32)
    body = _read_small(folder / "MEK.encrypt", MAX_STANZA_BODY)
    mac = _read_small(folder / "MEK.nonce", MAC_SIZE)
    if len(pub) != 32 or len(mac) != MAC_SIZE or len(body) - ENC_SIZE - 16 not in FILE_KEY_SIZES:
        raise KeyFileError(f"{folder}: MEK.pub, MEK.nonce or MEK.encrypt has the wrong size")
    device = None
    if (folder / "MEK.device").exists():
        device = (
            _read_small(folder / "MEK.device", MAX_SLOT + 1).decode("utf-8", "replace").removesuffix("\n")
        )
        check_slot(device)
    if label is not None and label != device:
        raise KeyFileError(f"{folder}: config.json says device {label!r} but MEK.device says {device!r}")
    X25519PublicKey.from_public_bytes(pub)
    slot = (device.encode(),) if device is not None else ()
    return WrappedMEK(device, Stanza(X25519_TYPE, (fingerprint(pub), *slot), body, mac), mek_id)


def load_wrapped_meks(folders: Sequence[str | os.PathLike[str]]) -> list[WrappedMEK]:
    """Read device folders, or folders written by wrap_mek (with config.json and deviceN/ inside)."""
    found: list[WrappedMEK] = []
    for item in folders:
        folder = Path(item)
        config = folder / "config.json"
        if (folder / "MEK.encrypt").exists():
            found.append(_load_one(folder, None))
        elif config.exists():
            try:
                doc = json.loads(_read_small(config, 1 << 20))
                rows = [
                    (str(d["device"]), str(d["folder"]), bytes.fromhex(d["mek_id"])) for d in doc["devices"]
                ]
            except (ValueError, KeyError, TypeError):
                raise KeyFileError(f"{config} is not a wrap-mek config") from None
            for device, name, mek_id in rows:
                sub = (folder / name).resolve()
                if sub.parent != folder.resolve():
                    raise KeyFileError(f"{config} points outside its folder")
                found.append(_load_one(sub, device, mek_id))
        else:
            raise KeyFileError(f"{folder} holds neither MEK.encrypt nor config.json")
    if not found:
        raise UsageError("no wrapped MEK found")
    return found


def replace_mek(
    encrypted: str | os.PathLike[str],
    wrapped: Sequence[WrappedMEK],
    output_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    progress: Progress = no_progress,
) -> Path:
    """Swap wrapped MEKs into a model, into ``output_dir`` (no MEK needed, no re-encryption).

    Wraps that name their device replace only that device's old wrap (a reset card); the other
    devices keep theirs. If any wrap names no device, every X25519 wrap is replaced.
    """
    with open_sealed_file(encrypted) as f:
        old = read_header(f)
    model_meks = {s.args[0] for s in old.stanzas if s.type == MEK_TYPE and s.args}
    for w in wrapped:
        if w.mek_id is not None and model_meks and w.mek_id not in model_meks:
            raise UsageError(
                f"the wrapped MEK for device {w.device} was made with another MEK (id {w.mek_id.hex()}) "
                f"than this model's ({', '.join(sorted(m.hex() for m in model_meks))})"
            )
    slots = {w.device for w in wrapped}
    fingerprints = {w.stanza.args[0] for w in wrapped}

    def replaced(s: Stanza) -> bool:
        if s.type != X25519_TYPE:
            return False
        return None in slots or slot_of(s) in slots or (bool(s.args) and s.args[0] in fingerprints)

    kept = [s for s in old.stanzas if not replaced(s)]
    new = Header(
        old.version,
        old.header_length,
        old.core,
        old.core_bytes,
        old.mac,
        old.signature,
        kept + [w.stanza for w in wrapped],
    )
    if new.used_length > new.header_length:
        raise HeaderRoomError(
            f"{len(wrapped)} wrapped MEKs need {new.used_length} header bytes but the model reserved "
            f"{old.header_length}; ask the MEK holder to `modelseal rewrap` with more room"
        )
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dst = out_dir / Path(encrypted).name
    write_new_file(encrypted, old, new, dst, overwrite=overwrite, progress=progress)
    return dst
