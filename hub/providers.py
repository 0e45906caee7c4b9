"""HTTP to providers: send an :class:`~protocol.providers.UpstreamRequest`, read its body as
it arrives, and hand the bytes to the request's normalizer. This module knows no provider:
what a provider is (prefixes, request builder, normalizer, framing, settings) is in
protocol/providers/, one module each, listed by the registry :data:`PROVIDERS`.

:func:`build_request` is the hub's entry to the registry: it routes the client's model name
and builds the request with this hub's settings (:meth:`HubConfig.provider_settings`).

Bodies are read with ``iter_any()`` (never line iteration, which caps line length and splits
on LF only: docs/PROVIDERS.md §10.2). aiohttp exceptions become :class:`ProviderError` in one
place (:meth:`ProviderClient.stream`), as httpcore's ``map_exceptions`` does. Keys never appear
in errors: every message built from upstream text is passed through ``redact``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator

import aiohttp
import msgspec

from hub.config import HubConfig
from hub.resilience import DeadLetterLog, retry_after_s
from protocol.errors import ProviderError, redact, retryable_status
from protocol.events import StreamEnd, StreamEvent, StreamFailed
from protocol.messages import Completion
from protocol.normalizers.base import truncated
from protocol.providers import PROVIDERS, ProviderRegistry, UpstreamRequest, resolve_model

__all__ = ["PROVIDERS", "resolve_model", "UpstreamRequest", "build_request", "IdleDeadline", "ProviderClient"]

log = logging.getLogger("cbhub.providers")

_encode = msgspec.json.Encoder().encode
_ERROR_BODY_LIMIT = 64 * 1024  # bytes of an error body read for its message


def build_request(request: Completion, config: HubConfig, registry: ProviderRegistry = PROVIDERS) -> UpstreamRequest:
    """The upstream request for a client ``completion``, with ``config``'s keys and base URLs.

    Args:
        request: the client's message; ``request.model`` picks the provider.
        config: the hub's settings (:meth:`HubConfig.provider_settings`).
        registry: the providers to route among; the built-in ones by default.

    Raises:
        ProviderError: ``model_not_found`` (no provider for the name),
            ``provider_not_configured`` (the provider's public API needs a key and none is set;
            a custom base URL, such as a local server, may be used without one), or
            ``invalid_message`` (messages or tools that cannot be translated for the provider,
            e.g. tool call arguments that are not JSON, a tool without a name).
    """
    return registry.build_request(request, config.provider_settings)


def _error_message(body: bytes) -> str:
    """The message of an HTTP error body (docs/PROVIDERS.md §6): ``{"error": "..."}`` or
    ``{"error": {"message": ...}}``, else the body's text."""
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return body.decode("utf-8", "replace").strip()[:500] or "(empty body)"
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, str):  # {"error": "..."}
        return error
    if isinstance(error, dict):  # {"error": {"message": ..., ...}} envelopes
        return str(error.get("message") or error)
    return body.decode("utf-8", "replace")[:500]


def _status_code(status: int) -> str:
    if status in (401, 403):
        return "auth_failed"
    if status == 404:
        return "model_not_found"
    if status == 429:
        return "rate_limited"
    return "provider_error"


class IdleDeadline:
    """The idle timeout of one upstream body: closes the response when no bytes arrived for
    ``idle_s`` seconds.

    aiohttp's own ``sock_read`` timeout cancels and re-creates a timer for every chunk it
    receives, which was the largest single cost of the hub at 1000 paced streams
    (docs/BENCHMARKS.md). Here each chunk the consumer takes only records the loop time
    (:meth:`touch`); the one timer, when it fires, re-arms itself for ``last chunk + idle_s``
    until a gap really is that long. Bytes that reached the response's buffer but were not
    taken yet (they arrived in the same loop iteration as the timer) count as activity, so
    data that did arrive is never reported as a timeout.

    Args:
        idle_s: the longest allowed gap between reads, in seconds; 0 or less disables the
            deadline (as aiohttp's ``sock_read=0`` did).
        response: the response to close when the gap is exceeded (its reader then ends).
        first_byte_s: the longest wait for the body's first bytes, in seconds (the time to
            first byte of a provider that thinks before it writes); default ``idle_s``.
    """

    __slots__ = ("idle_s", "expired", "_loop", "_last", "_seen", "_response", "_handle", "_waiting_first",
                 "_first_due")

    def __init__(self, idle_s: float, response: aiohttp.ClientResponse, first_byte_s: float | None = None) -> None:
        self.idle_s = idle_s
        self.expired = False
        self._loop = asyncio.get_running_loop()
        self._last = self._loop.time()
        self._response = response
        self._seen = response.content.total_bytes
        self._waiting_first = True
        first_s = idle_s if first_byte_s is None else first_byte_s
        self._first_due = self._last + first_s if first_s > 0 else None
        self._handle: asyncio.TimerHandle | None = None
        if self._first_due is not None:
            self._handle = self._loop.call_at(self._first_due, self._check)

    def touch(self) -> None:
        """The consumer took bytes now."""
        self._last = self._loop.time()
        self._seen = self._response.content.total_bytes
        if self._waiting_first:
            self._first_bytes()

    def _first_bytes(self) -> None:
        # From the first bytes on, the idle deadline applies: the timer armed for the
        # first-byte deadline is moved, once.
        self._waiting_first = False
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self.idle_s > 0:
            self._handle = self._loop.call_at(self._last + self.idle_s, self._check)

    def _check(self) -> None:
        self._handle = None
        now = self._loop.time()
        received = self._response.content.total_bytes
        if received != self._seen:  # bytes arrived that the consumer has not taken yet
            self._seen = received
            self._last = now
            if self._waiting_first:
                self._first_bytes()
                return
        if self._waiting_first:
            due = self._first_due
        elif self.idle_s > 0:
            due = self._last + self.idle_s
        else:
            return
        assert due is not None
        if now >= due:
            self.expired = True
            self._response.close()
        else:
            self._handle = self._loop.call_at(due, self._check)

    def cancel(self) -> None:
        """Stop watching (the body ended)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class ProviderClient:
    """Streams completions from providers over one shared aiohttp ClientSession.

    Args:
        session: the hub's ClientSession (connection pooling across all completions).
        config: provider URLs, keys and timeouts.

    Attributes:
        buffered_bytes: body bytes read from every provider and held by the framing until
            an event completes, in all (for the memory budget; each stream's share is bounded
            by ``limits.upstream_max_event_bytes``).
    """

    def __init__(self, session: aiohttp.ClientSession, config: HubConfig,
                 dead_letters: DeadLetterLog | None = None) -> None:
        self.session = session
        self.config = config
        self.dead_letters = dead_letters
        self.buffered_bytes = 0
        # The idle timeout is not aiohttp's sock_read: see IdleDeadline.
        self._timeout = aiohttp.ClientTimeout(total=None, connect=config.connect_timeout_s)

    async def stream(self, upstream: UpstreamRequest, request_id: str = "") -> AsyncGenerator[list[StreamEvent], None]:
        """POST the request and yield unified events as the body arrives: one list per read
        of the body (never empty), so a read that carried several provider chunks costs one
        step of the consumer, not one per event.

        The last event is ``StreamEnd`` or ``StreamFailed`` (from the normalizer). If the
        consumer stops early (cancel), the upstream connection is closed, not reused, so the
        provider sees the request end at once.

        Timeouts (HubConfig): ``connect_timeout_s`` to connect; ``first_byte_timeout_s`` from
        the request to the response headers and again to the body's first bytes;
        ``idle_timeout_s`` between reads after that. ``total_timeout_s`` is the caller's.

        Args:
            request_id: the hub's id of this request (the completion id), written to the
                dead-letter log.

        Raises:
            ProviderError: HTTP status other than 200 (``auth_failed``, ``model_not_found``,
                ``rate_limited``, ``provider_error``, with ``status`` and the provider's
                ``retry_after_s``), network failure (``upstream_unreachable``), a timeout
                (``upstream_timeout``), or a 200 answer that is not a stream
                (``invalid_upstream_response``; also written to the dead-letter log).
        """
        config = self.config
        secrets = config.secrets()
        response: aiohttp.ClientResponse | None = None
        idle: IdleDeadline | None = None
        finished = False
        unparsed = 0  # body bytes read since the normalizer last produced events
        idle_s = config.idle_timeout_s
        first_s = config.first_byte_timeout_s if config.first_byte_timeout_s > 0 else idle_s
        try:
            # Until the status line and headers: connect + first byte (no limit when both are 0).
            wait_s = config.connect_timeout_s + first_s if first_s > 0 else None
            async with asyncio.timeout(wait_s):
                response = await self.session.post(
                    upstream.url, data=_encode(upstream.body), headers=upstream.headers, timeout=self._timeout
                )
            # The body, error bodies included: first bytes within first_s, then idle_s gaps.
            idle = IdleDeadline(idle_s, response, first_byte_s=first_s)
            if response.status != 200:
                body = b""
                try:
                    while len(body) < _ERROR_BODY_LIMIT:
                        piece = await response.content.read(_ERROR_BODY_LIMIT - len(body))
                        if not piece:
                            break
                        body += piece
                        idle.touch()
                except aiohttp.ClientError:
                    if not idle.expired:
                        raise
                if idle.expired:
                    raise TimeoutError
                message = _error_message(body)
                raise ProviderError(
                    redact(f"{upstream.provider} answered HTTP {response.status}: {message}", secrets),
                    _status_code(response.status),
                    retryable=retryable_status(response.status),
                    status=response.status,
                    retry_after_s=retry_after_s(response.headers, config.retry_after_max_s),
                )
            content_type = response.headers.get("Content-Type", "")
            if not _stream_content_type(content_type, upstream.framing):
                excerpt = await _read_excerpt(response, self._excerpt_bytes)
                error = ProviderError(
                    f"{upstream.provider} answered HTTP 200 with {content_type or 'no content type'}, not a stream",
                    "invalid_upstream_response", status=200,
                )
                self._dead_letter(upstream, request_id, response, error, excerpt)
                raise error
            normalizer = upstream.make_normalizer()
            cut = False
            touch = idle.touch
            head = bytearray()  # the body's first bytes, for the dead-letter log
            last = b""
            max_unparsed = config.upstream_max_event_bytes
            try:
                async for chunk in response.content.iter_any():
                    touch()
                    if len(head) < self._excerpt_bytes:
                        head += chunk[: self._excerpt_bytes - len(head)]
                    last = chunk
                    events = normalizer.feed(chunk)
                    if not events:
                        # Bytes the framing holds until an event completes: bounded, and
                        # counted for the memory budget (hub/memory.py).
                        unparsed += len(chunk)
                        self.buffered_bytes += len(chunk)
                        if unparsed > max_unparsed:
                            raise ProviderError(
                                f"{upstream.provider} sent {unparsed} bytes without completing an event"
                                " (limits.upstream_max_event_bytes)", "invalid_upstream_response", status=200)
                    else:
                        self.buffered_bytes -= unparsed
                        unparsed = 0
                        if events[-1].__class__ is StreamFailed:
                            self._dead_letter_failed(upstream, request_id, response, events[-1], head, last)
                        yield events
                    if normalizer.done:
                        break
            except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientConnectionError) as exc:
                if idle.expired:
                    raise TimeoutError from None
                # The connection ended mid-body: what arrived is parsed, and the normalizer
                # reports the missing terminal marker as a truncated stream.
                log.info("%s body cut short: %s", upstream.provider, exc)
                cut = True
            if idle.expired:
                raise TimeoutError
            events = normalizer.close()
            if cut and events and isinstance(events[-1], StreamEnd):
                # A format whose only terminal marker is EOF (docs/PROVIDERS.md §3.1) may say
                # "finished" on every chunk: a connection we saw break is a truncation
                # whatever the last chunk said.
                events[-1] = truncated(upstream.provider, events[-1].usage)
            if events:
                if events[-1].__class__ is StreamFailed:
                    self._dead_letter_failed(upstream, request_id, response, events[-1], head, last)
                yield events
            finished = True
        except TimeoutError:
            raise ProviderError(
                f"{upstream.provider} did not answer within the timeout", "upstream_timeout", retryable=True
            ) from None
        except aiohttp.ClientError as exc:
            raise ProviderError(
                redact(f"could not reach {upstream.provider}: {exc}", secrets), "upstream_unreachable", retryable=True
            ) from None
        finally:
            self.buffered_bytes -= unparsed
            if idle is not None:
                idle.cancel()
            if response is not None:
                if finished:
                    response.release()
                else:
                    response.close()  # drop the connection: the provider sees the request end

    _excerpt_bytes = 2048

    def _dead_letter_failed(self, upstream: UpstreamRequest, request_id: str, response: aiohttp.ClientResponse,
                            failed: StreamFailed, head: bytes | bytearray, last: bytes) -> None:
        if failed.code != "invalid_upstream_response":
            return
        excerpt = bytes(head) if last and bytes(head).endswith(last) else bytes(head) + b" ... " + last[-512:]
        error = ProviderError(failed.message, failed.code, status=failed.status)
        self._dead_letter(upstream, request_id, response, error, excerpt)

    def _dead_letter(self, upstream: UpstreamRequest, request_id: str, response: aiohttp.ClientResponse,
                     error: ProviderError, excerpt: bytes) -> None:
        """Record an invalid upstream response (keys redacted) in the dead-letter log."""
        if self.dead_letters is None:
            return
        secrets = self.config.secrets()
        headers = response.headers
        provider_request_id = next((headers[name] for name in upstream.request_id_headers if name in headers), None)
        self.dead_letters.write({
            "requestId": request_id,
            "providerRequestId": provider_request_id,
            "provider": upstream.provider,
            "model": upstream.model,
            "url": redact(upstream.url, secrets),
            "status": response.status,
            "contentType": response.headers.get("Content-Type"),
            "code": error.code,
            "message": redact(error.message, secrets),
            "excerpt": redact(excerpt.decode("utf-8", "replace"), secrets),
        })


_SSE_TYPES = ("text/event-stream",)
_NDJSON_TYPES = ("application/x-ndjson", "application/json", "application/jsonl", "text/plain")


def _stream_content_type(content_type: str, framing: str) -> bool:
    """Whether a 200 answer's content type can carry the stream: an ``sse`` framing must be
    answered ``text/event-stream``; ``ndjson`` ``application/x-ndjson`` (or JSON, as some
    servers do, docs/PROVIDERS.md §10.10). A missing content type is accepted: the framing
    decides."""
    mime = content_type.split(";", 1)[0].strip().lower()
    if not mime:
        return True
    return mime in (_SSE_TYPES if framing == "sse" else _NDJSON_TYPES)


async def _read_excerpt(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """Up to ``limit`` bytes of the body (best effort: an error ends the excerpt)."""
    try:
        return await response.content.read(limit)
    except aiohttp.ClientError:
        return b""
