"""Token scopes: the operator's token allows everything, read tokens GET/HEAD (and what is
marked read-only), anything else is refused; no token configured: nothing is guarded."""

from __future__ import annotations

import pytest

from megaload.api.auth import Authenticator, Scope, bearer_token
from megaload.errors import InsufficientScopeError, UnauthorizedError

OPERATOR, READER, READER2 = "operator-0123456789abcdef", "reader-0123456789abcdef", "reader2-0123456789abcdef"


def test_scopes():
    auth = Authenticator(OPERATOR, [READER, READER2])
    assert auth.required and auth.has_read_tokens
    assert auth.scope_of(OPERATOR) is Scope.OPERATOR
    assert auth.scope_of(READER) is auth.scope_of(READER2.encode()) is Scope.READ
    for wrong in (None, "", READER[:-1], READER + "x", OPERATOR.upper(), "\udcff"):
        assert auth.scope_of(wrong) is None, wrong
    assert auth.check(READER, Scope.READ) is Scope.READ
    assert auth.check(OPERATOR, Scope.OPERATOR) is Scope.OPERATOR
    with pytest.raises(InsufficientScopeError) as info:
        auth.check(READER, Scope.OPERATOR)
    assert info.value.scope == "operator"
    with pytest.raises(UnauthorizedError, match="requires"):
        auth.check(None, Scope.READ)
    with pytest.raises(UnauthorizedError, match="not valid"):
        auth.check("nope-nope-nope-nope", Scope.READ)


def test_no_operator_token_guards_nothing_and_read_tokens_need_one():
    open_ = Authenticator(None)
    assert not open_.required and open_.scope_of(None) is Scope.OPERATOR
    with pytest.raises(ValueError):
        Authenticator(None, [READER])


@pytest.mark.parametrize(
    "header, token",
    [(f"Bearer {READER}", READER.encode()), (f"bearer  {READER} ", READER.encode()), (f"Basic {READER}", None),
     ("Bearer", None), ("Bearer ", None), (None, None), (b"Bearer \xff", b"\xff")],
)
def test_bearer_token(header, token):
    assert bearer_token(header) == token
