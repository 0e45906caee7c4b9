"""Typed keys of the aiohttp application (aiohttp warns on plain string keys)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

#: The running :class:`hub.app.Hub`.
HUB_KEY: web.AppKey[Any] = web.AppKey("hub")
