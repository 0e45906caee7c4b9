"""The JavaScript SDK's protocol module is generated from protocol/messages.py and protocol/errors.py.

``sdk_js/src/protocol.js`` and ``protocol.d.ts`` are committed; regenerating them in memory
must give the same bytes, so a change to a message Struct, an error code or a close code that
is not carried over to the SDK fails here (fix: ``python -m tools.gen_js_protocol``).
"""

from __future__ import annotations

import json

import pytest

from protocol.errors import HUB_CLOSE_CODE_RANGE, CloseCode, ErrorCode
from protocol.messages import ClientMessage, HubMessage
from tools import gen_js_protocol
from tools.gen_js_protocol import OUTPUTS, ROOT, render


@pytest.mark.parametrize("path", OUTPUTS)
def test_committed_file_is_up_to_date(path: str) -> None:
    committed = (ROOT / path).read_text(encoding="utf-8")
    assert committed == render()[path], f"{path} is out of date: run python -m tools.gen_js_protocol"


def _tags(union: object) -> list[str]:
    return [member.__struct_config__.tag for member in union.__args__]  # type: ignore[attr-defined]


def test_every_message_type_is_in_the_module() -> None:
    js = render()[gen_js_protocol.JS_PATH]
    dts = render()[gen_js_protocol.DTS_PATH]
    for tag in _tags(ClientMessage) + _tags(HubMessage):
        assert json.dumps(tag) in js
    for member in ClientMessage.__args__ + HubMessage.__args__:  # type: ignore[attr-defined]
        assert f"export interface {member.__name__} {{" in dts


def test_codes_come_from_the_enums() -> None:
    errors = gen_js_protocol._error_codes()
    assert list(errors) == [code.value for code in ErrorCode]
    assert errors["cancelled"]["retryable"] is False
    assert errors["rate_limited"]["retryable"] is True
    assert errors["provider_error"]["retryable"] == "status"
    assert errors["provider_error"]["http"] is None and errors["unknown_completion"]["http"] is None
    assert errors["cancelled"]["http"] == 499
    assert "answer" in errors["invalid_message"]["sentAs"] and "terminal" in errors["invalid_message"]["sentAs"]
    assert "[Limits]" not in errors["too_many_completions"]["when"]  # Markdown links become plain text
    closes = gen_js_protocol._close_codes()
    assert list(closes) == sorted(code.value for code in CloseCode)
    assert [code for code, entry in closes.items() if entry["reconnect"]] == [1006, 1011, 1012, 1013, 4008]
    assert closes[1009]["reconnect"] is False
    js = render()[gen_js_protocol.JS_PATH]
    assert f"HUB_CLOSE_CODE_RANGE = deepFreeze([{HUB_CLOSE_CODE_RANGE[0]}, {HUB_CLOSE_CODE_RANGE[1]}])" in js


def test_check_mode_reports_a_stale_file(tmp_path, monkeypatch, capsys) -> None:
    for path in OUTPUTS:
        target = tmp_path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("stale", encoding="utf-8")
    monkeypatch.setattr(gen_js_protocol, "ROOT", tmp_path)
    assert gen_js_protocol.main(["--check"]) == 1
    assert "out of date" in capsys.readouterr().err
    assert gen_js_protocol.main([]) == 0
    assert gen_js_protocol.main(["--check"]) == 0
    assert (tmp_path / gen_js_protocol.JS_PATH).read_text(encoding="utf-8") == render()[gen_js_protocol.JS_PATH]
