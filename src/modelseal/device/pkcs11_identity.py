"""A card's Ed25519 identity key kept in a PKCS#11 token: it signs reports and never leaves the token.

`modelseal device keygen --pkcs11-module SO --pkcs11-token T --pin-file F --key-label L --pub-out
DEV.pub` has the token generate the pair (CKM_EC_EDWARDS_KEY_PAIR_GEN on edwards25519; the private
half CKA_TOKEN, CKA_SENSITIVE, not CKA_EXTRACTABLE) and writes the public half in the form
`device verify --device-pub` and `vault device enroll --device-pub` read. `device serve` with the
same flags signs every report inside the token with CKM_EDDSA (pure Ed25519, no context), so a
report verifies exactly as one signed by a key file. Tested with SoftHSM2 (2.5+ built with EdDSA).

The PIN comes from a file only (modelseal.pkcs11util); errors are one line and never carry it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from contextlib import ExitStack, suppress
from types import TracebackType
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .. import pkcs11util
from ..pkcs11util import TokenError

if TYPE_CHECKING:
    from pkcs11 import Key, ObjectClass, PrivateKey, PublicKey, Session

# CKA_EC_PARAMS of edwards25519: the DER OID 1.3.101.112 (RFC 8410), and the PrintableString
# "edwards25519" that PKCS#11 3.0 also allows (SoftHSM2 reports the private key's params that way).
ED25519_OID_PARAMS = bytes.fromhex("06032b6570")
ED25519_NAME_PARAMS = b"\x13\x0cedwards25519"
_KEY_ID_SIZE = 16
_SELF_TEST = b"modelseal/v1 device identity key self-test\x00"


def _where(token: str, label: str) -> str:
    return f"PKCS#11 key {label!r} in token {token!r}"


def _public_key(public: PublicKey, token: str, label: str) -> Ed25519PublicKey:
    """The raw 32-byte point of an edwards25519 public key object (DER OCTET STRING or raw)."""
    from pkcs11 import Attribute
    from pkcs11 import exceptions as p11

    try:
        params = public[Attribute.EC_PARAMS]
        point = public[Attribute.EC_POINT]
    except p11.PKCS11Error as e:
        raise TokenError(f"{_where(token, label)}: cannot read its public key ({type(e).__name__})") from None
    if params not in (ED25519_OID_PARAMS, ED25519_NAME_PARAMS):
        raise TokenError(f"{_where(token, label)} is not on edwards25519 (an Ed448 key?): not an Ed25519 key")
    if len(point) == 34 and point[:2] == b"\x04\x20":
        point = point[2:]
    if len(point) != 32:
        raise TokenError(f"{_where(token, label)} has a {len(point)}-byte public point: not an Ed25519 key")
    try:
        return Ed25519PublicKey.from_public_bytes(bytes(point))
    except ValueError:
        raise TokenError(f"{_where(token, label)} has a malformed public point") from None


def _check_stays_in_token(private: PrivateKey, token: str, label: str) -> None:
    from pkcs11 import Attribute

    if private[Attribute.EXTRACTABLE] or not private[Attribute.SENSITIVE]:
        raise TokenError(
            f"{_where(token, label)} is extractable or not sensitive: an identity key must stay in the token"
        )


def _sign(private: PrivateKey, data: bytes, token: str, label: str) -> bytes:
    from pkcs11 import Mechanism
    from pkcs11 import exceptions as p11
    from pkcs11.types import SignMixin

    if not isinstance(private, SignMixin):
        raise TokenError(f"{_where(token, label)} cannot sign")
    try:
        signature = private.sign(data, mechanism=Mechanism.EDDSA)
    except p11.MechanismInvalid:
        raise TokenError(f"token {token!r} does not support Ed25519 signatures (CKM_EDDSA)") from None
    except p11.PKCS11Error as e:
        raise TokenError(f"{_where(token, label)} could not sign ({type(e).__name__})") from None
    return bytes(signature)


def _self_test(private: PrivateKey, public: Ed25519PublicKey, token: str, label: str) -> None:
    """A fresh message signed in the token must verify as pure Ed25519 with the public half."""
    message = _SELF_TEST + os.urandom(32)
    try:
        public.verify(_sign(private, message, token, label), message)
    except InvalidSignature:
        raise TokenError(
            f"{_where(token, label)}: its signature does not verify with its public key "
            "(not pure Ed25519, or the public key object belongs to another key)"
        ) from None


def generate_token_key(
    module: str,
    token: str,
    pin_file: str | os.PathLike[str],
    label: str,
    *,
    publish: Callable[[Ed25519PublicKey], None] | None = None,
) -> Ed25519PublicKey:
    """Generate an Ed25519 pair in the token under ``label`` (never replacing anything labelled so).

    ``publish`` (e.g. writing DEV.pub) runs before the session closes; if it or any check fails
    the new pair is destroyed, so a failed keygen leaves neither a key nor a label behind.
    """
    pkcs11util.require("vault")
    from pkcs11 import Attribute, KeyType, MechanismFlag
    from pkcs11 import exceptions as p11

    pkcs11util.check_label("--pkcs11-token", token)
    pkcs11util.check_label("--key-label", label)
    pin = pkcs11util.read_pin(pin_file)
    with pkcs11util.open_session(module, token, pin, rw=True) as session:
        if any(session.get_objects({Attribute.LABEL: label})):
            raise TokenError(
                f"token {token!r} already holds an object labelled {label!r}: choose another --key-label"
            )
        try:
            public, private = session.generate_keypair(
                KeyType.EC_EDWARDS,
                id=os.urandom(_KEY_ID_SIZE),
                label=label,
                store=True,
                capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
                public_template={Attribute.EC_PARAMS: ED25519_OID_PARAMS, Attribute.TOKEN: True},
                private_template={
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: True,
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                    Attribute.SIGN: True,
                    Attribute.DECRYPT: False,
                    Attribute.UNWRAP: False,
                    Attribute.DERIVE: False,
                },
            )
        except (p11.MechanismInvalid, p11.TemplateInconsistent, p11.AttributeValueInvalid):
            raise TokenError(
                f"token {token!r} cannot generate Ed25519 keys (CKM_EC_EDWARDS_KEY_PAIR_GEN on edwards25519)"
            ) from None
        except p11.PKCS11Error as e:
            raise TokenError(
                f"token {token!r} could not generate an Ed25519 key ({type(e).__name__})"
            ) from None
        try:
            # A token that silently ignored the template would leave an exportable identity.
            _check_stays_in_token(private, token, label)
            key = _public_key(public, token, label)
            _self_test(private, key, token, label)
            if publish is not None:
                publish(key)
        except BaseException as e:
            for obj in (private, public):
                with suppress(p11.PKCS11Error):
                    obj.destroy()
            if isinstance(e, p11.PKCS11Error):
                raise TokenError(
                    f"{_where(token, label)}: the token failed ({type(e).__name__}); the new key was removed"
                ) from None
            raise
    return key


class TokenIdentityKey:
    """A card identity key in a token: ``sign`` runs CKM_EDDSA inside it (a ``device.IdentityKey``).

    Keeps one logged-in session open until :meth:`close` (or the ``with`` block ends); signing is
    serialized, since a PKCS#11 session runs one operation at a time.
    """

    def __init__(
        self, stack: ExitStack, private: PrivateKey, public: Ed25519PublicKey, token: str, label: str
    ) -> None:
        self._stack = stack
        self._private: PrivateKey | None = private
        self._public = public
        self.token = token
        self.label = label
        self._lock = threading.Lock()

    @classmethod
    def open(cls, module: str, token: str, pin_file: str | os.PathLike[str], label: str) -> TokenIdentityKey:
        """Find the pair labelled ``label``, check it is a sensitive Ed25519 key, and self-test it."""
        pkcs11util.require("vault")
        from pkcs11 import KeyType, ObjectClass
        from pkcs11 import PrivateKey as P11PrivateKey
        from pkcs11 import PublicKey as P11PublicKey
        from pkcs11 import exceptions as p11

        pkcs11util.check_label("--pkcs11-token", token)
        pkcs11util.check_label("--key-label", label)
        pin = pkcs11util.read_pin(pin_file)
        with ExitStack() as stack:
            session = stack.enter_context(pkcs11util.open_session(module, token, pin, rw=False))
            try:
                private = _find(session, ObjectClass.PRIVATE_KEY, token, label)
                if not isinstance(private, P11PrivateKey):  # pragma: no cover - python-pkcs11 maps classes
                    raise TokenError(f"{_where(token, label)} is not a private key")
                if private.key_type != KeyType.EC_EDWARDS:
                    raise TokenError(
                        f"{_where(token, label)} is not an Ed25519 key (its type is {private.key_type.name}; "
                        "make one with `modelseal device keygen`)"
                    )
                _check_stays_in_token(private, token, label)
                public_object = _find(session, ObjectClass.PUBLIC_KEY, token, label)
                if not isinstance(public_object, P11PublicKey):  # pragma: no cover
                    raise TokenError(f"{_where(token, label)} has no public key object")
                public = _public_key(public_object, token, label)
                _self_test(private, public, token, label)
            except p11.PKCS11Error as e:
                raise TokenError(f"{_where(token, label)}: the token failed ({type(e).__name__})") from None
            key = cls(stack.pop_all(), private, public, token, label)
        return key

    def sign(self, data: bytes) -> bytes:
        with self._lock:
            if self._private is None:
                raise TokenError(f"{_where(self.token, self.label)}: its session is closed")
            return _sign(self._private, data, self.token, self.label)

    def public_key(self) -> Ed25519PublicKey:
        return self._public

    def close(self) -> None:
        with self._lock:
            self._private = None
            self._stack.close()

    def __enter__(self) -> TokenIdentityKey:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _find(session: Session, object_class: ObjectClass, token: str, label: str) -> Key:
    """The one key of ``object_class`` labelled ``label``; else say what the label names instead."""
    from pkcs11 import Attribute
    from pkcs11 import exceptions as p11

    kind = object_class.name.lower().replace("_", " ")
    try:
        return session.get_key(object_class=object_class, label=label)
    except p11.MultipleObjectsReturned:
        raise TokenError(f"token {token!r} holds several {kind}s labelled {label!r}") from None
    except p11.NoSuchKey:
        pass
    others = [obj.object_class for obj in session.get_objects({Attribute.LABEL: label})]
    if others:
        found = others[0].name.lower().replace("_", " ") if others[0] is not None else "object"
        raise TokenError(
            f"{_where(token, label)} is a {found}, not an Ed25519 key pair "
            "(make one with `modelseal device keygen`)"
        )
    raise TokenError(f"token {token!r} holds no {kind} labelled {label!r} (wrong token or --key-label)")
