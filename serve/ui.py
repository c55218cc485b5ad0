"""What a person opens in a browser: the playground at `GET /` and the API docs at `/docs`.

- `GET /` with `Accept: text/html` (a browser) answers `serve/static/playground.html`, one
  self-contained page (no CDN, no external fonts) that calls `POST /v1/classify` like any
  client. Every other request to `/` (API clients POST JSON; a GET without HTML in its Accept
  still gets the 405 it always got) goes to the API untouched.
- `/docs` is FastAPI's Swagger UI page, with its JavaScript, CSS and icon served by the app
  from the `swagger-ui-bundle-v2` package instead of a CDN, so it renders offline.

These are static documents with no data in them, so they are answered before the API-key
check (`create_api` calls `add_ui_routes` last, which makes this middleware the outermost):
the page asks for the key itself, and the docs were open already. Nothing here touches a
request it does not answer.
"""

from __future__ import annotations

import importlib.resources
import logging
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.responses import FileResponse, HTMLResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from serve.metrics import GRAFANA_DASHBOARD, prometheus_targets

log = logging.getLogger("ray.serve")

PLAYGROUND = importlib.resources.files("serve").joinpath("static", "playground.html")
ROOT_PLACEHOLDER = "__API_ROOT__"


def swagger_dir() -> Path:
    """Swagger UI's dist files, as the `swagger-ui-bundle-v2` distribution ships them."""
    from swagger_ui_bundle import swagger_ui_path

    return Path(str(swagger_ui_path))


# The files the docs page loads; the version is in the URL, so browsers may cache them.
SWAGGER_FILES = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
}


def wants_html(accept: str) -> bool:
    """Whether an Accept header prefers an HTML page to JSON (a browser's navigation does;
    curl's and HTTP libraries' `*/*` does not)."""
    quality: dict[str, float] = {}
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        quality[media.lower()] = max(q, quality.get(media.lower(), 0.0))
    html = quality.get("text/html", 0.0)
    return html > 0 and html >= quality.get("application/json", 0.0)


def _route_path(scope: Scope) -> tuple[str, str]:
    """(the app's route path, the root path before it): under a Serve route prefix the prefix
    arrives as root_path."""
    path, root = scope.get("path", "/"), scope.get("root_path", "").rstrip("/")
    if root and path.startswith(root):
        path = path[len(root) :] or "/"
    return path, root


class BrowserPages:
    """Pure ASGI middleware answering the playground, the docs page and its assets."""

    def __init__(
        self, app: ASGIApp, title: str, openapi_url: str, docs_url: str, swagger: Path | None
    ):
        self.app = app
        self.title = title
        self.openapi_url = openapi_url
        self.docs_url = docs_url
        self.swagger = swagger  # None: leave /docs to FastAPI
        self.assets = f"{docs_url}/assets/{swagger.name}/" if swagger else None
        self.page = PLAYGROUND.read_text(encoding="utf-8")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            response = self.answer(scope)
            if response is not None:
                return await response(scope, receive, send)
        await self.app(scope, receive, send)

    def answer(self, scope: Scope):
        path, root = _route_path(scope)
        if path == "/":
            accept = dict(scope.get("headers") or []).get(b"accept", b"").decode("latin-1")
            if not wants_html(accept):
                return None
            page = self.page.replace(ROOT_PLACEHOLDER, root + "/")
            return HTMLResponse(page, headers={"Vary": "Accept", "Cache-Control": "no-cache"})
        if self.assets is None:
            return None
        if path == self.docs_url:
            return self.docs(root)
        if path.startswith(self.assets):
            name = path[len(self.assets) :]
            media = SWAGGER_FILES.get(name)
            if media is None:
                return None  # the API's own 404
            return FileResponse(
                self.swagger / name,
                media_type=media,
                headers={"Cache-Control": "public, max-age=86400"},
            )
        return None

    def docs(self, root: str) -> HTMLResponse:
        assets = root + str(self.assets)
        return get_swagger_ui_html(
            openapi_url=root + self.openapi_url,
            title=f"{self.title} - Swagger UI",
            swagger_js_url=assets + "swagger-ui-bundle.js",
            swagger_css_url=assets + "swagger-ui.css",
            swagger_favicon_url=assets + "favicon-32x32.png",
            oauth2_redirect_url=root + self.docs_url + "/oauth2-redirect",
            # Swagger UI would otherwise ask validator.swagger.io for a badge.
            swagger_ui_parameters={"validatorUrl": None},
        )


def add_ui_routes(app: FastAPI) -> None:
    """Serve the playground and offline docs from `app`. Call it after every other middleware
    (the API-key check included) has been added, so that these pages answer first."""
    if not (app.docs_url and app.openapi_url):
        raise ValueError("the docs page needs FastAPI's docs_url and openapi_url")
    try:
        swagger: Path | None = swagger_dir()
    except ImportError:
        # A stale environment (pip install not re-run): the API and playground still work.
        swagger = None
        log.warning(
            "swagger-ui-bundle-v2 is not installed: /docs loads Swagger UI from a CDN "
            "(pip install -e . installs it)"
        )
    else:
        # FastAPI's own /docs route points at a CDN; the middleware answers /docs instead.
        routes = app.router.routes
        routes[:] = [r for r in routes if getattr(r, "path", None) != app.docs_url]
    app.add_middleware(
        BrowserPages,
        title=app.title,
        openapi_url=app.openapi_url,
        docs_url=app.docs_url,
        swagger=swagger,
    )


def banner(url: str) -> str:
    """What `zeroshot serve` prints under its URL: the playground and where the metrics are,
    the same scrape URLs as `GET /v1/info` names (each node's metrics agent at its address)."""
    where = ", ".join(prometheus_targets()) or "Ray's metrics agent of each node"
    return (
        f"playground: {url}/ in a browser\n"
        f"metrics: {where}  (Prometheus; series ray_zeroshot_*; dashboard {GRAFANA_DASHBOARD})"
    )
