"""The error vocabulary of circuit-breaker-hub: its codes, its close codes and its one exception tree.

Every error the hub reports to a client carries a stable string ``code`` (clients switch on
it), a human ``message``, ``retryable`` (would the same request succeed later?) and, for
upstream failures, the provider's HTTP ``status``. The codes are the members of
:class:`ErrorCode`; the WebSocket close codes are the members of :class:`CloseCode`. Both
enums are the one place these vocabularies are defined: ``python -m tools.gen_docs`` writes the
"Error codes" and "Close codes" tables of docs/PROTOCOL.md from them, and
``python -m tools.gen_js_protocol`` writes the JavaScript SDK's ``ERROR_CODES`` and
``CLOSE_CODES`` (tests fail while either is stale). :class:`ErrorCode` is a ``StrEnum``, so a
member equals its string and encodes as it: the wire does not change.

The exception tree. Every exception the hub raises on purpose derives from :class:`HubError`;
the Python SDK (``hub.client``) has its own root, because it runs in the client's process::

    HubError                       base: code, message, retryable, status
    ├── ProtocolError              the client sent something the hub cannot accept (its fault)
    │   │ codes: invalid_json, unknown_type, invalid_message, duplicate_id,
    │   │        unknown_completion, unknown_channel, not_subscribed, unknown_workflow
    │   └── DefinitionError        (hub/workflows.py) a workflow definition is invalid
    │         codes: invalid_workflow, unknown_workflow_definition
    ├── FramingError               an upstream body is not valid SSE / JSON array / NDJSON
    │     code: invalid_upstream_response
    ├── ProviderError              the provider failed (its fault, or the network's); retry_after_s
    │     codes: provider_error, rate_limited, auth_failed, model_not_found,
    │            provider_not_configured, upstream_unreachable, upstream_timeout,
    │            stream_truncated, invalid_upstream_response; invalid_message (a request
    │            that cannot be translated for the provider)
    ├── IllegalTransition          a run's lifecycle was asked for a move its table does not
    │                              allow (protocol/lifecycle.py): a bug of the hub
    │     code: internal_error
    └── ConfigError                (hub/config.py) a config file, preset or variable is invalid
          code: internal_error (never sent: the hub does not start)

:class:`HubError` itself carries the codes that belong to no subclass: cancelled,
shutting_down, internal_error, provider_unavailable, too_many_completions, hub_overloaded,
workflow_stuck, and an agent's failure passed on with the agent's code.

Messages never contain API keys: :func:`redact` is applied to every message built from
upstream text before it is stored in an error.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import functools
import re
from typing import ClassVar, Self

__all__ = [
    "ErrorCode",
    "CloseCode",
    "Fault",
    "Use",
    "HUB_CLOSE_CODE_RANGE",
    "RETRYABLE_STATUSES",
    "http_status_of",
    "HubError",
    "ProtocolError",
    "FramingError",
    "ProviderError",
    "IllegalTransition",
    "redact",
    "retryable_status",
]

# Shapes of the secrets we know: OpenAI (sk-..., sk-proj-...), Anthropic (sk-ant-...), the
# hub's own client API keys (cbk-..., from `cbhub keys new`),
# Google API keys (AIza...), bearer tokens in echoed headers, ?key= and ?token= (a browser's
# WebSocket credential) query parameters, and
# JWTs (client tokens: base64url header and payload that start with '{"', a signature).
_SECRET_PATTERNS = re.compile(
    r"(\bsk-[A-Za-z0-9_\-]{8,}|\bcbk-[A-Za-z0-9_\-]{16,}|\bAIza[0-9A-Za-z_\-]{20,}|(?i:\bbearer)\s+[A-Za-z0-9._\-]{8,}"
    r"|(?<=[?&]key=)[^&\s\"']+|(?<=[?&]token=)[^&\s\"']+|(?<=[?&]access_token=)[^&\s\"']+|\beyJ[A-Za-z0-9_\-]{4,}\.eyJ[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]*)"
)

RETRYABLE_STATUSES = (408, 409, 429, 500, 502, 503, 504, 529)
"""Provider HTTP statuses that a later identical request may survive (Anthropic's 529: overloaded)."""


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Return ``text`` with API keys replaced by ``[REDACTED]``.

    Args:
        text: any text that may echo a request (an upstream error body, an exception, a log
            record).
        secrets: the configured secrets (provider keys, the JWT secret, client tokens); each
            is replaced whatever its case (an upstream that echoes it upper-cased), and so is
            any base64 token that encodes it (standard or URL-safe alphabet, with or without
            padding, alone or inside ``user:key`` as in HTTP Basic auth).
    """
    if secrets:
        pattern = _secrets_pattern(tuple(secrets))
        if pattern is not None:
            text = pattern.sub("[REDACTED]", text)
    return _SECRET_PATTERNS.sub("[REDACTED]", text)


_B64_CHARS = "A-Za-z0-9+/_\\-"
_MIN_B64_CORE = 8  # shorter cores would mask ordinary words


def _base64_cores(secret: str) -> set[str]:
    """The base64 text that encodes ``secret`` whatever precedes it (its offset modulo 3)
    and whatever follows it: the characters fixed by the secret's bytes alone, in the
    standard and the URL-safe alphabets."""
    data = secret.encode()
    cores: set[str] = set()
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + data).decode().rstrip("=")
        start = 4 if offset else 0  # the first group mixes the unknown prefix in
        whole = (offset + len(data)) // 3 * 4  # groups made of known bytes only at the end
        core = encoded[start:whole]
        if len(core) >= _MIN_B64_CORE:
            cores.add(core)
            cores.add(core.translate(_URLSAFE))
    return cores


_URLSAFE = str.maketrans("+/", "-_")


@functools.lru_cache(maxsize=32)
def _secrets_pattern(secrets: tuple[str, ...]) -> re.Pattern[str] | None:
    """One regular expression for the secrets: each literally, in any case, and each base64
    token that contains the encoding of a secret (the whole token is masked)."""
    literal = sorted({s for s in secrets if s}, key=len, reverse=True)
    if not literal:
        return None
    cores = sorted({core for s in literal for variant in {s, s.upper()} for core in _base64_cores(variant)},
                   key=len, reverse=True)
    parts = ["(?i:" + "|".join(map(re.escape, literal)) + ")"]
    if cores:
        parts.append(f"[{_B64_CHARS}]*(?:" + "|".join(map(re.escape, cores)) + f")[{_B64_CHARS}]*=*")
    return re.compile("|".join(parts))


def retryable_status(status: int | None) -> bool:
    """True for HTTP statuses that a later identical request may survive.

    408, 409, 429, 500, 502, 503, 504 and Anthropic's 529 (docs/PROTOCOL.md "Error codes",
    ``provider_error``).
    """
    return status in RETRYABLE_STATUSES


# The vocabularies.


class Fault(enum.StrEnum):
    """Who has to change something for an error to go away."""

    CLIENT = "client"
    OPERATOR = "hub operator"  # keys and configuration
    PROVIDER = "provider"
    NETWORK = "network"
    UPSTREAM = "provider or network"
    HUB = "hub"  # the hub itself: overload, shutdown, a bug


@dataclasses.dataclass(frozen=True, slots=True)
class Use:
    """One way an error code is sent: ``sent_as`` (``answer``: to a client message, without
    ``completionId``; ``terminal``: ends a completion or workflow) and ``when`` (Markdown)."""

    sent_as: str
    when: str


@dataclasses.dataclass(frozen=True, slots=True)
class _CodeDoc:
    fault: Fault
    retryable: bool | None  # None: it depends on the provider's status (retryable_status)
    http: int | None  # the OpenAI-compatible API's status; None: see http_note
    uses: tuple[Use, ...]
    http_note: str = "(WebSocket only)"


def _doc(fault: Fault, retryable: bool | None, http: int | None, *uses: tuple[str, str],
         http_note: str = "(WebSocket only)") -> _CodeDoc:
    return _CodeDoc(fault, retryable, http, tuple(Use(sent_as, when) for sent_as, when in uses), http_note)


_ANSWER = "answer"
_TERMINAL = "terminal"


class ErrorCode(enum.StrEnum):
    """The stable ``error.code`` values, with what docs/PROTOCOL.md "Error codes" says of each.

    A member equals its string (``ErrorCode.CANCELLED == "cancelled"``) and is encoded as it.

    Attributes:
        fault: who has to change something (:class:`Fault`).
        retryable: the ``retryable`` the hub sends by default: True, False, or None when it
            depends on the provider's HTTP status (see :meth:`retryable_for`).
        http_status: the status the OpenAI-compatible API answers with when this error comes
            before the first event; None when it is WebSocket only, or the provider's status
            (see :func:`http_status_of`).
        uses: how and when it is sent (one :class:`Use` per case).
        description: the ``when`` of every use, in one line of Markdown.
    """

    _value_: str
    fault: Fault
    retryable: bool | None
    http_status: int | None
    http_note: str
    uses: tuple[Use, ...]

    def __new__(cls, value: str, doc: _CodeDoc | None = None) -> Self:
        # Called once per member, with its doc; ErrorCode("cancelled") looks the member up
        # (EnumMeta.__call__) and never comes here.
        assert doc is not None, "an ErrorCode member needs its _CodeDoc"
        member = str.__new__(cls, value)
        member._value_ = value
        member.fault = doc.fault
        member.retryable = doc.retryable
        member.http_status = doc.http
        member.http_note = doc.http_note
        member.uses = doc.uses
        return member

    @property
    def description(self) -> str:
        return "; ".join(use.when for use in self.uses)

    def retryable_for(self, status: int | None = None) -> bool:
        """The default ``retryable`` of this code for a provider answer of ``status``."""
        return retryable_status(status) if self.retryable is None else self.retryable

    # The client's mistakes, answered at once.
    INVALID_JSON = "invalid_json", _doc(Fault.CLIENT, False, 400, (
        _ANSWER, "a frame (or request body) is not JSON, is nested too deeply (about 1000 levels), or (request "
                 "bodies only) has invalid UTF-8 in a string; a WebSocket text frame that is not UTF-8 closes the "
                 "connection with 1007 instead"))
    UNKNOWN_TYPE = "unknown_type", _doc(Fault.CLIENT, False, 400, (
        _ANSWER, "no `type` field, or a `type` the hub does not know"))
    INVALID_MESSAGE = "invalid_message", _doc(Fault.CLIENT, False, 400, (
        _ANSWER, "a field is missing, of the wrong type, unknown or out of range; `messages` empty; `model` empty; "
                 "bad `id`; `subscribe`/`unsubscribe` with neither list; a binary frame; a malformed `messages` "
                 "query parameter (HTTP)"), (
        "terminal (`seq` 1)", "the messages or tools cannot be translated for the provider (tool call arguments "
                              "that are not JSON, a tool without a name, ...)"))
    DUPLICATE_ID = "duplicate_id", _doc(Fault.CLIENT, False, 409, (
        _ANSWER, "a `completion` reuses the id of a running or retained completion"))
    UNKNOWN_COMPLETION = "unknown_completion", _doc(Fault.CLIENT, False, None, (
        _ANSWER, "`cancel` names no known completion, or one the subject may not see (the same answer)"))
    TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions", _doc(Fault.CLIENT, False, None, (
        _ANSWER, "a `subscribe` would make the connection watch more than `max_subscriptions_per_connection` "
                 "channels ([Limits](#limits)); the channels before the limit are subscribed"))
    NOT_SUBSCRIBED = "not_subscribed", _doc(Fault.CLIENT, False, None, (
        _ANSWER, "`cancel` of a completion whose channel the connection does not watch"))
    UNKNOWN_CHANNEL = "unknown_channel", _doc(Fault.CLIENT, False, None, (
        _ANSWER, "`subscribe` to a malformed or not-open channel, or to one the subject may not see (the same "
                 "answer); an unknown stream type in `subscribe` or `unsubscribe`"))
    MODEL_NOT_FOUND = "model_not_found", _doc(Fault.CLIENT, False, 404, (
        _TERMINAL, "no provider serves the model name (`status` 404), or the provider answered HTTP 404"))
    # The operator's and the provider's state.
    PROVIDER_NOT_CONFIGURED = "provider_not_configured", _doc(Fault.OPERATOR, False, 503, (
        _TERMINAL, "the provider's public API needs a key and none is set"))
    PROVIDER_UNAVAILABLE = "provider_unavailable", _doc(Fault.PROVIDER, True, 503, (
        _TERMINAL, "the provider endpoint's circuit breaker is open and no fallback could serve"))
    # Workflows.
    INVALID_WORKFLOW = "invalid_workflow", _doc(Fault.CLIENT, False, 400, (
        _ANSWER, "a `create_workflow` definition is invalid; the message names the key (`transitions[2].to: "
                 "unknown place 'x'`)"))
    UNKNOWN_WORKFLOW_DEFINITION = "unknown_workflow_definition", _doc(Fault.CLIENT, False, 404, (
        _ANSWER, "no shipped definition has that `definitionName` (the message lists them)"))
    UNKNOWN_WORKFLOW = "unknown_workflow", _doc(Fault.CLIENT, False, 404, (
        _ANSWER, "`cancel_workflow` names no workflow run, or one the subject may not see (the same answer)"))
    WORKFLOW_LIMIT = "workflow_limit", _doc(Fault.CLIENT, False, None, (
        _TERMINAL, "a workflow run reached `max_steps`, `max_agent_calls` or `max_duration_s` (the hub's, or the "
                   "definition's lower `maxSteps`, `maxAgentCalls`, `maxDurationS`); the message says which"))
    WORKFLOW_STUCK = "workflow_stuck", _doc(Fault.OPERATOR, False, 500, (
        "terminal (workflow)", "no transition can fire from the token's place, or an agent kept calling tools"))
    # Limits.
    TOO_MANY_COMPLETIONS = "too_many_completions", _doc(Fault.CLIENT, True, 429, (
        _ANSWER, "the connection runs `max_completions_per_connection` completions, or the hub `max_completions` "
                 "([Limits](#limits))"))
    HUB_OVERLOADED = "hub_overloaded", _doc(Fault.HUB, True, 503, (
        _ANSWER, "the stream data the hub holds is over `memory_budget_bytes`: a new completion or workflow is refused,"
        " or a running completion that held the most is ended ([Memory budget](#memory-budget)); with the Redis broker,"
        " Redis does not answer or refuses writes, so a new completion's or workflow's id cannot be reserved"
        " ([Running several hubs](#running-several-hubs))"))
    # Authentication and permissions (docs/PROTOCOL.md "Authentication").
    UNAUTHORIZED = "unauthorized", _doc(Fault.CLIENT, False, 401, (
        _ANSWER, "no credential: a WebSocket message before the `auth` message, an HTTP request without "
                 "`Authorization` while `auth.mode` is not `none`"))
    INVALID_TOKEN = "invalid_token", _doc(Fault.CLIENT, False, 401, (
        _ANSWER, "a token or API key the hub does not accept (which check failed is not said)"))
    TOKEN_EXPIRED = "token_expired", _doc(Fault.CLIENT, False, 401, (
        _ANSWER, "the token expired; on a WebSocket sent on a timer, then close 4001 after "
                 "`auth.expiry_grace_s` unless a fresh `auth` message comes"))
    FORBIDDEN = "forbidden", _doc(Fault.CLIENT, False, 403, (
        _ANSWER, "the subject may not use that model (its `models` claim); under auth, a type-level "
                 "subscription or the `system` channel asked by a subject that is not an admin"))
    # What the provider answered, or failed to.
    AUTH_FAILED = "auth_failed", _doc(Fault.OPERATOR, False, 502, (
        _TERMINAL, "the provider answered HTTP 401 or 403"))
    RATE_LIMITED = "rate_limited", _doc(Fault.PROVIDER, True, 429, (
        _TERMINAL, "the provider answered HTTP 429, or sent an in-band error with status 429"), (
        _ANSWER, "the subject is over its `rpm`, `tpm` or `max_concurrent` ([Authentication](#authentication)); "
                 "`retryAfterMs` says how long to wait, HTTP adds `Retry-After`; no provider is called"))
    PROVIDER_ERROR = "provider_error", _doc(Fault.PROVIDER, None, None, (
        _TERMINAL, "any other non-200 answer; an in-band error (Anthropic `event: error`, an OpenAI chunk with "
                   "`error`, a Gemini error object, an Ollama `error` line)"),
        http_note="the provider's status, else 502")
    UPSTREAM_UNREACHABLE = "upstream_unreachable", _doc(Fault.NETWORK, True, 502, (
        _TERMINAL, "the provider could not be reached (DNS, refused, reset, TLS)"))
    UPSTREAM_TIMEOUT = "upstream_timeout", _doc(Fault.PROVIDER, True, 504, (
        _TERMINAL, "no connection within `connect_timeout_s`, no response headers within `connect_timeout_s` + "
                   "`idle_timeout_s`, or nothing received of the body (an error body included) for "
                   "`idle_timeout_s`"))
    STREAM_TRUNCATED = "stream_truncated", _doc(Fault.UPSTREAM, True, 502, (
        _TERMINAL, "the body ended, or the connection broke, before the provider's terminal marker; carries "
                   "`usage` when some was reported"))
    INVALID_UPSTREAM_RESPONSE = "invalid_upstream_response", _doc(Fault.PROVIDER, False, 502, (
        _TERMINAL, "the body could not be parsed (broken JSON, broken framing)"))
    # The run's end, the hub's state.
    CANCELLED = "cancelled", _doc(Fault.CLIENT, False, 499, (
        _TERMINAL, "`cancel`; the grace period ended with no subscriber; the HTTP client disconnected"))
    SHUTTING_DOWN = "shutting_down", _doc(Fault.HUB, True, 503, (
        "terminal, or answer to a `completion` sent during shutdown", "the hub is stopping"))
    INTERNAL_ERROR = "internal_error", _doc(Fault.HUB, False, 500, (
        "terminal, or answer", "a bug in the hub; the connection and its other completions live on"))
    # Several hubs sharing Redis (docs/PROTOCOL.md "Running several hubs").
    NODE_LOST = "node_lost", _doc(Fault.HUB, True, 503, (
        _TERMINAL, "the hub node running the completion or workflow stopped answering (its heartbeat in Redis "
                   "expired, `broker.node_timeout_s`); another node wrote this as the channel's last message"))
    STREAM_GAP = "stream_gap", _doc(Fault.HUB, True, None, (
        "notice (no `seq`)", "this node lost events of a channel another node runs (Redis was unreachable) "
                             "and Redis no longer holds them; the subscription ends: subscribe again with the "
                             "cursor (a snapshot, `recovered: false`)"))


def http_status_of(code: ErrorCode | str, provider_status: int | None = None) -> int:
    """The OpenAI-compatible API's HTTP status for an error that comes before the first event.

    The code's own :attr:`ErrorCode.http_status` when it has one, else the provider's status
    when it is between 400 and 599, else 502 (docs/PROTOCOL.md "Error codes"). A string that
    is not an :class:`ErrorCode` is treated as a code without a status of its own.
    """
    try:
        fixed = ErrorCode(code).http_status
    except ValueError:
        fixed = None
    if fixed is not None:
        return fixed
    if provider_status is not None and 400 <= provider_status < 600:
        return provider_status
    return 502


@dataclasses.dataclass(frozen=True, slots=True)
class _CloseDoc:
    when: str
    client_should: str
    reconnect: bool
    sent: bool = True  # False: no close frame (1006 is what the client's library reports)


class CloseCode(enum.IntEnum):
    """The WebSocket close codes of the hub (docs/PROTOCOL.md "Close codes").

    Attributes:
        when: when the hub closes with it (Markdown).
        client_should: what the client should do then (Markdown).
        reconnect: whether the client should reconnect (and resume its streams).
        sent: False for 1006, which is no close frame: the client's library reports it when
            the hub dropped the TCP connection.
    """

    _value_: int
    when: str
    client_should: str
    reconnect: bool
    sent: bool

    def __new__(cls, value: int, doc: _CloseDoc | None = None) -> Self:
        assert doc is not None, "a CloseCode member needs its _CloseDoc"
        member = int.__new__(cls, value)
        member._value_ = value
        member.when = doc.when
        member.client_should = doc.client_should
        member.reconnect = doc.reconnect
        member.sent = doc.sent
        return member

    NORMAL_CLOSURE = 1000, _CloseDoc(
        "the client closed the connection: the hub answers any client close with 1000", "nothing", False)
    ABNORMAL_CLOSURE = 1006, _CloseDoc(
        "when the heartbeat gets no Pong, the hub drops the TCP connection and the client sees 1006",
        "reconnect", True, sent=False)
    INVALID_DATA = 1007, _CloseDoc(
        "a text frame was not valid UTF-8 (RFC 6455 §8.1)", "send UTF-8", False)
    MESSAGE_TOO_BIG = 1009, _CloseDoc(
        "a client message was larger than `max_message_bytes`", "send smaller messages", False)
    INTERNAL_ERROR = 1011, _CloseDoc(
        "the hub failed to write to the connection because of an internal error", "reconnect", True)
    SERVICE_RESTART = 1012, _CloseDoc(
        "the hub is shutting down (reason `hub restarting; reconnect`), after the drain and after each running "
        "completion got `error` `shutting_down`", "reconnect (to this or another instance) and start again", True)
    TRY_AGAIN_LATER = 1013, _CloseDoc(
        "the hub is at `max_connections` (reason `too many connections; try again later`), or is over its memory"
        " budget and this connection's outbound queue was the largest (reason `hub_overloaded: ...`)",
        "reconnect after a backoff", True)
    UNAUTHORIZED = 4001, _CloseDoc(
        "no valid credential within `auth.timeout_s`, a refused credential, or a token that expired and was not "
        "refreshed within `auth.expiry_grace_s` (reason says which of `unauthorized`, `invalid_token`, "
        "`token_expired`)", "get a fresh token, then connect again", False)
    FORBIDDEN = 4003, _CloseDoc(
        "the credential is valid but may not use this hub (reason `forbidden`)", "nothing: ask for access", False)
    SLOW_CONSUMER = 4008, _CloseDoc(
        "slow consumer: the connection's outbound queue passed `outbound_hard_limit_bytes` (reason `slow consumer: "
        "reconnect and resume`)", "reconnect and resubscribe; its completions are still running or retained", True)


HUB_CLOSE_CODE_RANGE = (4000, 4999)
"""The hub's own close codes. One in this range that :class:`CloseCode` does not list means
"reconnect"."""


# The exception tree.


#: The longest error message, in characters; longer ones are cut (docs/PROTOCOL.md "Limits").
MAX_MESSAGE_CHARS = 1000


class HubError(Exception):
    """Base of every error the hub reports. Its message is cut to :data:`MAX_MESSAGE_CHARS`.

    Attributes:
        code: stable machine-readable code (:class:`ErrorCode`; equal to its string).
        message: human-readable text, already redacted.
        retryable: whether the same request may succeed if sent again later.
        status: HTTP status from the provider, when there was one.
        retry_after_ms: how long to wait before retrying, in ms (the hub's ``rate_limited``).
    """

    default_code: ClassVar[ErrorCode] = ErrorCode.INTERNAL_ERROR

    def __init__(
        self,
        message: str,
        code: ErrorCode | str | None = None,
        *,
        retryable: bool = False,
        status: int | None = None,
        retry_after_ms: int | None = None,
    ) -> None:
        """
        Args:
            message: the human text (already redacted).
            code: an :class:`ErrorCode`, or its string (kept for compatibility); None: the
                class's ``default_code``. A string that is no code raises ``ValueError``.
            retryable: what the client is told; the code's default is :meth:`ErrorCode.retryable_for`.
            status: the provider's HTTP status.
            retry_after_ms: the wait the client is told, in ms.
        """
        if len(message) > MAX_MESSAGE_CHARS:
            # A message quotes what a client sent (a model name, an id, a field): the error that
            # answers one client message stays small however large that message was.
            message = f"{message[:MAX_MESSAGE_CHARS]}... ({len(message) - MAX_MESSAGE_CHARS} more characters cut)"
        super().__init__(message)
        self.code: ErrorCode = ErrorCode(code or self.default_code)
        self.message = message
        self.retryable = retryable
        self.status = status
        self.retry_after_ms = retry_after_ms

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def as_dict(self) -> dict[str, object]:
        """The ``error`` object of a hub ``error`` message: code, message, retryable, status."""
        payload: dict[str, object] = {
            "code": self.code.value,
            "message": self.message,
            "retryable": self.retryable,
        }
        if self.status is not None:
            payload["status"] = self.status
        return payload


class ProtocolError(HubError):
    """The client sent a message the hub cannot accept. Never retryable as sent."""

    default_code = ErrorCode.INVALID_MESSAGE


class FramingError(HubError):
    """An upstream body broke its framing (SSE, JSON array or NDJSON)."""

    default_code = ErrorCode.INVALID_UPSTREAM_RESPONSE


class ProviderError(HubError):
    """An upstream provider failed: HTTP error, in-band error, truncation, network.

    Attributes:
        retry_after_s: the wait the provider asked for (``retry-after`` / ``retry-after-ms``),
            in seconds, already capped; None when it asked none.
    """

    default_code = ErrorCode.PROVIDER_ERROR

    def __init__(self, message: str, code: ErrorCode | str | None = None, *, retryable: bool = False,
                 status: int | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(message, code, retryable=retryable, status=status)
        self.retry_after_s = retry_after_s


class IllegalTransition(HubError):
    """A lifecycle (protocol/lifecycle.py) was asked for a move its transition table does not
    allow: a bug of the hub, never of the client, so its code is ``internal_error``.

    Attributes:
        machine: which lifecycle (``"completion"`` or ``"workflow"``).
        state: the state it was in (it stays there).
        event: the event that has no transition from ``state``.
    """

    default_code = ErrorCode.INTERNAL_ERROR

    def __init__(self, machine: str, state: str, event: str) -> None:
        super().__init__(f"a {machine} in state {state!r} cannot take event {event!r}")
        self.machine = machine
        self.state = state
        self.event = event
