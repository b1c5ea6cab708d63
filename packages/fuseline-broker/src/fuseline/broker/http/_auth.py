"""Bearer tokens and the two roles they grant.

Workers hold worker tokens: they register, claim steps, report and send
heartbeats. Applications and operators hold client tokens: they dispatch,
read and cancel runs. Either role may list workflows and workers. A token
listed under both roles has both.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from enum import StrEnum

from fuseline.errors import AuthenticationError, PermissionDeniedError

__all__ = ["ANY_ROLE", "CLIENT", "WORKER", "Role", "TokenCheck"]


class Role(StrEnum):
    """What a token may do."""

    WORKER = "worker"
    CLIENT = "client"


WORKER = frozenset({Role.WORKER})
CLIENT = frozenset({Role.CLIENT})
ANY_ROLE = frozenset({Role.WORKER, Role.CLIENT})

_WHAT_ROLE_DOES = {
    Role.WORKER: "worker routes (register, claim, report, heartbeat)",
    Role.CLIENT: "application routes (dispatch, runs, cancel)",
}


_MAX_REMEMBERED = 256


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenCheck:
    """Decides which roles a request's ``Authorization`` header grants.

    With no token configured at all, every request has every role (the
    server then listens on loopback only unless told otherwise).
    """

    def __init__(self, worker_tokens: Iterable[str], client_tokens: Iterable[str]) -> None:
        # Only digests are kept, and compared in constant time, so neither
        # the tokens' contents nor their lengths leak through timing.
        self._tokens: list[tuple[bytes, Role]] = [
            (_digest(t), Role.WORKER) for t in worker_tokens
        ] + [(_digest(t), Role.CLIENT) for t in client_tokens]
        # Header values already found valid, so that a worker's thousandth
        # request costs a dictionary lookup. Only valid values go in, and
        # there are at most a few per token (spelling of "Bearer", spaces).
        self._granted: dict[str, frozenset[Role]] = {}

    @property
    def enabled(self) -> bool:
        """Whether any token is configured."""
        return bool(self._tokens)

    def roles(self, authorization: str | None) -> frozenset[Role]:
        """The roles granted by an ``Authorization`` header value.

        Raises:
            AuthenticationError: Tokens are required and the header holds none
                that is valid.
        """
        if not self._tokens:
            return ANY_ROLE
        if authorization is not None:
            known = self._granted.get(authorization)
            if known is not None:
                return known
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationError(
                "This route needs a token: send the header 'Authorization: Bearer <token>'."
            )
        presented = _digest(token)
        granted = {role for digest, role in self._tokens if hmac.compare_digest(digest, presented)}
        if not granted:
            raise AuthenticationError("The bearer token is not valid for this broker.")
        roles = frozenset(granted)
        if authorization is not None and len(self._granted) < _MAX_REMEMBERED:
            self._granted[authorization] = roles
        return roles

    def require(self, authorization: str | None, allowed: frozenset[Role]) -> None:
        """Check that the header grants one of the ``allowed`` roles.

        Raises:
            AuthenticationError: No valid token.
            PermissionDeniedError: A valid token of another role.
        """
        held = self.roles(authorization)
        if held & allowed:
            return
        needed = " or ".join(sorted(allowed))
        raise PermissionDeniedError(
            f"This route needs a {needed} token; the token sent has the "
            f"{' and '.join(sorted(held))} role, which may use only "
            f"{'; '.join(_WHAT_ROLE_DOES[role] for role in sorted(held))}.",
            details={"required_roles": sorted(allowed), "token_roles": sorted(held)},
        )
