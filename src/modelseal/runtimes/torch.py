"""PyTorch: ``torch.load`` a sealed checkpoint, always with ``weights_only=True``.

    from modelseal.runtimes.torch import load_state_dict
    load_state_dict(net, "weights.mseal", modelseal.MEK(mek))

torch reads the checkpoint through a seekable file object over the decrypted mapping, so the file is
never copied whole: each tensor's bytes go once from the mapping into its own storage, as they
would from a file. The plaintext mapping is zeroized before this returns; the tensors are ordinary
torch tensors owning their memory. ``weights_only`` is not optional: unpickling arbitrary objects
from a model file would let whoever made it run code. Install with ``pip install 'modelseal[torch]'``.
"""

from __future__ import annotations

import os
import pickle  # only for its exception type: torch does the (weights-only) unpickling
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..errors import FormatError, RuntimeUnavailableError
from ..opening import Identities
from ..opening import open as open_sealed
from ._common import ViewReader, pick

if TYPE_CHECKING:
    import torch as torch_types

__all__ = ["load", "load_state_dict"]

_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise RuntimeUnavailableError("torch", "torch") from None
    return torch


def load(
    path: str | os.PathLike[str],
    identity: Identities,
    *,
    signer: Ed25519PublicKey | None = None,
    name: str | None = None,
    map_location: Any = "cpu",
) -> Any:
    """``torch.load(..., weights_only=True)`` of the sealed file (``name`` picks one in a folder)."""
    torch = _torch()
    with open_sealed(path, identity, signer=signer) as sealed:
        chosen = pick(sealed.entries(), _SUFFIXES, name, "checkpoint")
        with ViewReader(sealed.read(chosen)) as f:
            try:
                return torch.load(f, map_location=map_location, weights_only=True)
            except pickle.UnpicklingError as e:
                # torch's message spans a page of advice; the first line says what was refused.
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise FormatError(f"{chosen} is not a weights-only torch checkpoint: {first}") from e


def load_state_dict(
    module: torch_types.nn.Module,
    path: str | os.PathLike[str],
    identity: Identities,
    *,
    signer: Ed25519PublicKey | None = None,
    name: str | None = None,
    strict: bool = True,
    assign: bool = False,
    map_location: Any = "cpu",
) -> Any:
    """Load a sealed state dict into ``module``; returns torch's (missing_keys, unexpected_keys)."""
    state = load(path, identity, signer=signer, name=name, map_location=map_location)
    if not isinstance(state, Mapping):
        raise FormatError(f"the sealed checkpoint holds a {type(state).__name__}, not a state dict")
    return module.load_state_dict(state, strict=strict, assign=assign)
