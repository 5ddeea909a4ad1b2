"""The chat page's serving (``edge.page``), without a browser: ``GET /`` and ``/static/...``
from the package, their content types and security headers, and what is not served. The page
itself runs in Chromium in ``tests/browser/``."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from fake_upstream import MakeEdge

from edge.page import CONTENT_SECURITY_POLICY, load_static

Client = TestClient[Any, Any]
STATIC = Path(str(resources.files("edge") / "static"))


def csp_directives(value: str) -> dict[str, str]:
    return {
        part.strip().split(" ", 1)[0]: part.strip().partition(" ")[2]
        for part in value.split(";")
        if part.strip()
    }


async def test_the_page_is_served_at_the_root(make_edge: MakeEdge) -> None:
    client = await make_edge()
    response = await client.get("/")
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    text = await response.text()
    assert '<script type="module" src="/static/js/app.js"></script>' in text
    # No inline script or style, no third-party origin: everything is the edge's own.
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text)
    assert "<style" not in text and " style=" not in text and " on" not in text.lower()
    assert "http://" not in text and "https://" not in text and "//cdn" not in text


async def test_every_answer_carries_the_security_headers(make_edge: MakeEdge) -> None:
    client = await make_edge()
    for path in ("/", "/static/js/app.js", "/static/app.css"):
        response = await client.get(path)
        assert response.status == 200, path
        assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert response.headers["X-Frame-Options"] == "DENY"
    directives = csp_directives(CONTENT_SECURITY_POLICY)
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'"  # no 'unsafe-inline', no 'unsafe-eval'
    assert directives["connect-src"] == "'self'"
    assert directives["object-src"] == "'none'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in CONTENT_SECURITY_POLICY


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/static/js/app.js", "text/javascript; charset=utf-8"),
        ("/static/js/markdown.js", "text/javascript; charset=utf-8"),
        ("/static/js/sse.js", "text/javascript; charset=utf-8"),
        ("/static/app.css", "text/css; charset=utf-8"),
        ("/static/favicon.svg", "image/svg+xml"),
        ("/static/index.html", "text/html; charset=utf-8"),
    ],
)
async def test_static_files_and_their_types(
    make_edge: MakeEdge, path: str, content_type: str
) -> None:
    client = await make_edge()
    response = await client.get(path)
    assert response.status == 200
    assert response.headers["Content-Type"] == content_type
    assert await response.read() == (STATIC / path.removeprefix("/static/")).read_bytes()


async def test_revalidation_by_etag(make_edge: MakeEdge) -> None:
    client = await make_edge()
    first = await client.get("/static/js/app.js")
    etag = first.headers["ETag"]
    assert first.headers["Cache-Control"] == "no-cache"
    again = await client.get("/static/js/app.js", headers={"If-None-Match": etag})
    assert again.status == 304
    assert await again.read() == b""
    assert again.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    other = await client.get("/static/js/app.js", headers={"If-None-Match": '"stale"'})
    assert other.status == 200


async def test_head_is_answered(make_edge: MakeEdge) -> None:
    client = await make_edge()
    response = await client.head("/")
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"


@pytest.mark.parametrize(
    "path",
    [
        "/static/",
        "/static/missing.js",
        "/static/../page.py",
        "/static/%2e%2e/page.py",
        "/static/js/../../page.py",
        "/static/..%2fpage.py",
        "/static//etc/passwd",
        "/index.html",
        "/static/js",
    ],
)
async def test_nothing_else_is_served(make_edge: MakeEdge, path: str) -> None:
    client = await make_edge()
    response = await client.get(path)
    assert response.status in (400, 404)
    body = await response.json()
    assert set(body["error"]) >= {"message", "type", "code"}


async def test_other_methods_are_refused(make_edge: MakeEdge) -> None:
    client = await make_edge()
    for path in ("/", "/static/js/app.js"):
        response = await client.post(path, data=b"x")
        assert response.status == 405
        assert (await response.json())["error"]["code"] == "method_not_allowed"


async def test_the_page_works_with_persistence_off(make_edge: MakeEdge) -> None:
    client = await make_edge(persist_transcripts=False)
    response = await client.get("/")
    assert response.status == 200
    # Serving the page starts no session: no cookie until the page calls the API.
    assert "Set-Cookie" not in response.headers


def test_only_known_types_and_no_hidden_files_are_loaded(tmp_path: Path) -> None:
    (tmp_path / "js").mkdir()
    (tmp_path / "js" / "a.js").write_text("export {};")
    (tmp_path / "notes.py").write_text("secret = 1")
    (tmp_path / ".hidden.js").write_text("x")
    (tmp_path / "_draft.css").write_text("x")
    (tmp_path / "LICENSE.txt").write_text("MIT")
    files = load_static(tmp_path)  # type: ignore[arg-type]
    assert sorted(files) == ["LICENSE.txt", "js/a.js"]
    assert files["js/a.js"].content_type == "text/javascript; charset=utf-8"


def test_the_package_ships_the_page() -> None:
    files = load_static()
    assert {"index.html", "app.css", "favicon.svg", "js/app.js", "js/markdown.js"} <= set(files)
    for name in files:
        if name.endswith(".js"):
            text = files[name].body.decode()
            # Model output never becomes HTML: no HTML-parsing sinks in the page's code.
            for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
                assert sink not in text, f"{name} uses {sink}"


def test_the_banner_shows_the_page_on_its_first_line() -> None:
    from edge.__main__ import _format_banner
    from edge.config import EdgeConfig

    first = _format_banner(EdgeConfig(), ["http://127.0.0.1:8080"]).splitlines()[0]
    assert first.startswith("edge listening on http://127.0.0.1:8080 ")
    assert "chat page: http://127.0.0.1:8080/ " in first


async def test_with_edge_api_keys_the_page_is_open_and_the_api_is_not(make_edge: MakeEdge) -> None:
    """The page's files hold no data: they are served without the key (the page asks for it),
    while every API route still wants it."""
    client = await make_edge(edge_api_keys=frozenset({"k1"}))
    for path in ("/", "/static/js/app.js", "/static/js/auth.js", "/static/app.css"):
        response = await client.get(path)
        assert response.status == 200, path
        assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert (await client.head(path)).status == 200, path
    # A file that is not there is still a 404, not a 401: nothing behind /static needs a key.
    assert (await client.get("/static/missing.js")).status == 404
    for method, path in [
        ("GET", "/v1/conversations"),
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),
        ("GET", "/openapi.json"),
        ("GET", "/metrics"),
        ("POST", "/"),  # only GET and HEAD of the page are open
    ]:
        response = await client.request(method, path)
        assert response.status == 401, (method, path)
        assert (await response.json())["error"]["code"] == "invalid_api_key"
    refused = await client.get("/v1/conversations", headers={"Authorization": "Bearer nope"})
    assert refused.status == 401
    allowed = await client.get("/v1/conversations", headers={"Authorization": "Bearer k1"})
    assert allowed.status == 200
