"""The Redis broker's PUB/SUB reader (hub/redis_broker.py): one connection of its own, an
:class:`asyncio.Protocol` that feeds :class:`hiredis.Reader` in ``data_received`` and hands every
complete frame of one read to its owner in one call (the owner then flushes its subscribers
once), instead of redis-py's ``get_message`` coroutine, its timeout and a dict per message
(about 11 µs per message, docs/BENCHMARKS.md "Several hubs").

The reader keeps the channels and patterns it was asked for and writes ``SUBSCRIBE``,
``UNSUBSCRIBE``, ``PSUBSCRIBE`` and ``PUNSUBSCRIBE`` itself (RESP2, at most
:data:`TOPICS_PER_COMMAND` names per command). When the connection is lost (Redis gone,
``CLIENT KILL``, a protocol error, an error reply, a frame past ``max_frame_bytes``) it tells its
owner once (``on_lost``), then every ``pause`` s it connects again and subscribes to every
channel and pattern it holds; Redis confirms each, and the owner sees those confirmations as
frames like any other.

URLs: ``redis://`` (``AUTH`` with the URL's user name and password before anything else),
``rediss://`` (TLS, with the URL's ``ssl_cert_reqs``, ``ssl_ca_certs``, ``ssl_certfile``,
``ssl_keyfile`` and ``ssl_check_hostname``, as redis-py reads them) and ``unix://``. The URL's
database is irrelevant (PUB/SUB channels are global).

:class:`ScriptWriter` is the broker's publishing connection, made the same way: one Lua script
run with ``EVALSHA`` (``EVAL`` once after ``NOSCRIPT``: a restarted Redis lost it), one call at a
time, hiredis parsing its reply; ``AUTH`` and ``SELECT`` of the URL's database first. About a
third of redis-py's cost per round trip (no pool, lock, command-packing or response-callback
layers), and every publish round trip pays it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import ssl
from collections.abc import Callable, Iterable
from typing import Any

import hiredis
from redis._parsers.base import BaseParser
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["PubSubReader", "ScriptWriter", "MAX_FRAME_BYTES", "TOPICS_PER_COMMAND", "encode_command"]

log = logging.getLogger("cbhub.broker")

#: A frame (or the unread rest of one) larger than this closes the connection as an error.
MAX_FRAME_BYTES = 64 << 20
#: The most channel or pattern names one SUBSCRIBE-like command carries.
TOPICS_PER_COMMAND = 1000


def encode_command(*parts: bytes) -> bytes:
    """One RESP2 command: an array of bulk strings (``parts`` as given, bytes)."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n" % len(part))
        out.append(part)
        out.append(b"\r\n")
    return b"".join(out)


def _ssl_context(options: dict[str, Any]) -> ssl.SSLContext:
    """An SSL context from redis-py's URL options (``ssl_cert_reqs`` none/optional/required,
    ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_check_hostname``)."""
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
    reqs = str(options.get("ssl_cert_reqs") or "required").lower()
    check = options.get("ssl_check_hostname")
    if check is not None:
        context.check_hostname = str(check).lower() in ("1", "true", "yes")
    if reqs in ("none", "cert_none"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif reqs in ("optional", "cert_optional"):
        context.verify_mode = ssl.CERT_OPTIONAL
    if options.get("ssl_certfile"):
        context.load_cert_chain(options["ssl_certfile"], options.get("ssl_keyfile"))
    return context


class _Protocol(asyncio.Protocol):
    """One connection's bytes: frames out of hiredis, AUTH's reply first when there is one."""

    def __init__(self, owner: PubSubReader, auth: bool) -> None:
        self.owner = owner
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.authenticated: asyncio.Future[None] = loop.create_future()
        if not auth:
            self.authenticated.set_result(None)
        self.lost: asyncio.Future[BaseException] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        frames: list[Any] = []
        try:
            reader.feed(data)
            while True:
                frame = reader.gets()
                if frame is False:
                    break
                if isinstance(frame, hiredis.ReplyError):
                    self._fail(ConnectionError(f"Redis answered the PUB/SUB connection with an error: {frame}"))
                    return
                if not self.authenticated.done():  # AUTH's reply
                    self.authenticated.set_result(None)
                    continue
                frames.append(frame)
        except hiredis.ProtocolError as exc:
            self._fail(ConnectionError(f"the PUB/SUB connection got bytes that are not RESP ({exc})"))
            return
        if reader.len() > self.owner.max_frame_bytes:
            self._fail(ConnectionError(f"a PUB/SUB frame is larger than {self.owner.max_frame_bytes} bytes"))
            return
        if frames:
            try:
                self.owner.on_frames(frames)
            except Exception:  # a bug of the owner's must not close the connection
                log.exception("handling Redis PUB/SUB frames failed")

    def _fail(self, exc: BaseException) -> None:
        if not self.authenticated.done():
            self.authenticated.set_exception(exc)
            self.authenticated.exception()  # retrieved: the connect path raises it
        if not self.lost.done():
            self.lost.set_result(exc)
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc if exc is not None else ConnectionError("Redis closed the PUB/SUB connection"))


class PubSubReader:
    """A PUB/SUB connection to the Redis at ``url`` (see the module docstring).

    Args:
        url: a redis-py URL (``redis://``, ``rediss://``, ``unix://``); user name and
            password are sent with ``AUTH``.
        on_frames: called with every complete frame of one read, in order, each a list as
            hiredis gives it (``[b"message", channel, data]``, ``[b"pmessage", pattern,
            channel, data]``, ``[b"subscribe", channel, count]``...); never with an empty list.
        on_lost: called once per loss of the connection with its cause, before reconnecting.
        timeout: seconds to connect and authenticate.
        pause: seconds between attempts to connect again.
        max_frame_bytes: a frame larger than this closes the connection as an error.

    Attributes:
        connected: True while the connection is open (authenticated).
        channels: the channels subscribed (bytes); patterns: the patterns.
    """

    def __init__(self, url: str, on_frames: Callable[[list[Any]], None],
                 on_lost: Callable[[BaseException], None], *, timeout: float = 5.0, pause: float = 0.5,
                 max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self.url = url
        self.on_frames = on_frames
        self.on_lost = on_lost
        self.timeout = timeout
        self.pause = pause
        self.max_frame_bytes = max_frame_bytes
        self.connected = False
        self.channels: set[bytes] = set()
        self.patterns: set[bytes] = set()
        self._protocol: _Protocol | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        options: dict[str, Any] = dict(parse_url(url))
        self._options = options
        self._unix = options.get("connection_class") is UnixDomainSocketConnection
        self._ssl = _ssl_context(options) if options.get("connection_class") is SSLConnection else None

    async def start(self) -> None:
        """Connect (and authenticate), then keep connected until :meth:`close`.

        Raises:
            OSError: Redis cannot be reached, refused AUTH (``ConnectionError``), or timed out.
        """
        await self._open()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="redis-broker-pubsub")

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        options = self._options
        password = options.get("password")
        username = options.get("username")
        protocol = _Protocol(self, auth=password is not None)
        try:
            async with asyncio.timeout(self.timeout):
                if self._unix:
                    await loop.create_unix_connection(lambda: protocol, options["path"])
                else:
                    host = options.get("host") or "localhost"
                    await loop.create_connection(
                        lambda: protocol, host, int(options.get("port") or 6379), ssl=self._ssl,
                        server_hostname=host if self._ssl is not None else None)
                assert protocol.transport is not None
                if password is not None:
                    parts = [b"AUTH"] + ([username.encode()] if username else []) + [password.encode()]
                    protocol.transport.write(encode_command(*parts))
                    await asyncio.shield(protocol.authenticated)
        except TimeoutError as exc:
            if protocol.transport is not None:
                protocol.transport.abort()
            raise ConnectionError("Redis did not answer the PUB/SUB connection in time") from exc
        except BaseException:
            if protocol.transport is not None:
                protocol.transport.abort()
            raise
        if protocol.lost.done():
            raise ConnectionError("the PUB/SUB connection closed at once")
        self._protocol = protocol
        self.connected = True
        self._write(b"SUBSCRIBE", self.channels)
        self._write(b"PSUBSCRIBE", self.patterns)

    async def _run(self) -> None:
        while not self._closed:
            protocol = self._protocol
            assert protocol is not None
            cause = await protocol.lost
            self.connected = False
            self._protocol = None
            if self._closed:
                return
            try:
                self.on_lost(cause)
            except Exception:  # a bug of the owner's must not stop reconnecting
                log.exception("the PUB/SUB connection's loss handler failed")
            while not self._closed:
                await asyncio.sleep(self.pause)
                try:
                    await self._open()
                    break
                except OSError as exc:
                    log.debug("reconnecting the PUB/SUB connection failed: %s", type(exc).__name__)

    def _write(self, command: bytes, topics: Iterable[bytes]) -> None:
        protocol = self._protocol
        if protocol is None or protocol.transport is None or not self.connected:
            return
        names = list(topics)
        for start in range(0, len(names), TOPICS_PER_COMMAND):
            protocol.transport.write(encode_command(command, *names[start:start + TOPICS_PER_COMMAND]))

    def subscribe(self, *channels: bytes) -> None:
        """Subscribe to ``channels``: now when connected, else at the next connection (Redis
        confirms each with a ``subscribe`` frame; a caller that needs the subscription waits
        for that frame, with a bound of its own)."""
        fresh = [channel for channel in channels if channel not in self.channels]
        self.channels.update(fresh)
        self._write(b"SUBSCRIBE", fresh)

    def unsubscribe(self, *channels: bytes) -> None:
        """Stop listening on ``channels`` (written now when connected, else forgotten)."""
        gone = [channel for channel in channels if channel in self.channels]
        self.channels.difference_update(gone)
        self._write(b"UNSUBSCRIBE", gone)

    def psubscribe(self, *patterns: bytes) -> None:
        """Subscribe to ``patterns``: now when connected, else at the next connection."""
        fresh = [pattern for pattern in patterns if pattern not in self.patterns]
        self.patterns.update(fresh)
        self._write(b"PSUBSCRIBE", fresh)

    def punsubscribe(self, *patterns: bytes) -> None:
        """Stop listening on ``patterns``."""
        gone = [pattern for pattern in patterns if pattern in self.patterns]
        self.patterns.difference_update(gone)
        self._write(b"PUNSUBSCRIBE", gone)

    async def close(self) -> None:
        """Close the connection and stop reconnecting."""
        self._closed = True
        self.connected = False
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _arg(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int):
        return b"%d" % value
    return str(value).encode()


class _Replies(asyncio.Protocol):
    """A request/reply connection: replies are matched to requests in order."""

    def __init__(self, max_frame_bytes: int) -> None:
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.max_frame_bytes = max_frame_bytes
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def request(self, command: bytes) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.closed or self.transport is None:
            future.set_exception(RedisConnectionError("the connection to Redis is closed"))
            return future
        self.waiting.append(future)
        self.transport.write(command)
        return future

    def data_received(self, data: bytes) -> None:
        try:
            self.reader.feed(data)
            while (reply := self.reader.gets()) is not False:
                if isinstance(reply, hiredis.ReplyError):
                    reply = BaseParser.parse_error(str(reply))  # type: ignore[no-untyped-call]
                if not self.waiting:
                    raise hiredis.ProtocolError("a reply nobody asked for")
                future = self.waiting.popleft()
                if not future.done():
                    future.set_result(reply)
        except hiredis.ProtocolError as exc:
            self.abort(RedisConnectionError(f"Redis sent bytes that are not RESP ({exc})"))
            return
        if self.reader.len() > self.max_frame_bytes:
            self.abort(RedisConnectionError(f"a Redis reply is larger than {self.max_frame_bytes} bytes"))

    def abort(self, exc: BaseException) -> None:
        self.closed = True
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.abort(RedisConnectionError(f"Redis closed the connection ({exc or 'EOF'})"))


class ScriptWriter:
    """Runs one Lua script on a connection of its own (see the module docstring); call it
    as redis-py's ``Script``: ``await writer(keys=[...], args=[...])``, one call at a time.

    Args:
        url: a redis-py URL; its user name, password and database are used.
        script: the Lua source.
        timeout: seconds for connecting and for each call.
        max_frame_bytes: a reply larger than this closes the connection as an error.

    Raises (from a call): redis-py's exceptions as its parser makes them from Redis's error
    replies (``OutOfMemoryError``, ``ReadOnlyError``, ``ResponseError``...);
    ``redis.exceptions.ConnectionError`` when the connection is lost or cannot be made
    (``AuthenticationError`` for a refused password), ``redis.exceptions.TimeoutError`` past
    ``timeout`` (the connection is then closed: a late reply must not answer the next call).
    """

    def __init__(self, url: str, script: str, *, timeout: float = 5.0, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self.url = url
        self.script = script.encode()
        self.sha = hashlib.sha1(self.script).hexdigest().encode()
        self.timeout = timeout
        self.max_frame_bytes = max_frame_bytes
        self._options: dict[str, Any] = dict(parse_url(url))
        self._ssl = _ssl_context(self._options) if self._options.get("connection_class") is SSLConnection else None
        self._protocol: _Replies | None = None

    async def _connect(self) -> _Replies:
        protocol = self._protocol
        if protocol is not None and not protocol.closed:
            return protocol
        self._protocol = None
        loop = asyncio.get_running_loop()
        options = self._options
        protocol = _Replies(self.max_frame_bytes)
        try:
            async with asyncio.timeout(self.timeout):
                if options.get("connection_class") is UnixDomainSocketConnection:
                    await loop.create_unix_connection(lambda: protocol, options["path"])
                else:
                    host = options.get("host") or "localhost"
                    await loop.create_connection(
                        lambda: protocol, host, int(options.get("port") or 6379), ssl=self._ssl,
                        server_hostname=host if self._ssl is not None else None)
                replies = []
                if options.get("password") is not None:
                    user = options.get("username")
                    parts = [b"AUTH"] + ([user.encode()] if user else []) + [options["password"].encode()]
                    replies.append(protocol.request(encode_command(*parts)))
                if int(options.get("db") or 0):
                    replies.append(protocol.request(encode_command(b"SELECT", b"%d" % int(options["db"]))))
                for reply in await asyncio.gather(*replies):
                    if isinstance(reply, Exception):
                        raise reply
        except TimeoutError as exc:
            protocol.abort(RedisTimeoutError("Redis did not answer in time"))
            raise RedisTimeoutError(f"Redis did not answer within {self.timeout} s") from exc
        except BaseException:
            protocol.abort(RedisConnectionError("the connection was not made"))
            raise
        self._protocol = protocol
        return protocol

    async def __call__(self, keys: Iterable[Any] = (), args: Iterable[Any] = ()) -> Any:
        """Run the script; its reply (hiredis's form: bytes, int, lists)."""
        names = [_arg(key) for key in keys]
        values = [_arg(value) for value in args]
        protocol = await self._connect()
        try:
            async with asyncio.timeout(self.timeout):
                count = b"%d" % len(names)
                reply = await protocol.request(encode_command(b"EVALSHA", self.sha, count, *names, *values))
                if isinstance(reply, NoScriptError):
                    reply = await protocol.request(encode_command(b"EVAL", self.script, count, *names, *values))
        except TimeoutError as exc:
            protocol.abort(RedisTimeoutError("timed out"))
            raise RedisTimeoutError(f"Redis did not answer within {self.timeout} s") from exc
        except BaseException:  # cancelled: a reply still due would answer the next call
            if protocol.waiting:
                protocol.abort(RedisConnectionError("a call was abandoned"))
            raise
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def ping(self) -> None:
        """Connect (authenticate, select the database) now.

        Raises:
            redis.exceptions.RedisError: as for a call.
        """
        protocol = await self._connect()
        async with asyncio.timeout(self.timeout):
            reply = await protocol.request(encode_command(b"PING"))
        if isinstance(reply, Exception):
            raise reply

    async def aclose(self) -> None:
        """Close the connection (a later call opens another)."""
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            protocol.abort(RedisConnectionError("closed"))
