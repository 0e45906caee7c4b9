"""Secrets never leave the hub (docs/PROTOCOL.md "Redaction"): protocol.errors.redact catches a
configured secret echoed as is, upper-cased, or base64-encoded (standard and URL-safe, padded or
not, inside ``user:key``); hub.logsafe masks every log record."""

from __future__ import annotations

import base64
import logging

import pytest

from protocol.errors import redact

SECRET = "jwt-Secret_value.0123456789"


@pytest.mark.parametrize("echo", [
    SECRET, SECRET.upper(), SECRET.lower(),
    base64.b64encode(SECRET.encode()).decode(),
    base64.b64encode(SECRET.encode()).decode().rstrip("="),
    base64.urlsafe_b64encode(SECRET.encode()).decode(),
    base64.b64encode(f"user:{SECRET}".encode()).decode(),
    base64.urlsafe_b64encode(f"ab:{SECRET}".encode()).decode().rstrip("="),
    base64.b64encode(f":{SECRET}".encode()).decode(),
    base64.b64encode(SECRET.upper().encode()).decode(),
])
def test_a_secret_is_masked_however_it_is_echoed(echo):
    masked = redact(f'{{"error": "bad key {echo}", "auth": "Basic {echo}"}}', (SECRET,))
    assert echo not in masked and masked.count("[REDACTED]") == 2


def test_ordinary_text_and_other_base64_stay():
    other = base64.b64encode(b"hello there, general kenobi").decode()
    assert redact(f"fine {other} text", (SECRET,)) == f"fine {other} text"


def test_the_log_filter_masks_every_record(caplog):
    from hub.logsafe import install_secret_filter, uninstall_secret_filter

    install_secret_filter((SECRET,))
    try:
        logger = logging.getLogger("cbhub.test_logsafe")
        with caplog.at_level(logging.DEBUG):
            logger.debug("key %s", SECRET.upper())
            logger.warning("basic %s", base64.b64encode(f"u:{SECRET}".encode()).decode())
            try:
                raise RuntimeError(f"upstream said {SECRET}")
            except RuntimeError:
                logger.exception("failed with %r", {"k": SECRET})
        text = caplog.text
        assert SECRET not in text and SECRET.upper() not in text and "[REDACTED]" in text
        assert "upstream said [REDACTED]" in text
    finally:
        uninstall_secret_filter()


def test_a_client_jwt_is_masked_without_being_configured():
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXNpZw"
    assert redact(f"token={token} refused") == "token=[REDACTED] refused"
