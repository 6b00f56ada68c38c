"""The HTML pages over plain HTTP: ``/`` (the status page) and ``/docs`` / ``/redoc`` (the API
reference) name no outside host, and every asset they reference is served by the service itself
(200, with its type). The browser's view, and the pages behind a token, are in
test_status_page.py."""

from __future__ import annotations

import re

import pytest

_REFERENCE = re.compile(r"""(?:src|href|url)\s*[=:(]\s*["']?([^"' )>]+)""", re.I)


def _references(html: str) -> list[str]:
    return [m.group(1) for m in _REFERENCE.finditer(html)]


def _no_outside_host(html: str) -> None:
    outside = re.findall(r"(?:https?:)?//[A-Za-z0-9.-]+\.[A-Za-z]{2,}", html)
    assert not outside, f"the page names outside hosts: {outside}"


def test_status_page_is_one_self_contained_file(service):
    r = service.client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    html = r.text
    _no_outside_host(html)
    # nothing to fetch but itself: no <script src>, no stylesheet link, the icon inline
    assert not re.search(r"<script[^>]+src=", html) and 'rel="stylesheet"' not in html
    assert [ref for ref in _references(html) if not ref.startswith(("data:", "docs"))] == []
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "'unsafe-inline'" not in csp


@pytest.mark.parametrize("route", ["/docs", "/redoc"])
def test_api_reference_assets_are_served_by_the_service(service, route):
    r = service.client.get(route)
    assert r.status_code == 200
    _no_outside_host(r.text)
    assets = [ref for ref in _references(r.text) if ref.startswith("/docs/assets/")]
    assert any(a.endswith(".js") for a in assets), r.text
    if route == "/docs":
        assert any(a.endswith(".css") for a in assets), r.text
        assert '"validatorUrl": null' in r.text  # Swagger UI would ask validator.swagger.io otherwise
    types = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}
    for asset in assets:
        got = service.client.get(asset)
        assert got.status_code == 200, asset
        assert got.headers["content-type"].startswith(types[asset[asset.rindex("."):]]), asset
        assert len(got.content) > 1000, asset
    assert service.client.get("/openapi.json").status_code == 200


def test_docs_assets_stay_inside_their_directory(service):
    for path in ("/docs/assets/../../pyproject.toml", "/docs/assets/%2e%2e/core.py", "/docs/assets/nope.js"):
        assert service.client.get(path).status_code == 404, path
