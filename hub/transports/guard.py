"""Who may reach the hub from a browser: the ``Host`` and ``Origin`` checks, CORS on ``/v1``,
and JSON-only ``/v1`` POSTs (docs/PROTOCOL.md "Origins and hosts"; issue 11, part 4).

Whatever ``auth.mode`` is, a web page in a visitor's browser must not use a hub it reaches:
one on the visitor's own localhost included. Before any handler runs, :func:`guard_middleware`

1. checks the ``Host`` header against ``auth.allowed_hosts`` (default: the configured listen
   host, the address the connection arrived on, ``localhost``, ``127.0.0.1`` and ``[::1]``, any
   port). A page on ``evil.example`` whose name the attacker re-points at 127.0.0.1 (DNS
   rebinding) sends ``Host: evil.example``: answered 421 on every path, ``/healthz`` too.
2. on ``/ws/stream`` and ``/v1/*``, checks the ``Origin`` header when there is one (browsers
   send it on every WebSocket upgrade and cross-origin request; other clients do not, and
   auth alone decides for them): the hub's own origin (``http://<Host>`` or ``https://<Host>``)
   and the origins of ``auth.allowed_origins`` (exact, or ``https://*.example.com``: one or more
   labels, same scheme and port) pass, any other gets 403 before the upgrade or the handler.
3. answers CORS preflights (``OPTIONS``) on ``/v1/*`` itself, before routing and before auth
   (a browser sends no credential on a preflight), so every ``/v1`` route has CORS, those added
   later included; the preflight allows ``Authorization``, ``Content-Type`` and the headers the
   page asks for in ``Access-Control-Request-Headers`` (what the openai and anthropic browser
   SDKs send: ``x-stainless-*``, ``openai-beta``, ``anthropic-version``,
   ``anthropic-dangerous-direct-browser-access``, ...), each a valid header name, within
   :data:`MAX_REQUEST_HEADERS_CHARS` and :data:`MAX_REQUEST_HEADER_NAMES` (else 400). It adds
   ``Access-Control-Allow-Origin`` for an allowed origin to every ``/v1`` response, SSE streams
   included (the headers are set by :func:`add_cors_headers`, the ``on_response_prepare``
   signal, before they go out).
4. refuses a ``/v1`` POST whose ``Content-Type`` is not ``application/json`` with 415: a form or
   a ``text/plain`` POST is a "simple" cross-site request that a browser sends without a
   preflight, so it must never start a completion.

:func:`install` puts both on an application (one line in :func:`hub.app.create_app`).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

from aiohttp import web

from hub.appkeys import HUB_KEY
from protocol.errors import ErrorCode
from protocol.openai_compat import error_body

if TYPE_CHECKING:
    from hub.config import HubConfig

__all__ = ["add_cors_headers", "allow_headers", "guard_middleware", "host_allowed", "install", "origin_allowed"]

#: Paths whose ``Origin`` is checked: the WebSocket and the OpenAI-compatible API.
WS_PATH = "/ws/stream"
API_PREFIX = "/v1/"

#: Hosts allowed whatever the configuration says when ``auth.allowed_hosts`` is empty.
LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")

#: CORS answers on ``/v1`` (the preflight's headers, its cache time in seconds).
ALLOW_METHODS = "GET, POST, OPTIONS"
ALLOW_HEADERS = "Authorization, Content-Type"
MAX_AGE_S = "600"
#: Response headers a browser app may read besides the safelisted ones (a 429's wait).
EXPOSE_HEADERS = "Retry-After, x-should-retry"
#: Bounds of a preflight's ``Access-Control-Request-Headers``: its length in characters and
#: its number of names (the Python openai 3.63 and anthropic 2.17 SDKs send 11 and 13 names a
#: page would have to ask for; their browser builds about as many).
MAX_REQUEST_HEADERS_CHARS = 2048
MAX_REQUEST_HEADER_NAMES = 64
#: A header name: an RFC 9110 section 5.6.2 token, at most 128 characters.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}")

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _split_authority(authority: str) -> tuple[str, int | None] | None:
    """``host[:port]`` as (lower-case host without a trailing dot, port or None); IPv6 hosts
    keep their brackets. None when it is malformed."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        end = authority.find("]") + 1
        host, rest = authority[:end], authority[end:]
        if not end or (rest and not rest.startswith(":")):
            return None
    else:
        host, colon, port_text = authority.partition(":")
        rest = colon + port_text
        if ":" in port_text:  # a bare IPv6 address is not a valid Host
            return None
    host = host.rstrip(".")
    if not host:
        return None
    if not rest:
        return host, None
    port_text = rest[1:]
    if not port_text.isdigit() or len(port_text) > 5:
        return None
    return host, int(port_text)


def _bracketed(address: str) -> str:
    """An address as it appears in a ``Host`` header (IPv6 in brackets)."""
    return f"[{address}]" if ":" in address and not address.startswith("[") else address.lower()


def _host_matches(pattern: str, host: str) -> bool:
    """``example.com`` matches itself; ``*.example.com`` any name one or more labels under it."""
    if pattern.startswith("*."):
        suffix = pattern[1:]
        return host.endswith(suffix) and len(host) > len(suffix)
    return host == pattern


def host_allowed(host_header: str, config: HubConfig, local_address: str | None) -> bool:
    """Whether a ``Host`` header names this hub.

    Args:
        host_header: the request's ``Host``.
        config: its ``allowed_hosts`` (entries ``name`` for any port, ``name:port``,
            ``*.example.com``, or ``*`` for any host); when empty, the defaults below.
        local_address: the address the connection arrived on (the bound address).

    With an empty ``allowed_hosts``: the listen host, ``local_address``, ``localhost``,
    ``127.0.0.1`` and ``[::1]``, with any port or none. DNS rebinding is stopped by the name
    (the attacker's page sends its own), so the port is not checked: a hub published on another
    port (``docker run -p 8080:8765``) is reached as ``localhost:8080``.
    """
    parsed = _split_authority(host_header)
    if parsed is None:
        return False
    host, host_port = parsed
    if config.allowed_hosts:
        for entry in config.allowed_hosts:
            if entry == "*":
                return True
            wanted = _split_authority(entry)
            if wanted is None:
                continue
            name, wanted_port = wanted
            if _host_matches(name, host) and (wanted_port is None or wanted_port == host_port):
                return True
        return False
    names = {_bracketed(config.host), *LOCAL_HOSTS}
    if local_address:
        names.add(_bracketed(local_address))
    return host in names


def _split_origin(origin: str) -> tuple[str, str, int] | None:
    """``scheme://host[:port]`` as (scheme, host, port with the scheme's default filled in)."""
    scheme, sep, rest = origin.strip().lower().partition("://")
    if not sep or not scheme or "/" in rest or "@" in rest:
        return None
    parsed = _split_authority(rest)
    if parsed is None:
        return None
    host, port = parsed
    if port is None:
        port = _DEFAULT_PORTS.get(scheme)
        if port is None:
            return None
    return scheme, host, port


def origin_allowed(origin: str, host_header: str | None, allowed: Iterable[str]) -> bool:
    """Whether a browser ``Origin`` may use the hub.

    The hub's own origin always may (``http://`` or ``https://`` and the ``Host`` the request
    was sent to: the page at ``/`` and a TLS proxy in front of the hub); so may each entry of
    ``allowed`` (``auth.allowed_origins``): an exact origin, or a pattern such as
    ``https://*.example.com`` that matches one or more labels under the name with the same
    scheme and port; ``*`` lets in every origin of the form ``scheme://host[:port]`` (all
    pages on the web: for a hub whose auth alone decides). ``null`` (sandboxed frames, files)
    only when listed as ``null``, also with ``*``.
    """
    if origin in allowed:
        return True
    parsed = _split_origin(origin)
    if parsed is None:
        return False
    if "*" in allowed:
        return True
    scheme, host, port = parsed
    if host_header is not None and scheme in ("http", "https"):
        own = _split_authority(host_header)
        if own is not None and own[0] == host and (own[1] or _DEFAULT_PORTS[scheme]) == port:
            return True
    for entry in allowed:
        wanted = _split_origin(entry)
        if wanted is not None and wanted[0] == scheme and wanted[2] == port and _host_matches(wanted[1], host):
            return True
    return False


def allow_headers(requested: str | None) -> str | None:
    """The ``Access-Control-Allow-Headers`` of a preflight (docs/PROTOCOL.md "Origins and hosts",
    CORS on ``/v1``).

    Args:
        requested: the preflight's ``Access-Control-Request-Headers`` (comma-separated header
            names, as the Fetch standard has browsers send them: lower case), or None.

    Returns:
        ``Authorization, Content-Type`` followed by every other requested name, in the order
        asked, without repeats (compared case-insensitively); None when ``requested`` is longer
        than :data:`MAX_REQUEST_HEADERS_CHARS`, names more than :data:`MAX_REQUEST_HEADER_NAMES`
        headers, or holds something that is not a header name (the caller refuses it 400).
    """
    names = ALLOW_HEADERS.split(", ")
    if not requested:
        return ALLOW_HEADERS
    if len(requested) > MAX_REQUEST_HEADERS_CHARS:
        return None
    seen = {name.lower() for name in names}
    asked = [part.strip() for part in requested.split(",")]
    if len(asked) > MAX_REQUEST_HEADER_NAMES:
        return None
    for name in asked:
        if not name:
            continue  # "a, , b": empty list elements are allowed (RFC 9110 section 5.6.1)
        if _HEADER_NAME.fullmatch(name) is None:
            return None
        if name.lower() not in seen:
            seen.add(name.lower())
            names.append(name)
    return ", ".join(names)


def _refuse(status: int, code: str, message: str) -> web.Response:
    return web.Response(status=status, body=error_body(code, message, status), content_type="application/json")


def _local_address(request: web.Request) -> str | None:
    """The address the request's connection arrived on (one of the hub's)."""
    transport = request.transport
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    return str(sockname[0]) if isinstance(sockname, tuple) and sockname else None


def _checked_origin(request: web.Request) -> str | None:
    """The request's ``Origin`` on a guarded path when it is allowed, else None."""
    origin = request.headers.get("Origin")
    if origin is None:
        return None
    config: HubConfig = request.app[HUB_KEY].config
    if origin_allowed(origin, request.headers.get("Host"), config.allowed_origins):
        return origin
    return None


@web.middleware
async def guard_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The checks of this module's docstring, in its order, before ``handler`` runs."""
    config: HubConfig = request.app[HUB_KEY].config
    headers = request.headers
    host_header = headers.get("Host")
    # No Host at all is HTTP/1.0 from a non-browser client: a browser always sends one.
    if host_header is not None:
        if not host_allowed(host_header, config, _local_address(request)):
            return _refuse(421, ErrorCode.FORBIDDEN,
                           "this hub does not answer for that Host (auth.allowed_hosts)")
    path = request.path
    api = path.startswith(API_PREFIX)
    if not api and path != WS_PATH:
        return await handler(request)
    origin = headers.get("Origin")
    if origin is not None and not origin_allowed(origin, host_header, config.allowed_origins):
        return _refuse(403, ErrorCode.FORBIDDEN, "origin not allowed (auth.allowed_origins)")
    if not api:
        return await handler(request)
    if request.method == "OPTIONS":
        # A CORS preflight: answered here, for every /v1 path (no route takes OPTIONS) and
        # before any handler checks credentials; add_cors_headers adds
        # Access-Control-Allow-Origin and Vary: Origin.
        allowed_headers = allow_headers(headers.get("Access-Control-Request-Headers"))
        if allowed_headers is None:
            return _refuse(400, ErrorCode.INVALID_MESSAGE,
                           f"Access-Control-Request-Headers must be at most {MAX_REQUEST_HEADER_NAMES} header names "
                           f"(RFC 9110 tokens) in {MAX_REQUEST_HEADERS_CHARS} characters")
        preflight = web.Response(status=204, headers={
            "Access-Control-Allow-Methods": ALLOW_METHODS,
            "Access-Control-Allow-Headers": allowed_headers,
            "Access-Control-Max-Age": MAX_AGE_S,
            "Vary": "Access-Control-Request-Headers",
        })
        # Chrome's Private Network Access: a public page asks before it calls a hub on a
        # private or loopback address; an origin allowed here may.
        if origin is not None and headers.get("Access-Control-Request-Private-Network") == "true":
            preflight.headers["Access-Control-Allow-Private-Network"] = "true"
        return preflight
    if request.method == "POST" and request.content_type != "application/json":
        return _refuse(415, ErrorCode.INVALID_MESSAGE,
                       f"the request body must be application/json, not {request.content_type}")
    return await handler(request)


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: on ``/v1`` every response varies by ``Origin``, and one to an
    allowed origin carries ``Access-Control-Allow-Origin`` (an SSE stream's too, since this
    runs before its headers go out) and exposes ``Retry-After`` (a 429's wait) and
    ``x-should-retry`` (false: the hub retried already, docs/PROTOCOL.md) to the page."""
    if not request.path.startswith(API_PREFIX):
        return
    response.headers.add("Vary", "Origin")
    origin = _checked_origin(request)
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS


def install(app: web.Application) -> None:
    """Put the guard on ``app``: the middleware and the CORS response hook."""
    app.middlewares.append(guard_middleware)
    app.on_response_prepare.append(add_cors_headers)
