"""The client protocol, once, for every transport (docs/ARCHITECTURE.md decision 10).

A :class:`Session` is one client: it is fed decoded client messages (docs/PROTOCOL.md "Client
messages"), acts on the hub's services (broker, completions, workflows, admission) and writes
every answer to its :class:`~hub.outbox.Outbox`. It imports no aiohttp and opens no socket:
transports (hub/transports/) only turn their wire format into :meth:`Session.handle` calls
and write what the outbox holds. The same session runs under a test without any socket
(tests/test_session.py).

Rules kept here:

- One bad message is answered with an ``error`` (no ``completionId``) and nothing else is
  lost: the session's other streams and everyone else's go on.
- A message's ``rid`` is echoed on the reply it causes (``subscribed``, ``unsubscribed``,
  ``pong``, ``ack``) and on every ``error`` answering it (docs/PROTOCOL.md "Request ids").
- Every action passes :meth:`SessionServices.authorize` with the session's principal (today
  the hub allows everything; the security issue plugs in here).
- One place builds ``subscribed`` acknowledgements (:func:`subscribed_ack`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal, Protocol

from hub.broker import Broker
from hub.channel import Channel, EncodedEvent
from hub.config import HubConfig
from hub.outbox import Outbox
from hub.ratelimit import Ticket, estimate_tokens
from protocol.errors import ErrorCode, HubError, ProtocolError
from protocol.messages import (
    CHANNEL_PATTERN,
    STREAM_TYPES,
    Ack,
    Cancel,
    CancelWorkflow,
    ClientMessage,
    Completion,
    CreateWorkflow,
    Cursor,
    ErrorInfo,
    ErrorMessage,
    Ping,
    Pong,
    Subscribe,
    Subscribed,
    SubscribeWorkflow,
    Unsubscribe,
    Unsubscribed,
    decode_client_message,
    request_id_of,
)

__all__ = ["Session", "SessionServices", "Principal", "subscribed_ack"]

log = logging.getLogger("cbhub.session")

_PONG = EncodedEvent.of(Pong())


class Principal(Protocol):
    """Who is asking (the transport authenticates it; with ``auth.mode: none`` every client is
    :data:`ANONYMOUS`).

    Attributes:
        subject: a stable name of the caller (``"anonymous"`` without auth).
        admin: may read every channel, type-level subscriptions and ``system``.
        models: allowed model patterns (``openai/*``); empty: every model.
        channels: channel patterns readable besides the subject's own.
        rpm, tpm, max_concurrent: this principal's limits; None: ``auth.default_limits``.
    """

    @property
    def subject(self) -> str: ...

    @property
    def admin(self) -> bool: ...

    @property
    def models(self) -> Sequence[str]: ...

    @property
    def channels(self) -> Sequence[str]: ...

    @property
    def rpm(self) -> int | None: ...

    @property
    def tpm(self) -> int | None: ...

    @property
    def max_concurrent(self) -> int | None: ...


class Anonymous:
    """The principal of a client when the hub has no authentication configured: no claims,
    the default limits."""

    subject = "anonymous"
    admin = False
    models: Sequence[str] = ()
    channels: Sequence[str] = ()
    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None


ANONYMOUS = Anonymous()


class Runnable(Protocol):
    """A completion or workflow run as the session sees it."""

    @property
    def id(self) -> str:
        """The run's id (``completion:<id>`` / ``workflow:<id>`` names its channel)."""

    @property
    def finished(self) -> bool:
        """True once its terminal message was published."""

    @property
    def channel(self) -> Channel:
        """The channel it publishes on."""

    def start(self) -> None:
        """Start it (after the session subscribed and sent the ack)."""


class CompletionFactory(Protocol):
    """Creates completions (:class:`hub.completions.CompletionManager`)."""

    def create(self, request: Completion, owner: str = ..., ticket: Ticket | None = None) -> Runnable:
        """A registered, not yet started run of ``owner``; raises HubError (``duplicate_id``,
        ``shutting_down``)."""


class WorkflowFactory(Protocol):
    """Creates workflow runs (:class:`hub.workflows.WorkflowManager`)."""

    def create(self, workflow_id: str | None, definition: dict[str, Any] | None, definition_name: str | None,
               run_input: dict[str, Any], owner: str = ..., ticket: Ticket | None = None) -> Runnable:
        """A validated, not yet started run; raises HubError (``invalid_workflow``,
        ``unknown_workflow_definition``, ``duplicate_id``, ``shutting_down``)."""


class SessionServices(Protocol):
    """What a session needs of the hub (:class:`hub.app.Hub` provides it; tests may build a
    smaller one)."""

    @property
    def config(self) -> HubConfig:
        """The hub config (``max_completions_per_connection``)."""

    @property
    def broker(self) -> Broker:
        """Channels, subscriptions, history and control."""

    @property
    def completions(self) -> CompletionFactory:
        """Where completions are created."""

    @property
    def workflows(self) -> WorkflowFactory:
        """Where workflow runs are created."""

    def admit_completion(self) -> None:
        """Raise HubError (``too_many_completions``, ``hub_overloaded``) at a hub limit."""

    def admit_request(self, principal: Principal, estimate_tokens: int) -> Ticket:
        """The principal's rate limits (:class:`hub.ratelimit.RateLimiter`): a ticket, or
        HubError ``rate_limited`` with ``retry_after_ms``."""

    def authorize(self, principal: Principal, action: str, channel: str) -> None:
        """Raise HubError when ``principal`` may not do ``action`` (``subscribe``, ``cancel``,
        ``completion``, ``create_workflow``) on ``channel``; return to allow. For
        ``completion`` and ``create_workflow`` the channel is ``completion:<id>`` /
        ``workflow:<id>`` with the id the client chose, or with an empty id when it let the
        hub choose one (asked before the run exists)."""


def subscribed_ack(broker: Broker, channels: list[str], since: dict[str, Cursor] | None = None,
                   streams: list[str] | None = None, *, completion_id: str | None = None,
                   workflow_id: str | None = None, rid: str | None = None) -> Subscribed:
    """The ``subscribed`` acknowledgement of ``channels`` (open in ``broker``): per channel its
    epoch, its latest ``seq`` and whether a replay after the client's cursor (``since``) will
    be complete (docs/PROTOCOL.md "Resuming").

    Raises:
        KeyError: one of ``channels`` is not open (the caller checked them all).
    """
    since = since or {}
    epochs: dict[str, str] = {}
    seqs: dict[str, int] = {}
    recovered: dict[str, bool] = {}
    for name in channels:
        channel = broker.channel(name)
        if channel is None:
            raise KeyError(name)
        epochs[name] = channel.epoch
        seqs[name] = channel.last_seq
        recovered[name] = broker.recoverable(name, since.get(name))
    return Subscribed(channels=channels, streams=streams or [], completion_id=completion_id, workflow_id=workflow_id,
                      epochs=epochs, seqs=seqs, recovered=recovered, rid=rid)


class Session:
    """One client's protocol state (see the module docstring).

    Args:
        services: the hub's services.
        outbox: where every answer and every subscribed event goes; it is the session's
            subscriber identity in the broker.
        principal: who the client is.

    Attributes:
        started: the runs this session started and that may still run (for
            ``max_completions_per_connection``).
    """

    def __init__(self, services: SessionServices, outbox: Outbox, principal: Principal = ANONYMOUS) -> None:
        self.services = services
        self.outbox = outbox
        self.principal = principal
        self.started: list[Runnable] = []
        self._rid: str | None = None

    # Input.

    def handle(self, data: str | bytes) -> None:
        """Decode and handle one client message; errors are answered, never raised (a
        message that cannot be decoded gets its ``rid`` echoed when one can be read)."""
        try:
            message = decode_client_message(data)
        except HubError as exc:
            self._send_error(exc, request_id_of(data))
            return
        except Exception as exc:  # a bug of ours must not drop the session's other streams
            log.exception("decoding a client message failed")
            self._send_error(HubError(f"internal error: {type(exc).__name__}", ErrorCode.INTERNAL_ERROR), None)
            return
        self.dispatch(message)

    def dispatch(self, message: ClientMessage) -> None:
        """Handle one decoded client message; errors are answered, never raised."""
        self._rid = message.rid
        try:
            match message:
                case Completion():
                    self.start_completion(message)
                case Subscribe():
                    self._subscribe(message.channels, message.streams, message.since)
                case Unsubscribe():
                    self._unsubscribe(message)
                case Cancel():
                    self._cancel("completion", message.completion_id)
                case Ping():
                    self.outbox.deliver(_PONG if message.rid is None else EncodedEvent.of(Pong(rid=message.rid)))
                case CreateWorkflow():
                    self._create_workflow(message)
                case SubscribeWorkflow():
                    name = f"workflow:{message.workflow_id}"
                    self._subscribe([name], [], {name: message.since} if message.since is not None else {})
                case CancelWorkflow():
                    self._cancel("workflow", message.workflow_id)
        except HubError as exc:
            self.send_error(exc)
        except Exception as exc:  # a bug of ours must not drop the session's other streams
            log.exception("handling a client message failed")
            self.send_error(HubError(f"internal error: {type(exc).__name__}", ErrorCode.INTERNAL_ERROR))
        finally:
            self._rid = None

    def close(self) -> None:
        """The client went away: drop every subscription (running completions go on for
        their grace period)."""
        self.outbox.stop()
        self.services.broker.remove(self.outbox)

    # Output.

    def send_error(self, error: HubError) -> None:
        """Answer the message being handled with an ``error`` (no ``seq``: not part of a
        stream); its ``rid`` is echoed while :meth:`dispatch` handles it, and none outside
        (e.g. a transport refusing a binary frame)."""
        self._send_error(error, self._rid)

    def _send_error(self, error: HubError, rid: str | None) -> None:
        info = ErrorInfo(error.code, error.message, error.retryable, error.status, error.retry_after_ms)
        self.outbox.deliver(EncodedEvent.of(ErrorMessage(info, rid=rid)))

    def _reply(self, message: Any) -> None:
        self.outbox.deliver(EncodedEvent.of(message))

    # Starting runs.

    def start_completion(self, message: Completion) -> Runnable:
        """Admit, create and start a completion; the session is subscribed to its channel
        and gets the ``subscribed`` ack (with ``completionId``) first.

        Returns:
            The started CompletionRun.

        Raises:
            HubError: ``too_many_completions``, ``hub_overloaded``, ``duplicate_id``,
                ``shutting_down``, or the authorize hook's refusal.
        """
        services = self.services
        self.started = [run for run in self.started if not run.finished]
        limit = services.config.max_completions_per_connection
        if len(self.started) >= limit:
            raise HubError(f"this connection already runs {len(self.started)} completions "
                           f"(max_completions_per_connection); wait for one to end", ErrorCode.TOO_MANY_COMPLETIONS,
                           retryable=True)
        services.authorize(self.principal, "completion", f"completion:{message.id or ''}")
        ticket = services.admit_request(self.principal, estimate_tokens(message.messages, message.max_tokens))
        try:
            services.admit_completion()
            run = services.completions.create(message, owner=self.principal.subject, ticket=ticket)
        except BaseException:
            ticket.release()
            raise
        self.started.append(run)
        self._start(run, completion_id=run.id)
        return run

    def _create_workflow(self, message: CreateWorkflow) -> None:
        services = self.services
        services.authorize(self.principal, "create_workflow", f"workflow:{message.workflow_id or ''}")
        ticket = services.admit_request(self.principal, 0)
        try:
            services.admit_completion()
            run = services.workflows.create(message.workflow_id, message.definition, message.definition_name,
                                            message.input, owner=self.principal.subject, ticket=ticket)
        except BaseException:
            ticket.release()
            raise
        self._start(run, workflow_id=run.id)

    def _start(self, run: Runnable, completion_id: str | None = None, workflow_id: str | None = None) -> None:
        broker = self.services.broker
        name = run.channel.name
        broker.subscribe(self.outbox, name)
        self._reply(subscribed_ack(broker, [name], completion_id=completion_id, workflow_id=workflow_id,
                                   rid=self._rid))
        run.start()

    # Subscriptions.

    def _subscribe(self, channels: list[str], streams: list[str], since: dict[str, Cursor]) -> None:
        services = self.services
        broker = services.broker
        accepted: list[str] = []
        with_snapshot: set[str] = set()
        for name in channels:
            if not CHANNEL_PATTERN.fullmatch(name):
                self.send_error(ProtocolError(f"{name!r} is not a channel name", ErrorCode.UNKNOWN_CHANNEL))
                continue
            channel = broker.channel(name)
            if channel is None:
                self.send_error(ProtocolError(f"no channel {name!r} is open", ErrorCode.UNKNOWN_CHANNEL))
                continue
            try:
                services.authorize(self.principal, "subscribe", name)
            except HubError as exc:
                self.send_error(exc)
                continue
            accepted.append(name)
            if channel.snapshot is not None:
                with_snapshot.add(name)
        valid_streams = self._check_streams(streams)
        if not accepted and not valid_streams:
            return
        ack = subscribed_ack(broker, accepted, since, valid_streams, rid=self._rid)
        self._reply(ack)
        for stream in valid_streams:
            broker.subscribe_type(self.outbox, stream)
        # After the acknowledgement: the replay (or snapshot) follows it, then live events, as
        # the ack's `recovered` said. Channels without a snapshot source (system, agent:...)
        # first, as they always were.
        for name in sorted(accepted, key=with_snapshot.__contains__):
            broker.subscribe(self.outbox, name, since.get(name), recovered=ack.recovered[name])

    def _unsubscribe(self, message: Unsubscribe) -> None:
        broker = self.services.broker
        removed = [name for name in message.channels if broker.unsubscribe(self.outbox, name)]
        streams = self._check_streams(message.streams)
        for stream in streams:
            broker.unsubscribe_type(self.outbox, stream)
        self._reply(Unsubscribed(channels=removed, streams=streams, rid=self._rid))

    def _check_streams(self, streams: list[str]) -> list[str]:
        valid = []
        for stream in streams:
            if stream in STREAM_TYPES:
                valid.append(stream)
            else:
                self.send_error(ProtocolError(
                    f"unknown stream type {stream!r}; expected one of {list(STREAM_TYPES)}", ErrorCode.UNKNOWN_CHANNEL
                ))
        return valid

    # Control.

    def _cancel(self, kind: Literal["completion", "workflow"], ident: str) -> None:
        """Cancel the ``kind`` (completion or workflow) run ``ident``: the session must be
        subscribed to its channel. ``ack`` follows when the message had a ``rid``."""
        broker = self.services.broker
        name = f"{kind}:{ident}"
        if broker.channel(name) is None:
            unknown = ErrorCode.UNKNOWN_COMPLETION if kind == "completion" else ErrorCode.UNKNOWN_WORKFLOW
            raise ProtocolError(f"no {kind} {ident!r}", unknown)
        if not broker.is_subscribed(self.outbox, name):
            raise ProtocolError(f"subscribe to {kind} {ident!r} before cancelling it", ErrorCode.NOT_SUBSCRIBED)
        self.services.authorize(self.principal, "cancel", name)
        if self._rid is not None:
            self._reply(Ack(self._rid))  # first: the stream's terminal error may follow at once
        broker.control(name, "cancel")
