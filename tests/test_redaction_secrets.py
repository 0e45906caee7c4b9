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


OPENAI_KEY = "Zq9openaiKEYvalue0123456789xyz"  # no known key shape: only configuration finds it
JWT_SECRET = "hubJwtSecret-Value-0123456789abcd"


def echoes(key: str) -> list[str]:
    return [key, key.upper(), base64.b64encode(key.encode()).decode(),
            base64.urlsafe_b64encode(f"user:{key}".encode()).decode().rstrip("="),
            base64.b64encode(f"api:{key}".encode()).decode()]


def leaks(text: str) -> list[str]:
    return [echo for key in (OPENAI_KEY, JWT_SECRET) for echo in echoes(key) if echo in text]


async def test_keys_never_leave_the_hub(mock, ws_factory, tmp_path, capsys):
    import io
    import json

    import aiohttp

    from hub.app import run_hub
    from hub.cli import main
    from hub.logsafe import install_secret_filter, uninstall_secret_filter
    from tests.conftest import hub_config

    echo = " ".join(echoes(OPENAI_KEY) + echoes(JWT_SECRET))
    (tmp_path / "echo401.json").write_text(json.dumps({"error": {"message": f"Incorrect API key: {echo}"}}))
    (tmp_path / "garbage.sse").write_text(f"data: not json at all {echo}\n\n")
    dead = tmp_path / "dead.jsonl"
    config = hub_config(mock, openai_api_key=OPENAI_KEY, jwt_secret=JWT_SECRET, dead_letter_path=str(dead),
                        retry_max_attempts=1, log_level="DEBUG")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    install_secret_filter(config.secrets())  # what cbhub serve (and run_hub) install
    try:
        async with run_hub(config) as hub, aiohttp.ClientSession() as session:
            client = await ws_factory(hub)
            errors = []
            for cid, directive in (("s1", f"[[mock status=401 replay={tmp_path / 'echo401.json'}]]"),
                                   ("s2", f"[[mock replay={tmp_path / 'garbage.sse'}]]")):
                await client.send({"type": "completion", "id": cid, "model": "openai/gpt-4o-mini",
                                   "messages": [{"role": "user", "content": directive}]})
                errors.append((await client.until_terminal(cid))[-1])
            logging.getLogger("cbhub.test").debug("echoed %s", echo)  # a careless log line
            bodies = []
            for path in ("/healthz", "/v1/models"):
                async with session.get(hub.url + path) as response:
                    bodies.append(await response.text())
            async with session.post(hub.url + "/v1/chat/completions", json={
                    "model": "openai/gpt-4o-mini",
                    "messages": [{"role": "user", "content": f"[[mock status=401 replay={tmp_path / 'echo401.json'}]]"}]},
                    ) as response:
                bodies.append(await response.text())
    finally:
        uninstall_secret_filter()
        root.removeHandler(handler)
        root.setLevel(old_level)
    assert [e.error.code for e in errors] == ["auth_failed", "invalid_upstream_response"]
    assert "[REDACTED]" in errors[0].error.message
    log_text = stream.getvalue()
    assert "echoed [REDACTED]" in log_text
    assert dead.exists() and "[REDACTED]" in dead.read_text()
    config_file = tmp_path / "hub.yaml"
    config_file.write_text(f"providers:\n  openai:\n    api_key: {OPENAI_KEY}\nauth:\n  jwt:\n    secret: {JWT_SECRET}\n")
    assert main(["config", "--config", str(config_file)]) == 0
    printed = capsys.readouterr().out
    assert "***" in printed
    for name, text in [("log", log_text), ("frames", "".join(client.frames)), ("dead letters", dead.read_text()),
                       ("cbhub config", printed), *zip(("/healthz", "/v1/models", "/v1 error"), bodies, strict=True)]:
        assert not leaks(text), (name, leaks(text))


def test_a_websocket_token_in_a_url_is_masked():
    assert redact("GET /ws/stream?token=abc.def-123&x=1 failed") == "GET /ws/stream?token=[REDACTED]&x=1 failed"


def test_a_client_api_key_is_masked_without_being_configured():
    import secrets

    key = "cbk-" + secrets.token_urlsafe(32)
    assert redact(f"api key {key} refused") == "api key [REDACTED] refused"
