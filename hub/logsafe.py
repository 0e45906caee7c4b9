"""Secrets never reach a log: every log record is masked with protocol.errors.redact.

:func:`install_secret_filter` wraps the logging module's record factory, so every record of
every logger (the hub's, aiohttp's, anyone's), at every level, has its message (arguments
merged in), its exception text and its stack text masked when it is created, before any
handler or formatter sees it. The secrets are the configured ones (``HubConfig.secrets()``:
provider keys, the JWT secret, every key marked secret), matched as is, in any case and
base64-encoded, plus the key shapes ``redact`` always knows (``sk-...``, ``AIza...``, bearer
tokens, ``?key=``). Installed by ``cbhub serve`` and by :func:`hub.app.run_hub`.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from typing import Any

from protocol.errors import redact

__all__ = ["install_secret_filter", "uninstall_secret_filter", "mask_record"]

_state: dict[str, Any] = {"previous": None, "secrets": ()}


def mask_record(record: logging.LogRecord, secrets: tuple[str, ...]) -> logging.LogRecord:
    """Mask ``record`` in place: its message with its arguments, exception and stack text."""
    try:
        message = record.getMessage()
    except Exception:  # a bad format string: logging reports it later; mask what we have
        message = str(record.msg)
    masked = redact(message, secrets)
    if masked != message or record.args:
        record.msg, record.args = masked, None
    if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
        record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
    if record.exc_text:
        record.exc_text = redact(record.exc_text, secrets)
    if record.stack_info:
        record.stack_info = redact(record.stack_info, secrets)
    return record


def install_secret_filter(secrets: tuple[str, ...]) -> None:
    """Mask every log record from now on with ``secrets`` (a second call replaces the
    secrets; the factory is wrapped once)."""
    _state["secrets"] = tuple(secrets)
    if _state["previous"] is not None:
        return
    previous: Callable[..., logging.LogRecord] = logging.getLogRecordFactory()
    _state["previous"] = previous

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        return mask_record(previous(*args, **kwargs), _state["secrets"])

    logging.setLogRecordFactory(factory)


def uninstall_secret_filter() -> None:
    """Restore the record factory found by :func:`install_secret_filter` (tests)."""
    previous = _state["previous"]
    if previous is not None:
        logging.setLogRecordFactory(previous)
        _state["previous"] = None
        _state["secrets"] = ()
