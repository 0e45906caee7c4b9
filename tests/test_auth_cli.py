"""``cbhub keys new`` and the start-up rule of ``cbhub serve`` (issue 11, part 1)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hub.auth import Authenticator
from hub.cli import _auth_refusal, main
from hub.config import HubConfig


def new_key(capsys: pytest.CaptureFixture[str], *options: str) -> tuple[str, str]:
    assert main(["keys", "new", *options]) == 0
    out = capsys.readouterr().out
    first, rest = out.split("\n", 1)
    return first, rest


async def test_keys_new_output_loads_as_config_and_authenticates(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key, entry = new_key(capsys, "--name", "backend", "--models", "openai/*", "anthropic/*", "--rpm", "60",
                         "--tpm", "5000", "--max-concurrent", "3", "--channels", "completion:team7-*")
    assert key.startswith("cbk-") and len(key) > 40 and " " not in key
    assert key not in entry  # only the digest is printed after the first line
    config_file = tmp_path / "hub.yaml"
    indented = "".join(f"    {line}\n" for line in entry.splitlines())
    config_file.write_text(f"auth:\n  mode: api_key\n  api_keys:\n{indented}", encoding="utf-8")
    config = HubConfig.load(config_file, environ={})
    principal = await Authenticator(config).authenticate(key)
    assert (principal.subject, principal.models, principal.channels) == (
        "key:backend", ("openai/*", "anthropic/*"), ("completion:team7-*",))
    assert (principal.rpm, principal.tpm, principal.max_concurrent, principal.admin) == (60, 5000, 3, False)
    other, _ = new_key(capsys, "--name", "backend")
    assert other != key


def test_keys_new_admin_and_subject(capsys: pytest.CaptureFixture[str]) -> None:
    _, entry = new_key(capsys, "--name", "ops", "--subject", "ops-team", "--admin")
    (loaded,) = yaml.safe_load(entry)
    assert loaded["subject"] == "ops-team" and loaded["admin"] is True and len(loaded["sha256"]) == 64


def test_keys_new_needs_a_name_and_positive_limits(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["keys", "new"])
    with pytest.raises(SystemExit):
        main(["keys", "new", "--name", "x", "--rpm", "0"])


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "hub.example.com"])
def test_serve_refuses_a_public_address_without_auth(host: str, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CBHUB_AUTH_MODE", "CBHUB_AUTH_ALLOW_ANONYMOUS"):
        monkeypatch.delenv(name, raising=False)
    assert main(["serve", "--host", host, "--port", "0"]) == 2
    assert "auth.mode" in capsys.readouterr().err


def test_the_start_up_rule() -> None:
    assert _auth_refusal(HubConfig(host="127.0.0.1")) is None
    assert _auth_refusal(HubConfig(host="localhost")) is None
    assert _auth_refusal(HubConfig(host="0.0.0.0", auth_allow_anonymous=True)) is None
    assert _auth_refusal(HubConfig(host="0.0.0.0", auth_mode="jwt", jwt_secret="k" * 32)) is None
    refusal = _auth_refusal(HubConfig(host="0.0.0.0"))
    assert refusal is not None and "auth.mode" in refusal and "auth.allow_anonymous" in refusal
    # A mode whose keys are missing does not start either, whatever the address.
    missing = _auth_refusal(HubConfig(host="127.0.0.1", auth_mode="jwt"))
    assert missing is not None and "auth.jwt.secret" in missing
