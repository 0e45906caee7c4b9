"""The one exception tree of circuit-breaker-hub.

Every error the hub reports to a client carries a stable string ``code`` (clients switch on
it), a human ``message``, ``retryable`` (would the same request succeed later?) and, for
upstream failures, the provider's HTTP ``status``. The codes are listed in docs/PROTOCOL.md.

::

    HubError                       base: code, message, retryable, status
    ├── ProtocolError              the client sent something we cannot accept (its fault)
    │     codes: invalid_json, unknown_type, invalid_message, duplicate_id,
    │            unknown_completion, unknown_channel, not_subscribed
    ├── FramingError               an upstream body is not valid SSE / JSON array / NDJSON
    │     code: invalid_upstream_response
    └── ProviderError              the provider failed (their fault, or the network's)
          codes: provider_error, rate_limited, auth_failed, model_not_found,
                 provider_not_configured, upstream_unreachable, upstream_timeout,
                 stream_truncated, invalid_upstream_response, cancelled,
                 shutting_down, internal_error

Messages never contain API keys: :func:`redact` is applied to every message built from
upstream text before it is stored in an error.
"""

from __future__ import annotations

import re

__all__ = [
    "HubError",
    "ProtocolError",
    "FramingError",
    "ProviderError",
    "redact",
    "retryable_status",
]

# Shapes of the secrets we know: OpenAI (sk-..., sk-proj-...), Anthropic (sk-ant-...),
# Google API keys (AIza...), bearer tokens in echoed headers, and ?key= query parameters.
_SECRET_PATTERNS = re.compile(
    r"(\bsk-[A-Za-z0-9_\-]{8,}|\bAIza[0-9A-Za-z_\-]{20,}|(?i:\bbearer)\s+[A-Za-z0-9._\-]{8,}"
    r"|(?<=[?&]key=)[^&\s\"']+)"
)


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Return ``text`` with API keys replaced by ``[REDACTED]``.

    Args:
        text: any text that may echo a request (an upstream error body, an exception).
        secrets: the configured keys; each exact occurrence is replaced, whatever its shape.
    """
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[REDACTED]")
    return _SECRET_PATTERNS.sub("[REDACTED]", text)


def retryable_status(status: int | None) -> bool:
    """True for HTTP statuses that a later identical request may survive.

    408, 409, 429, 500, 502, 503, 504 and Anthropic's 529 (formats.md §6.1, §6.2, §6.5).
    """
    return status in (408, 409, 429, 500, 502, 503, 504, 529)


class HubError(Exception):
    """Base of every error the hub reports.

    Attributes:
        code: stable machine-readable code (see the module docstring).
        message: human-readable text, already redacted.
        retryable: whether the same request may succeed if sent again later.
        status: HTTP status from the provider, when there was one.
    """

    default_code = "internal_error"

    def __init__(
        self,
        message: str,
        code: str | None = None,
        *,
        retryable: bool = False,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code or self.default_code
        self.message = message
        self.retryable = retryable
        self.status = status

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def as_dict(self) -> dict[str, object]:
        """The ``error`` object of a hub ``error`` message: code, message, retryable, status."""
        payload: dict[str, object] = {
            "code": self.code,
            "message": self.message,
            "retryable": self.retryable,
        }
        if self.status is not None:
            payload["status"] = self.status
        return payload


class ProtocolError(HubError):
    """The client sent a message the hub cannot accept. Never retryable as sent."""

    default_code = "invalid_message"


class FramingError(HubError):
    """An upstream body broke its framing (SSE, JSON array or NDJSON)."""

    default_code = "invalid_upstream_response"


class ProviderError(HubError):
    """An upstream provider failed: HTTP error, in-band error, truncation, network.

    Attributes:
        retry_after_s: the wait the provider asked for (``retry-after`` / ``retry-after-ms``),
            in seconds, already capped; None when it asked none.
    """

    default_code = "provider_error"

    def __init__(self, message: str, code: str | None = None, *, retryable: bool = False,
                 status: int | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(message, code, retryable=retryable, status=status)
        self.retry_after_s = retry_after_s
