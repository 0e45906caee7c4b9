"""Staying up when providers do not: retry delays, circuit breakers, the dead-letter log.

- :func:`backoff_delay_s`: exponential backoff with full jitter ("Exponential Backoff And
  Jitter", AWS Architecture Blog, 2015): attempt *n* waits a uniform random time in
  ``[0, min(max, base * 2**n)]``.
- :func:`retry_after_s`: a provider's own wait: ``retry-after-ms`` (milliseconds; sent by
  OpenAI and Anthropic) or ``retry-after`` (RFC 9110 §10.2.3: seconds or an HTTP date), capped.
- :class:`CircuitBreaker`: per provider and base URL. Closed: requests flow and outcomes are
  counted over a sliding window. Open, once at least ``min_requests`` outcomes in the window
  failed at ``failure_rate`` or more: requests are refused at once (the completion fails over or
  gets ``provider_unavailable``). Half-open, after ``cooldown_s``: up to ``half_open_probes``
  requests go through; a success closes the circuit, a failure opens it again.
- :class:`DeadLetterLog`: invalid upstream responses as JSON lines on disk, bounded and rotated
  (the standard library's RotatingFileHandler).

Time is passed in (``now``, seconds of ``loop.time()``), so the breaker is tested without
sleeping.
"""

from __future__ import annotations

import email.utils
import logging
import logging.handlers
import os
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from protocol.errors import redact

__all__ = ["backoff_delay_s", "retry_after_s", "CircuitBreaker", "BreakerRegistry", "DeadLetterLog"]

log = logging.getLogger("cbhub.resilience")


def backoff_delay_s(attempt: int, base_ms: float, max_ms: float, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number ``attempt`` (0 for the first retry): full jitter,
    uniform in ``[0, min(max_ms, base_ms * 2**attempt)]`` ms."""
    ceiling_ms = min(max_ms, base_ms * (2 ** min(attempt, 30)))
    return (rng or random).uniform(0.0, ceiling_ms) / 1000.0


def retry_after_s(headers: Mapping[str, str], cap_s: float, now: float | None = None) -> float | None:
    """The wait a provider asked for, in seconds, capped at ``cap_s``; None when it asked none.

    ``retry-after-ms`` wins over ``retry-after``. ``retry-after`` is delay-seconds or an
    HTTP date (RFC 9110 §10.2.3), read against ``now`` (``time.time()`` by default).
    Unparseable values are ignored.
    """
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            value = float(raw_ms) / 1000.0
        except ValueError:
            value = None
        if value is not None and value >= 0:
            return min(value, cap_s)
    raw = headers.get("retry-after")
    if not raw:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), cap_s)


class CircuitBreaker:
    """The circuit breaker of one provider endpoint (see the module docstring).

    Args:
        failure_rate: share of failed outcomes (0 < rate <= 1) that opens the circuit.
        window_s: how far back outcomes count, in seconds.
        min_requests: fewest outcomes in the window before the rate is judged.
        cooldown_s: how long the circuit stays open before probing, in seconds.
        half_open_probes: requests let through at once while half-open.
        on_change: called as ``on_change(breaker, previous_state)`` on every state change.
    """

    CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

    def __init__(self, failure_rate: float, window_s: float, min_requests: int, cooldown_s: float,
                 half_open_probes: int = 1, on_change: Callable[[CircuitBreaker, str], None] | None = None) -> None:
        self.failure_rate = failure_rate
        self.window_s = window_s
        self.min_requests = max(1, min_requests)
        self.cooldown_s = cooldown_s
        self.half_open_probes = max(1, half_open_probes)
        self.on_change = on_change
        self.state = self.CLOSED
        self._outcomes: deque[tuple[float, bool]] = deque()  # (time, failed)
        self._failures = 0
        self._opened_at = 0.0
        self._probes = 0

    def _trim(self, now: float) -> None:
        outcomes = self._outcomes
        horizon = now - self.window_s
        while outcomes and outcomes[0][0] < horizon:
            if outcomes.popleft()[1]:
                self._failures -= 1

    def stats(self, now: float) -> tuple[float | None, int]:
        """(failure rate, outcomes) in the current window."""
        self._trim(now)
        total = len(self._outcomes)
        return (self._failures / total if total else None), total

    def allow(self, now: float) -> bool:
        """Whether a request may go to this endpoint now (a half-open probe is counted as
        taken when this returns True; report its outcome with :meth:`record`)."""
        if self.state == self.OPEN:
            if now - self._opened_at < self.cooldown_s:
                return False
            self._set(self.HALF_OPEN)
            self._probes = 0
        if self.state == self.HALF_OPEN:
            if self._probes >= self.half_open_probes:
                return False
            self._probes += 1
        return True

    def record(self, now: float, ok: bool) -> None:
        """Count one outcome: ``ok`` False for a failure of the provider (network, timeout,
        5xx, 429, broken stream), True for a served request. Client errors are not counted."""
        if self.state == self.HALF_OPEN:
            self._probes = max(0, self._probes - 1)
            self._outcomes.clear()
            self._failures = 0
            if ok:
                self._set(self.CLOSED)
            else:
                self._open(now)
            return
        if self.state == self.OPEN:
            return  # a request that started before the circuit opened
        self._outcomes.append((now, not ok))
        if not ok:
            self._failures += 1
        rate, total = self.stats(now)
        if total >= self.min_requests and rate is not None and rate >= self.failure_rate:
            self._open(now)

    def _open(self, now: float) -> None:
        self._opened_at = now
        self._set(self.OPEN)

    def _set(self, state: str) -> None:
        previous, self.state = self.state, state
        if previous != state and self.on_change is not None:
            self.on_change(self, previous)


class BreakerRegistry:
    """One :class:`CircuitBreaker` per ``(provider, base URL)``, created on first use with the
    hub's settings; ``on_change(provider, base_url, breaker, previous)`` hears every change."""

    def __init__(self, settings: dict[str, Any],
                 on_change: Callable[[str, str, CircuitBreaker, str], None] | None = None) -> None:
        self.settings = settings
        self.on_change = on_change
        self.breakers: dict[tuple[str, str], CircuitBreaker] = {}

    def get(self, provider: str, base_url: str) -> CircuitBreaker:
        """The breaker of that endpoint."""
        key = (provider, base_url)
        breaker = self.breakers.get(key)
        if breaker is None:
            def changed(breaker: CircuitBreaker, previous: str) -> None:
                if self.on_change is not None:
                    self.on_change(provider, base_url, breaker, previous)

            breaker = self.breakers[key] = CircuitBreaker(**self.settings, on_change=changed)
        return breaker


class DeadLetterLog:
    """Invalid upstream responses, one JSON object per line, in a size-bounded, rotated file
    (``path``, ``path.1`` … ``path.<backups>``). Each record: ``time`` (ISO 8601 UTC),
    ``requestId``, ``provider``, ``model``, ``url``, ``status``, ``contentType``, ``code``,
    ``message`` and ``excerpt`` (the body's first bytes, at most ``excerpt_bytes``). Keys are
    never written: callers redact ``message`` and ``excerpt`` with the configured secrets, and
    every string value is masked again here with :attr:`secrets` and the key shapes
    protocol.errors.redact knows (an echo upper-cased or base64-encoded included).

    Args:
        path: the file; "" turns the log off.
        max_bytes: size at which the file is rotated, in bytes.
        backups: rotated files kept.
    """

    def __init__(self, path: str, max_bytes: int, backups: int, excerpt_bytes: int = 2048) -> None:
        self.path = path
        self.excerpt_bytes = excerpt_bytes
        self.secrets: tuple[str, ...] = ()  # the configured secrets (HubConfig.secrets())
        self._logger: logging.Logger | None = None
        if path:
            directory = os.path.dirname(path)
            if directory:
                os.makedirs(directory, exist_ok=True)
            handler = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups,
                                                           encoding="utf-8", delay=True)
            handler.setFormatter(logging.Formatter("%(message)s"))
            logger = logging.Logger(f"cbhub.dead_letter:{path}")  # not in the global tree
            logger.addHandler(handler)
            logger.propagate = False
            self._logger = logger

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (a failure to write is logged, never raised)."""
        if self._logger is None:
            return
        secrets = self.secrets
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  **{name: redact(value, secrets) if isinstance(value, str) else value
                     for name, value in record.items()}}
        try:
            self._logger.info(orjson.dumps(record).decode())
        except Exception:  # the dead-letter log must never break a completion
            log.exception("writing the dead-letter log failed")

    def close(self) -> None:
        """Close the file."""
        if self._logger is not None:
            for handler in self._logger.handlers:
                handler.close()
