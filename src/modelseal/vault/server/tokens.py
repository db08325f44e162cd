"""API tokens after creation: list them (metadata only), revoke one by accessor, note their last use.

A token is shown once, when it is made; from then on it is named by its accessor (16 hex digits,
public, the name the audit uses). Authentication reads the token's row on every request, with no
cache, and revocation is one write transaction together with its audit record: a revoked token is
refused from the commit on. An admin cannot revoke the last unrevoked admin token of a domain,
because no route makes an admin without one: the domain would be locked out for good.

``last_used`` costs a write, so it is written at most once a minute per token and process: it
says "used around then", which is what an operator deciding to revoke a stale token needs.
"""

# No `from __future__ import annotations`: FastAPI must evaluate the routes' annotations, which
# name the local `caller`.
import contextlib
import re
import threading
import time
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..errors import KeyServiceError, NotFound
from .callers import Principal
from .schema import Token, TokenUsage, now
from .store import Store

ACCESSOR = re.compile(r"[0-9a-f]{16}")
LIST_ROLES = ("admin", "auditor")
TOUCH_INTERVAL = 60.0
MAX_TRACKED = 10_000


def check_accessor(accessor: str) -> None:
    # Never echoed: a token pasted where an accessor belongs must not reach an error or the audit.
    if not ACCESSOR.fullmatch(accessor):
        raise KeyServiceError(
            "not a token accessor (16 hex digits; `modelseal vault token list` shows them)",
            code="invalid_accessor",
        )


def _meta(token: Token, usage: TokenUsage | None) -> dict[str, Any]:
    return {
        "accessor": token.accessor,
        "role": token.role,
        "name": token.display_name,
        "created": token.created,
        "last_used": usage.last_used if usage else None,
        "revoked": token.revoked,
        "revoked_at": usage.revoked_at if usage else None,
    }


def _usage(session: Session, token_id: int) -> TokenUsage:
    """The token's usage row, made when first needed (callers hold the write lock: no race)."""
    usage = session.get(TokenUsage, token_id)
    if usage is None:
        usage = TokenUsage(token_id=token_id)
        session.add(usage)
    return usage


class TokenStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._touched: dict[str, float] = {}
        self._lock = threading.Lock()

    def touch(self, who: Principal) -> None:
        """Note that ``who``'s token was used (best effort: a failed note never fails a request)."""
        moment = time.monotonic()
        with self._lock:
            last = self._touched.get(who.accessor)
            if last is not None and moment - last < TOUCH_INTERVAL:
                return
            if len(self._touched) >= MAX_TRACKED:
                self._touched.clear()
            self._touched[who.accessor] = moment
        with contextlib.suppress(Exception), self.store.write_session() as session:
            token_id = session.execute(select(Token.id).where(Token.accessor == who.accessor)).scalar()
            if token_id is not None:
                _usage(session, token_id).last_used = now()

    def list_tokens(self, who: Principal) -> list[dict[str, Any]]:
        def run(session: Session) -> list[dict[str, Any]]:
            rows = session.execute(
                select(Token, TokenUsage)
                .outerjoin(TokenUsage, TokenUsage.token_id == Token.id)
                .where(Token.domain_id == who.domain_id)
                .order_by(Token.id)
            ).all()
            found = [_meta(token, usage) for token, usage in rows]
            self.store.audit.record(session, who.domain, "token.list", who.accessor)
            return found

        return self.store.operation(who, "token.list", "", run)

    def revoke(self, who: Principal, accessor: str) -> dict[str, Any]:
        check_accessor(accessor)

        def run(session: Session) -> dict[str, Any]:
            token = session.execute(
                select(Token).where(Token.accessor == accessor, Token.domain_id == who.domain_id)
            ).scalar()
            if token is None:
                raise NotFound(f"no token with accessor {accessor} in domain {who.domain!r}")
            was_revoked = token.revoked
            if not was_revoked:
                if token.role == "admin":
                    # Write transactions are serialised (store.py), so two admins revoking each
                    # other's tokens at once cannot both pass this count.
                    others = session.execute(
                        select(func.count())
                        .select_from(Token)
                        .where(
                            Token.domain_id == who.domain_id,
                            Token.role == "admin",
                            Token.revoked.is_(False),
                            Token.id != token.id,
                        )
                    ).scalar_one()
                    if others == 0:
                        raise KeyServiceError(
                            f"cannot revoke the last admin token of domain {who.domain!r}: "
                            "create another admin token first",
                            code="last_admin",
                            status=409,
                        )
                token.revoked = True
                _usage(session, token.id).revoked_at = now()
                session.flush()
            self.store.audit.record(
                session,
                who.domain,
                "token.revoke",
                who.accessor,
                token_accessor=accessor,
                role=token.role,
                already_revoked=was_revoked,
            )
            return _meta(token, session.get(TokenUsage, token.id))

        return self.store.operation(who, "token.revoke", accessor, run)
