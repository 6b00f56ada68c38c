"""The HTML pages: the status page at ``/`` and the API reference (``/docs``, ``/redoc``).

``/`` is one self-contained HTML file shipped in the package (``api/static/status.html``: its
style and script inline, no external asset, no build step). The page itself is public; the
data it shows comes from the ``/v1`` routes it fetches (``/v1/info``, ``/v1/models``,
``/v1/jobs``), so the same token rules apply to it as to any other client. Its
Content-Security-Policy allows exactly its own inline style and script (by hash) and requests
to this origin.

``/docs`` (Swagger UI) and ``/redoc`` load their JavaScript and CSS from this service
(``/docs/assets/``, the files the ``fastapi-offline`` package ships), not from a CDN, so they
work on air-gapped clusters.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import lru_cache
from importlib import resources

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["router", "install_docs", "DOCS_ASSETS_PATH", "status_page"]

router = APIRouter(include_in_schema=False)

DOCS_ASSETS_PATH = "/docs/assets"
_DOCS_ASSETS_PACKAGE = ("fastapi_offline", "static")  # swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js
_OAUTH2_REDIRECT = "/docs/oauth2-redirect"
# Swagger UI asks validator.swagger.io for a badge unless told not to: no outside host.
_SWAGGER_PARAMETERS = {"validatorUrl": None}


@lru_cache(maxsize=1)
def status_page() -> tuple[bytes, str]:
    """The status page's bytes and its Content-Security-Policy (hashes of its inline parts)."""
    html = resources.files("megaload.api").joinpath("static", "status.html").read_bytes()
    text = html.decode("utf-8")

    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", text, flags=re.S)
        return " ".join(
            "'sha256-" + base64.b64encode(hashlib.sha256(b.encode("utf-8")).digest()).decode("ascii") + "'"
            for b in blocks
        )

    csp = (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return html, csp


@router.get("/", response_class=HTMLResponse)
async def status() -> HTMLResponse:
    html, csp = status_page()
    return HTMLResponse(
        html,
        headers={"Content-Security-Policy": csp, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )


def install_docs(app: FastAPI) -> None:
    """Serve ``/docs`` and ``/redoc`` with their assets from the package (``app`` built with
    ``docs_url=None, redoc_url=None``)."""
    app.mount(DOCS_ASSETS_PATH, StaticFiles(packages=[_DOCS_ASSETS_PACKAGE]), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - API reference",
            swagger_js_url=f"{root}{DOCS_ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS_PATH}/favicon.png",
            oauth2_redirect_url=f"{root}{_OAUTH2_REDIRECT}",
            swagger_ui_parameters=_SWAGGER_PARAMETERS,
        )

    @app.get(_OAUTH2_REDIRECT, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - API reference",
            redoc_js_url=f"{root}{DOCS_ASSETS_PATH}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS_PATH}/favicon.png",
            with_google_fonts=False,
        )
