"""Timeouts for every half-open HTTP connection, and a listener that keeps serving when the
process runs out of file descriptors (issue 12, "Timeouts for every half-open thing";
docs/PROTOCOL.md "Limits").

aiohttp bounds the size of a request head but not the time it takes to arrive, and asyncio's
accept loop, once ``accept()`` fails with ``EMFILE``, logs a traceback per attempt and
schedules one retry per attempt (up to the backlog, 128, per wake-up), so the retries multiply:
1,100 sockets that each sent one header line shut every client out and wrote hundreds of MB of
tracebacks. Here the hub accepts connections itself and hands each one to aiohttp:

- **Request head** (``http.header_timeout_s``): a connection must deliver a complete request
  head within this long of being accepted, else it is closed without an answer (checked every
  :data:`SWEEP_INTERVAL_S`). A WebSocket's opening handshake is an HTTP request head, so the
  handshake is bounded too. Later heads on a keep-alive connection are bounded by the
  keep-alive timeout, below.
- **Idle keep-alive** (``http.keepalive_timeout_s``): aiohttp's own ``keepalive_timeout``
  (:func:`hub.app.run_hub` passes it to the ``AppRunner``) closes a connection that waits for
  its next request head, a partly sent one included, this long after its last response.
- **Body** (``http.body_timeout_s``): :func:`read_body` reads a request body under this
  timeout; past it the answer is 408 with the OpenAI-style error body (code
  ``invalid_message``) and the connection is closed (after aiohttp's lingering close, at most
  10 s, so that the client reads the 408 rather than a reset).
- **Out of descriptors**: past the soft ``RLIMIT_NOFILE`` minus :data:`FD_RESERVE` open
  descriptors (kept for upstream sockets, files, the log), the listener first closes the oldest
  connections without a complete request head (the slow-loris attacker's; a client's head
  comes right after it connects): those open for :data:`SHED_MIN_AGE_S` that have sent
  bytes, and those open for :data:`SHED_SILENT_AGE_S` that have sent nothing (whose bytes a
  busy loop may not have read yet), then accepts. When that cannot keep the descriptors out
  of the second half of the reserve (every connection without a head is younger, or every
  connection is a real client's), it stops accepting until it can: new clients wait in the
  listen queue (:data:`BACKLOG`) instead of being refused. When ``accept()`` still fails for
  lack of resources (``EMFILE``, ``ENFILE``, ``ENOBUFS``, ``ENOMEM``), the listener closes
  such connections and retries after :data:`ACCEPT_RETRY_S`, doubling up to
  :data:`ACCEPT_RETRY_MAX_S` while nothing can be closed: it never spins, and it logs one
  warning (no traceback) per failure, which :mod:`hub.logsafe` collapses when it repeats.

Theory of operation: :class:`Listener` binds the listening sockets, runs one accept task per
socket (``loop.sock_accept``), and hands each accepted socket to aiohttp's protocol factory (the
``web.Server`` of the ``AppRunner``) with ``loop.connect_accepted_socket``. Until the
connection's first request head is complete, a small protocol (:class:`_HeadWatch`) stands
between the transport and aiohttp's request handler: it passes everything on, and watches the
bytes for the blank line that ends a head (``\r\n\r\n``; aiohttp accepts no other line end).
When it comes, it hands the transport over to the handler (``transport.set_protocol``) and
is out of the way for the rest of the connection. Seeing the head in the bytes, in the loop
iteration that reads them, rather than when the request reaches the application a few
iterations later, keeps a real client's connection from looking headless to the listener
while the loop is busy with a burst of attackers. Connections without a head sit, with their
deadline, in an ordered map, in the order they were accepted; one timer (every
:data:`SWEEP_INTERVAL_S`) closes the expired ones from the front, so a sweep costs what it
closes. The same map gives the oldest connections to close when descriptors run short.
Descriptors are counted (:func:`open_descriptors`) only near the threshold; below it the last
count plus the connections accepted since is the estimate.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
from collections import OrderedDict
from typing import TYPE_CHECKING, cast

from aiohttp import web

from hub.appkeys import HUB_KEY
from hub.logsafe import RESOURCE_ERRNOS
from protocol.errors import ErrorCode
from protocol.openai_compat import error_body

if TYPE_CHECKING:
    from hub.app import Hub

__all__ = [
    "ACCEPT_RETRY_MAX_S",
    "ACCEPT_RETRY_S",
    "BACKLOG",
    "FD_RESERVE",
    "SHED_BATCH",
    "SHED_MIN_AGE_S",
    "SHED_SILENT_AGE_S",
    "SWEEP_INTERVAL_S",
    "Listener",
    "ListenerStatistics",
    "open_descriptors",
    "read_body",
]

log = logging.getLogger("cbhub.http")

#: How often the deadlines of request heads are checked, in seconds: a connection without a
#: complete head is closed between ``http.header_timeout_s`` and this much later.
SWEEP_INTERVAL_S = 0.25
#: Descriptors kept free below the soft ``RLIMIT_NOFILE`` for what is not a client connection:
#: upstream sockets, files, the log.
FD_RESERVE = 64
#: How many connections without a request head are closed at once when descriptors run short
#: (beyond the number needed), so that the descriptors are not recounted at every accept.
SHED_BATCH = 16
#: Seconds a connection that has sent bytes, but no complete request head, is left before it
#: may be closed to make room (at most half of ``http.header_timeout_s``).
SHED_MIN_AGE_S = 0.25
#: The same for a connection that has sent nothing yet: under a burst of connections the loop
#: may not have read a real client's head yet when the burst's attackers push for room.
SHED_SILENT_AGE_S = 0.5
#: Connections without a head but too young to close that one search for connections to close
#: may pass over (the search costs at most this many more steps).
_SHED_SCAN = 64
#: The listen queue, in connections: where new clients wait while the hub makes room.
BACKLOG = 1024
#: Wait after an ``accept()`` that failed for lack of resources, in seconds; doubled up to
#: :data:`ACCEPT_RETRY_MAX_S` while the failures go on and nothing could be closed.
ACCEPT_RETRY_S = 0.01
ACCEPT_RETRY_MAX_S = 1.0
#: Accepts in a row before the accept task lets the other tasks run (which also gives each
#: accepted socket its request handler, so that it can be closed to make room).
_ACCEPT_BURST = 16


@dataclasses.dataclass(slots=True)
class ListenerStatistics:
    """What a :class:`Listener` has done since it started (counts of connections or events).

    Attributes:
        accepted: connections accepted.
        header_timeouts: connections closed because no complete request head came within
            ``http.header_timeout_s``.
        shed: connections without a request head closed early to free descriptors.
        waits: times accepting paused because no room could be made yet.
        accept_errors: ``accept()`` calls that failed (for lack of resources or otherwise).
    """

    accepted: int = 0
    header_timeouts: int = 0
    shed: int = 0
    waits: int = 0
    accept_errors: int = 0


def open_descriptors() -> int | None:
    """The number of file descriptors this process has open (Linux ``/proc/self/fd``, BSD and
    macOS ``/dev/fd``), or None when it cannot be counted (no such directory, or no descriptor
    left to open it with)."""
    for path in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(path)) - 1  # listing the directory holds one descriptor itself
        except OSError:
            continue
    return None


def _soft_fd_limit() -> int | None:
    """The soft ``RLIMIT_NOFILE``, or None when unlimited or unknown (no ``resource`` module)."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return None
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


async def _bind(host: str, port: int, backlog: int, reuse_port: bool = False) -> list[socket.socket]:
    """Listening, non-blocking sockets on every address ``host`` resolves to (as
    ``loop.create_server`` binds them: ``SO_REUSEADDR`` on POSIX, IPv6 sockets IPv6-only); with
    port 0 the first socket picks a free port and the others take the same one. With
    ``reuse_port``, ``SO_REUSEPORT`` too: several processes of one user listen on the same port
    and the kernel spreads new connections over them (``cbhub serve --workers``, hub/workers.py).

    Raises:
        OSError: an address cannot be resolved or bound (the sockets bound so far are closed).
    """
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    addresses = list(dict.fromkeys((family, kind, proto, address) for family, kind, proto, _, address in infos))
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, address in addresses:
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            if os.name == "posix":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


#: The blank line that ends a request head (aiohttp takes no bare ``\n`` line ends).
_END_OF_HEAD = b"\r\n\r\n"


class _HeadWatch(asyncio.Protocol):
    """The protocol of a new connection until its first request head is complete: it passes
    every event on to aiohttp's request handler, and when the bytes received hold the end of
    a head, tells the listener and hands the transport over to the handler."""

    __slots__ = ("_tail", "handler", "heard", "listener", "transport")

    def __init__(self, listener: Listener, handler: web.RequestHandler) -> None:
        self.listener = listener
        self.handler = handler
        self.transport: asyncio.Transport | None = None
        self.heard = False  # bytes came
        self._tail = b""  # the last bytes received, in case the end of the head is split

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.heard = True
        seen = self._tail + data
        if _END_OF_HEAD in seen:
            self.listener._forget(self)
            assert self.transport is not None
            self.transport.set_protocol(self.handler)  # from now on the transport talks to aiohttp
        else:
            self._tail = seen[-(len(_END_OF_HEAD) - 1):]
        self.handler.data_received(data)

    def eof_received(self) -> None:
        self.handler.eof_received()  # aiohttp's answer is None too: the transport closes

    def connection_lost(self, exc: Exception | None) -> None:
        self.listener._forget(self)
        self.handler.connection_lost(exc)

    def pause_writing(self) -> None:
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.handler.resume_writing()


class Listener:
    """Accepts the hub's connections and hands them to aiohttp, closing those that send no
    complete request head in time and making room when file descriptors run short (see the
    module docstring).

    Args:
        header_timeout_s: seconds a connection has, from being accepted, to send a complete
            request head (``http.header_timeout_s``).
        fd_reserve: descriptors kept free below the soft ``RLIMIT_NOFILE``; None:
            :data:`FD_RESERVE` as it is when the listener is made.
        backlog: the listen queue length, in connections (:data:`BACKLOG`).

    Attributes:
        sockets: the listening sockets (empty before :meth:`start`).
        shed_min_age_s: seconds a connection that sent bytes but no head is left before it
            may be closed to make room (:data:`SHED_MIN_AGE_S`, at most half the timeout).
        shed_silent_age_s: the same for a connection that sent nothing
            (:data:`SHED_SILENT_AGE_S`, at most half the timeout).
    """

    def __init__(self, header_timeout_s: float, *, fd_reserve: int | None = None, backlog: int = BACKLOG) -> None:
        self.header_timeout_s = header_timeout_s
        self.shed_min_age_s = min(SHED_MIN_AGE_S, header_timeout_s / 2)
        self.shed_silent_age_s = min(SHED_SILENT_AGE_S, header_timeout_s / 2)
        self.fd_reserve = FD_RESERVE if fd_reserve is None else fd_reserve
        self.backlog = backlog
        self.sockets: list[socket.socket] = []
        self._stats = ListenerStatistics()
        self._server: web.Server | None = None
        # Connections that have not sent a complete request head: deadline (loop time). The
        # order is the order of arrival, and every deadline is arrival + the same timeout.
        self._headless: OrderedDict[_HeadWatch, float] = OrderedDict()
        self._accept_tasks: list[asyncio.Task[None]] = []
        self._connecting: set[asyncio.Task[None]] = set()
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._fd_limit: int | None = None
        # Descriptors open at the last count (less those closed to make room since), and
        # connections accepted since: an upper bound, as connections that ended are not
        # subtracted. Right after closing connections their descriptors are not released yet
        # (a loop iteration later), so they are not counted again before the next wait or sweep.
        self._fds_counted = 0
        self._accepted_since_count = 0
        self._closed_since_count = False

    # Public methods.

    @property
    def port(self) -> int:
        """The port of the first listening socket (the one picked when 0 was asked).

        Raises:
            RuntimeError: not started.
        """
        if not self.sockets:
            raise RuntimeError("the listener is not started")
        port: int = self.sockets[0].getsockname()[1]
        return port

    async def start(self, server: web.Server, host: str, port: int, *, reuse_port: bool = False) -> None:
        """Listen on ``host:port`` (0: a free port) and serve every connection with
        ``server``, aiohttp's protocol factory (``AppRunner.server`` after ``setup()``). With
        ``reuse_port`` the sockets are bound with ``SO_REUSEPORT``, so that other processes that
        also set it share the port (the kernel balances connections between them).

        Raises:
            OSError: the address cannot be resolved or bound.
        """
        loop = asyncio.get_running_loop()
        self._server = server
        self._fd_limit = _soft_fd_limit()
        self._fds_counted = open_descriptors() or 0
        self.sockets = await _bind(host, port, self.backlog, reuse_port)
        self._accept_tasks = [loop.create_task(self._accept(sock), name=f"cbhub accept {sock.getsockname()}")
                              for sock in self.sockets]
        self._sweep_handle = loop.call_later(SWEEP_INTERVAL_S, self._sweep)

    async def stop_accepting(self) -> None:
        """Close the listening sockets: no new connection from here on. Open connections stay,
        and connections still without a request head are still closed at their deadline."""
        for task in self._accept_tasks:
            task.cancel()
        for task in self._accept_tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._accept_tasks = []
        for sock in self.sockets:
            sock.close()
        # Sockets accepted already are handed to aiohttp, whose shutdown closes them.
        await asyncio.gather(*self._connecting, return_exceptions=True)

    def close(self) -> None:
        """Stop the deadline timer (after :meth:`stop_accepting`, once aiohttp closed the
        connections)."""
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None
        self._headless.clear()

    def statistics(self) -> ListenerStatistics:
        """A copy of the counts of what the listener did since it started."""
        return dataclasses.replace(self._stats)

    # Accepting.

    async def _accept(self, sock: socket.socket) -> None:
        """Accept connections on ``sock`` until cancelled: only when there is room, backing
        off on errors."""
        loop = asyncio.get_running_loop()
        retry_s = ACCEPT_RETRY_S
        while True:
            for _ in range(_ACCEPT_BURST):
                wait_s = self._make_room()
                if wait_s:
                    self._stats.waits += 1
                    await asyncio.sleep(wait_s)
                    self._closed_since_count = False  # released by now: count them again
                    break
                try:
                    conn, _address = await loop.sock_accept(sock)
                except ConnectionAbortedError:
                    continue  # the client gave up while queued
                except OSError as exc:  # RESOURCE_ERRNOS, or anything else: never spin
                    self._stats.accept_errors += 1
                    closed = self._shed(SHED_BATCH) if exc.errno in RESOURCE_ERRNOS else 0
                    sheddable_s = self._until_sheddable()
                    if closed:
                        wait_s = retry_s = ACCEPT_RETRY_S
                    elif sheddable_s is not None and exc.errno in RESOURCE_ERRNOS:
                        wait_s = sheddable_s  # room comes when the oldest headless one is old enough
                    else:
                        wait_s, retry_s = retry_s, min(retry_s * 2, ACCEPT_RETRY_MAX_S)
                    log.warning("accepting a connection failed (%s); closed %d connections without a request "
                                "head; next try in %.2f s", exc.strerror or exc, closed, wait_s)
                    await asyncio.sleep(wait_s)
                    self._closed_since_count = False
                    break
                retry_s = ACCEPT_RETRY_S
                self._stats.accepted += 1
                self._accepted_since_count += 1
                task = loop.create_task(self._connect(conn))
                self._connecting.add(task)
                task.add_done_callback(self._connecting.discard)
            else:
                await asyncio.sleep(0)  # a burst of accepts must not keep the loop from the clients

    async def _connect(self, conn: socket.socket) -> None:
        """Give ``conn`` to aiohttp (its transport and a request handler)."""
        try:
            await asyncio.get_running_loop().connect_accepted_socket(self._protocol, conn)
        except OSError:
            conn.close()  # reset before the transport was made: nothing to serve
        except Exception:
            conn.close()
            log.exception("handing a connection to aiohttp failed")

    def _protocol(self) -> _HeadWatch:
        """The protocol of a new connection: aiohttp's request handler behind a
        :class:`_HeadWatch`, entered with its head deadline."""
        assert self._server is not None
        watch = _HeadWatch(self, self._server())
        self._headless[watch] = asyncio.get_running_loop().time() + self.header_timeout_s
        return watch

    def _forget(self, watch: _HeadWatch) -> None:
        """``watch``'s connection sent a complete request head, or ended: no deadline for it."""
        self._headless.pop(watch, None)

    # Making room and enforcing deadlines.

    def _make_room(self) -> float:
        """0 when one more connection may be accepted now, else the seconds to wait first.

        Past the soft limit minus the reserve, the oldest connections without a request head
        (old enough: see :meth:`_shed`) are closed, as many as needed plus a batch;
        the wait is asked for only when the descriptors would still reach into the second half
        of the reserve: until the oldest connection without a head is old enough, or the next
        sweep.
        """
        if self._fd_limit is None:
            return 0.0
        threshold = self._fd_limit - self.fd_reserve
        hard = self._fd_limit - self.fd_reserve // 2
        if self._fds_counted + self._accepted_since_count < threshold:
            return 0.0
        if not self._closed_since_count:
            counted = open_descriptors()
            self._fds_counted = hard if counted is None else counted
            self._accepted_since_count = 0
        excess = self._fds_counted + self._accepted_since_count + 1 - threshold
        if excess > 0:
            closed = self._shed(excess + SHED_BATCH - 1)
            if closed:
                self._fds_counted -= closed
                self._closed_since_count = True
        if self._fds_counted + self._accepted_since_count < hard:
            return 0.0
        sheddable_s = self._until_sheddable()
        return SWEEP_INTERVAL_S if sheddable_s is None else sheddable_s

    def _until_sheddable(self) -> float | None:
        """Seconds until the oldest connection without a request head may be closed (between
        10 ms and :data:`SWEEP_INTERVAL_S`); None when there is no such connection."""
        headless = self._headless
        while headless:
            watch, deadline = next(iter(headless.items()))
            if watch.handler.transport is not None:
                opened = deadline - self.header_timeout_s
                age_s = self.shed_min_age_s if watch.heard else self.shed_silent_age_s
                wait_s = opened + age_s - asyncio.get_running_loop().time()
                return min(max(wait_s, 0.01), SWEEP_INTERVAL_S)
            del headless[watch]  # not connected yet, or gone
        return None

    def _shed(self, count: int) -> int:
        """Close up to ``count`` of the oldest connections without a request head: those open
        for :attr:`shed_min_age_s` that have sent bytes, and those open for
        :attr:`shed_silent_age_s` that have sent nothing. Returns how many were closed."""
        now = asyncio.get_running_loop().time()
        victims: list[_HeadWatch] = []
        passed = 0
        for watch, deadline in self._headless.items():
            age_s = now - (deadline - self.header_timeout_s)
            if len(victims) >= count or passed >= _SHED_SCAN or age_s < self.shed_min_age_s:
                break  # the rest are younger still
            if watch.handler.transport is not None and (watch.heard or age_s >= self.shed_silent_age_s):
                victims.append(watch)
            else:
                passed += 1
        for watch in victims:
            del self._headless[watch]
            watch.handler.force_close()
        self._stats.shed += len(victims)
        return len(victims)

    def _sweep(self) -> None:
        """Close the connections whose request-head deadline passed (runs every
        :data:`SWEEP_INTERVAL_S` and costs what it closes), and count the descriptors again
        after connections were closed to make room."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        headless = self._headless
        while headless:
            watch, deadline = next(iter(headless.items()))
            if deadline > now:
                break
            del headless[watch]
            if watch.handler.transport is not None:
                watch.handler.force_close()
                self._stats.header_timeouts += 1
        if self._closed_since_count:  # connections were closed to make room: count again
            counted = open_descriptors()
            if counted is not None:
                self._fds_counted, self._accepted_since_count = counted, 0
                self._closed_since_count = False
        self._sweep_handle = loop.call_later(SWEEP_INTERVAL_S, self._sweep)


async def read_body(request: web.Request) -> bytes:
    """The request body, which must arrive within ``http.body_timeout_s`` (seconds) of this
    call (made as soon as the handler starts, right after the head).

    Raises:
        web.HTTPRequestTimeout: the body did not arrive in time: 408 with OpenAI's error body
            (code ``invalid_message``), ``Connection: close``.
        web.HTTPRequestEntityTooLarge: the body is larger than the application's
            ``client_max_size`` (aiohttp's own 413).
    """
    hub: Hub = request.app[HUB_KEY]
    timeout_s = hub.config.http_body_timeout_s
    try:
        async with asyncio.timeout(timeout_s):
            return await request.read()
    except TimeoutError:
        message = f"the request body did not arrive within {timeout_s:g} s (http.body_timeout_s)"
        refusal = web.HTTPRequestTimeout(text=error_body(ErrorCode.INVALID_MESSAGE, message, 408).decode(),
                                         content_type="application/json")
        refusal.force_close()
        raise refusal from None
