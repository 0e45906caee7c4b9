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
- Every action passes :meth:`SessionServices.authorize` with the session's principal.
- Authentication (docs/PROTOCOL.md "Authentication"): a session made without a principal
  (``principal=None``: the hub requires a credential and the connection brought none) acts on
  nothing but an ``auth`` message; other messages are answered ``unauthorized``, and without
  a good ``auth`` message within ``auth.timeout_s`` it closes 4001. While a credential is
  being checked, the messages that follow it wait, in order. A later ``auth`` message
  refreshes the token; when the token expires without one, ``token_expired`` is sent on a
  timer, messages are refused with it, and ``auth.expiry_grace_s`` later the session closes
  4001. A refused subscribe or cancel is answered exactly as for a channel or run that does
  not exist (no existence oracle), unless the refusal is ``forbidden`` (type-level
  subscriptions, ``system``, a model), which is said.
- One place builds ``subscribed`` acknowledgements (:func:`subscribed_ack`).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Sequence
from typing import Any, Literal, Protocol

from hub.broker import Broker
from hub.channel import Channel, EncodedEvent
from hub.config import HubConfig
from hub.outbox import Outbox
from hub.ratelimit import Ticket, estimate_tokens
from protocol.errors import CloseCode, ErrorCode, HubError, ProtocolError
from protocol.messages import (
    CHANNEL_PATTERN,
    STREAM_TYPES,
    Ack,
    Auth,
    Authenticated,
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
        expires_at: when its credential expires (seconds since the epoch); None: never.
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

    @property
    def expires_at(self) -> float | None: ...


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
    expires_at: float | None = None


ANONYMOUS = Anonymous()


class _Unauthenticated(Anonymous):
    """The placeholder principal of a session that has not authenticated yet (it acts on
    nothing but ``auth``; the hub would refuse this subject everything anyway)."""

    subject = ""


_NOBODY = _Unauthenticated()

#: How many messages may wait for a credential being checked; more are refused.
MAX_HELD_MESSAGES = 64

#: The messages that start a run: those that waited for a broker step still start once the
#: client has left (:meth:`Session.close`).
_STARTS = (Completion, CreateWorkflow)


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

    def on_idle(self) -> None:
        """Its channel has no subscriber: it is cancelled after the grace period unless one
        comes."""


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

    async def admit_request_in_cluster(self, principal: Principal, estimate_tokens: int) -> Ticket:
        """:meth:`admit_request` counted across every node of a distributed broker
        (hub/cluster_limits.py); awaited only when the broker is distributed."""

    def authorize(self, principal: Principal, action: str, channel: str) -> None:
        """Raise HubError when ``principal`` may not do ``action`` (``subscribe``, ``cancel``,
        ``completion``, ``create_workflow``) on ``channel``; return to allow. For
        ``completion`` and ``create_workflow`` the channel is ``completion:<id>`` /
        ``workflow:<id>`` with the id the client chose, or with an empty id when it let the
        hub choose one (asked before the run exists). Two more actions: ``subscribe_type``
        (``channel``: a stream type of a type-level subscription) and ``use_model``
        (``channel``: a model name the client asked for).

        A refusal of ``subscribe`` or ``cancel`` is answered as for a channel that is not open
        (the client cannot tell the two apart), unless its code is ``forbidden``."""

    async def authenticate(self, token: str) -> Principal:
        """The principal of ``token`` (an ``auth`` message's); raises HubError
        ``invalid_token`` or ``token_expired``. Without authentication: the anonymous one."""

    def workflow_models(self, definition: dict[str, Any] | None, definition_name: str | None) -> list[str]:
        """Every model the agents of a workflow definition (inline or by name) ask for;
        raises HubError (``invalid_workflow``, ``unknown_workflow_definition``)."""


def _shown(name: str, limit: int = 80) -> str:
    """``name`` quoted for an error message, cut to ``limit`` characters (a reply stays small
    however long the name a client sent)."""
    return repr(name if len(name) <= limit else name[:limit] + "...")


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
        principal: who the client is; None: nobody yet, an ``auth`` message must come within
            ``auth.timeout_s`` (module docstring).
        watch_expiry: end the session when the principal's credential expires without a
            refresh (a WebSocket); False for a client authorized once per request (HTTP).

    Attributes:
        started: the runs this session started and that may still run (for
            ``max_completions_per_connection``).
        authenticated: a principal is known (given, or from an ``auth`` message).
    """

    def __init__(self, services: SessionServices, outbox: Outbox, principal: Principal | None = ANONYMOUS,
                 *, watch_expiry: bool = True) -> None:
        self.services = services
        self._watches_expiry = watch_expiry
        self.outbox = outbox
        self.principal: Principal = principal if principal is not None else _NOBODY
        self.authenticated = principal is not None
        self.started: list[Runnable] = []
        self._rid: str | None = None
        # Authentication: what refuses messages (no credential, an expired one), the messages
        # waiting for a credential being checked, the timer (auth timeout, expiry or grace).
        self._refusal: HubError | None = None
        self._held: list[ClientMessage | HubError] | None = None  # a HubError: a refused frame's answer
        self._auth_task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._step_task: asyncio.Task[None] | None = None  # a distributed broker's awaited step
        self._admitted: Ticket | None = None  # the cluster's admission of the message the step passes on
        if principal is None:
            self._refusal = HubError("authenticate first: send an auth message with a token",
                                     ErrorCode.UNAUTHORIZED)
            self._set_timer(services.config.auth_timeout_s, self._auth_timed_out)
        else:
            self._watch_expiry()

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
        if self._held is not None or self._refusal is not None:
            if self._gate(message):
                return
        if self.services.broker.distributed and self._needs_step(message):
            return
        self._dispatch(message)

    def _dispatch(self, message: ClientMessage) -> None:
        self._rid = message.rid
        try:
            match message:
                case Completion():
                    ticket, self._admitted = self._admitted, None  # the cluster's admission, by the step
                    self.start_completion(message, ticket)
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
                case Auth():
                    self._authenticate(message)
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
        self._set_timer(None, None)
        if self._auth_task is not None:
            self._auth_task.cancel()
        if self._step_task is None:
            self._held = None
        elif self._held is not None:
            # A broker step in flight is not cancelled (it would leave a claim behind in
            # Redis): it finishes, and the completions and workflows the hub received before
            # the client left start, as the in-memory broker starts them, with no subscriber
            # (their grace period runs). The other messages waiting are dropped.
            self._held = [message for message in self._held if isinstance(message, _STARTS)]
        self.outbox.stop()
        self.services.broker.remove(self.outbox)

    # A distributed broker (hub/redis_broker.py): steps awaited before a message is handled.

    def _needs_step(self, message: ClientMessage) -> bool:
        """Whether ``message`` needs the broker to await something first: a subscribe (or
        subscribe_workflow) naming channels not open here (another node may run them:
        :meth:`Broker.attach`), a
        completion (admitted by the rate limits counted across the cluster, then its id, the
        client's or one chosen here, reserved cluster-wide with its owner:
        :meth:`Broker.claim`), a workflow (admitted across the cluster, then its id, the
        client's or one chosen here, claimed likewise as ``workflow:<id>``).
        If so, the step runs as a task and this message and the ones after it wait for it,
        in order; returns True."""
        broker = self.services.broker
        step: Any
        match message:
            case Subscribe(channels=channels, since=since):
                names = [name for name in channels if broker.channel(name) is None
                         or (name in since and broker.lagging(name, since[name]))]
                if not names:
                    return False
                step = self._attach_then(message, names)
            case SubscribeWorkflow(workflow_id=workflow_id):
                name = f"workflow:{workflow_id}"
                if broker.channel(name) is not None:
                    return False
                step = self._attach_then(message, [name])
            case Completion():
                if not message.id:  # chosen here, as CompletionManager.create would: claimed with its owner
                    message.id = f"comp-{secrets.token_hex(12)}"
                step = self._admit_then(message)
            case CreateWorkflow():
                if not message.workflow_id:  # chosen here, as WorkflowManager.create would: claimed with its owner
                    message.workflow_id = f"wf-{secrets.token_hex(12)}"
                step = self._admit_then(message)
            case _:
                return False
        self._held = []
        self._step_task = asyncio.get_running_loop().create_task(step, name="broker-step")
        return True

    async def _attach_then(self, message: Subscribe | SubscribeWorkflow, names: list[str]) -> None:
        broker = self.services.broker
        try:
            await broker.attach(names, message.since if isinstance(message, Subscribe) else None)
        except Exception:  # a broker failure: the channels stay unknown here
            log.exception("attaching remote channels failed")
        self._step_task = None
        self._held_done(message)
        broker.release(names)

    async def _admit_then(self, message: Completion | CreateWorkflow) -> None:
        """The step of a completion or workflow: :meth:`admit_in_cluster`, then the claim of
        its channel, ``completion:<id>`` or ``workflow:<id>`` (:meth:`_claim_then`, which
        handles it). A refusal is answered with the message's ``rid``; the ticket of an admitted
        message that was not started after all (a duplicate id, a hub limit) is released."""
        try:
            try:
                self._admitted = await self.admit_in_cluster(message)
            except HubError as exc:
                self._step_task = None
                self._send_error(exc, message.rid)
                self._held_done(None)
                return
            except Exception as exc:  # a bug of ours: answer it, the session goes on
                log.exception("admitting a request across the cluster failed")
                self._step_task = None
                self._send_error(HubError(f"internal error: {type(exc).__name__}", ErrorCode.INTERNAL_ERROR),
                                 message.rid)
                self._held_done(None)
                return
            if isinstance(message, Completion):
                await self._claim_then(message, f"completion:{message.id}")
            else:
                await self._claim_then(message, f"workflow:{message.workflow_id}")
        finally:
            ticket, self._admitted = self._admitted, None
            if ticket is not None:
                ticket.release()

    async def admit_in_cluster(self, message: Completion | CreateWorkflow) -> Ticket:
        """What :meth:`start_completion` (or a ``create_workflow``) checks before the rate
        limits, then the principal's rate limits counted across the cluster
        (``admit_request_in_cluster``). Pass the ticket to :meth:`start_completion`, which
        then does not check again.

        Raises:
            HubError: the check's refusal (``too_many_completions``, ``forbidden``, ...) or
                ``rate_limited`` with ``retry_after_ms``.
        """
        if isinstance(message, Completion):
            self._check_completion(message)
            estimate = estimate_tokens(message.messages, message.max_tokens)
        else:
            self._check_workflow(message)
            estimate = 0
        return await self.services.admit_request_in_cluster(self.principal, estimate)

    async def _claim_then(self, message: Completion | CreateWorkflow, name: str) -> None:
        """Claim channel ``name`` (``completion:<id>`` / ``workflow:<id>``) cluster-wide with
        the principal as owner, then handle ``message``; a name taken on any node is refused
        ``duplicate_id`` (with the message's ``rid``), a claim whose run was not created after
        all is given back."""
        broker = self.services.broker
        error: HubError | None = None
        try:
            if not await broker.claim(name, self.principal.subject):
                kind, _, ident = name.partition(":")
                error = ProtocolError(f"{kind} id {ident!r} is already in use", ErrorCode.DUPLICATE_ID)
        except HubError as exc:  # the broker could not reserve it now (Redis down or full): said, no traceback
            error = exc
        except Exception as exc:
            log.exception("claiming %s failed", name)
            error = HubError(f"the broker failed: {type(exc).__name__}", ErrorCode.INTERNAL_ERROR, retryable=True)
        self._step_task = None
        if error is None:
            self._held_done(message)
            if broker.channel(name) is None:  # refused after all (a limit): give the id back
                broker.unclaim(name)
        else:
            self._send_error(error, message.rid)
            self._held_done(None)

    def _held_done(self, message: ClientMessage | None) -> None:
        """The step is over: handle ``message`` (no step again), then what waited."""
        held, self._held = self._held, None
        if message is not None and (not self.outbox.closed or isinstance(message, _STARTS)):
            self._dispatch(message)
        if self._held is None:
            self._held = held
            self._release_held()
        else:  # handling it made the rest wait again (not done by subscribe or completion)
            self._held.extend(held or [])

    # Authentication.

    def _gate(self, message: ClientMessage) -> bool:
        """Whether ``message`` was dealt with here: held while a credential is checked,
        refused without a valid one (an ``auth`` message passes)."""
        if self._held is not None:
            if len(self._held) >= MAX_HELD_MESSAGES:
                self._send_error(HubError("too many messages while the credential is checked",
                                          ErrorCode.UNAUTHORIZED), message.rid)
            else:
                self._held.append(message)
            return True
        if self._refusal is not None and not isinstance(message, Auth):
            self._send_error(self._refusal, message.rid)
            return True
        return False

    def _authenticate(self, message: Auth) -> None:
        """Check an ``auth`` message's token; the messages after it wait until it is done."""
        self._held = []
        self._auth_task = asyncio.get_running_loop().create_task(self._check_token(message.token, message.rid),
                                                                 name="auth")

    async def _check_token(self, token: str, rid: str | None) -> None:
        try:
            principal = await self.services.authenticate(token)
        except HubError as exc:
            self._refused(exc, rid)
        except Exception as exc:  # a bug of ours (or a key source failing): refuse, say nothing more
            log.exception("checking a token failed")
            self._refused(HubError(f"internal error: {type(exc).__name__}", ErrorCode.INTERNAL_ERROR), rid)
        else:
            self._accepted(principal, rid)
        finally:
            self._auth_task = None
        self._release_held()

    def _release_held(self) -> None:
        """Handle the messages that waited (for a credential or a broker step), in order;
        stop where one of them makes the rest wait again."""
        held, self._held = self._held or [], None
        for index, waiting in enumerate(held):
            if self.outbox.closed and not isinstance(waiting, _STARTS):
                continue  # the client left (close): only runs it asked for still start
            if isinstance(waiting, HubError):  # a refused frame (refuse_frame), answered in its turn
                self._send_error(waiting, None)
                continue
            self.dispatch(waiting)
            if self._held is not None:  # another auth message: the rest wait for it too
                self._held.extend(held[index + 1:])
                return

    def _accepted(self, principal: Principal, rid: str | None) -> None:
        if self.authenticated and principal.subject != self.principal.subject:
            self._send_error(HubError("a refreshed token must be for the same subject", ErrorCode.INVALID_TOKEN), rid)
            return
        self.principal = principal
        self.authenticated = True
        self._refusal = None
        self._watch_expiry()
        expires_at = principal.expires_at
        self._reply(Authenticated(principal.subject, None if expires_at is None else int(expires_at * 1000), rid))

    def _refused(self, error: HubError, rid: str | None) -> None:
        self._send_error(error, rid)
        if not self.authenticated:
            self._close(str(error.code))
        # Else the token in use stays (until it expires, or to the end of the grace period).

    def _watch_expiry(self) -> None:
        """Arm the expiry timer of the principal's credential (none when it does not expire);
        it fires when the hub stops accepting the token (``exp`` plus the leeway)."""
        expires_at = self.principal.expires_at
        if expires_at is None or not self._watches_expiry:
            self._set_timer(None, None)
            return
        delay = expires_at + self.services.config.jwt_leeway_s - time.time()
        self._set_timer(max(delay, 0.0), self._expired)

    def _expired(self) -> None:
        grace = self.services.config.auth_expiry_grace_s
        self._refusal = HubError(f"the token expired; send a fresh one in an auth message within {grace:g} s",
                                 ErrorCode.TOKEN_EXPIRED)
        self._send_error(self._refusal, None)
        self._set_timer(grace, self._grace_over)

    def _grace_over(self) -> None:
        self._close(ErrorCode.TOKEN_EXPIRED)

    def _auth_timed_out(self) -> None:
        if not self.authenticated:
            self._send_error(HubError("no credential within auth.timeout_s", ErrorCode.UNAUTHORIZED), None)
            self._close(ErrorCode.UNAUTHORIZED)

    def _close(self, reason: str) -> None:
        """Close 4001 with ``reason`` after what is pending (the error that says why)."""
        self._set_timer(None, None)
        self.outbox.flush(force=True)
        self.outbox.close_now(CloseCode.UNAUTHORIZED, reason)

    def _set_timer(self, delay_s: float | None, callback: Any) -> None:
        """Replace the session's one auth timer (None: just cancel it)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if delay_s is not None and callback is not None and not self.outbox.closed:
            self._timer = asyncio.get_running_loop().call_later(delay_s, callback)

    # Output.

    def refuse_frame(self, error: HubError) -> None:
        """Answer a frame the transport refused without decoding it (a WebSocket binary frame)
        with an ``error`` without ``rid``, in its turn: after the answers to the messages
        that arrived before it and wait (for a credential check or a broker step)."""
        if self._held is None:
            self._send_error(error, None)
        elif len(self._held) < MAX_HELD_MESSAGES:
            self._held.append(error)

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

    def start_completion(self, message: Completion, ticket: Ticket | None = None) -> Runnable:
        """Admit, create and start a completion; the session is subscribed to its channel
        and gets the ``subscribed`` ack (with ``completionId``) first.

        Args:
            message: the completion.
            ticket: its admission by :meth:`admit_in_cluster` (checked and admitted already;
                released here when it cannot start); None: checked and admitted here.

        Returns:
            The started CompletionRun.

        Raises:
            HubError: ``too_many_completions``, ``hub_overloaded``, ``duplicate_id``,
                ``shutting_down``, ``rate_limited``, or the authorize hook's refusal.
        """
        services = self.services
        if ticket is None:
            self._check_completion(message)
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

    def _check_completion(self, message: Completion) -> None:
        """What a completion passes before the rate limits: the per-connection limit and
        authorization (of its id and its models).

        Raises:
            HubError: ``too_many_completions`` or the authorize hook's refusal.
        """
        services = self.services
        self._check_per_connection_limit()
        services.authorize(self.principal, "completion", f"completion:{message.id or ''}")
        if self.principal.models:  # a principal restricted to some models
            for model in (message.model, *message.fallbacks):
                services.authorize(self.principal, "use_model", model)

    def _check_per_connection_limit(self) -> None:
        """``max_completions_per_connection`` over the completions and workflow runs this
        session started and that have not ended.

        Raises:
            HubError: ``too_many_completions`` (retryable).
        """
        self.started = [run for run in self.started if not run.finished]
        if len(self.started) >= self.services.config.max_completions_per_connection:
            raise HubError(f"this connection already runs {len(self.started)} completions and workflows "
                           f"(max_completions_per_connection); wait for one to end", ErrorCode.TOO_MANY_COMPLETIONS,
                           retryable=True)

    def _create_workflow(self, message: CreateWorkflow) -> None:
        services = self.services
        ticket, self._admitted = self._admitted, None  # admitted across the cluster (and checked) already
        if ticket is None:
            self._check_workflow(message)
            ticket = services.admit_request(self.principal, 0)
        try:
            services.admit_completion()
            run = services.workflows.create(message.workflow_id, message.definition, message.definition_name,
                                            message.input, owner=self.principal.subject, ticket=ticket)
        except BaseException:
            ticket.release()
            raise
        self.started.append(run)
        self._start(run, workflow_id=run.id)

    def _check_workflow(self, message: CreateWorkflow) -> None:
        """What a workflow passes before the rate limits (as :meth:`_check_completion`; its
        agents' models too).

        Raises:
            HubError: ``too_many_completions``, the authorize hook's refusal, or the
                definition's (``invalid_workflow``, ``unknown_workflow_definition``).
        """
        services = self.services
        self._check_per_connection_limit()
        services.authorize(self.principal, "create_workflow", f"workflow:{message.workflow_id or ''}")
        if self.principal.models:  # its agents' models too (the definition is read twice only then)
            for model in services.workflow_models(message.definition, message.definition_name):
                services.authorize(self.principal, "use_model", model)

    def _start(self, run: Runnable, completion_id: str | None = None, workflow_id: str | None = None) -> None:
        broker = self.services.broker
        name = run.channel.name
        if self.outbox.closed:  # the client left while a broker step ran (close): nobody to subscribe
            run.start()
            run.on_idle()
            return
        broker.subscribe(self.outbox, name)
        self._reply(subscribed_ack(broker, [name], completion_id=completion_id, workflow_id=workflow_id,
                                   rid=self._rid))
        run.start()

    # Subscriptions.

    def _subscribe(self, channels: list[str], streams: list[str], since: dict[str, Cursor]) -> None:
        """Subscribe to ``channels`` and ``streams`` (docs/PROTOCOL.md "subscribe"). The replies
        are bounded whatever the message's size (docs/PROTOCOL.md "Limits"): duplicates are
        collapsed, at most ``max_channels_per_message`` channels may be named, names are
        echoed shortened, and past ``max_subscriptions_per_connection`` one error ends it."""
        services = self.services
        broker = services.broker
        config = services.config
        channels = list(dict.fromkeys(channels))
        streams = list(dict.fromkeys(streams))
        if len(channels) > config.max_channels_per_message:
            raise ProtocolError(f"a subscribe names at most {config.max_channels_per_message} channels "
                                f"(max_channels_per_message), this one {len(channels)}", ErrorCode.INVALID_MESSAGE)
        room = config.max_subscriptions_per_connection - broker.subscription_count(self.outbox)
        accepted: list[str] = []
        with_snapshot: set[str] = set()
        for name in channels:
            if not CHANNEL_PATTERN.fullmatch(name):
                self.send_error(ProtocolError(f"{_shown(name)} is not a channel name", ErrorCode.UNKNOWN_CHANNEL))
                continue
            new = not broker.is_subscribed(self.outbox, name)
            if new and room <= 0:
                self.send_error(ProtocolError(
                    f"this connection watches {config.max_subscriptions_per_connection} channels "
                    f"(max_subscriptions_per_connection); unsubscribe from some first",
                    ErrorCode.TOO_MANY_SUBSCRIPTIONS))
                break
            # Asked first: a channel the principal may not read is answered as one not open.
            try:
                services.authorize(self.principal, "subscribe", name)
                channel = broker.channel(name)
            except HubError as exc:
                if exc.code == ErrorCode.FORBIDDEN:
                    self.send_error(exc)
                    continue
                channel = None
            if channel is None:
                self.send_error(ProtocolError(f"no channel {_shown(name)} is open", ErrorCode.UNKNOWN_CHANNEL))
                continue
            accepted.append(name)
            room -= new
            if channel.snapshot is not None:
                with_snapshot.add(name)
        valid_streams = []
        for stream in self._check_streams(streams):
            try:
                services.authorize(self.principal, "subscribe_type", stream)
            except HubError as exc:
                self.send_error(exc)
                continue
            valid_streams.append(stream)
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
                    f"unknown stream type {_shown(stream)}; expected one of {list(STREAM_TYPES)}",
                    ErrorCode.UNKNOWN_CHANNEL
                ))
        return valid

    # Control.

    def _cancel(self, kind: Literal["completion", "workflow"], ident: str) -> None:
        """Cancel the ``kind`` (completion or workflow) run ``ident``: the session must be
        subscribed to its channel. ``ack`` follows when the message had a ``rid``."""
        broker = self.services.broker
        name = f"{kind}:{ident}"
        code = ErrorCode.UNKNOWN_COMPLETION if kind == "completion" else ErrorCode.UNKNOWN_WORKFLOW
        unknown = ProtocolError(f"no {kind} {ident!r}", code)
        # Asked first: a run the principal may not touch is answered as one that does not exist.
        try:
            self.services.authorize(self.principal, "cancel", name)
        except HubError as exc:
            if exc.code == ErrorCode.FORBIDDEN:
                raise
            raise unknown from None
        if broker.channel(name) is None:
            raise unknown
        if not broker.is_subscribed(self.outbox, name):
            raise ProtocolError(f"subscribe to {kind} {ident!r} before cancelling it", ErrorCode.NOT_SUBSCRIBED)
        if self._rid is not None:
            self._reply(Ack(self._rid))  # first: the stream's terminal error may follow at once
        broker.control(name, "cancel")
