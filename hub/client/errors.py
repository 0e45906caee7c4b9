"""Every error the Python SDK raises, under one root.

::

    HubClientError                 base of every error of hub.client
    ├── HubRequestError            the hub answered a request with an ``error``: error, code, retryable
    │   └── HubStreamError         a stream ended with an ``error``: completion_id, workflow_id,
    │                              usage, result (also the SDK's own ``resume_failed``,
    │                              ``stream_gap`` and ``workflow_failed``)
    ├── HubConnectionError         no usable connection: close_code
    │   └── HubAuthError           the hub refused the credential (4001/4003, or an error
    │                              answer to ``auth``): code
    ├── ResumeError                a channel's state cannot continue (hub.client.state; a stream
    │                              turns it into a HubStreamError with the same code)
    ├── InvalidArgumentError       also a ValueError: a malformed id, channel name or request,
    │                              or two streams one client cannot tell apart
    └── UnknownOptionError         also a TypeError: a ``completion`` option the protocol lacks

The last two subclass the built-in errors too, so ``except ValueError`` keeps working for a
caller that expects the usual Python argument errors.

The hub's error codes (``ErrorInfo.code``) are listed in docs/PROTOCOL.md "Error codes"; the
codes this SDK adds are ``resume_failed`` (what the hub sent on resume contradicts what was
delivered), ``stream_gap`` (events of a resumable channel never arrived) and
``workflow_failed`` (a run failed while the client was away; its snapshot does not say why).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from protocol.messages import ErrorInfo, UsageInfo

if TYPE_CHECKING:
    from hub.client.results import CompletionResult, WorkflowResult

__all__ = [
    "HubClientError",
    "HubRequestError",
    "HubStreamError",
    "HubConnectionError",
    "HubAuthError",
    "ResumeError",
    "InvalidArgumentError",
    "UnknownOptionError",
]


class HubClientError(Exception):
    """Base of every error :mod:`hub.client` raises."""


class HubRequestError(HubClientError):
    """The hub answered a request with an ``error`` (docs/PROTOCOL.md "Error codes").

    Attributes:
        error: the hub's :class:`~protocol.messages.ErrorInfo`.
    """

    def __init__(self, error: ErrorInfo) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.error = error

    @property
    def code(self) -> str:
        """``error.code``, stable (``cancelled``, ``provider_error``, ``duplicate_id``...)."""
        return self.error.code

    @property
    def retryable(self) -> bool:
        """``error.retryable``: whether the same request may succeed later."""
        return self.error.retryable


class HubStreamError(HubRequestError):
    """A stream ended with an ``error``: the terminal ``error`` of a completion or workflow
    run, a rejected ``completion``, ``create_workflow`` or ``subscribe`` (``duplicate_id``,
    ``too_many_completions``, ``unknown_channel``...), or a stream that could not be resumed
    (the hub's ``unknown_channel`` when the channel is gone; ``resume_failed`` or
    ``stream_gap``, codes of this SDK, when what the hub sent on resume cannot continue what
    was delivered).

    Attributes:
        completion_id: the completion's id (None for a non-completion channel).
        workflow_id: the workflow run's id, for a workflow stream (else None).
        usage: what the provider reported before failing (tokens billed), when it did; for a
            workflow, the usage of all its agents so far.
        result: the stream's :class:`~hub.client.results.CompletionResult` (or
            :class:`~hub.client.results.WorkflowResult`) so far (``result.error`` is set).
    """

    def __init__(self, error: ErrorInfo, completion_id: str | None = None, *,
                 usage: UsageInfo | None = None,
                 result: CompletionResult | WorkflowResult | None = None,
                 workflow_id: str | None = None) -> None:
        super().__init__(error)
        self.completion_id = completion_id
        self.workflow_id = workflow_id
        self.usage = usage
        self.result = result


class HubConnectionError(HubClientError):
    """No usable connection: the first connect failed, the connection closed with
    reconnecting disabled or with a code in ``FATAL_CLOSE_CODES``, reconnecting gave up after
    ``max_reconnect_attempts``, or the client was closed.

    Attributes:
        close_code: the WebSocket close code of the lost connection (1006: dropped without a
            close frame), or None.
    """

    def __init__(self, message: str, close_code: int | None = None) -> None:
        super().__init__(message)
        self.close_code = close_code


class HubAuthError(HubConnectionError):
    """The hub refused the client's credential (docs/PROTOCOL.md "Authentication"): it answered
    the ``auth`` message with an ``error``, or closed the connection with 4001 (unauthorized)
    or 4003 (forbidden). The client does not reconnect: a new token is needed first.

    Attributes:
        code: ``unauthorized``, ``invalid_token``, ``token_expired`` or ``forbidden`` (the
            error's code, or the close reason).
    """

    def __init__(self, message: str, code: str, close_code: int | None = None) -> None:
        super().__init__(message, close_code)
        self.code = code


class ResumeError(HubClientError):
    """A channel's state (:mod:`hub.client.state`) cannot continue with what the hub sent.

    Attributes:
        code: ``resume_failed`` (a snapshot contradicts what was delivered) or ``stream_gap``
            (events of a resumable channel never arrived).
        retryable: True for ``stream_gap`` (subscribing again from scratch may work).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = code == "stream_gap"

    def info(self) -> ErrorInfo:
        """The :class:`~protocol.messages.ErrorInfo` a stream reports for this error."""
        return ErrorInfo(self.code, str(self), self.retryable)


class InvalidArgumentError(HubClientError, ValueError):
    """An argument the SDK refuses before sending anything: a malformed completion or
    workflow id, a channel name, an empty ``messages``, both or neither of a workflow's
    definition and definition name, or a second stream that one client cannot tell apart
    from one it already has."""


class UnknownOptionError(HubClientError, TypeError):
    """A ``completion`` option that the protocol does not have (docs/PROTOCOL.md
    ``completion``)."""
