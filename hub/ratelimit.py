"""Rate limits and budgets per subject: requests per minute, tokens per minute, concurrent runs.

Every completion and workflow request, from every transport, passes :meth:`RateLimiter.admit`
with its principal before it may call a provider (docs/PROTOCOL.md "Rate limits"). Limits come
from the principal's claims (a JWT's ``cbhub`` claim, an API key's entry) and otherwise from
``auth.default_limits``; None means unlimited.

- **rpm**: a token bucket of ``rpm`` requests that refills at ``rpm / 60`` per second; each
  request takes one.
- **tpm**: a token bucket of ``tpm`` tokens refilling at ``tpm / 60`` per second. A request
  takes an *estimate* before it runs (:func:`estimate_tokens`: the prompt's characters / 4
  plus ``max_tokens``, or 256 when unset), and when its usage arrives the difference between
  the real prompt + completion tokens and the estimate is settled (the bucket may go below
  zero: the next requests wait until it has refilled).
- **max_concurrent**: runs of the subject not finished yet.

With ``broker.url`` set, the same limits are counted in Redis for every node sharing it
(hub/cluster_limits.py); this limiter then admits only while Redis does not answer.

A refused request gets ``rate_limited`` with ``retryAfterMs``, the wait until the bucket that
refused it holds enough again (for ``max_concurrent``, a fixed 1 s hint); it touches no
provider and no connection is closed. The buckets are the classic token bucket written out
here (a dozen lines) rather than a library: the ones on PyPI either sleep (asyncio.sleep
based) or count per process with locks, and the hub needs a non-blocking "how long to wait"
answer on the event loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from protocol.errors import ErrorCode, HubError

__all__ = ["TokenBucket", "RateLimiter", "Ticket", "estimate_tokens", "over_bucket", "over_concurrency",
           "CONCURRENCY_RETRY_MS"]

#: The retryAfterMs given when a subject is at max_concurrent (no bucket can say better).
CONCURRENCY_RETRY_MS = 1000
#: Buckets kept before idle, full ones are forgotten (memory stays bounded).
_MAX_SUBJECTS = 10_000


class LimitedPrincipal(Protocol):
    """What the limiter reads of a principal (hub.session.Principal has it)."""

    @property
    def subject(self) -> str: ...

    @property
    def rpm(self) -> int | None: ...

    @property
    def tpm(self) -> int | None: ...

    @property
    def max_concurrent(self) -> int | None: ...


class TokenBucket:
    """A bucket of ``capacity`` tokens refilling at ``rate_per_s``; starts full.

    Args:
        capacity: the most tokens held (a burst), > 0.
        rate_per_s: tokens added per second, > 0.
        now: the clock reading at creation, in s.
    """

    __slots__ = ("capacity", "rate_per_s", "tokens", "updated")

    def __init__(self, capacity: float, rate_per_s: float, now: float) -> None:
        self.capacity = capacity
        self.rate_per_s = rate_per_s
        self.tokens = capacity
        self.updated = now

    def refill(self, now: float) -> None:
        """Add what ``now - updated`` seconds bring, up to the capacity."""
        if now > self.updated:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate_per_s)
            self.updated = now

    def wait_s(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` tokens (at most the capacity) are held; 0 when they are now."""
        self.refill(now)
        missing = min(amount, self.capacity) - self.tokens
        return 0.0 if missing <= 0 else missing / self.rate_per_s

    def take(self, amount: float) -> None:
        """Remove ``amount`` tokens (call after :meth:`wait_s` said 0; may go below zero when
        settling usage)."""
        self.tokens -= amount


def estimate_tokens(messages: Sequence[Any], max_tokens: int | None) -> int:
    """A request's tokens before it runs: the text of its messages in characters / 4 (the
    usual rule of thumb for English with BPE tokenizers) plus ``max_tokens`` (256 when unset).

    Args:
        messages: chat messages with a ``content`` of a string or a list of parts.
        max_tokens: the request's output limit.
    """
    chars = 0
    for message in messages:
        content = getattr(message, "content", None)
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            chars += sum(len(part.get("text", "")) for part in content if isinstance(part, dict))
    return math.ceil(chars / 4) + (max_tokens if max_tokens is not None else 256)


class Ticket:
    """One admitted request: :meth:`release` when it ends (once; later calls do nothing).

    Attributes:
        subject: who made the request.
        estimate: the tokens taken from the tpm bucket at admission.
    """

    __slots__ = ("_limiter", "subject", "estimate", "_tokens", "_released")

    def __init__(self, limiter: RateLimiter, subject: str, estimate: int, tokens: TokenBucket | None) -> None:
        self._limiter = limiter
        self.subject = subject
        self.estimate = estimate
        self._tokens = tokens
        self._released = False

    def release(self, used_tokens: int | None = None) -> None:
        """The request ended: free its concurrency slot and settle its tokens
        (``used_tokens``: prompt + completion tokens from its usage; None when unknown, then
        the estimate stands)."""
        if self._released:
            return
        self._released = True
        self._limiter._release(self.subject)
        if used_tokens is not None and self._tokens is not None:
            self._tokens.take(used_tokens - self.estimate)


class RateLimiter:
    """The per-subject limits of the hub (see the module docstring).

    Args:
        default_rpm, default_tpm, default_max_concurrent: ``auth.default_limits``; None: unlimited.
        clock: seconds, monotonic.
    """

    def __init__(self, default_rpm: int | None = None, default_tpm: int | None = None,
                 default_max_concurrent: int | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.default_rpm = default_rpm
        self.default_tpm = default_tpm
        self.default_max_concurrent = default_max_concurrent
        self._clock = clock
        self._requests: dict[tuple[str, int], TokenBucket] = {}
        self._tokens: dict[tuple[str, int], TokenBucket] = {}
        self._running: dict[str, int] = {}

    def admit(self, principal: LimitedPrincipal, estimate: int = 0) -> Ticket:
        """Admit one request of ``principal`` expected to use ``estimate`` tokens, or refuse it.

        Returns:
            The request's :class:`Ticket`.

        Raises:
            HubError: ``rate_limited`` (retryable) with ``retry_after_ms``: over ``rpm``,
                ``tpm`` or ``max_concurrent``. Nothing is taken from any bucket then.
        """
        subject = principal.subject
        rpm, tpm, most = self.limits_of(principal)
        now = self._clock()
        running = self._running.get(subject, 0)
        if most is not None and running >= most:
            raise over_concurrency(subject, running, most)
        requests = self._bucket(self._requests, subject, rpm, now) if rpm is not None else None
        tokens = self._bucket(self._tokens, subject, tpm, now) if tpm is not None else None
        waits = []
        if requests is not None:
            waits.append((requests.wait_s(1, now), "requests"))
        if tokens is not None:
            waits.append((tokens.wait_s(estimate, now), "tokens"))
        wait, unit = max(waits, default=(0.0, ""))
        if wait > 0:
            raise over_bucket(subject, unit, rpm if unit == "requests" else tpm, math.ceil(wait * 1000))
        if requests is not None:
            requests.take(1)
        if tokens is not None:
            tokens.take(min(estimate, tokens.capacity))
        self._running[subject] = running + 1
        return Ticket(self, subject, int(min(estimate, tokens.capacity)) if tokens is not None else 0, tokens)

    def limits_of(self, principal: LimitedPrincipal) -> tuple[int | None, int | None, int | None]:
        """The principal's ``(rpm, tpm, max_concurrent)``: its own, else the defaults; None:
        unlimited."""
        return (principal.rpm if principal.rpm is not None else self.default_rpm,
                principal.tpm if principal.tpm is not None else self.default_tpm,
                principal.max_concurrent if principal.max_concurrent is not None else self.default_max_concurrent)

    def running(self, subject: str) -> int:
        """Requests of ``subject`` admitted and not released."""
        return self._running.get(subject, 0)

    def _bucket(self, buckets: dict[tuple[str, int], TokenBucket], subject: str, per_minute: int,
                now: float) -> TokenBucket:
        key = (subject, per_minute)  # a changed limit starts a fresh bucket
        bucket = buckets.get(key)
        if bucket is None:
            if len(buckets) >= _MAX_SUBJECTS:
                for stale in [k for k, b in buckets.items() if b.wait_s(b.capacity, now) == 0]:
                    del buckets[stale]
            bucket = buckets[key] = TokenBucket(per_minute, per_minute / 60.0, now)
        return bucket

    def _hold(self, subject: str) -> None:
        """Count one more running request of ``subject`` (one admitted elsewhere: by the
        cluster's limits, hub/cluster_limits.py)."""
        self._running[subject] = self._running.get(subject, 0) + 1

    def _release(self, subject: str) -> None:
        left = self._running.get(subject, 0) - 1
        if left > 0:
            self._running[subject] = left
        else:
            self._running.pop(subject, None)


def over_concurrency(subject: str, running: int, most: int) -> HubError:
    """The refusal of a request of ``subject``, which runs ``running`` of its ``most``
    (``max_concurrent``): ``rate_limited`` with :data:`CONCURRENCY_RETRY_MS`."""
    return _refused(f"{subject} runs {running} requests (max_concurrent {most})", CONCURRENCY_RETRY_MS)


def over_bucket(subject: str, unit: str, per_minute: int | None, retry_after_ms: int) -> HubError:
    """The refusal of a request of ``subject`` over its rpm (``unit`` ``"requests"``) or tpm
    (``"tokens"``) bucket of ``per_minute``: ``rate_limited`` with ``retry_after_ms``, the
    wait until the bucket holds enough (ms, rounded up)."""
    return _refused(f"{subject} is over {per_minute} {unit} per minute", retry_after_ms)


def _refused(reason: str, retry_after_ms: int) -> HubError:
    return HubError(f"rate limited: {reason}; retry in {retry_after_ms} ms", ErrorCode.RATE_LIMITED,
                    retryable=True, retry_after_ms=retry_after_ms)
