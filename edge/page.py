"""The chat page: ``GET /`` and ``GET /static/{path}``, static files shipped in the package.

``edge/static/`` holds plain HTML, CSS and JavaScript modules (no build step, no CDN): the page
talks to the edge's own endpoints (``/v1/models``, ``/v1/chat/completions``, the history API)
with the session's HttpOnly ``cf_session_id`` cookie, which it never reads.

The files are read once, when the app is created, into memory: a request never touches the
file system, so no path in a URL can reach anything but those files (``..``, hidden files and
unknown types are simply not there: 404). Every answer carries a strict
``Content-Security-Policy`` (only the edge's own scripts, styles and connections; no inline
script, no ``eval``, no plugins, no framing), ``X-Content-Type-Options: nosniff`` and
``Referrer-Policy: no-referrer``. Files are revalidated by ``ETag`` (``Cache-Control:
no-cache``), so an upgraded edge serves its new page at once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

from aiohttp import web

__all__ = ["CONTENT_SECURITY_POLICY", "PAGE_HEADERS", "StaticFile", "add_page_routes"]

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
# What may be served, by extension; anything else in the directory is not.
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
}
INDEX = "index.html"

_FILES: web.AppKey[dict[str, StaticFile]] = web.AppKey("page_files", dict)


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str


def load_static(root: Traversable | None = None) -> dict[str, StaticFile]:
    """Every servable file under ``root`` (default: the package's ``static``), by its path
    relative to it (``"js/app.js"``)."""
    if root is None:
        root = resources.files("edge") / "static"
    files: dict[str, StaticFile] = {}

    def walk(node: Traversable, prefix: str) -> None:
        for child in node.iterdir():
            if child.name.startswith((".", "_")):
                continue
            name = f"{prefix}{child.name}"
            if child.is_dir():
                walk(child, f"{name}/")
                continue
            suffix = "." + child.name.rpartition(".")[2] if "." in child.name else ""
            content_type = CONTENT_TYPES.get(suffix)
            if content_type is None:
                continue
            body = child.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
            files[name] = StaticFile(body, content_type, etag)

    if root.is_dir():
        walk(root, "")
    return files


def add_page_routes(app: web.Application) -> None:
    """``GET /`` (the page) and ``GET /static/{path}`` (its files); HEAD too."""
    app[_FILES] = load_static()
    app.router.add_get("/", index)
    app.router.add_get("/static/{path:.+}", static_file)


def _serve(request: web.Request, name: str) -> web.Response:
    found = request.app[_FILES].get(name)
    if found is None:
        raise web.HTTPNotFound()  # answered as the edge's JSON 404 by the error middleware
    headers = {**PAGE_HEADERS, "ETag": found.etag}
    if found.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    return web.Response(body=found.body, headers={**headers, "Content-Type": found.content_type})


async def index(request: web.Request) -> web.Response:
    return _serve(request, INDEX)


async def static_file(request: web.Request) -> web.Response:
    return _serve(request, request.match_info["path"])


def openapi_paths() -> dict[str, object]:
    """The page's paths for ``/openapi.json`` (``edge.openapi`` merges them in)."""
    html = {"text/html": {"schema": {"type": "string"}}}
    not_found = {
        "description": "No such file (an OpenAI-shaped JSON error).",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    return {
        "/": {
            "get": {
                "operationId": "page",
                "tags": ["page"],
                "summary": "The chat page (HTML; its scripts and styles under /static)",
                "responses": {
                    "200": {
                        "description": "The page, with a Content-Security-Policy.",
                        "content": html,
                    },
                    "304": {"description": "Not modified (If-None-Match)."},
                },
            }
        },
        "/static/{path}": {
            "parameters": [
                {
                    "name": "path",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string"},
                    "description": "A file of the page (js/app.js, app.css, ...).",
                }
            ],
            "get": {
                "operationId": "pageStatic",
                "tags": ["page"],
                "summary": "A static file of the chat page, shipped in the package",
                "responses": {
                    "200": {
                        "description": "The file, with its content type and the page's headers.",
                        "content": {"*/*": {"schema": {"type": "string"}}},
                    },
                    "304": {"description": "Not modified (If-None-Match)."},
                    "404": not_found,
                },
            },
        },
    }
