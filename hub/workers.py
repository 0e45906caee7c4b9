"""Running ``cbhub serve``: one hub process, or a supervisor and N worker processes on one port.

``cbhub serve --workers N`` (``performance.workers``) uses every core of a machine: N hub
processes listen on the same port, each with its own socket bound with ``SO_REUSEPORT``, and the
kernel spreads new connections over them (Linux hashes each connection's addresses and ports
onto one of the listening sockets). Each worker is a whole hub with its own event loop; they
share nothing but the Redis broker (``broker.url``), which is why more than one worker is
refused without it: a client whose reconnect, ``subscribe`` or ``cancel`` lands on another
worker would not find the completion. With the broker every worker is a node of one cluster
(docs/PROTOCOL.md "Running several hubs"), exactly as hubs on several machines are.

Theory of operation: :func:`supervise` runs in the process ``cbhub serve`` started. It binds,
without listening, a socket on the address with ``SO_REUSEPORT`` (:func:`reserve_port`): with
``--port 0`` this picks the free port all workers then take, and it keeps the port from being
taken by another program while workers start or restart (a socket that does not listen gets
no connections). It starts the workers with :mod:`multiprocessing` (``spawn``: fresh
interpreters, no state copied from the supervisor), each given the checked configuration and
one end of a pipe. A worker (:func:`_worker_main`) runs :func:`serve_one` with
``reuse_port=True`` and, once listening, sends its pid, URL and broker node id through the
pipe. When all N are listening the supervisor prints the one address, as a single ``cbhub
serve`` does, with the workers' pids. Then it waits, in one ``multiprocessing.connection.wait``
on the workers' pipes, their process sentinels and a wake-up socket that the signal handlers
write to:

- **SIGTERM or SIGINT** to the supervisor: it sends SIGTERM to every worker, and each drains
  as a single hub does (stops accepting, lets running completions finish for up to
  ``lifecycle.shutdown_drain_timeout_s``, ends the rest with ``shutting_down``, closes
  WebSockets with 1012). A Ctrl-C in a terminal reaches the workers too (one process group);
  a second signal changes nothing. A worker still running ``lifecycle.shutdown_kill_after_s``
  after the drain timeout is killed (SIGKILL, logged as an error): the supervisor's stop is
  bounded even when a worker hangs. The supervisor exits when all workers have: status 0 when
  every worker exited 0 (or was stopped before it listened), else 1.
- **A worker dies** (a crash, ``kill -9``, or a stop the supervisor did not ask for): the
  supervisor logs it (a warning with the worker's number, pid and exit status) and starts a
  new worker in its place. A worker that ran for at least :data:`STABLE_AFTER_S` is replaced
  at once; one that died sooner is replaced after a delay that doubles with each such death in
  a row (:data:`RESTART_DELAY_S` up to :data:`RESTART_DELAY_MAX_S`), so a worker that cannot
  start (Redis down, say) is retried without spinning while the others go on serving. The
  completions the dead worker ran are lost as with any node that dies (their subscribers on
  other workers are told by the broker); its clients reconnect and land on the living workers.
- **A worker fails to start** before all N first listened (the address is taken, Redis does not
  answer): the supervisor stops the others and exits with that worker's status (2 for Redis,
  as a single ``cbhub serve``), since the same cause would stop every worker.

On Linux each worker asks the kernel for SIGTERM when its supervisor dies (``prctl
PR_SET_PDEATHSIG``), so a supervisor killed with ``kill -9`` leaves no worker behind holding
the port: they drain and exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from multiprocessing.context import SpawnProcess

    from hub.app import Hub
    from hub.config import HubConfig

__all__ = ["RESTART_DELAY_MAX_S", "RESTART_DELAY_S", "STABLE_AFTER_S", "reserve_port", "serve_one", "supervise",
           "workers_refusal"]

log = logging.getLogger("cbhub.workers")

#: Seconds a worker must have run for its death to be taken as a crash of a healthy worker,
#: replaced at once; one that dies sooner is replaced after a growing delay.
STABLE_AFTER_S = 30.0
#: The first delay, in seconds, before replacing a worker that died within
#: :data:`STABLE_AFTER_S` of starting; doubled for each such death in a row.
RESTART_DELAY_S = 1.0
#: The longest such delay, in seconds.
RESTART_DELAY_MAX_S = 30.0

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def workers_refusal(config: HubConfig) -> str | None:
    """Why ``cbhub serve`` must not start ``config.workers`` processes, or None: more than
    one worker without ``broker.url``, or no ``SO_REUSEPORT`` on this system."""
    if config.workers <= 1:
        return None
    if not config.broker_url:
        return (f"--workers {config.workers} (performance.workers) needs the Redis broker: set broker.url "
                "(CBHUB_BROKER_URL, e.g. redis://127.0.0.1:6379/0). Without it every worker keeps its own "
                "in-memory channels, and a client whose connection lands on another worker would not find "
                "its completion (docs/DEPLOY.md \"Workers\")")
    if not hasattr(socket, "SO_REUSEPORT"):
        return f"--workers {config.workers}: this system has no SO_REUSEPORT; run one hub per port instead"
    return None


def serve_one(config: HubConfig, *, reuse_port: bool = False,
              announce: Callable[[Hub], None] | None = None) -> int:
    """Run one hub process until SIGINT or SIGTERM and its graceful shutdown
    (:func:`hub.app.serve_forever`), on the event loop ``config.loop`` names.

    Args:
        config: the checked configuration (``uvloop`` importable when named).
        reuse_port: bind with ``SO_REUSEPORT`` (a worker).
        announce: called once listening instead of printing the address.

    Returns:
        The exit status: 0, or 2 after printing why when ``broker.url`` does not answer.
    """
    from hub.app import serve_forever

    # Only the options given: one process is served exactly as before workers existed.
    options: dict[str, Any] = {name: value for name, value in (("reuse_port", reuse_port),
                                                               ("announce", announce)) if value}
    main = serve_forever(config, **options)
    try:
        if config.loop == "uvloop":
            import uvloop

            uvloop.run(main)
        else:
            asyncio.run(main)
    except ConnectionError as exc:
        if type(exc).__name__ != "BrokerUnavailable":  # hub.redis_broker's; redis-py is imported only when used
            raise
        print(f"cbhub: {exc}", file=sys.stderr)
        return 2
    return 0


def reserve_port(host: str, port: int) -> tuple[int, list[socket.socket]]:
    """Bind, without listening, one socket per address ``host`` resolves to, with
    ``SO_REUSEADDR`` and ``SO_REUSEPORT``: with ``port`` 0 the first one picks a free port and
    the others take the same. While they are open no program that does not set
    ``SO_REUSEPORT`` (as this user) can take the port; they receive no connections.

    Returns:
        The port, and the sockets (the caller closes them).

    Raises:
        OSError: an address cannot be resolved or bound (the port is in use without
            ``SO_REUSEPORT``); the sockets bound so far are closed.
    """
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    addresses = list(dict.fromkeys((family, kind, proto, address) for family, kind, proto, _, address in infos))
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, address in addresses:
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    chosen: int = sockets[0].getsockname()[1]
    return chosen, sockets


def _die_with_parent(parent_pid: int) -> None:
    """Linux: have the kernel send this process SIGTERM when its parent dies; exit at once if
    the parent is already gone. Elsewhere nothing."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:
        raise SystemExit(1)


def _worker_main(config: HubConfig, index: int, parent_pid: int, conn: Connection) -> None:
    """The body of worker process ``index`` (1-based): a hub on the shared port that reports
    ``{"pid", "url", "node"}`` through ``conn`` once listening. Exits with :func:`serve_one`'s
    status."""
    from hub.logsafe import install_secret_filter

    _die_with_parent(parent_pid)
    install_secret_filter(config.secrets())
    logging.basicConfig(level=config.log_level,
                        format=f"%(asctime)s %(levelname)s [worker {index} pid %(process)d] %(name)s: %(message)s")

    def announce(hub: Hub) -> None:
        conn.send({"pid": os.getpid(), "url": hub.url, "node": getattr(hub.broker, "node_id", None)})
        conn.close()

    raise SystemExit(serve_one(config, reuse_port=True, announce=announce))


@dataclass
class _Slot:
    """One of the N worker places: the process filling it now and its restart history."""

    index: int
    process: SpawnProcess | None = None
    conn: Connection | None = None  # the supervisor's end of the pipe, until the worker announced itself
    started: float = 0.0  # time.monotonic() at start
    pid: int | None = None  # announced: listening
    quick_deaths: int = 0  # deaths in a row within STABLE_AFTER_S of starting
    restart_at: float | None = None  # when to start a replacement


class _Supervisor:
    """The state of :func:`supervise` (see the module docstring)."""

    def __init__(self, config: HubConfig, wake: socket.socket) -> None:
        self.config = config
        self.context = multiprocessing.get_context("spawn")
        self.slots = [_Slot(index) for index in range(1, config.workers + 1)]
        self.wake = wake
        self.stopping = False
        self.kill_at: float | None = None  # time.monotonic() when workers still running are killed
        self.listening = False  # all N workers listened once
        self.status = 0
        self.signals: list[int] = []

    # Starting and stopping workers.

    def start(self, slot: _Slot) -> None:
        """Start a worker in ``slot``."""
        ours, theirs = self.context.Pipe(duplex=False)
        process = self.context.Process(target=_worker_main, name=f"cbhub-worker-{slot.index}",
                                       args=(self.config, slot.index, os.getpid(), theirs))
        process.start()
        theirs.close()
        slot.process, slot.conn, slot.pid, slot.restart_at = process, ours, None, None
        slot.started = time.monotonic()

    def stop_all(self) -> None:
        """SIGTERM to every running worker (each drains); no more restarts. Those still running
        ``shutdown_kill_after_s`` after the drain timeout will be killed (:meth:`kill_late`)."""
        if not self.stopping:
            config = self.config
            self.kill_at = time.monotonic() + config.shutdown_drain_timeout_s + config.shutdown_kill_after_s
        self.stopping = True
        for slot in self.slots:
            slot.restart_at = None
            if slot.process is not None and slot.process.pid is not None and slot.process.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.process.pid, signal.SIGTERM)

    def kill_late(self) -> None:
        """SIGKILL to every worker still running past :attr:`kill_at`; the exit status will be 1."""
        self.kill_at = None
        for slot in self.slots:
            if slot.process is not None and slot.process.pid is not None and slot.process.exitcode is None:
                log.error("worker %d (pid %d) still runs %g s after the drain timeout "
                          "(lifecycle.shutdown_kill_after_s); killing it", slot.index, slot.process.pid,
                          self.config.shutdown_kill_after_s)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.process.pid, signal.SIGKILL)

    # Events.

    def on_signal(self, signum: int, frame: object) -> None:
        """The handler of SIGTERM and SIGINT: only noted here (the wake-up socket gets its byte
        from Python's C-level handler); :meth:`run` acts on it."""
        self.signals.append(signum)

    def on_announce(self, slot: _Slot) -> None:
        """``slot``'s worker wrote to its pipe: it listens (or it died first: EOF)."""
        assert slot.conn is not None
        try:
            info = slot.conn.recv()
        except (EOFError, OSError):
            info = None  # died before listening; its sentinel tells
        slot.conn.close()
        slot.conn = None
        if info is None:
            return
        slot.pid = info["pid"]
        log.info("worker %d (pid %d) listening on %s, broker node %s", slot.index, slot.pid, info["url"],
                 info["node"])
        if not self.listening and all(s.pid is not None for s in self.slots):
            self.listening = True
            url = info["url"]
            ws_url = url.replace("http", "ws", 1) + "/ws/stream"
            pids = " ".join(str(s.pid) for s in self.slots)
            print(f"circuit-breaker-hub listening on {url}  (WebSocket: {ws_url}; {len(self.slots)} workers, "
                  f"pids {pids})", flush=True)

    def on_exit(self, slot: _Slot) -> None:
        """``slot``'s worker process ended: note its status, and replace it unless stopping."""
        process = slot.process
        assert process is not None
        process.join()
        code = process.exitcode
        assert code is not None
        pid = process.pid
        process.close()
        slot.process = None
        if slot.conn is not None:
            slot.conn.close()
            slot.conn = None
        was_listening, slot.pid = slot.pid is not None, None
        status = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
        if self.stopping:
            clean = code == 0 or (not was_listening and -code in (signal.SIGTERM, signal.SIGINT))
            (log.info if clean else log.warning)("worker %d (pid %s) %s", slot.index, pid, status)
            if not clean and not self.status:  # a failed start's status stays the one to report
                self.status = 1
            return
        if not self.listening:  # the first start failed: the same cause would stop every worker
            log.error("worker %d (pid %s) %s before listening; stopping the others", slot.index, pid, status)
            self.status = code if code > 0 else 1
            self.stop_all()
            return
        ran_s = time.monotonic() - slot.started
        if ran_s >= STABLE_AFTER_S:
            slot.quick_deaths, delay_s = 0, 0.0
        else:
            slot.quick_deaths += 1
            delay_s = min(RESTART_DELAY_S * 2 ** (slot.quick_deaths - 1), RESTART_DELAY_MAX_S)
        log.warning("worker %d (pid %s) %s after %.1f s; starting a new worker in its place in %g s "
                    "(its completions are lost; its clients reconnect to the others)",
                    slot.index, pid, status, ran_s, delay_s)
        slot.restart_at = time.monotonic() + delay_s

    # The loop.

    def run(self) -> int:
        """Start the workers and supervise them until all have exited; the exit status."""
        for slot in self.slots:
            self.start(slot)
        while any(slot.process is not None or slot.restart_at is not None for slot in self.slots):
            waits: dict[Any, tuple[str, _Slot | None]] = {self.wake: ("wake", None)}
            for slot in self.slots:
                if slot.conn is not None:
                    waits[slot.conn] = ("announce", slot)
                if slot.process is not None:
                    waits[slot.process.sentinel] = ("exit", slot)
            due = [slot.restart_at for slot in self.slots if slot.restart_at is not None]
            if self.kill_at is not None:
                due.append(self.kill_at)
            timeout = max(0.0, min(due) - time.monotonic()) if due else None
            ready = multiprocessing.connection.wait(list(waits), timeout)
            with contextlib.suppress(BlockingIOError):
                while self.wake.recv(64):
                    pass
            if self.signals and not self.stopping:
                names = ", ".join(signal.Signals(s).name for s in self.signals)
                log.info("%s: stopping the %d workers (each drains)", names, len(self.slots))
                self.stop_all()
            self.signals.clear()
            # Announcements before exits: a worker that listened and died at once has both.
            for kind in ("announce", "exit"):
                for item in ready:
                    what, target = waits[item]
                    if what == kind and target is not None:
                        (self.on_announce if kind == "announce" else self.on_exit)(target)
            now = time.monotonic()
            if self.kill_at is not None and self.kill_at <= now:
                self.kill_late()
            for slot in self.slots:
                if slot.restart_at is not None and slot.restart_at <= now and not self.stopping:
                    self.start(slot)
                    log.info("worker %d restarted (pid %s)", slot.index, slot.process.pid if slot.process else None)
        return self.status


def supervise(config: HubConfig) -> int:
    """``cbhub serve --workers N``: run ``config.workers`` hub processes on one port until
    SIGTERM or SIGINT, then until all have drained (the module docstring tells how).

    Args:
        config: the checked configuration, ``broker.url`` set (see :func:`workers_refusal`).

    Returns:
        The exit status: 0 after a clean shutdown of every worker; 1 when a worker did not
        exit cleanly; 2 when the address cannot be bound (one line, as ``cbhub serve`` without
        workers); a worker's own status when one failed to start (2: Redis does not answer at
        ``broker.url``).
    """
    from hub.app import CannotListen  # the one wording of this refusal, as for one process

    try:
        port, reserved = reserve_port(config.host, config.port)
    except OSError as exc:
        print(f"cbhub: {CannotListen(config.host, config.port, exc)}", file=sys.stderr)
        return 2
    wake, wake_writer = socket.socketpair()
    wake.setblocking(False)
    wake_writer.setblocking(False)
    supervisor = _Supervisor(msgspec.structs.replace(config, port=port), wake)
    previous_fd = signal.set_wakeup_fd(wake_writer.fileno(), warn_on_full_buffer=False)
    previous = {sig: signal.signal(sig, supervisor.on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return supervisor.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(previous_fd)
        for sock in (*reserved, wake, wake_writer):
            sock.close()
