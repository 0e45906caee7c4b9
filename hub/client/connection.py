"""The connection of the Python SDK: :class:`HubClient`, over one ``websockets`` connection,
with reconnect, backoff and resume of every open stream.

The client owns one WebSocket at a time (:class:`Connection`). One reader task decodes every
hub message (``protocol.messages.HUB_DECODER``) and hands it to the stream it belongs to
(:mod:`hub.client.streams`), whose channel state (:mod:`hub.client.state`) decides what to
deliver. Answers that belong to no stream (``subscribed``, ``unsubscribed``, ``pong``,
``ack``, an ``error`` without ``seq``) are matched to the request they answer by its request id:
every request that awaits an answer carries a ``rid`` (``r1``, ``r2``... per connection), which
the hub echoes on the reply it causes (docs/PROTOCOL.md). A ``cancel`` or ``cancel_workflow``
with a ``rid`` is answered by an ``ack`` (or its ``error``), so no ``ping`` has to follow it. An
answer without ``rid`` (a hub that does not echo it) goes to the oldest request, which is right
too: the hub handles a connection's messages one at a time and answers them in order.

Several hubs (docs/PROTOCOL.md "Running several hubs"): with ``urls=[...]`` the client
connects to the first URL that answers, and after losing a connection it tries the other URLs
first, in turn (the next one after the URL it lost, wrapping around), with the usual backoff
between attempts; its streams resume there with their cursors, which any hub sharing the broker
serves gap-free.

Authentication (docs/PROTOCOL.md "Authentication"): with ``token=`` or ``get_token=``, every
connection, the first and each reconnect, sends an ``auth`` message first and waits for
``authenticated``; with ``get_token`` the token is fetched again for each connection and
refreshed on the open connection before it expires (``expiresAt``). A refusal (an ``error``
answer, or close 4001/4003) raises :class:`HubAuthError` and stops reconnecting.

Timeouts and backoff live here; nothing in :mod:`hub.client.state` knows about sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import msgspec
import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from hub.client.errors import (
    HubAuthError,
    HubConnectionError,
    HubRequestError,
    InvalidArgumentError,
    UnknownOptionError,
)
from hub.client.results import CompletionResult, Reconnect
from hub.client.state import state_for
from hub.client.streams import HubStream, WorkflowStream
from protocol.messages import (
    CHANNEL_PATTERN,
    COMPLETION_ID_PATTERN,
    HUB_DECODER,
    Ack,
    AgentCompleted,
    AgentProgress,
    AgentStarted,
    Authenticated,
    ChatMessage,
    CircuitState,
    Completion,
    ErrorInfo,
    ErrorMessage,
    FunctionExecuted,
    Pong,
    Subscribed,
    Unsubscribed,
)

__all__ = ["HubClient", "Connection", "FATAL_CLOSE_CODES", "DEFAULT_URL", "backoff_delay_s"]

log = logging.getLogger("cbhub.client")

#: Close codes after which the client does not reconnect: the same request would fail the
#: same way (1002 protocol error, 1003 unsupported data, 1007 invalid UTF-8, 1009 a client
#: message over the hub's ``max_message_bytes``, 4001 unauthorized and 4003 forbidden: a new
#: credential is needed first). Every other code, and a connection dropped without a close
#: frame (1006), is followed by a reconnect.
FATAL_CLOSE_CODES = frozenset({1002, 1003, 1007, 1009, 4001, 4003})

#: The URL of a client given neither ``url`` nor ``urls``: a hub on this machine with the default port.
DEFAULT_URL = "ws://127.0.0.1:8765/ws/stream"

_OPTIONS = frozenset(Completion.__struct_fields__) - {"model", "messages", "id", "rid"}
_ANSWERS = (Subscribed, Unsubscribed, Pong, Ack, Authenticated)
#: Close codes that say the credential was refused.
_AUTH_CLOSE_CODES = frozenset({4001, 4003})
#: A token is refreshed this long before it expires: a tenth of its lifetime, within these bounds (s).
_REFRESH_MARGIN_S = (5.0, 60.0)
_AGENT_EVENTS = (AgentStarted, AgentProgress, FunctionExecuted, AgentCompleted)
_CONNECT_ERRORS = (OSError, InvalidHandshake, TimeoutError, asyncio.TimeoutError)
_PING: dict[str, Any] = {"type": "ping"}


def backoff_delay_s(attempt: int, base_ms: float, max_ms: float, rng: random.Random | None = None) -> float:
    """Seconds to wait before reconnect attempt ``attempt`` (0 for the first): full jitter,
    uniform in ``[0, min(max_ms, base_ms * 2**attempt)]`` ms ("Exponential Backoff And
    Jitter", AWS Architecture Blog, 2015)."""
    ceiling_ms = min(max_ms, base_ms * (2 ** min(attempt, 30)))
    return (rng or random).uniform(0.0, ceiling_ms) / 1000.0


def _url_list(urls: Sequence[str]) -> tuple[str, ...]:
    """``urls`` as a tuple.

    Raises:
        InvalidArgumentError: an empty sequence, a string, or an item that is not a string.
    """
    if isinstance(urls, str) or not urls or not all(isinstance(each, str) for each in urls):
        raise InvalidArgumentError("urls must be a non-empty list of WebSocket URLs")
    return tuple(urls)


def _encode(message: Mapping[str, Any]) -> str:
    return msgspec.json.encode(message).decode()


class _Lost(Exception):
    """Internal: the connection a request was sent on is gone (the request is sent again on
    the next one)."""


# Requests awaiting an answer, by request id.


class _Entry:
    """A request waiting for its answer; the default one takes any single answer."""

    __slots__ = ()

    def feed(self, message: Any) -> bool:
        """Take one answer; True when the request is answered completely."""
        return True

    def lost(self) -> None:
        """The connection closed before the answer."""


class _Waiter(_Entry):
    """A request a caller awaits (``ping``, answered by ``pong``; ``cancel`` and
    ``cancel_workflow``, answered by ``ack``): resolves :attr:`future` with the answer, or with
    ``_Lost``; an ``error`` answer is kept in :attr:`error`."""

    __slots__ = ("future", "error")

    def __init__(self) -> None:
        self.future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.error: ErrorInfo | None = None

    def feed(self, message: Any) -> bool:
        if isinstance(message, ErrorMessage):
            self.error = message.error
        if not self.future.done():
            self.future.set_result(message)
        return True

    def lost(self) -> None:
        if not self.future.done():
            self.future.set_result(_Lost)


class _StreamEntry(_Entry):
    """The answer to a stream's ``completion``, ``create_workflow`` or ``subscribe``."""

    __slots__ = ("stream", "kind", "conn")

    def __init__(self, stream: HubStream[Any], kind: str, conn: Connection) -> None:
        self.stream = stream
        self.kind = kind  # "start", "restart" (the request sent again) or "subscribe"
        self.conn = conn

    def feed(self, message: Any) -> bool:
        self.stream._on_answer(self.kind, message, self.conn)
        return True


class Connection:
    """One WebSocket of the client and the requests it has sent that await answers.

    Attributes:
        ws: the ``websockets`` client connection.
        number: 1 for the client's first connection, then one more per reconnect.
        pending: the requests awaiting answers, by the ``rid`` they were sent with, in the
            order sent.
        hub_channels: the channels the hub has this connection subscribed to.
        received: the hub sent anything on it (it counts as a working connection).
        lost: it is closed; nothing more is sent on it.
        close_code, close_reason: how it closed (1006: dropped without a close frame).
    """

    def __init__(self, ws: Any, number: int) -> None:
        self.ws = ws
        self.number = number
        self.pending: dict[str, _Entry] = {}
        self.rids = 0
        self.hub_channels: set[str] = set()
        self.lock = asyncio.Lock()
        self.received = False
        self.lost = False
        self.reader: asyncio.Task[None] | None = None
        self.close_code = 1006
        self.close_reason = ""

    async def send(self, requests: list[tuple[Mapping[str, Any], _Entry]]) -> None:
        """Send each client message in order, with a new ``rid``, its entry awaiting the answer.

        Raises:
            _Lost: the connection is gone (the messages may or may not have left).
        """
        # Shielded: a caller cancelled halfway must not leave an entry whose message was
        # never sent.
        await asyncio.shield(self._send(requests))

    async def _send(self, requests: list[tuple[Mapping[str, Any], _Entry]]) -> None:
        async with self.lock:
            if self.lost:
                raise _Lost
            frames = []
            for message, entry in requests:
                self.rids += 1
                rid = f"r{self.rids}"
                self.pending[rid] = entry
                frames.append(_encode({**message, "rid": rid}))
            try:
                for frame in frames:
                    await self.ws.send(frame)
            except ConnectionClosed:
                raise _Lost from None

    def answer(self, message: Any) -> None:
        """Give an answer (``subscribed``, ``unsubscribed``, ``pong``, ``ack`` or a non-stream
        ``error``) to the request it answers: the one with its ``rid``, or without one, the
        oldest."""
        rid: str | None = getattr(message, "rid", None)
        if rid is None:
            rid = next(iter(self.pending), None)
        entry = self.pending.get(rid) if rid is not None else None
        if rid is None or entry is None:
            log.debug("an answer no request awaits: %r", message)
            return
        if entry.feed(message):
            del self.pending[rid]

    def fail_pending(self) -> None:
        """The connection closed: every request still awaiting an answer is lost."""
        self.lost = True
        pending, self.pending = self.pending, {}
        for entry in pending.values():
            entry.lost()


# The client.


class HubClient:
    """A client of the hub's WebSocket endpoint (``ws://host:port/ws/stream``).

    Use ``async with HubClient(url) as client:`` (or ``await client.connect()`` and
    ``await client.close()``).

    Args:
        url: the hub's WebSocket URL (default :data:`DEFAULT_URL`).
        urls: instead of ``url``, the WebSocket URLs of several hubs sharing one broker
            (docs/PROTOCOL.md "Running several hubs"), e.g. one per node: :meth:`connect`
            tries them in order; after a lost connection the client tries the next URL
            after the one it lost first, then the others in turn (each attempt one URL, with
            the backoff below), and resumes its streams on whichever answers. Assigning a new
            list to :attr:`urls` moves later reconnects there.
        reconnect: reconnect and resume open streams when the connection is lost (module
            docstring). False: a lost connection fails every open stream with
            :class:`HubConnectionError`.
        base_delay_s: backoff base, in seconds: reconnect attempt *n* (from 0) waits uniform
            ``[0, min(max_delay_s, base_delay_s * 2**n)]`` s (full jitter).
        max_delay_s: backoff cap, in seconds.
        max_reconnect_attempts: consecutive failed connection attempts after which the client
            gives up (open streams and later calls raise :class:`HubConnectionError`); None:
            never give up. A connection counts as working once the hub sent it anything
            (the client pings it right after a reconnect). Each URL tried counts as one attempt.
        on_reconnect: called with a :class:`Reconnect` after each reconnect, once the resume
            requests are sent; a plain function or a coroutine function. Exceptions it
            raises are logged and ignored.
        open_timeout_s: timeout of one connection attempt (TCP + WebSocket handshake), in s.
        max_message_bytes: largest hub message accepted, in bytes (None: no limit, the hub's
            own messages have none; docs/PROTOCOL.md "Transport").
        token: a JWT or API key for a hub that requires authentication, sent in an ``auth``
            message first on every connection.
        get_token: instead of ``token``, a function (plain or coroutine) returning a fresh
            token; called for every connection and before the current token expires.
        **connect_options: passed to :func:`websockets.asyncio.client.connect`
            (``additional_headers``, ``ssl``, ``proxy``, ``ping_interval``...).
    """

    def __init__(self, url: str | None = None, *, urls: Sequence[str] | None = None, reconnect: bool = True,
                 base_delay_s: float = 0.1, max_delay_s: float = 5.0, max_reconnect_attempts: int | None = 10,
                 on_reconnect: Callable[[Reconnect], None | Awaitable[None]] | None = None,
                 open_timeout_s: float = 10.0, max_message_bytes: int | None = None,
                 token: str | None = None, get_token: Callable[[], str | Awaitable[str]] | None = None,
                 **connect_options: Any) -> None:
        if token is not None and get_token is not None:
            raise InvalidArgumentError("give token or get_token, not both")
        if urls is not None and url is not None:
            raise InvalidArgumentError("give url or urls, not both")
        self._urls = _url_list(urls) if urls is not None else (url or DEFAULT_URL,)
        self._url_index = 0  # the position in _urls of the URL last tried
        #: The URL of the current connection (or the last one tried; before any, the first of :attr:`urls`).
        self.url = self._urls[0]
        self.token = token
        self.get_token = get_token
        #: The subject and expiry (epoch ms) the hub last confirmed (``authenticated``).
        self.authenticated: Authenticated | None = None
        self._refresher: asyncio.Task[None] | None = None
        self.reconnect = reconnect
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.max_reconnect_attempts = max_reconnect_attempts
        self.on_reconnect = on_reconnect
        self.open_timeout_s = open_timeout_s
        self.max_message_bytes = max_message_bytes
        self.connect_options = connect_options
        #: Reconnects so far.
        self.reconnects = 0
        self._conn: Connection | None = None  # the connection, once resumed (ready for requests)
        self._live: set[Connection] = set()  # every connection whose reader runs
        self._numbers = 0
        self._streams: dict[str, HubStream[Any]] = {}
        self._supervisor: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._changed: asyncio.Event | None = None
        self._failure: HubConnectionError | None = None
        self._closing = False

    @property
    def urls(self) -> tuple[str, ...]:
        """The hubs' WebSocket URLs, in the order they are tried. Assign a new list (of at
        least one URL) to move the client's later reconnects there, from its first URL on.

        Raises (on assignment):
            InvalidArgumentError: an empty list, or a string instead of a list.
        """
        return self._urls

    @urls.setter
    def urls(self, urls: Sequence[str]) -> None:
        self._urls = _url_list(urls)
        self._url_index = -1  # the next attempt takes the first

    # Lifecycle.

    async def __aenter__(self) -> HubClient:
        return await self.connect()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def connect(self) -> HubClient:
        """Open the connection (once; there is no retry for this first one).

        Raises:
            HubConnectionError: the hub could not be reached, refused the WebSocket, or did
                not answer within ``open_timeout_s``; or the URL is not a WebSocket URL.
        """
        if self._supervisor is not None:
            return self
        if self._closing:
            raise HubConnectionError("the client is closed")
        failures: list[str] = []
        for index, url in enumerate(self._urls):
            self.url, self._url_index = url, index
            try:
                ws = await self._open()
            except InvalidURI as exc:
                raise HubConnectionError(f"not a WebSocket URL: {url!r} ({exc})") from exc
            except _CONNECT_ERRORS as exc:
                failures.append(f"cannot connect to {url}: {exc or type(exc).__name__}")
                continue
            break
        else:
            raise HubConnectionError("; ".join(failures))
        conn = self._install(ws)
        try:
            await self._authenticate(conn)
        except BaseException:
            with contextlib.suppress(Exception):
                await ws.close()
            if conn.reader is not None:
                await asyncio.gather(conn.reader, return_exceptions=True)
            raise
        self._conn = conn
        self._supervisor = asyncio.create_task(self._supervise(), name="cbhub-client")
        self._notify()
        return self

    # Authentication.

    async def _fresh_token(self) -> str | None:
        if self.get_token is None:
            return self.token
        token = self.get_token()
        return await token if inspect.isawaitable(token) else token

    async def _authenticate(self, conn: Connection) -> None:
        """Send the ``auth`` message on ``conn`` and wait for its answer (nothing to do
        without a token).

        Raises:
            HubAuthError: the hub refused the token.
            HubConnectionError: the connection closed first.
        """
        token = await self._fresh_token()
        if token is None:
            return
        waiter = _Waiter()
        try:
            await conn.send([({"type": "auth", "token": token}, waiter)])
        except _Lost:
            raise HubConnectionError(f"the connection to {self.url} closed before authenticating") from None
        answer = await waiter.future
        if answer is _Lost:
            code = conn.close_code
            raise HubAuthError(f"the hub closed the connection ({code}: {conn.close_reason})",
                               conn.close_reason or "unauthorized", code) if code in _AUTH_CLOSE_CODES \
                else HubConnectionError(f"the connection to {self.url} closed before authenticating ({code})", code)
        if waiter.error is not None:
            raise HubAuthError(f"the hub refused the token: {waiter.error.code}: {waiter.error.message}",
                               waiter.error.code)
        assert isinstance(answer, Authenticated)
        self.authenticated = answer
        self._schedule_refresh(answer)

    def _schedule_refresh(self, answer: Authenticated) -> None:
        """With ``get_token``: refresh on the open connection before ``expiresAt``."""
        if self._refresher is not None and self._refresher is not asyncio.current_task():
            self._refresher.cancel()
        self._refresher = None
        if self.get_token is None or answer.expires_at is None:
            return
        lifetime_s = answer.expires_at / 1000.0 - time.time()
        low, high = _REFRESH_MARGIN_S
        delay_s = max(0.0, lifetime_s - min(high, max(low, lifetime_s / 10)))
        self._refresher = asyncio.create_task(self._refresh_after(delay_s), name="cbhub-client-refresh")
        self._tasks.add(self._refresher)
        self._refresher.add_done_callback(self._tasks.discard)

    async def _refresh_after(self, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        conn = self._conn
        if conn is None or conn.lost:
            return  # the next connection authenticates anyway
        try:
            await self._authenticate(conn)
        except HubAuthError as exc:
            log.warning("refreshing the token failed: %s", exc)  # the hub closes 4001 when it expires
        except HubConnectionError:
            pass

    async def close(self) -> None:
        """Close the connection and stop reconnecting. Open streams raise
        :class:`HubConnectionError` ("the client is closed") to whoever still iterates them."""
        if self._closing:
            return
        self._closing = True
        supervisor = self._supervisor
        if supervisor is not None:
            supervisor.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*([supervisor] if supervisor else []), *self._tasks, return_exceptions=True)
        for conn in list(self._live):  # the current one, or one being resumed
            with contextlib.suppress(Exception):
                await conn.ws.close()
            if conn.reader is not None:
                await asyncio.gather(conn.reader, return_exceptions=True)
        self._conn = None
        self._give_up(HubConnectionError("the client is closed"))

    @property
    def connected(self) -> bool:
        """True while a connection is open and its streams resumed."""
        return self._conn is not None and not self._conn.lost

    @property
    def websocket(self) -> Any:
        """The current ``websockets`` connection (None while reconnecting): for diagnostics
        and tests; sending on it directly would confuse the client's answer matching."""
        return self._conn.ws if self._conn is not None else None

    # Requests.

    def completion(self, *, model: str, messages: Iterable[Mapping[str, Any] | ChatMessage],
                   id: str | None = None, **options: Any) -> HubStream[CompletionResult]:
        """A completion as a :class:`HubStream` (the request goes out on first iteration, or
        :meth:`HubStream.start`).

        Args:
            model: ``provider/model`` or a bare model name (docs/PROTOCOL.md ``completion``).
            messages: the conversation, OpenAI-shaped dicts or ``ChatMessage`` Structs.
            id: the completion id (1-128 of ``A-Z a-z 0-9 _ . : -``); generated
                (``py-<32 hex>``) when None, so the stream can be recovered even if the
                connection drops before the hub answers.
            **options: the other ``completion`` fields: ``max_tokens``, ``temperature``,
                ``tools``, ``tool_choice``, ``stop``, ``reasoning``, ``thinking``,
                ``coalesce``, ``fallbacks``.

        Raises:
            UnknownOptionError: an option the protocol does not have (also a TypeError).
            InvalidArgumentError: a malformed id, or no messages (also a ValueError).
        """
        unknown = sorted(set(options) - _OPTIONS)
        if unknown:
            raise UnknownOptionError(f"unknown completion option(s) {unknown}; expected some of {sorted(_OPTIONS)}")
        if id is None:
            id = f"py-{uuid.uuid4().hex}"
        elif not COMPLETION_ID_PATTERN.fullmatch(id):
            raise InvalidArgumentError(f"completion id {id!r} must be 1-128 characters from A-Z a-z 0-9 _ . : -")
        messages = list(messages)
        if not messages:
            raise InvalidArgumentError("messages must hold at least one message")
        request: dict[str, Any] = {"type": "completion", "id": id, "model": model, "messages": messages}
        request.update((key, value) for key, value in options.items() if value is not None)
        return HubStream(self, state_for(f"completion:{id}", requested=True), id, request)

    def subscribe(self, channel: str) -> HubStream[Any]:
        """Watch a channel (``completion:<id>``, ``system``) as a :class:`HubStream`: its events
        from ``seq`` 1 (what the hub still holds), then live, resumed across reconnects. A
        completion channel ends after its ``completed`` (or raises on its ``error``), and its
        stream has a :attr:`~HubStream.result` like one from :meth:`completion`. A
        ``workflow:<id>`` channel gives a :class:`WorkflowStream`, as
        :meth:`subscribe_workflow` does.

        Raises:
            InvalidArgumentError: not a channel name (also a ValueError).
        """
        if not CHANNEL_PATTERN.fullmatch(channel):
            raise InvalidArgumentError(
                f"{channel!r} is not a channel name (completion:<id>, workflow:<id>, agent:<id>, system)")
        kind, _, ident = channel.partition(":")
        if kind == "workflow":
            return WorkflowStream(self, ident, None)
        return HubStream(self, state_for(channel), ident if kind == "completion" else None, None)

    def workflow(self, definition_name: str | None = None, *, definition: Mapping[str, Any] | Any | None = None,
                 input: Mapping[str, Any] | None = None, workflow_id: str | None = None) -> WorkflowStream:
        """Start a workflow run (``create_workflow``) as a :class:`WorkflowStream` (the request
        goes out on first iteration, or :meth:`HubStream.start`).

        Args:
            definition_name: a definition the hub ships (``content_creation``).
            definition: an inline definition (a dict as docs/PROTOCOL.md "Workflows" shows, or
                a ``hub.workflows.WorkflowDefinition``); give exactly one of the two.
            input: the run's input, the token's ``data.input`` (``{"topic": ...}``).
            workflow_id: the run's id (1-128 of ``A-Z a-z 0-9 _ . : -``); generated
                (``py-wf-<32 hex>``) when None, so the run can be recovered even if the
                connection drops before the hub answers.

        Raises:
            InvalidArgumentError: both or neither of ``definition_name`` and ``definition``, or a
                malformed id.
        """
        if (definition_name is None) == (definition is None):
            raise InvalidArgumentError("give exactly one of definition_name and definition")
        if workflow_id is None:
            workflow_id = f"py-wf-{uuid.uuid4().hex}"
        elif not COMPLETION_ID_PATTERN.fullmatch(workflow_id):
            raise InvalidArgumentError(f"workflow id {workflow_id!r} must be 1-128 characters from A-Z a-z 0-9 _ . : -")
        request: dict[str, Any] = {"type": "create_workflow", "workflowId": workflow_id, "input": dict(input or {})}
        if definition_name is not None:
            request["definitionName"] = definition_name
        else:
            request["definition"] = (dict(definition) if isinstance(definition, Mapping)
                                     else msgspec.to_builtins(definition))
        return WorkflowStream(self, workflow_id, request)

    def subscribe_workflow(self, workflow_id: str) -> WorkflowStream:
        """Watch a workflow run as a :class:`WorkflowStream`: its events from ``seq`` 1 (or a
        ``workflow_snapshot`` when the hub no longer holds them all), then live, resumed
        across reconnects; it ends after ``workflow_completed``. The same as
        ``subscribe(f"workflow:{workflow_id}")``.

        Raises:
            InvalidArgumentError: a malformed id (also a ValueError).
        """
        if not COMPLETION_ID_PATTERN.fullmatch(workflow_id):
            raise InvalidArgumentError(f"workflow id {workflow_id!r} must be 1-128 characters from A-Z a-z 0-9 _ . : -")
        return WorkflowStream(self, workflow_id, None)

    async def cancel(self, completion_id: str) -> None:
        """Cancel a completion this client watches (started with :meth:`completion` or
        subscribed to with :meth:`subscribe`). Its stream then raises
        :class:`HubStreamError` code ``cancelled``. Cancelling one that already ended does
        nothing (but after a reconnect the client no longer watches streams that had ended,
        so the hub answers ``not_subscribed`` for them).

        Raises:
            HubRequestError: ``unknown_completion``, or ``not_subscribed`` (this client does
                not watch it).
            HubConnectionError: no connection, and none will come.
        """
        answer = await self._request({"type": "cancel", "completionId": completion_id})
        if answer.error is not None:
            raise HubRequestError(answer.error)

    async def cancel_workflow(self, workflow_id: str) -> None:
        """Cancel a workflow run this client watches (started with :meth:`workflow` or
        watched with :meth:`subscribe_workflow`) and every completion it is running. Its
        stream then raises :class:`HubStreamError` code ``cancelled``. Cancelling one that
        already ended does nothing (after a reconnect, see :meth:`cancel`).

        Raises:
            HubRequestError: ``unknown_workflow``, or ``not_subscribed``.
            HubConnectionError: no connection, and none will come.
        """
        answer = await self._request({"type": "cancel_workflow", "workflowId": workflow_id})
        if answer.error is not None:
            raise HubRequestError(answer.error)

    async def ping(self) -> float:
        """Round trip of an application-level ``ping``, in seconds.

        Raises:
            HubConnectionError: no connection, and none will come.
        """
        started = time.perf_counter()
        await self._request(_PING)
        return time.perf_counter() - started

    async def _request(self, message: Mapping[str, Any]) -> _Waiter:
        """Send ``message`` with a ``rid`` and wait for the answer that echoes it (``pong``,
        ``ack`` or ``error``); sent again on the next connection when this one is lost first."""
        while True:
            conn = await self._connection()
            waiter = _Waiter()
            try:
                await conn.send([(message, waiter)])
            except _Lost:
                continue
            if await waiter.future is not _Lost:
                return waiter

    async def _leave(self, channel: str) -> None:
        """Unsubscribe from ``channel`` on the current connection (best effort)."""
        conn = self._conn
        if conn is None or conn.lost or self._closing:
            return
        with contextlib.suppress(_Lost):
            await conn.send([({"type": "unsubscribe", "channels": [channel]}, _Entry())])

    # Streams.

    def _register(self, stream: HubStream[Any]) -> None:
        channel = stream.channel
        if channel in self._streams:
            raise InvalidArgumentError(f"this client already has an open stream of {channel}")
        # Events of agent:<workflowId>.<agentId> are those of workflow:<workflowId> (with
        # their own seq) and nothing in them says which channel sent them: one client cannot
        # tell them apart when it watches both.
        if channel.startswith(("agent:", "workflow:")):
            for other in self._streams:
                agent, run = (channel, other) if channel.startswith("agent:") else (other, channel)
                if (agent.startswith("agent:") and run.startswith("workflow:")
                        and agent.startswith(f"agent:{run.partition(':')[2]}.")):
                    raise InvalidArgumentError(f"{channel} and {other} carry the same events and nothing in them says "
                                     f"which channel sent them; watch {channel} from another HubClient")
        self._streams[channel] = stream

    def _unregister(self, stream: HubStream[Any]) -> None:
        if self._streams.get(stream.channel) is stream:
            del self._streams[stream.channel]

    async def _ensure_sent(self, stream: HubStream[Any], conn: Connection) -> None:
        """Send ``stream``'s request on ``conn`` unless it was sent there already: the
        ``completion`` until the hub acknowledged it, then a ``subscribe`` (with ``since``
        once the hub gave the channel an epoch).

        Raises:
            _Lost: ``conn`` is gone (the next connection sends it).
        """
        if stream._done or stream._sent_on == conn.number:
            return
        stream._sent_on = conn.number
        requests: list[tuple[Mapping[str, Any], _Entry]] = []
        if stream.channel in conn.hub_channels:
            # Left subscribed on this connection by an earlier stream: the hub would replay
            # nothing to a second subscribe, so leave first.
            requests.append(({"type": "unsubscribe", "channels": [stream.channel]}, _Entry()))
        if stream._request is not None and not stream._acked:
            kind = "restart" if stream._sends else "start"
            request: Mapping[str, Any] = stream._request
        else:
            kind = "subscribe"
            subscribe: dict[str, Any] = {"type": "subscribe", "channels": [stream.channel]}
            cursor = stream._cursor()
            if cursor is not None:
                subscribe["since"] = {stream.channel: cursor}
            request = subscribe
        requests.append((request, _StreamEntry(stream, kind, conn)))
        stream._mark_sent(time.perf_counter())
        await conn.send(requests)

    async def _ensure_sent_quietly(self, stream: HubStream[Any], conn: Connection) -> None:
        with contextlib.suppress(_Lost):
            await self._ensure_sent(stream, conn)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # The connection.

    async def _open(self) -> Any:
        """Open a WebSocket to :attr:`url`."""
        return await websockets.connect(
            self.url, compression=None, open_timeout=self.open_timeout_s, max_size=self.max_message_bytes,
            **self.connect_options,
        )

    def _install(self, ws: Any) -> Connection:
        self._numbers += 1
        conn = Connection(ws, self._numbers)
        conn.reader = asyncio.create_task(self._read(conn), name=f"cbhub-client-reader-{conn.number}")
        self._live.add(conn)
        return conn

    async def _connection(self) -> Connection:
        """The connection to send on, once it is open and its streams are resumed.

        Raises:
            HubConnectionError: the client is closed, never connected, or gave up.
        """
        while True:
            if self._failure is not None:
                raise self._failure
            if self._closing:
                raise HubConnectionError("the client is closed")
            if self._supervisor is None:
                raise HubConnectionError("not connected: use `async with HubClient(url)` or `await client.connect()`")
            conn = self._conn
            if conn is not None and not conn.lost:
                return conn
            await self._changed_event().wait()

    def _changed_event(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def _notify(self) -> None:
        event = self._changed
        self._changed = asyncio.Event()
        if event is not None:
            event.set()

    async def _read(self, conn: Connection) -> None:
        """Dispatch every frame of ``conn`` until it closes."""
        ws = conn.ws
        try:
            async for frame in ws:
                conn.received = True
                try:
                    self._dispatch(conn, frame)
                except Exception:  # a bug of ours must not stop the other streams
                    log.exception("handling a hub message failed: %.200r", frame)
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("reading from the hub failed")
            ws.transport.abort()
        finally:
            conn.close_code = int(ws.close_code) if ws.close_code is not None else 1006
            conn.close_reason = ws.close_reason or ""
            conn.fail_pending()
            self._live.discard(conn)

    def _dispatch(self, conn: Connection, frame: str | bytes) -> None:
        try:
            message = HUB_DECODER.decode(frame)
        except (msgspec.ValidationError, msgspec.DecodeError):
            log.debug("ignoring a hub message of a type this client does not know: %.200r", frame)
            return
        if isinstance(message, _ANSWERS) or (isinstance(message, ErrorMessage) and message.seq is None):
            if isinstance(message, Subscribed):
                conn.hub_channels.update(message.channels)
            elif isinstance(message, Unsubscribed):
                conn.hub_channels.difference_update(message.channels)
            conn.answer(message)
            return
        workflow_id = getattr(message, "workflow_id", None)
        completion_id = getattr(message, "completion_id", None)
        if workflow_id is not None:  # before completion_id: agent_started carries both
            stream = self._streams.get(f"workflow:{workflow_id}")
            if stream is None and isinstance(message, _AGENT_EVENTS):
                stream = self._streams.get(f"agent:{workflow_id}.{message.agent_id}")
        elif completion_id is not None:
            stream = self._streams.get(f"completion:{completion_id}")
        elif isinstance(message, CircuitState):
            stream = self._streams.get("system")
        else:
            stream = None
        if stream is not None:
            stream._on_message(message)

    async def _supervise(self) -> None:
        """Wait for the connection to close; reconnect with backoff and resume the streams."""
        loop = asyncio.get_running_loop()
        failures = 0  # consecutive connection attempts that gave no working connection
        while True:
            conn = self._conn
            assert conn is not None and conn.reader is not None
            await asyncio.shield(conn.reader)
            self._conn = None
            if conn.received:
                failures = 0
            if self._closing:
                return
            code, reason = conn.close_code, conn.close_reason
            if code in _AUTH_CLOSE_CODES:
                self._give_up(HubAuthError(f"the hub closed the connection ({code}: {reason or 'unauthorized'}); "
                                           "a new token is needed", reason or "unauthorized", code))
                return
            if not self.reconnect or code in FATAL_CLOSE_CODES:
                self._give_up(HubConnectionError(
                    f"the connection to {self.url} closed ({code}{': ' + reason if reason else ''})", code))
                return
            log.info("connection to %s lost (%s %s); reconnecting", self.url, code, reason)
            lost_at = loop.time()
            attempts = 0
            while True:
                if self.max_reconnect_attempts is not None and failures >= self.max_reconnect_attempts:
                    tried = self.url if len(self._urls) == 1 else ", ".join(self._urls)
                    self._give_up(HubConnectionError(
                        f"could not reconnect to {tried} after {failures} attempts (last close {code})", code))
                    return
                await asyncio.sleep(backoff_delay_s(failures, self.base_delay_s * 1000.0, self.max_delay_s * 1000.0))
                failures += 1
                attempts += 1
                self._url_index = (self._url_index + 1) % len(self._urls)  # the URL after the one lost or failed
                url = self.url = self._urls[self._url_index]
                try:
                    ws = await self._open()
                except _CONNECT_ERRORS as exc:
                    log.info("reconnecting to %s failed: %s", url, exc or type(exc).__name__)
                    continue
                break
            new = self._install(ws)
            try:
                await self._authenticate(new)
            except HubAuthError as exc:
                self._give_up(exc)
                with contextlib.suppress(Exception):
                    await ws.close()
                return
            except HubConnectionError:
                self._conn = new  # lost already: the loop above waits for its reader, then reconnects
                continue
            except Exception as exc:  # get_token raised
                log.exception("get_token raised")
                self._give_up(HubAuthError(f"get_token raised {type(exc).__name__}: {exc}", "unauthorized"))
                with contextlib.suppress(Exception):
                    await ws.close()
                return
            channels = await self._resume(new)
            if new.lost:
                self._conn = new  # the loop above waits for its reader, then reconnects
                continue
            self._conn = new
            self.reconnects += 1
            self._notify()
            if self.on_reconnect is not None:
                info = Reconnect(attempts, code, reason, loop.time() - lost_at, tuple(channels), self.url)
                try:
                    outcome = self.on_reconnect(info)
                    if inspect.isawaitable(outcome):
                        await outcome
                except Exception:
                    log.exception("on_reconnect raised")

    async def _resume(self, conn: Connection) -> list[str]:
        """Send every open stream's request on a new connection, then a ping (its pong shows
        the connection works). Returns the channels resumed."""
        channels = []
        try:
            for stream in list(self._streams.values()):
                if not stream._done:
                    channels.append(stream.channel)
                    await self._ensure_sent(stream, conn)
            await conn.send([(_PING, _Entry())])
        except _Lost:
            pass
        return channels

    def _give_up(self, error: HubConnectionError) -> None:
        if self._failure is None:
            self._failure = error
        for stream in list(self._streams.values()):
            stream._fail(error)
        self._notify()
