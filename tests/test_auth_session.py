"""The session's authentication state without a socket (hub/session.py): messages held while a
credential is checked, in order and bounded; a refused first credential closes 4001."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from hub.app import Hub
from hub.auth import AuthPrincipal
from hub.config import HubConfig
from hub.session import MAX_HELD_MESSAGES, Session
from protocol.errors import ErrorCode, HubError
from protocol.messages import Authenticated, ErrorMessage, Pong
from tests.test_auth_hub import SECRET
from tests.test_session import RecordingOutbox


def send(session: Session, message: dict[str, Any]) -> None:
    session.handle(msgspec.json.encode(message))


def auth_hub() -> Hub:
    return Hub(HubConfig(auth_mode="jwt", jwt_secret=SECRET, auth_timeout_s=30.0))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_messages_wait_for_a_slow_credential_check_in_order_and_bounded(monkeypatch: Any) -> None:
    hub = auth_hub()
    release = asyncio.Event()

    async def slow(token: str) -> AuthPrincipal:
        await release.wait()
        return AuthPrincipal(subject="alice")

    monkeypatch.setattr(hub, "authenticate", slow)
    outbox = RecordingOutbox(hub)
    session = Session(hub, outbox, None)
    send(session, {"type": "auth", "token": "t", "rid": "a"})
    for n in range(MAX_HELD_MESSAGES + 2):
        send(session, {"type": "ping", "rid": f"p{n}"})
    await settle()
    refused = outbox.drain()
    assert [(m.error.code, m.rid) for m in refused] == [
        ("unauthorized", f"p{n}") for n in (MAX_HELD_MESSAGES, MAX_HELD_MESSAGES + 1)]
    release.set()
    await settle()
    answers = outbox.drain()
    assert answers[0] == Authenticated("alice", None, "a")
    assert answers[1:] == [Pong(rid=f"p{n}") for n in range(MAX_HELD_MESSAGES)]
    session.close()


async def test_a_refused_first_credential_is_answered_then_closes_4001(monkeypatch: Any) -> None:
    hub = auth_hub()

    async def refuse(token: str) -> AuthPrincipal:
        raise HubError("invalid token", ErrorCode.INVALID_TOKEN)

    monkeypatch.setattr(hub, "authenticate", refuse)
    outbox = RecordingOutbox(hub)
    session = Session(hub, outbox, None)
    send(session, {"type": "auth", "token": "t", "rid": "a"})
    send(session, {"type": "ping", "rid": "after"})
    await settle()
    (error,) = outbox.messages
    assert isinstance(error, ErrorMessage) and (error.error.code, error.rid) == ("invalid_token", "a")
    assert outbox.close_code == 4001
    session.close()


async def test_a_principal_without_expiry_arms_no_timer() -> None:
    hub = auth_hub()
    session = Session(hub, RecordingOutbox(hub), AuthPrincipal(subject="key:ops"))
    assert session._timer is None
    session.close()
