"""protocol/redaction.py: the built-in rules (positive and negative cases), user rules, the
config check, and the streaming property: any split of a text into chunks streams out as the
redaction of the whole text."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hub.config import RedactionRule
from protocol.messages import ChatMessage
from protocol.redaction import (
    BUILTINS,
    Redactor,
    builtin_rule,
    check_rules,
    compile_redactor,
    iban_valid,
    luhn_valid,
    redact_messages,
    redact_value,
)


def only(name: str) -> Redactor:
    return Redactor([builtin_rule(name)], 64)


ALL = compile_redactor(BUILTINS, [], 64)


@pytest.mark.parametrize(("name", "text", "masked"), [
    ("email", "write to john.doe+x@example.co.uk today", "write to [REDACTED:email] today"),
    ("email", "a@b.io", "[REDACTED:email]"),
    ("phone", "call +44 20 7946 0958 now", "call [REDACTED:phone] now"),
    ("phone", "call +1 (555) 234-5678", "call [REDACTED:phone]"),
    ("phone", "call (555) 234-5678.", "call [REDACTED:phone]."),
    ("phone", "ruf 030-1234567 an", "ruf [REDACTED:phone] an"),
    ("phone", "appelle 06 12 34 56 78", "appelle [REDACTED:phone]"),
    ("credit_card", "card 4111 1111 1111 1111 ok", "card [REDACTED:credit_card] ok"),
    ("credit_card", "4111-1111-1111-1111", "[REDACTED:credit_card]"),
    ("credit_card", "amex 378282246310005", "amex [REDACTED:credit_card]"),
    ("iban", "to DE89 3704 0044 0532 0130 00 please", "to [REDACTED:iban] please"),
    ("iban", "GB82WEST12345698765432", "[REDACTED:iban]"),
    ("api_key", "key sk-proj-" + "A1b2" * 30 + " end", "key [REDACTED:api_key] end"),
    ("api_key", "sk-ant-api03-" + "x" * 95, "[REDACTED:api_key]"),
    ("api_key", "AKIAIOSFODNN7EXAMPLE,", "[REDACTED:api_key],"),
    ("api_key", "AIza" + "b" * 35, "[REDACTED:api_key]"),
    ("api_key", "ghp_" + "c" * 36, "[REDACTED:api_key]"),
])
def test_builtin_masks(name, text, masked):
    assert only(name).redact(text) == masked


@pytest.mark.parametrize(("name", "text"), [
    ("email", "no at sign here, user at example dot com"),
    ("email", "@handle and foo@bar"),
    ("phone", "order 12345 of 2024-01-15, version 1.2.3, pi 3.14159"),
    ("phone", "ids 5552345678 and +12"),
    ("credit_card", "card 4111 1111 1111 1112 (Luhn-invalid)"),
    ("credit_card", "4111111111111112 and 1234567890123"),
    ("credit_card", "short 4111 1111 1111"),
    ("iban", "DE88 3704 0044 0532 0130 00"),  # bad check digits
    ("iban", "GB00WEST12345698765432"),
    ("api_key", "task-abcdefghijklmnopqrstuvwxyz and sk-short and AKIAshort"),
])
def test_builtin_leaves(name, text):
    assert only(name).redact(text) == text


def test_luhn_and_iban_checks():
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert iban_valid("DE89 3704 0044 0532 0130 00") and not iban_valid("DE89 3704 0044 0532 0130 01")
    assert not iban_valid("DE89")


def test_user_rules_and_replacement():
    redactor = compile_redactor(["email"], [RedactionRule("ticket", "TCK-[0-9]{6}"),
                                            RedactionRule("name", "Alice|Bob", "[someone]")], 64)
    assert redactor.redact("Alice filed TCK-123456 from a@b.io") == "[someone] filed [REDACTED:ticket] from [REDACTED:email]"
    assert compile_redactor(["email"], [RedactionRule("ticket", "TCK-[0-9]{6}")], 64) is compile_redactor(
        ["email"], [RedactionRule("ticket", "TCK-[0-9]{6}")], 64)  # compiled once


def test_check_rules_refuses_what_cannot_stream():
    assert check_rules(BUILTINS, [], 64) is None
    assert "unbounded" in check_rules([], [RedactionRule("x", "a+")], 64)
    assert "more than redaction.max_match_chars (64)" in check_rules([], [RedactionRule("x", "a{65}")], 64)
    assert "empty string" in check_rules([], [RedactionRule("x", "a?")], 64)
    assert "does not compile" in check_rules([], [RedactionRule("x", "(")], 64)
    assert "raise it" in check_rules(["email"], [], 32)


def test_values_and_messages():
    assert redact_value({"to": ["a@b.io", 3], "a@b.io": None}, ALL) == {"to": ["[REDACTED:email]", 3], "a@b.io": None}
    [plain, parts] = redact_messages([ChatMessage("user", "I am a@b.io"),
                                      ChatMessage("user", [{"type": "text", "text": "x a@b.io"}])], ALL)
    assert plain.content == "I am [REDACTED:email]" and parts.content == [{"type": "text", "text": "x [REDACTED:email]"}]


def stream(redactor: Redactor, chunks: list[str]) -> str:
    streamer = redactor.stream()
    return "".join(streamer.feed(chunk) for chunk in chunks) + streamer.flush()


def test_a_match_split_across_chunks_is_masked_and_hold_back_is_bounded():
    redactor = compile_redactor(BUILTINS, [], 64)
    streamer = redactor.stream()
    text = "Contact me: jane.roe@example.org. " + "filler " * 30
    out = []
    for char in text:
        out.append(streamer.feed(char))
        assert streamer.pending <= 64
        assert "jane" not in "".join(out) or "[REDACTED" in "".join(out)
    out.append(streamer.flush())
    assert "".join(out) == redactor.redact(text) and "jane.roe" not in "".join(out)


SNIPPETS = [
    "john.doe@example.com", "a@b.io", "+44 20 7946 0958", "(555) 234-5678", "030-1234567",
    "4111 1111 1111 1111", "4111-1111-1111-1112", "378282246310005", "DE89 3704 0044 0532 0130 00",
    "GB82WEST12345698765432", "sk-ant-api03-" + "Zz9_" * 25, "AKIAIOSFODNN7EXAMPLE", "AIza" + "q" * 35,
    "ghp_" + "r" * 36, "TCK-123456", "Alice", " ", "-", "@", ".", "0", "+", "sk-", "x", "\n",
]
TEXTS = st.lists(st.one_of(st.sampled_from(SNIPPETS), st.text(max_size=6)), max_size=25).map("".join)


@st.composite
def text_and_chunks(draw):
    text = draw(TEXTS)
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=12)))
    bounds = [0, *cuts, len(text)]
    return text, [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text_and_chunks(), st.sampled_from([64, 80, 200]))
def test_any_split_streams_out_as_the_redaction_of_the_whole(case, max_chars):
    text, chunks = case
    redactor = compile_redactor(BUILTINS, [RedactionRule("ticket", r"\bTCK-[0-9]{6}\b"),
                                           RedactionRule("name", "Alice|Bob", "[someone]")], max_chars)
    assert stream(redactor, chunks) == redactor.redact(text)


@settings(max_examples=200, deadline=None)
@given(text_and_chunks())
def test_held_back_text_never_exceeds_max_match_chars(case):
    _, chunks = case
    streamer = ALL.stream()
    for chunk in chunks:
        streamer.feed(chunk)
        assert streamer.pending <= 64


def test_config_load_refuses_a_rule_wider_than_max_match_chars(tmp_path):
    from hub.config import ConfigError, HubConfig

    path = tmp_path / "hub.yaml"
    path.write_text("redaction:\n  rules:\n    - {name: long, pattern: 'X[0-9]+'}\n")
    with pytest.raises(ConfigError, match=r"redaction.rules: rule 'long'.*unbounded"):
        HubConfig.load(str(path))
    path.write_text("redaction:\n  max_match_chars: 16\n  rules:\n    - {name: t, pattern: 'T[0-9]{4}'}\n")
    assert HubConfig.load(str(path)).redaction_max_match_chars == 16


def test_the_bench_scenario_runs_and_checks_its_output(tmp_path):
    import json

    from tools.bench.cli import main

    out = tmp_path / "redaction.jsonl"
    assert main(["redaction", "--tokens", "120", "--seconds", "0.01", "--quiet", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()][1:]
    assert len(rows) == 8 and all(row.get("check", "ok") == "ok" for row in rows)
    assert all(row["held_chars_max"] <= 64 for row in rows)
