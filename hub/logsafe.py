"""Secrets never reach a log: every log record is masked with protocol.errors.redact.

:func:`install_secret_filter` wraps the logging module's record factory, so every record of
every logger (the hub's, aiohttp's, anyone's), at every level, has its message (arguments
merged in), its exception text and its stack text masked when it is created, before any
handler or formatter sees it. The secrets are the configured ones (``HubConfig.secrets()``:
provider keys, the JWT secret, every key marked secret), matched as is, in any case and
base64-encoded, plus the key shapes ``redact`` always knows (``sk-...``, ``AIza...``, bearer
tokens, ``?key=``). Installed by ``cbhub serve`` and by :func:`hub.app.run_hub`.

No client can fill the disk through the log either (issue 12): :func:`install_log_rate_limit`
puts a :class:`RepeatFilter` on every handler. Records alike (same logger, level, message
template, exception type) are collapsed: the first is written, the repeats within
:data:`REPEAT_WINDOW_S` after it are only counted, and when that window has ended one line
``<message> (repeated N times in the last 10 s)`` is written (at the next record through the
handler, at the hub's periodic check, or when the filter is removed). The template is the
message before its arguments were merged in, kept by :func:`mask_record` as
``record.cbhub_template`` (masked too), so "connection from %s failed" for a thousand addresses
is one record and a count. :func:`loop_exception_handler` routes the event loop's errors
through the same logging, one record per error kind, without a traceback for the errors of
running out of resources (``EMFILE``, ``ENFILE``, ``ENOBUFS``, ``ENOMEM``).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from protocol.errors import redact

__all__ = [
    "REPEAT_WINDOW_S",
    "RESOURCE_ERRNOS",
    "RepeatFilter",
    "install_log_rate_limit",
    "install_secret_filter",
    "loop_exception_handler",
    "mask_record",
    "uninstall_log_rate_limit",
    "uninstall_secret_filter",
]

_state: dict[str, Any] = {"previous": None, "secrets": ()}


def mask_record(record: logging.LogRecord, secrets: tuple[str, ...]) -> logging.LogRecord:
    """Mask ``record`` in place: its message with its arguments, exception and stack text.
    The message template (before the arguments were merged in) is kept, masked, as
    ``record.cbhub_template``."""
    try:
        message = record.getMessage()
    except Exception:  # a bad format string: logging reports it later; mask what we have
        message = str(record.msg)
    masked = redact(message, secrets)
    if masked != message or record.args:
        if record.args and isinstance(record.msg, str):  # the template, for RepeatFilter
            record.cbhub_template = redact(record.msg, secrets)
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


# Rate limit of repeated records.

#: Records alike within this many seconds after the first are counted instead of written.
REPEAT_WINDOW_S = 10.0
#: Kinds of record remembered at once by one :class:`RepeatFilter`; past it the oldest window
#: is closed early (its count written), so memory stays bounded whatever is logged.
REPEAT_MAX_KINDS = 1024
#: ``errno`` values of running out of resources: logged without a traceback.
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

_Kind = tuple[str, int, str, type[BaseException] | None]
#: What a count line does not keep of the last repeat: its arguments (merged into the message),
#: its exception (whose traceback holds frames alive) and its time stamps (it takes its own).
_DROPPED_FIELDS = frozenset({"args", "msg", "message", "exc_info", "exc_text", "stack_info", "created", "msecs",
                             "relativeCreated", "thread", "threadName", "process", "processName", "taskName"})


class _Window:
    """One kind of record's window: when it opened (clock seconds), the repeats counted since,
    and the fields of the last repeat (its logger, level, place in the code and message, which
    the count line carries)."""

    __slots__ = ("last", "repeats", "start")

    def __init__(self, start: float) -> None:
        self.start = start
        self.repeats = 0
        self.last: dict[str, Any] | None = None


class RepeatFilter(logging.Filter):
    """A handler's filter that collapses records alike (see the module docstring).

    Args:
        handler: the handler it filters, which writes the count lines.
        window_s: seconds after a kind's first record during which its repeats are counted.
        max_kinds: kinds remembered at once (:data:`REPEAT_MAX_KINDS`).
        clock: the time in seconds (``time.monotonic``; tests pass their own).

    Thread-safe: logging may be called from several threads.
    """

    def __init__(self, handler: logging.Handler, window_s: float = REPEAT_WINDOW_S, *,
                 max_kinds: int = REPEAT_MAX_KINDS, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.handler = handler
        self.window_s = window_s
        self.max_kinds = max_kinds
        self._clock = clock
        # Open windows in the order they opened, which is the order they end in.
        self._windows: OrderedDict[_Kind, _Window] = OrderedDict()
        self._lock = threading.RLock()  # an argument's __str__ may log

    def filter(self, record: logging.LogRecord) -> bool:
        """True to write ``record``: a count line, or the first of its kind in a window."""
        if getattr(record, "cbhub_repeats", None) is not None:
            return True  # a count line of ours
        kind: _Kind = (record.name, record.levelno, str(getattr(record, "cbhub_template", record.msg)),
                       record.exc_info[0] if record.exc_info else None)
        with self._lock:
            now = self._clock()
            ended = self._close_windows(now)
            window = self._windows.get(kind)
            if window is None:
                if len(self._windows) >= self.max_kinds:
                    ended.append(self._windows.popitem(last=False)[1])
                self._windows[kind] = _Window(now)
            else:
                window.repeats += 1
                window.last = {key: value for key, value in vars(record).items() if key not in _DROPPED_FIELDS}
                window.last["msg"] = record.getMessage()
        self._write_counts(ended)
        return window is None

    def flush(self, everything: bool = False) -> None:
        """Write the count lines of the windows that have ended (of all windows, when
        ``everything``), and forget those windows."""
        with self._lock:
            if everything:
                ended = list(self._windows.values())
                self._windows.clear()
            else:
                ended = self._close_windows(self._clock())
        self._write_counts(ended)

    def _close_windows(self, now: float) -> list[_Window]:
        """Take out the windows that ended by ``now`` (from the front: they end in order)."""
        ended = []
        windows = self._windows
        while windows:
            window = next(iter(windows.values()))
            if window.start + self.window_s > now:
                break
            windows.popitem(last=False)
            ended.append(window)
        return ended

    def _write_counts(self, windows: list[_Window]) -> None:
        """One line per window that had repeats, through :attr:`handler`."""
        for window in windows:
            last = window.last
            if last is None:
                continue
            fields = dict(last, msg=f"{last['msg']} (repeated {window.repeats} times in the last {self.window_s:g} s)",
                          cbhub_repeats=window.repeats)
            self.handler.handle(logging.makeLogRecord(fields))  # stamped now


_limits: dict[str, Any] = {"users": 0, "filters": [], "timer": None}


def _handlers() -> list[logging.Handler]:
    """Every handler of every logger (the root's first), and logging's last resort."""
    loggers: list[logging.Logger] = [logging.getLogger()]
    loggers += [item for item in logging.Logger.manager.loggerDict.values() if isinstance(item, logging.Logger)]
    handlers = {id(handler): handler for logger in loggers for handler in logger.handlers}
    if logging.lastResort is not None:
        handlers.setdefault(id(logging.lastResort), logging.lastResort)
    return list(handlers.values())


def install_log_rate_limit(loop: asyncio.AbstractEventLoop | None = None,
                           window_s: float = REPEAT_WINDOW_S) -> None:
    """Put a :class:`RepeatFilter` on every handler configured now (each handler its own).
    With ``loop``, a timer on it writes the count lines of ended windows every ``window_s``
    seconds even when nothing else is logged. Calls nest: the filters stay until as many
    :func:`uninstall_log_rate_limit` calls."""
    _limits["users"] += 1
    if _limits["users"] > 1:
        return
    filters = []
    for handler in _handlers():
        repeat_filter = RepeatFilter(handler, window_s)
        handler.addFilter(repeat_filter)
        filters.append(repeat_filter)
    _limits["filters"] = filters
    if loop is not None:
        def tick() -> None:
            for repeat_filter in filters:
                repeat_filter.flush()
            _limits["timer"] = loop.call_later(window_s, tick)

        _limits["timer"] = loop.call_later(window_s, tick)


def uninstall_log_rate_limit() -> None:
    """Undo one :func:`install_log_rate_limit`; the last one writes every pending count line
    and removes the filters and the timer."""
    if _limits["users"] == 0:
        return
    _limits["users"] -= 1
    if _limits["users"]:
        return
    if _limits["timer"] is not None:
        _limits["timer"].cancel()
        _limits["timer"] = None
    for repeat_filter in _limits["filters"]:
        repeat_filter.handler.removeFilter(repeat_filter)
        repeat_filter.flush(everything=True)
    _limits["filters"] = []


_loop_log = logging.getLogger("asyncio")


def loop_exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """An event loop exception handler (``loop.set_exception_handler``) that logs one record
    per error on the ``asyncio`` logger, whose template is the context's message (so that
    :class:`RepeatFilter` collapses repeats), with the other context items (each shown in at
    most 200 characters) and the exception's traceback, except for errors of running out of
    resources (:data:`RESOURCE_ERRNOS`), which get one line."""
    message = str(context.get("message") or "unhandled exception in the event loop")
    exception = context.get("exception")
    details = ", ".join(f"{key}={_short(value)}" for key, value in context.items()
                        if key not in ("message", "exception"))
    template = message.replace("%", "%%") + " (%s)"
    if isinstance(exception, OSError) and exception.errno in RESOURCE_ERRNOS:
        _loop_log.error(template + ": %s", details, exception)
    elif isinstance(exception, BaseException):
        _loop_log.error(template, details, exc_info=exception)
    else:
        _loop_log.error(template, details)


def _short(value: object, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
