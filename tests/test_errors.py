"""protocol/errors.py: the error and close code enums, the tables they write, the exception tree."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import msgspec
import pytest

from protocol import errors
from protocol.errors import (
    HUB_CLOSE_CODE_RANGE,
    CloseCode,
    ErrorCode,
    FramingError,
    HubError,
    IllegalTransition,
    ProtocolError,
    ProviderError,
    http_status_of,
)
from protocol.messages import ErrorInfo, encode
from tools import gen_docs

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = sorted([*ROOT.glob("hub/**/*.py"), *ROOT.glob("protocol/**/*.py")])
_ERROR_CLASSES = {"HubError", "ProtocolError", "ProviderError", "FramingError", "DefinitionError"}


# The generated tables.


def test_protocol_md_tables_are_up_to_date() -> None:
    markdown = (ROOT / gen_docs.PROTOCOL_PATH).read_text(encoding="utf-8")
    assert gen_docs.update(markdown) == markdown, "docs/PROTOCOL.md is out of date: run python -m tools.gen_docs"


def test_every_code_has_a_row_and_every_row_a_code() -> None:
    markdown = (ROOT / gen_docs.PROTOCOL_PATH).read_text(encoding="utf-8")
    error_table = _generated(markdown, "error codes")
    rows = re.findall(r"^\| `([a-z_]+)` \|", error_table, re.M)
    assert set(rows) == {code.value for code in ErrorCode}
    assert len(rows) == sum(len(code.uses) for code in ErrorCode)
    close_section = _generated(markdown, "close codes")
    closes = re.findall(r"^\| (\d{4}) \|", close_section, re.M)
    assert [int(code) for code in closes] == [code for code in CloseCode if code.sent]
    assert "the client sees 1006" in close_section
    assert "Codes 4000-4999 are the hub's own. Of those, 4001, 4003, 4008 are in use" in close_section


def _generated(markdown: str, name: str) -> str:
    begin = markdown.index(f"<!-- BEGIN GENERATED {name}:")
    return markdown[begin:markdown.index(f"<!-- END GENERATED {name} -->", begin)]


def test_check_mode_reports_a_stale_document(tmp_path, monkeypatch, capsys) -> None:
    markdown = (ROOT / gen_docs.PROTOCOL_PATH).read_text(encoding="utf-8")
    stale = markdown.replace("| `cancelled` | client | no |", "| `cancelled` | client | yes |")
    assert stale != markdown
    target = tmp_path / gen_docs.PROTOCOL_PATH
    target.parent.mkdir(parents=True)
    target.write_text(stale, encoding="utf-8")
    # main() also checks README.md's wscat session (tests/test_newcomer.py): an up-to-date copy.
    readme = (ROOT / gen_docs.README_PATH).read_text(encoding="utf-8")
    (tmp_path / gen_docs.README_PATH).write_text(readme, encoding="utf-8")
    monkeypatch.setattr(gen_docs, "ROOT", tmp_path)
    assert gen_docs.main(["--check"]) == 1
    assert "out of date" in capsys.readouterr().err
    assert gen_docs.main([]) == 0
    assert target.read_text(encoding="utf-8") == markdown
    assert gen_docs.main(["--check"]) == 0
    assert (tmp_path / gen_docs.README_PATH).read_text(encoding="utf-8") == readme


def test_missing_markers_are_an_error() -> None:
    with pytest.raises(ValueError, match="BEGIN GENERATED error codes"):
        gen_docs.update("# no markers here\n")


# The enums.


def test_error_codes_are_their_strings_on_the_wire() -> None:
    assert ErrorCode.CANCELLED == "cancelled"
    assert ErrorCode("rate_limited") is ErrorCode.RATE_LIMITED
    assert f"{ErrorCode.SHUTTING_DOWN}" == "shutting_down"
    assert encode(ErrorInfo(ErrorCode.CANCELLED, "m", False)) == b'{"code":"cancelled","message":"m","retryable":false}'
    assert msgspec.json.encode(HubError("m", ErrorCode.HUB_OVERLOADED).code) == b'"hub_overloaded"'


def test_every_error_code_is_documented() -> None:
    for code in ErrorCode:
        assert code.value == code.value.lower() and " " not in code.value
        assert code.uses and all(use.sent_as and use.when for use in code.uses)
        assert code.description == "; ".join(use.when for use in code.uses)
        assert code.http_status is None or 400 <= code.http_status < 600
        assert code.http_status is not None or code.http_note


def test_retryable_defaults() -> None:
    assert ErrorCode.RATE_LIMITED.retryable_for() is True
    assert ErrorCode.CANCELLED.retryable_for(503) is False
    assert ErrorCode.PROVIDER_ERROR.retryable is None
    assert ErrorCode.PROVIDER_ERROR.retryable_for(503) is True
    assert ErrorCode.PROVIDER_ERROR.retryable_for(400) is False
    assert ErrorCode.PROVIDER_ERROR.retryable_for(None) is False


def test_http_status_of() -> None:
    assert http_status_of(ErrorCode.CANCELLED) == 499
    assert http_status_of("duplicate_id") == 409
    assert http_status_of(ErrorCode.PROVIDER_ERROR, 418) == 418
    assert http_status_of(ErrorCode.PROVIDER_ERROR, 200) == 502
    assert http_status_of(ErrorCode.PROVIDER_ERROR) == 502
    assert http_status_of(ErrorCode.STREAM_TRUNCATED, 503) == 502
    assert http_status_of("not_a_code", 404) == 404


#: The statuses the OpenAI-compatible API answered with before the codes became an enum
#: (hub/openai_api.py's table at 945e263): the enum must keep every one of them.
_STATUSES_BEFORE_THE_ENUM = {
    "invalid_json": 400, "invalid_message": 400, "unknown_type": 400, "duplicate_id": 409,
    "model_not_found": 404, "provider_not_configured": 503, "provider_unavailable": 503,
    "too_many_completions": 429, "hub_overloaded": 503, "auth_failed": 502, "rate_limited": 429,
    "upstream_timeout": 504, "upstream_unreachable": 502, "cancelled": 499, "shutting_down": 503,
    "internal_error": 500,
}


def test_the_http_statuses_are_the_ones_the_openai_api_answered_with() -> None:
    for code, status in _STATUSES_BEFORE_THE_ENUM.items():
        assert http_status_of(code, 418) == status, code
    # A code without a status of its own takes the provider's (400-599), else 502.
    assert http_status_of(ErrorCode.PROVIDER_ERROR, 418) == 418
    assert http_status_of(ErrorCode.PROVIDER_ERROR, 200) == 502
    assert http_status_of(ErrorCode.PROVIDER_ERROR, None) == 502


def test_close_codes() -> None:
    assert CloseCode.SLOW_CONSUMER == 4008
    assert [code.value for code in CloseCode if code.reconnect] == [1006, 1011, 1012, 1013, 4008]
    assert not CloseCode.UNAUTHORIZED.reconnect and not CloseCode.FORBIDDEN.reconnect
    assert [code for code in CloseCode if not code.sent] == [CloseCode.ABNORMAL_CLOSURE]
    low, high = HUB_CLOSE_CODE_RANGE
    # In the hub's range only the auth closes say "do not reconnect".
    assert [code for code in CloseCode if low <= code <= high and not code.reconnect] == [
        CloseCode.UNAUTHORIZED, CloseCode.FORBIDDEN]


def _literal_codes() -> list[tuple[str, str]]:
    """Every string literal passed as an error code in hub/ and protocol/: the second argument
    or ``code=`` of an error class, and ``StreamFailed(code=...)``."""
    found = []
    for path in PRODUCT:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            candidates = [kw.value for kw in node.keywords if kw.arg == "code"]
            if name in _ERROR_CLASSES and len(node.args) > 1:
                candidates.append(node.args[1])
            if name not in _ERROR_CLASSES | {"StreamFailed"}:
                continue
            for value in candidates:
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                if isinstance(value, ast.JoinedStr):  # f"unknown_{kind}": no one can check it
                    found.append((where, f"a code built at run time: {ast.unparse(value)}"))
                    continue
                for leaf in ast.walk(value):
                    if isinstance(leaf, ast.Constant) and isinstance(leaf.value, str):
                        found.append((where, leaf.value))
    return found


def test_every_code_the_product_sends_is_an_error_code() -> None:
    found = [entry for entry in _literal_codes() if not entry[1].startswith("a code built at run time")]
    assert len(found) > 20
    unknown = [entry for entry in found if entry[1] not in ErrorCode._value2member_map_]
    assert not unknown


def test_no_code_is_built_at_run_time() -> None:
    computed = [entry for entry in _literal_codes() if entry[1].startswith("a code built at run time")]
    assert not computed


# The exception tree.


def test_hub_error_takes_a_code_or_its_string() -> None:
    assert HubError("m", ErrorCode.CANCELLED).code is ErrorCode.CANCELLED
    assert HubError("m", "cancelled").code is ErrorCode.CANCELLED
    assert HubError("m").code is ErrorCode.INTERNAL_ERROR
    assert ProtocolError("m").code is ErrorCode.INVALID_MESSAGE
    assert FramingError("m").code is ErrorCode.INVALID_UPSTREAM_RESPONSE
    assert ProviderError("m", retry_after_s=1.5).code is ErrorCode.PROVIDER_ERROR
    assert str(ProtocolError("bad", "duplicate_id")) == "duplicate_id: bad"
    assert HubError("m", "rate_limited", retryable=True, status=429).as_dict() == {
        "code": "rate_limited", "message": "m", "retryable": True, "status": 429}
    with pytest.raises(ValueError, match="not_a_code"):
        HubError("m", "not_a_code")


def test_illegal_transition_is_a_bug_of_the_hub() -> None:
    error = IllegalTransition("completion", "completed", "start")
    assert isinstance(error, HubError) and error.code is ErrorCode.INTERNAL_ERROR
    assert (error.machine, error.state, error.event) == ("completion", "completed", "start")
    assert "completed" in error.message and "start" in error.message


def _drawn_tree() -> dict[str, str]:
    """{class: its parent} as drawn in the module docstring of protocol/errors.py."""
    doc = errors.__doc__ or ""
    parents: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in doc.splitlines():
        match = re.match(r"^(\s*)((?:[│ ]   )*)(?:[├└]── )?([A-Z][A-Za-z]+)\s", line + " ")
        if match is None or not line.strip().startswith(("HubError", "├", "└", "│")):
            continue
        if line.strip().startswith("│") and "──" not in line:
            continue
        depth = 0 if "──" not in line else (line.index("──") - len(match.group(1))) // 4 + 1
        name = match.group(3)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        if stack:
            parents[name] = stack[-1][1]
        stack.append((depth, name))
    return parents


def _bases_in_source(name: str) -> list[str]:
    for path in PRODUCT:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.name == name:
                return [base.id if isinstance(base, ast.Name) else ast.unparse(base) for base in node.bases]
    raise AssertionError(f"no class {name} in hub/ or protocol/")


def test_the_drawn_tree_has_every_class() -> None:
    drawn = _drawn_tree()
    assert set(drawn) == {"ProtocolError", "DefinitionError", "FramingError", "ProviderError", "IllegalTransition",
                          "ConfigError"}
    assert drawn["DefinitionError"] == "ProtocolError"


@pytest.mark.parametrize("name", [
    "ProtocolError", "DefinitionError", "FramingError", "ProviderError", "IllegalTransition", "ConfigError",
])
def test_the_drawn_tree_is_the_real_one(name: str) -> None:
    assert _drawn_tree()[name] in _bases_in_source(name)


def test_every_exception_of_the_hub_has_one_root() -> None:
    """Every exception class of hub/ and protocol/ (the SDK, with its own root, aside) derives
    from HubError, directly or through a class that does."""
    classes: dict[str, list[str]] = {}
    for path in PRODUCT:
        parts = path.relative_to(ROOT).parts
        # The SDK has its own root; hub/testing/ is the mock *provider*, a stand-in for an
        # upstream server, whose errors never leave it.
        if parts[1].startswith("client") or parts[1] == "testing":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                classes[node.name] = [ast.unparse(base) for base in node.bases]

    def root(name: str, seen: frozenset[str] = frozenset()) -> str:
        bases = classes.get(name)
        if not bases or name in seen or name == "HubError":
            return name
        return next((root(base, seen | {name}) for base in bases if base in classes), bases[0])

    exceptions = {name for name, bases in classes.items() if name.endswith("Error") and bases
                  and not name.startswith("_") and any(b.endswith(("Error", "Exception")) for b in bases)}
    stray = {name: root(name) for name in exceptions if root(name) != "HubError"}
    # ConfigError is reported and tested above (test_the_drawn_tree_is_the_real_one).
    stray.pop("ConfigError", None)
    assert not stray
