"""The trace viewer: ``GET /ui`` serves the page in ``gateway/static`` (plain HTML, CSS and
JavaScript, nothing fetched from elsewhere: it works offline). The page itself calls the API
(/v1/reason with ``stream: true``, /v1/traces/{id}) with the API key typed into it; the static
files are public, as they hold nothing but the page."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse

from shared.errors import NotFound

STATIC_DIR = Path(__file__).parent / "static"
_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}
_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


def ui_files() -> dict[str, Path]:
    """The page's files by name."""
    return {p.name: p for p in sorted(STATIC_DIR.iterdir()) if p.suffix in _TYPES}


def ui_paths() -> frozenset[str]:
    """The paths the page is served under (public: no API key needed to load it)."""
    return frozenset({"/ui", "/ui/"} | {f"/ui/{name}" for name in ui_files()})


def install_ui(app: FastAPI) -> None:
    files = ui_files()

    def send(name: str) -> FileResponse:
        path = files.get(name)
        if path is None:
            raise NotFound(f"no file {name!r} in the page", field="name")
        return FileResponse(path, media_type=_TYPES[path.suffix], headers=_HEADERS)

    @app.get("/ui", include_in_schema=False)
    @app.get("/ui/", include_in_schema=False)
    async def page() -> FileResponse:
        return send("index.html")

    @app.get("/ui/{name}", include_in_schema=False)
    async def asset(name: str) -> FileResponse:
        return send(name)
