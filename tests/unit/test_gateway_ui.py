"""The /ui page as files: served without an API key, self-contained (nothing fetched from
elsewhere: it works offline), and no model text through innerHTML. Its behaviour in a browser
is tested in tests/integration/test_ui_browser.py."""

from __future__ import annotations

import re

import pytest

from gateway.app import create_app
from gateway.settings import GatewaySettings
from gateway.testing import fake_upstreams
from gateway.ui import STATIC_DIR, ui_files

pytestmark = pytest.mark.unit


async def test_the_page_and_its_files_are_served_without_a_key(asgi_client) -> None:  # type: ignore[no-untyped-def]
    app = create_app(GatewaySettings(api_keys="secret"), clients=fake_upstreams())
    async with asgi_client(app) as client:
        page = await client.get("/ui")
        assets = {name: await client.get(f"/ui/{name}") for name in ui_files()}
        missing = await client.get("/ui/nothing.js")
        api = await client.get("/v1/traces/x")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/ui/app.js">' in page.text
    assert {"index.html", "app.js", "style.css"} <= set(assets)
    assert all(r.status_code == 200 for r in assets.values())
    assert assets["app.js"].headers["content-type"].startswith("text/javascript")
    assert missing.status_code in (401, 404)  # not a file of the page: the API's rules apply
    assert api.status_code == 401  # the API still wants the key


def test_the_page_fetches_nothing_from_elsewhere() -> None:
    for path in STATIC_DIR.iterdir():
        text = path.read_text()
        assert not re.search(r"https?://", text), path  # no CDN, no web font
        assert "@import" not in text and "@font-face" not in text, path


def test_the_script_never_writes_html() -> None:
    js = (STATIC_DIR / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in js, sink
