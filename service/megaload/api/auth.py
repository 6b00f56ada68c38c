"""Bearer tokens and what each may do: the operator's token and read-only tokens.

Two scopes::

    read       GET and HEAD on every guarded route, and the routes marked READ_ONLY (a POST
               that changes nothing, such as tokenize): what an inference engine pulling
               weights needs
    operator   everything: loads, evictions, saves, job cancellation, and every read

With no operator token configured nothing is guarded (a loopback-only service). With one,
a guarded request needs ``Authorization: Bearer <token>`` holding the operator token or one
of the read tokens; a read token on a route that needs the operator scope is refused with
403 (``insufficient-scope``), a missing or unknown token with 401.

Every configured token is compared with :func:`hmac.compare_digest` on every check (no early
exit), so the time of a check does not tell which token, or how much of one, was right.

:class:`Authenticator` is used twice per request: by the request middleware, which refuses a
request that carries a body but no valid token *before* the body is read, and by the route
dependency (:func:`require_token`), which decides the scope once the route is known.
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..errors import InsufficientScopeError, UnauthorizedError

__all__ = ["Scope", "Authenticator", "require_token", "READ_ONLY", "READ_METHODS"]

READ_METHODS = frozenset({"GET", "HEAD"})
READ_ONLY = {"x-megaload-scope": "read"}
"""``openapi_extra`` of a non-GET route that readers may call (it changes nothing)."""


class Scope(str, enum.Enum):
    READ = "read"
    OPERATOR = "operator"


class Authenticator:
    """The configured tokens; ``required`` is False when there is no operator token."""

    def __init__(self, operator_token: str | None, read_tokens: Sequence[str] = ()) -> None:
        if read_tokens and operator_token is None:
            raise ValueError("read tokens need an operator token")
        self._operator = operator_token.encode("utf-8") if operator_token is not None else None
        self._readers = tuple(t.encode("utf-8") for t in read_tokens)

    @classmethod
    def from_settings(cls, settings: Any) -> Authenticator:
        return cls(settings.token_value, settings.read_token_values)

    @property
    def required(self) -> bool:
        return self._operator is not None

    @property
    def has_read_tokens(self) -> bool:
        return bool(self._readers)

    def scope_of(self, token: str | bytes | None) -> Scope | None:
        """The scope ``token`` grants, None for no or an unknown token. Constant time in
        which token matches: every configured token is compared."""
        if self._operator is None:
            return Scope.OPERATOR
        if token is None:
            return None
        given = token if isinstance(token, bytes) else token.encode("utf-8", "surrogateescape")
        operator = hmac.compare_digest(given, self._operator)
        reader = False
        for candidate in self._readers:
            reader |= hmac.compare_digest(given, candidate)
        if operator:
            return Scope.OPERATOR
        return Scope.READ if reader else None

    def scope_of_header(self, authorization: bytes | str | None) -> Scope | None:
        """:meth:`scope_of` the token in an ``Authorization`` header value (``Bearer <token>``)."""
        return self.scope_of(bearer_token(authorization))

    def check(self, token: str | None, needed: Scope) -> Scope:
        """The scope granted, or :class:`UnauthorizedError` (401) / :class:`InsufficientScopeError` (403)."""
        granted = self.scope_of(token)
        if granted is None:
            if token is None:
                raise UnauthorizedError("this service requires 'Authorization: Bearer <token>'")
            raise UnauthorizedError("the bearer token is not valid")
        if needed is Scope.OPERATOR and granted is Scope.READ:
            raise InsufficientScopeError(
                "this request needs the operator token; the token given is a read token, which may only "
                "GET and HEAD (and tokenize)",
                scope=Scope.OPERATOR.value,
            )
        return granted


def bearer_token(authorization: bytes | str | None) -> bytes | None:
    """The token of an ``Authorization: Bearer <token>`` header value, or None."""
    if authorization is None:
        return None
    raw = authorization if isinstance(authorization, bytes) else authorization.encode("latin-1", "replace")
    scheme, _, token = raw.strip().partition(b" ")
    if scheme.lower() != b"bearer" or not token.strip():
        return None
    return token.strip()


def needed_scope(request: Request) -> Scope:
    """Read for GET/HEAD and for routes marked :data:`READ_ONLY`, operator otherwise."""
    if request.method in READ_METHODS:
        return Scope.READ
    route = request.scope.get("route")
    extra = getattr(route, "openapi_extra", None) or {}
    return Scope.READ if extra.get("x-megaload-scope") == "read" else Scope.OPERATOR


_bearer = HTTPBearer(
    auto_error=False,
    description="the operator's token (every request) or a read token (GET, HEAD and tokenize)",
)


def get_authenticator(request: Request) -> Authenticator:
    return request.app.state.auth


def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """The dependency of every guarded route (see the module docstring)."""
    auth = get_authenticator(request)
    if not auth.required:
        return
    token = credentials.credentials if credentials is not None else None
    auth.check(token, needed_scope(request))
