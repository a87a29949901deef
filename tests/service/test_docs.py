"""/docs and /redoc load nothing from outside: their assets are served by the service."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from service.main import create_app
from service.settings import Settings

_REMOTE = re.compile(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", re.IGNORECASE)


def test_the_docs_pages_reference_no_remote_host(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        for page in ("/docs", "/redoc"):
            response = client.get(page)
            assert response.status_code == 200
            html = response.text
            assert "http://" not in html and "https://" not in html, page
            assert not _REMOTE.search(html), _REMOTE.search(html)
            assets = re.findall(r'(?:src|href)="([^"]+)"', html)
            assert assets, page
            for asset in assets:
                assert asset.startswith("/docs/static/"), asset
                served = client.get(asset)
                assert served.status_code == 200 and len(served.content) > 1000, asset
        assert client.get("/docs/oauth2-redirect").status_code == 200
        assert client.get("/openapi.json").status_code == 200
