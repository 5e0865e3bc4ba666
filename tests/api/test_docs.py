"""/docs and /redoc are served whole by the app: no CDN, so they work air-gapped."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.services  # real Postgres/Redis (see tests/fixtures/services.py)

# Hosts that serve scripts, styles or fonts to pages: what FastAPI's default pages load.
CDN_HOSTS = ("jsdelivr", "unpkg", "cdnjs", "fonts.googleapis", "fonts.gstatic", "tiangolo")
# src="..." and href="..." in the pages, url: '...' in their inline script, url(...) in CSS
REFERENCES = re.compile(r"""(?:src|href)="([^"]+)"|url:\s*'([^']+)'|url\(["']?([^)"']+)""")


def references(text: str) -> list[str]:
    return [next(group for group in match if group) for match in REFERENCES.findall(text)]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_everything_from_the_app(client, page):
    response = client.get(page)
    assert response.status_code == 200
    html = response.text
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", html), html
    assert 'spec-url="/openapi.json"' in html or "url: '/openapi.json'" in html

    assets = [ref for ref in references(html) if not ref.startswith("data:")]
    assert len(assets) >= 2  # a script and the schema (and for Swagger UI, its stylesheet)
    for asset in (*assets, "/openapi.json"):
        assert asset.startswith("/"), asset  # the app's own, not another host's
        fetched = client.get(asset)
        assert fetched.status_code == 200, asset
        assert len(fetched.content) > 0, asset
        if asset.endswith((".js", ".css")):
            assert not any(host in fetched.text for host in CDN_HOSTS), asset
        if asset.endswith(".css"):
            nested = [ref for ref in references(fetched.text) if not ref.startswith("data:")]
            assert nested == [], nested


def test_swagger_ui_oauth2_redirect_is_served(client):
    assert client.get("/docs/oauth2-redirect").status_code == 200
