"""The only place the client reads environment variables.

``MEGALOAD_TOKEN``  bearer token, used when no ``token`` argument is given.
``MEGALOAD_URL``    service URL when none is given, for the command line and the SDK alike
                   (``Client()``, ``AsyncClient()``): :func:`resolve_url`.
"""

from __future__ import annotations

import os

__all__ = ["DEFAULT_URL", "TOKEN_ENV", "URL_ENV", "resolve_token", "resolve_url"]

DEFAULT_URL = "http://127.0.0.1:8000"
TOKEN_ENV = "MEGALOAD_TOKEN"
URL_ENV = "MEGALOAD_URL"


def resolve_token(token: str | None) -> str | None:
    """``token`` if given, else ``$MEGALOAD_TOKEN``; an empty value means no token."""
    value = token if token is not None else os.environ.get(TOKEN_ENV)
    return value or None


def resolve_url(url: str | None) -> str:
    """``url`` if given, else ``$MEGALOAD_URL``, else :data:`DEFAULT_URL`."""
    return url or os.environ.get(URL_ENV) or DEFAULT_URL
