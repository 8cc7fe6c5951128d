"""The service's own pages and the browser client, served from telephony/static (no build step)."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC = Path(__file__).resolve().parent.parent / "static"
PAGES = {"/": "index.html", "/calls": "calls.html", "/calls/{call_id}": "call.html",
         # The softphone client where the README's snippet imports it from (also under /static/).
         "/telephony-client.js": "telephony-client.js"}


def add_routes(app: web.Application) -> None:
    if not STATIC.is_dir():  # a build without the static files still serves the API
        return
    for path, name in PAGES.items():
        app.router.add_get(path, _page(STATIC / name))
    app.router.add_static("/static/", STATIC, show_index=False, follow_symlinks=False)


def _page(file: Path):
    async def handler(request: web.Request) -> web.FileResponse:
        # Pages are shells; their data comes from the API with the user's token.
        return web.FileResponse(file, headers={"Cache-Control": "no-cache"})  # type from the suffix

    return handler
