"""The web page's routes: ``GET /``, ``/static/...`` (hub/static) and ``/sdk/...`` (sdk_js/src).

The browser test of the page itself is sdk_js/test/browser/page.test.mjs (npm run test:browser).
"""

from __future__ import annotations

import asyncio
import re
import tomllib
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import aiohttp
import pytest
from yarl import URL

from hub.app import SDK_DIR, STATIC_DIR

ROOT = Path(__file__).resolve().parent.parent
IMPORT = re.compile(r"""^\s*(?:import|export)\s[^'"]*?from\s+['"]([^'"]+)['"]""", re.MULTILINE)


async def get(url: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, response.content_type, await response.text()


async def raw_get(base_url: str, path: str) -> tuple[int, bytes]:
    """GET ``path`` byte for byte (no client normalizes ``..`` or percent escapes)."""
    parts = urlsplit(base_url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def test_index_is_the_page(hub) -> None:
    status, content_type, text = await get(hub.url + "/")
    assert status == 200
    assert content_type == "text/html"
    assert text == (STATIC_DIR / "index.html").read_text()
    assert '<script type="module" src="static/app.js"></script>' in text
    assert 'href="static/style.css"' in text


@pytest.mark.parametrize(("name", "content_type"), [("app.js", "javascript"), ("style.css", "text/css"), ("index.html", "text/html")])
async def test_static_files_are_served(hub, name: str, content_type: str) -> None:
    status, served_type, text = await get(f"{hub.url}/static/{name}")
    assert status == 200
    assert content_type in served_type
    assert text == (STATIC_DIR / name).read_text()


async def test_the_pages_module_graph_resolves(hub) -> None:
    """Every module the page imports, transitively, is served as JavaScript from /static or /sdk
    (so the page runs from a checkout without a build step)."""
    assert SDK_DIR == ROOT / "sdk_js" / "src"
    assert (SDK_DIR / "index.js").is_file()
    seen: set[str] = set()
    pending = [hub.url + "/static/app.js"]
    while pending:
        url = pending.pop()
        if url in seen:
            continue
        seen.add(url)
        status, content_type, text = await get(url)
        assert status == 200, url
        assert "javascript" in content_type, (url, content_type)
        for specifier in IMPORT.findall(text):
            assert specifier.startswith((".", "/")), f"{url} imports a bare specifier {specifier!r}"
            pending.append(str(URL(url).join(URL(specifier))))
    assert hub.url + "/sdk/index.js" in seen


@pytest.mark.parametrize("path", [
    "/static/../app.py",
    "/static/%2e%2e/app.py",
    "/static/..%2fapp.py",
    "/static/%2e%2e%2f%2e%2e%2fpyproject.toml",
    "/static/....//app.py",
    "/static//etc/passwd",
    "/static/%2fetc%2fpasswd",
    "/sdk/../../pyproject.toml",
    "/sdk/%2e%2e/%2e%2e/pyproject.toml",
    "/sdk/..%2f..%2fpyproject.toml",
    "/sdk/%2e%2e%5c%2e%2e%5cpyproject.toml",
    "/sdk/../../hub/app.py",
])
async def test_paths_cannot_leave_the_served_directories(hub, path: str) -> None:
    status, body = await raw_get(hub.url, path)
    assert status in (400, 403, 404), (path, status)
    assert b"[project]" not in body and b"root:" not in body and b"create_app" not in body


@pytest.mark.parametrize("path", ["/static/", "/sdk/", "/static", "/static/nope.js", "/sdk/nope.js"])
async def test_no_directory_listings_or_missing_files(hub, path: str) -> None:
    status, _ = await raw_get(hub.url, path)
    assert status in (403, 404)


async def test_other_routes_still_answer(hub) -> None:
    status, _, text = await get(hub.url + "/healthz")
    assert status == 200 and '"ok"' in text


def test_static_files_install_with_the_package() -> None:
    """pyproject's package data for ``hub`` covers every file of hub/static."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["hub"]
    files = [path.relative_to(STATIC_DIR.parent).as_posix() for path in STATIC_DIR.rglob("*") if path.is_file()]
    assert {"static/index.html", "static/app.js", "static/style.css"} <= set(files)
    for name in files:
        assert any(PurePosixPath(name).match(pattern) for pattern in patterns), name
