"""The hub's aiohttp application: one port for WebSocket, the OpenAI-compatible API and health.

Phases (named as uvicorn and aiohttp name them): startup opens the shared provider
ClientSession; serve; shutdown cancels running completions, closes WebSockets, then the
session. :func:`run_hub` runs all of it as an async context manager (tests, the demo) and
:func:`serve_forever` until SIGINT/SIGTERM (``cbhub serve``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from hub.appkeys import HUB_KEY
from hub.auth import Authenticator
from hub.broker import Broker
from hub.channel import HistoryBounds
from hub.completions import CompletionManager
from hub.config import HubConfig
from hub.logsafe import (
    install_log_rate_limit,
    install_secret_filter,
    loop_exception_handler,
    uninstall_log_rate_limit,
)
from hub.memory import MemoryGovernor
from hub.multiplexer import StreamMultiplexer
from hub.outbox import Outbox, WriteScheduler
from hub.providers import ProviderClient
from hub.ratelimit import RateLimiter, Ticket
from hub.resilience import DeadLetterLog
from hub.session import ANONYMOUS, Principal
from hub.transports import guard, http_limits
from hub.transports.anthropic_messages import messages_handler
from hub.transports.openai_responses import responses_handler
from hub.transports.openai_sse import chat_completions_handler, chat_stream_get_handler, model_handler, models_handler
from hub.transports.websocket import websocket_handler
from hub.workflows import WorkflowManager, load_definition, named_definition
from protocol.errors import ErrorCode, HubError, ProtocolError
from protocol.providers import PROVIDERS

if TYPE_CHECKING:
    from hub.cluster_limits import ClusterLimiter  # imported when used: it needs redis-py

__all__ = ["CannotListen", "Hub", "create_app", "run_hub", "serve_forever"]

log = logging.getLogger("cbhub")


class Hub:
    """The running hub's state: config, broker, completions, workflows, connections. It is
    the services object every :class:`~hub.session.Session` runs against.

    Attributes:
        broker: channels, subscriptions, history and fan-out: the in-memory broker, or the
            Redis broker (hub/redis_broker.py) when ``broker.url`` is set.
        multiplexer: the same object (its name before the broker seam).
        connections: the outbox of every open client, WebSocket and SSE alike.
        url: ``http://host:port`` once listening (set by :func:`run_hub`).
        ready: True between startup and shutdown (``/healthz`` answers 200 then).
        authenticator: verifies credentials for ``auth.mode`` (hub/auth.py).
        limiter: the per-subject rate limits of this process (hub/ratelimit.py).
        cluster_limits: the same limits counted in Redis for all nodes (hub/cluster_limits.py),
            when ``broker.url`` is set; else None.

    Raises:
        ConfigError: the ``auth`` section cannot work (a missing or unreadable key source).
        BrokerUnavailable: (at startup) ``broker.url`` is set and Redis does not answer.
    """

    def __init__(self, config: HubConfig) -> None:
        self.config = config
        self.authenticator = Authenticator(config)
        self.write_scheduler = WriteScheduler()
        self.multiplexer: StreamMultiplexer
        if config.broker_url:
            from hub.redis_broker import RedisBroker  # redis-py is imported only when used

            bounds = HistoryBounds(config.history_max_events, config.completion_max_buffered_bytes,
                                   config.history_max_age_s or None)
            self.multiplexer = RedisBroker(config.broker_url, config.broker_prefix, bounds, config.retention_s,
                                           flush=self.write_scheduler.run,
                                           node_timeout_s=config.broker_node_timeout_s)
        else:
            self.multiplexer = StreamMultiplexer(flush=self.write_scheduler.run)
        self.broker: Broker = self.multiplexer
        self.connections: set[Outbox] = set()
        self.limiter = RateLimiter(config.default_rpm, config.default_tpm, config.default_max_concurrent)
        self.cluster_limits: ClusterLimiter | None = None
        if config.broker_url:  # the limits are counted in Redis for every node (hub/cluster_limits.py)
            from hub.cluster_limits import ClusterLimiter

            self.cluster_limits = ClusterLimiter(config.broker_url, config.broker_prefix, self.limiter,
                                                 config.broker_node_timeout_s)
        self.session: aiohttp.ClientSession | None = None
        self.provider_client: ProviderClient | None = None
        self.listener: http_limits.Listener | None = None  # set by run_hub
        self.memory = MemoryGovernor(self, config.memory_budget_bytes)
        self.dead_letters: DeadLetterLog | None = None
        self.completions: CompletionManager  # set at startup, when a loop runs
        self.workflows: WorkflowManager
        self.url = ""
        self.ready = False

    def admit_request(self, principal: Principal, estimate_tokens: int) -> Ticket:
        """The principal's rate limits for one completion or workflow request (docs/PROTOCOL.md
        "Rate limits"): a ticket to release when the run ends.

        Raises:
            HubError: ``rate_limited`` with ``retry_after_ms``.
        """
        return self.limiter.admit(principal, estimate_tokens)

    async def admit_request_in_cluster(self, principal: Principal, estimate_tokens: int) -> Ticket:
        """:meth:`admit_request` counted across every node sharing the Redis broker
        (hub/cluster_limits.py); without one, :meth:`admit_request` itself.

        Raises:
            HubError: ``rate_limited`` with ``retry_after_ms``.
        """
        if self.cluster_limits is None:
            return self.limiter.admit(principal, estimate_tokens)
        return await self.cluster_limits.admit(principal, estimate_tokens)

    def at_connection_limit(self) -> bool:
        """Whether ``max_connections`` clients (WebSocket and SSE together) are open."""
        return len(self.connections) >= self.config.max_connections

    async def authenticate(self, token: str) -> Principal:
        """The principal a credential stands for (hub/auth.py); with ``auth.mode: none``
        the anonymous one, whatever the token.

        Raises:
            HubError: ``invalid_token`` or ``token_expired``.
        """
        if not self.authenticator.enabled:
            return ANONYMOUS
        return await self.authenticator.authenticate(token)

    def authorize(self, principal: Principal, action: str, channel: str) -> None:
        """The one authorization decision every session action passes (docs/ARCHITECTURE.md
        decision 12; docs/PROTOCOL.md "Authentication"). With ``auth.mode: none`` everything is
        allowed. Under auth:

        - ``completion``, ``create_workflow``: allowed (limits are :meth:`admit_request`'s;
          an id another subject holds is ``duplicate_id`` as for one's own).
        - ``use_model``: the principal's ``models`` patterns, when it has any, must match the
          model as ``provider/model`` (or as given); else ``forbidden``.
        - ``subscribe_type`` (all completions, all workflows...) and the ``system`` channel:
          admins only, else ``forbidden``.
        - ``subscribe`` and ``cancel`` of a run's channel: its owner, a principal whose
          ``channels`` patterns match it (an agent channel also by its workflow's channel),
          and admins; anyone else gets ``unknown_channel``, which the session answers
          exactly as for a channel that does not exist.
        """
        if not self.authenticator.enabled:
            return
        if action == "use_model":
            if principal.models and not _model_allowed(principal.models, channel):
                raise HubError(f"{principal.subject!r} may not use model {channel!r}", ErrorCode.FORBIDDEN)
            return
        if action in ("completion", "create_workflow") or principal.admin:
            return
        if action == "subscribe_type":
            raise HubError("type-level subscriptions are for admins", ErrorCode.FORBIDDEN)
        if channel == "system":
            raise HubError("the system channel is for admins", ErrorCode.FORBIDDEN)
        owner, names = self._owner_of(channel)
        if principal.subject and owner == principal.subject:
            return
        if any(fnmatchcase(name, pattern) for name in names for pattern in principal.channels):
            return
        raise ProtocolError(f"no channel {channel!r} is open", ErrorCode.UNKNOWN_CHANNEL)

    def _owner_of(self, channel: str) -> tuple[str | None, tuple[str, ...]]:
        """The owner of the run behind ``channel`` (None: no such run) and the channel names
        a pattern may match to read it (an agent channel: its workflow's too). A run on
        another node is known here once the session attached its channel (a mirror): its
        owner is the subject recorded in Redis (an agent channel's is its workflow's)."""
        kind, _, ident = channel.partition(":")
        if kind == "completion":
            run = self.completions.runs.get(ident)
            return (run.owner if run is not None else self.broker.remote_owner(channel)), (channel,)
        if kind == "workflow":
            workflow = self.workflows.runs.get(ident)
            return (workflow.owner if workflow is not None else self.broker.remote_owner(channel)), (channel,)
        if kind == "agent":  # agent:<workflowId>.<agentId>; either id may hold dots
            for index, char in enumerate(ident):
                if char == ".":
                    workflow = self.workflows.runs.get(ident[:index])
                    if workflow is not None:
                        return workflow.owner, (channel, f"workflow:{workflow.id}")
            owner = self.broker.remote_owner(channel)
            if owner is not None and ident.count(".") == 1:
                # Mirrored: the workflow's channel is certain only when one dot splits the
                # name (with more, a pattern is matched against the agent channel alone).
                return owner, (channel, f"workflow:{ident.partition('.')[0]}")
            return owner, (channel,)
        return None, (channel,)

    def workflow_models(self, definition: dict[str, Any] | None, definition_name: str | None) -> list[str]:
        """Every model the agents of a definition (inline, or by name in the workflow
        directory) use, fallbacks included.

        Raises:
            DefinitionError: the definition is invalid or unknown.
        """
        spec = load_definition(definition) if definition is not None else named_definition(
            definition_name or "", self.workflows.definitions_dir)
        return [model for agent in spec.agents for model in (agent.model, *agent.fallbacks)]

    def admit_completion(self) -> None:
        """Refuse a new completion when the hub is at a limit (docs/PROTOCOL.md "Limits").

        Raises:
            HubError: ``too_many_completions`` at ``max_completions`` running completions;
                ``hub_overloaded`` while the stream data held is over ``memory_budget_bytes``
                (hub/memory.py: histories, snapshot state, outbound queues, upstream framing).
                Both retryable.
        """
        config = self.config
        running = self.completions.running_count() + self.workflows.running_count()
        if running >= config.max_completions:
            raise HubError(f"the hub runs {running} completions and workflows (max_completions); retry later",
                           ErrorCode.TOO_MANY_COMPLETIONS, retryable=True)
        use = self.memory.over_budget()
        if use is not None:
            raise HubError(f"the hub holds {use.total} bytes of stream data (memory_budget_bytes); retry later",
                           ErrorCode.HUB_OVERLOADED, retryable=True)

    async def startup(self, app: web.Application) -> None:
        """Connect the broker (Redis, when ``broker.url`` is set) and open the one
        ClientSession every provider request shares.

        Raises:
            BrokerUnavailable: Redis does not answer at ``broker.url``.
        """
        connect = getattr(self.broker, "connect", None)
        if connect is not None:
            await connect()
        if self.cluster_limits is not None:
            await self.cluster_limits.connect()
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, enable_cleanup_closed=True),
            auto_decompress=True,
        )
        config = self.config
        self.dead_letters = DeadLetterLog(config.dead_letter_path, config.dead_letter_max_bytes,
                                          config.dead_letter_backups)
        self.dead_letters.secrets = config.secrets()
        client = self.provider_client = ProviderClient(self.session, config, self.dead_letters)
        self.completions = CompletionManager(config, self.broker, client)
        self.workflows = WorkflowManager(config, self.broker, self.completions)
        self.memory.start()
        self.ready = True

    async def drain(self) -> None:
        """The first step of a graceful shutdown, once the listening socket is closed:
        refuse new completions (``shutting_down``) and let running ones finish for up to
        ``shutdown_drain_timeout_s``. Connections stay fully served meanwhile."""
        self.ready = False
        manager = self.completions
        manager.closing = True
        drain_s = self.config.shutdown_drain_timeout_s
        running = [run.task for run in manager.runs.values() if not run.finished and run.task is not None]
        running += [run.task for run in self.workflows.runs.values() if not run.finished and run.task is not None]
        if running and drain_s > 0:
            log.info("shutting down: waiting up to %g s for %d running completions", drain_s, len(running))
            await asyncio.wait(running, timeout=drain_s)

    async def shutdown(self, app: web.Application) -> None:
        """After :meth:`drain`: end the remaining completions with ``error`` code
        ``shutting_down`` (retryable), write every connection's pending frames, close
        WebSockets with 1012 (service restart: reconnect; a client that does not take the
        close within 1 s is dropped), close the provider session."""
        self.ready = False
        self.memory.stop()
        await self.workflows.close()
        await self.completions.close()
        outboxes = list(self.connections)
        for outbox in outboxes:
            # Pending frames, the final errors among them, go out before the close frame,
            # also to a client whose socket buffer is full.
            outbox.flush(force=True)
        await asyncio.gather(*(outbox.shut_down() for outbox in outboxes))
        if self.session is not None:
            await self.session.close()
        if self.cluster_limits is not None:
            await self.cluster_limits.close()  # the ended runs' releases go out first
        close = getattr(self.broker, "close", None)
        if close is not None:
            await close()  # the last batch (the final errors among it) goes out first
        if self.dead_letters is not None:
            self.dead_letters.close()


def _model_allowed(patterns: Sequence[str], model: str) -> bool:
    """Whether a ``models`` pattern (``openai/*``) matches ``model`` as given or as the
    provider's ``prefix/model`` it routes to (``gemini/x`` is ``google/x``)."""
    names = [model]
    try:
        spec, upstream = PROVIDERS.route(model)
        names.append(spec.prefix + upstream)
    except HubError:
        pass  # no provider serves it: the completion fails with model_not_found if allowed
    return any(fnmatchcase(name, pattern) for name in names for pattern in patterns)


async def healthz_handler(request: web.Request) -> web.Response:
    """``GET /healthz``: 200 ``{"status": "ok", ...}`` when ready, else 503. Beside the
    status: open ``connections``, ``completions`` (running and retained), event-loop
    ``tasks``, ``memory`` (the governor's estimate in bytes, its parts, and how many streams it
    trimmed, retired and ended; hub/memory.py) and ``http`` (the listener's counts: accepted,
    header_timeouts, shed, waits, accept_errors; hub/transports/http_limits.py), and which
    process answered: ``pid`` and ``node`` (the Redis broker's node id; null in memory), which
    tell the workers of ``cbhub serve --workers`` apart. ``broker``: :meth:`hub.broker.Broker.health`
    (kind, connected; for Redis also node_id, round_trips, events_sent, events_unsent ...);
    ``status`` is ``degraded`` (still 200: streams run here go on) while Redis cannot be reached.
    ``limits``: with a Redis broker, the cluster rate limits' counts
    (:meth:`hub.cluster_limits.ClusterLimiter.statistics`); null in memory."""
    hub: Hub = request.app[HUB_KEY]
    if hub.ready:
        use = hub.memory.use()
        listener = hub.listener
        broker = hub.broker.health()
        return web.json_response({
            "status": "ok" if broker["connected"] else "degraded", "broker": broker,
            "connections": len(hub.connections), "completions": len(hub.completions.runs),
            "tasks": len(asyncio.all_tasks()),
            "memory": {"held_bytes": use.total, "budget_bytes": use.budget, "history_bytes": use.history,
                       "state_bytes": use.state, "outbound_bytes": use.outbound, "upstream_bytes": use.upstream,
                       "trimmed": hub.memory.trimmed, "retired": hub.memory.retired, "ended": hub.memory.ended},
            "http": dataclasses.asdict(listener.statistics()) if listener is not None else None,
            "pid": os.getpid(), "node": getattr(hub.broker, "node_id", None),
            "limits": hub.cluster_limits.statistics() if hub.cluster_limits is not None else None,
        })
    return web.json_response({"status": "starting"}, status=503)


#: The web page (``GET /``, ``/static/...``); installed with the package.
STATIC_DIR = Path(__file__).resolve().parent / "static"
#: The JavaScript SDK's sources (``/sdk/...``), which the page imports. They are outside the
#: Python package: served when the hub runs from a checkout (an editable install), else absent.
SDK_DIR = Path(__file__).resolve().parent.parent / "sdk_js" / "src"


async def index_handler(request: web.Request) -> web.FileResponse:
    """``GET /``: the web page (``hub/static/index.html``)."""
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


def add_page_routes(app: web.Application) -> None:
    """``GET /``, ``/static/...`` (hub/static) and ``/sdk/...`` (sdk_js/src, when present):
    read-only files; aiohttp's static resources refuse paths that resolve outside their
    directory and list no directories."""
    app.router.add_get("/", index_handler)
    app.router.add_static("/static/", STATIC_DIR)
    if SDK_DIR.is_dir():
        app.router.add_static("/sdk/", SDK_DIR)


def create_app(config: HubConfig | None = None) -> web.Application:
    """The aiohttp application with every route of the hub on it."""
    hub = Hub(config or HubConfig.from_env())
    app = web.Application(client_max_size=hub.config.max_message_bytes)
    app[HUB_KEY] = hub
    guard.install(app)  # Host, Origin, CORS and JSON-only /v1 POSTs, before any handler
    app.on_startup.append(hub.startup)
    app.on_shutdown.append(hub.shutdown)
    app.router.add_get("/ws/stream", websocket_handler)
    app.router.add_post("/v1/chat/completions", chat_completions_handler)
    app.router.add_get("/v1/chat/completions/stream", chat_stream_get_handler)
    app.router.add_get("/v1/models", models_handler)
    app.router.add_get("/v1/models/{model:.+}", model_handler)  # ids hold slashes (openai/gpt-4o)
    app.router.add_post("/v1/messages", messages_handler)
    app.router.add_post("/v1/responses", responses_handler)
    app.router.add_get("/healthz", healthz_handler)
    add_page_routes(app)
    return app


class CannotListen(OSError):
    """The hub could not listen on ``host:port``: the port is taken, the host is not an address
    of this machine or does not resolve, or binding needs a privilege. ``str()`` is one line
    for a person, e.g. ``cannot listen on 127.0.0.1:8765: address already in use``
    (``cbhub serve`` prints it and exits 2); ``__cause__`` is the socket error.

    Attributes:
        host, port: the configured listen address.
        reason: why, in words (from the error's errno).
    """

    def __init__(self, host: str, port: int, error: OSError) -> None:
        self.host, self.port, self.reason = host, port, _listen_reason(error, port)
        super().__init__(error.errno, self.reason)

    def __str__(self) -> str:
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return f"cannot listen on {shown}:{self.port}: {self.reason}"


def _listen_reason(error: OSError, port: int) -> str:
    """Why binding failed, in words: the usual errnos named, any other as the system says it."""
    if isinstance(error, socket.gaierror):
        return f"the host name does not resolve ({error.strerror or error})"
    if error.errno == errno.EADDRINUSE:
        return "address already in use (another program listens there: pick another --port)"
    if error.errno == errno.EADDRNOTAVAIL:
        return "not an address of this machine (use 127.0.0.1, 0.0.0.0 or one of its own addresses)"
    if error.errno == errno.EACCES:
        return "permission denied" + (" (ports below 1024 need privileges)" if 0 < port < 1024 else "")
    text = error.strerror or str(error)
    return text[:1].lower() + text[1:]


@contextlib.asynccontextmanager
async def run_hub(config: HubConfig | None = None, *, reuse_port: bool = False) -> AsyncIterator[Hub]:
    """Run the hub on ``config.host:config.port`` (port 0 picks a free one) until exit; with
    ``reuse_port`` its listening sockets are bound with ``SO_REUSEPORT`` (the workers of
    ``cbhub serve --workers``, hub/workers.py, share one port this way).

    Connections are accepted by a :class:`~hub.transports.http_limits.Listener`, which closes
    those that send no complete request head (a WebSocket handshake included) within
    ``http.header_timeout_s`` and makes room when file descriptors run short; aiohttp closes
    keep-alive connections idle for ``http.keepalive_timeout_s``. While the hub runs, repeated
    log records are collapsed and the loop's errors are logged through the same filter
    (hub/logsafe.py), unless the loop already has an exception handler.

    Yields:
        The :class:`Hub`, with ``url`` set to ``http://host:port`` (``http://[::1]:port`` for an IPv6 host).

    Raises:
        CannotListen: (an OSError) the address cannot be resolved or bound.
    """
    app = create_app(config)
    hub: Hub = app[HUB_KEY]
    install_secret_filter(hub.config.secrets())  # no configured secret reaches a log record
    loop = asyncio.get_running_loop()
    install_log_rate_limit(loop)  # a record repeated by the thousand is one line and a count
    own_loop_handler = loop.get_exception_handler() is None
    if own_loop_handler:
        loop.set_exception_handler(loop_exception_handler)
    listener = hub.listener = http_limits.Listener(hub.config.http_header_timeout_s)
    # handler_cancellation: a client that disconnects cancels its handler, so an HTTP request
    # waiting for a non-streamed answer stops its upstream completion at once.
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=5.0, handler_cancellation=True,
                           keepalive_timeout=hub.config.http_keepalive_timeout_s)
    try:
        await runner.setup()
        assert runner.server is not None  # set by setup()
        try:
            await listener.start(runner.server, hub.config.host, hub.config.port, reuse_port=reuse_port)
        except OSError as exc:
            await runner.cleanup()  # the provider session opened at startup is closed
            raise CannotListen(hub.config.host, hub.config.port, exc) from exc
        except BaseException:
            await runner.cleanup()
            raise
        host = hub.config.host
        hub.url = f"http://{f'[{host}]' if ':' in host else host}:{listener.port}"  # RFC 3986: IPv6 in brackets
        try:
            yield hub
        finally:
            await listener.stop_accepting()  # no new connection from here on
            await hub.drain()  # while aiohttp still serves the open connections
            await runner.cleanup()
            listener.close()
    finally:
        if own_loop_handler and loop.get_exception_handler() is loop_exception_handler:
            loop.set_exception_handler(None)
        uninstall_log_rate_limit()


async def serve_forever(config: HubConfig, *, reuse_port: bool = False,
                        announce: Callable[[Hub], None] | None = None) -> None:
    """Run the hub until SIGINT or SIGTERM, then shut down gracefully.

    Args:
        config: the hub's configuration.
        reuse_port: bind with ``SO_REUSEPORT`` (a worker of ``cbhub serve --workers``).
        announce: called once listening, instead of printing the address (the worker tells
            its supervisor, hub/workers.py).
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with run_hub(config, reuse_port=reuse_port) as hub:
        if announce is not None:
            announce(hub)
        else:
            ws_url = hub.url.replace("http", "ws", 1) + "/ws/stream"
            log.info("circuit-breaker-hub listening on %s (WebSocket %s)", hub.url, ws_url)
            print(f"circuit-breaker-hub listening on {hub.url}  (WebSocket: {ws_url})", flush=True)
        await stop.wait()
